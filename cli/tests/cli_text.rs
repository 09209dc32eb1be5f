//! The text bundle through the CLI: `lethe features --text` equals Python ONNX Runtime on real
//! tweets; `--text` and `--input NAME=FILE` with Python's token arrays give the same logits
//! bit for bit, and so does `--input FILE.npz` with numpy's `.npz` of those arrays (malformed
//! ones are refused); learned and partly forgotten tweets give the weights scikit-learn Ridge
//! computes; inputs the bundle does not take are refused before a state dir is created.

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::Array1;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use support::{lethe, lethe_fails, numbers_after};

const BUNDLE: &str = "models/minilm-l6-sentiment";
/// Tweets learned: one chunk of the CLI's core runs, so `lethe features` pads them alike.
const N: usize = 48;
/// Rust vs Python ONNX Runtime: max abs difference / max abs reference value.
const PARITY_REL_TOL: f64 = 1e-5;

fn python(args: &[&str]) -> String {
    let out = Command::new(common::python())
        .args(args)
        .current_dir(common::repo_root())
        .output()
        .expect("run python (scripts/setup.sh makes .lethe/venv)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python {args:?} failed:\n{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first N training tweets (one per line), their labels and ids.
fn tweets(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = common::repo_root().join("tests/data");
    let lines = lethe::data::read_lines(&data.join("tweets_train.txt")).unwrap();
    let texts = dir.join("tweets.txt");
    std::fs::write(&texts, lines[..N].join("\n") + "\n").unwrap();
    let labels =
        Array1::<u8>::read_npy(std::fs::File::open(data.join("tweets_train_labels.npy")).unwrap())
            .unwrap();
    let (y, ids) = (dir.join("y.npy"), dir.join("ids.npy"));
    labels
        .slice(ndarray::s![..N])
        .to_owned()
        .write_npy(std::fs::File::create(&y).unwrap())
        .unwrap();
    Array1::from_iter((0..N as u64).map(|i| 100 + 3 * i))
        .write_npy(std::fs::File::create(&ids).unwrap())
        .unwrap();
    (texts, y, ids)
}

#[test]
fn text_commands_agree_with_python_and_scikit_learn() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let (texts, y, ids) = tweets(dir);
    let reference = dir.join("ref");
    python(&[
        "tests/py/text_reference.py",
        "--bundle",
        BUNDLE,
        "--lines",
        s(&texts),
        "--out-dir",
        s(&reference),
    ]);

    let f = dir.join("f.npy");
    lethe(&[
        "features",
        "--bundle",
        BUNDLE,
        "--text",
        s(&texts),
        "--out",
        s(&f),
    ]);
    let ours = common::read_npy_2d(&f);
    let theirs = common::read_npy_2d(&reference.join("features.npy"));
    let rel = common::max_rel_diff(ours.view(), theirs.view());
    assert!(rel <= PARITY_REL_TOL, "features vs Python: {rel:e}");

    let state = dir.join("state");
    lethe(&[
        "learn",
        "--state",
        s(&state),
        "--bundle",
        BUNDLE,
        "--text",
        s(&texts),
        "--labels",
        s(&y),
        "--ids",
        s(&ids),
    ]);
    let forgotten: Vec<usize> = (0..N).step_by(5).collect();
    let list: Vec<String> = forgotten
        .iter()
        .map(|i| (100 + 3 * i).to_string())
        .collect();
    lethe(&["forget", "--state", s(&state), "--ids", &list.join(",")]);
    let verify = lethe(&["verify", "--state", s(&state)]);
    assert!(verify.contains("bit-identical"), "{verify}");

    // The tensors path, with Python's token arrays, and the text path give the same logits.
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    lethe(&[
        "predict",
        "--state",
        s(&state),
        "--text",
        s(&texts),
        "--out",
        s(&a),
    ]);
    let ids_arg = format!("input_ids={}", s(&reference.join("input_ids.npy")));
    let mask_arg = format!(
        "attention_mask={}",
        s(&reference.join("attention_mask.npy"))
    );
    lethe(&[
        "predict",
        "--state",
        s(&state),
        "--input",
        &ids_arg,
        "--input",
        &mask_arg,
        "--out",
        s(&b),
    ]);
    let (a, b) = (common::read_npy_2d(&a), common::read_npy_2d(&b));
    assert_eq!(a.dim(), (N, 3));
    assert_eq!(a, b, "--text and --input NAME=FILE differ");
    npz_inputs(dir, &state, &reference, &a);

    let w = dir.join("w.npz");
    lethe(&["weights", "--state", s(&state), "--out", s(&w)]);
    let keep: Vec<i64> = (0..N as i64)
        .filter(|i| !forgotten.contains(&(*i as usize)))
        .collect();
    let keep_file = dir.join("keep.npy");
    Array1::from(keep)
        .write_npy(std::fs::File::create(&keep_file).unwrap())
        .unwrap();
    let out = python(&[
        "tests/py/ridge_reference.py",
        "--features",
        s(&f),
        "--labels",
        s(&y),
        "--keep",
        s(&keep_file),
        "--weights",
        s(&w),
        "--bundle",
        BUNDLE,
    ]);
    assert!(out.contains("relative difference"), "{out}");
}

/// numpy's `.npz` files of Python's token arrays: stored (savez) and deflated
/// (savez_compressed) give `logits` bit for bit; every malformed one is refused with a message
/// that names what is wrong.
fn npz_inputs(dir: &Path, state: &Path, reference: &Path, logits: &ndarray::Array2<f32>) {
    let npz = dir.join("npz");
    std::fs::create_dir(&npz).unwrap();
    python(&["-c", NPZ_FILES, s(reference), s(&npz)]);
    let out = dir.join("npz-logits.npy");
    let predict = |inputs: &[&str]| {
        let mut args: Vec<String> = ["predict", "--state", s(state), "--out", s(&out)]
            .map(String::from)
            .to_vec();
        for input in inputs {
            args.extend(["--input".to_string(), input.to_string()]);
        }
        args
    };
    for file in ["stored.npz", "compressed.npz"] {
        let args = predict(&[s(&npz.join(file))]);
        lethe(&strs(&args));
        assert_eq!(
            &common::read_npy_2d(&out),
            logits,
            "--input {file} and --text differ"
        );
        std::fs::remove_file(&out).unwrap();
    }
    let ids_arg = format!("input_ids={}", s(&reference.join("input_ids.npy")));
    let stored = npz.join("stored.npz");
    for (inputs, expected) in [
        (
            vec![s(&npz.join("no_mask.npz"))],
            "\"attention_mask\" is missing",
        ),
        (vec![s(&npz.join("extra.npz"))], "has no input \"mask\""),
        (vec![s(&stored), &ids_arg], "\"input_ids\" is given twice"),
        (
            vec![s(&npz.join("int32.npz"))],
            "\"input_ids\" is int32, the core takes int64",
        ),
        (vec![s(&npz.join("flat.npz"))], "\"input_ids\" has shape"),
        (
            vec![s(&npz.join("twice.npz"))],
            "holds two arrays named \"input_ids\"",
        ),
        (
            vec![s(&npz.join("float64.npz"))],
            "holds float64 values; a core input is",
        ),
        (
            vec![s(&npz.join("truncated.npz"))],
            "not a readable .npz (zip) file",
        ),
        (
            vec![s(&npz.join("flipped.npz"))],
            "(array \"input_ids\"): unreadable",
        ),
    ] {
        let err = lethe_fails(&strs(&predict(&inputs)));
        assert!(err.contains(expected), "{inputs:?}: {err}");
        assert!(!out.exists(), "{inputs:?}: a refused predict wrote logits");
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Writes the `.npz` files of [`npz_inputs`] from Python's token arrays (argv: the reference
/// folder, the output folder).
const NPZ_FILES: &str = r#"
import sys, zipfile
import numpy as np
ref, out = sys.argv[1], sys.argv[2]
ids = np.load(f"{ref}/input_ids.npy")
mask = np.load(f"{ref}/attention_mask.npy")
assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
np.savez(f"{out}/stored.npz", input_ids=ids, attention_mask=mask)
np.savez_compressed(f"{out}/compressed.npz", input_ids=ids, attention_mask=mask)
np.savez(f"{out}/no_mask.npz", input_ids=ids)
np.savez(f"{out}/extra.npz", input_ids=ids, attention_mask=mask, mask=mask)
np.savez(f"{out}/int32.npz", input_ids=ids.astype(np.int32), attention_mask=mask)
np.savez(f"{out}/flat.npz", input_ids=ids.reshape(-1), attention_mask=mask)
np.savez(f"{out}/float64.npz", input_ids=ids.astype(np.float64), attention_mask=mask)
with zipfile.ZipFile(f"{out}/twice.npz", "w") as z:
    z.write(f"{ref}/input_ids.npy", "input_ids.npy")
    z.write(f"{ref}/input_ids.npy", "input_ids")
    z.write(f"{ref}/attention_mask.npy", "attention_mask.npy")
data = open(f"{out}/stored.npz", "rb").read()
open(f"{out}/truncated.npz", "wb").write(data[: len(data) // 2])
# One byte of input_ids' values (past its 128-byte .npy header) changed: the CRC-32 no longer
# matches.
at = data.index(b"\x93NUMPY") + 200
flipped = bytearray(data)
flipped[at] ^= 0x01
open(f"{out}/flipped.npz", "wb").write(bytes(flipped))
"#;

#[test]
fn inputs_a_bundle_does_not_take_are_refused_before_the_state_dir_exists() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let (texts, y, ids) = tweets(dir);
    let state = dir.join("state");
    let learn = |bundle: &str, input: &[&str]| {
        let mut args = vec!["learn", "--state", s(&state), "--bundle", bundle];
        args.extend(input);
        args.extend(["--labels", s(&y), "--ids", s(&ids)]);
        let err = lethe_fails(&args);
        assert!(!state.exists(), "a failed learn left {}", state.display());
        err
    };
    let err = learn("models/mnist-core", &["--text", s(&texts)]);
    assert!(err.contains("does not take text"), "{err}");
    let err = learn(BUNDLE, &["--input", s(&y)]);
    assert!(
        err.contains("does not take one float32 array")
            && err.contains("input_ids (int64 [n, seq])"),
        "{err}"
    );
    let ids_arg = format!("input_ids={}", s(&y));
    let err = learn(BUNDLE, &["--input", &ids_arg]);
    assert!(err.contains("\"attention_mask\" is missing"), "{err}");
    let mask_arg = format!("attention_mask={}", s(&y));
    let err = learn(BUNDLE, &["--input", &ids_arg, "--input", &mask_arg]);
    assert!(err.contains("is uint8, the core takes int64"), "{err}");
    let mask_arg = format!("mask={}", s(&y));
    let err = learn(BUNDLE, &["--input", &ids_arg, "--input", &mask_arg]);
    assert!(err.contains("has no input \"mask\""), "{err}");
    let short = dir.join("short.txt");
    std::fs::write(&short, "only one tweet\n").unwrap();
    let err = learn(BUNDLE, &["--text", s(&short)]);
    assert!(err.contains("1 inputs, 48 labels, 48 ids"), "{err}");
    let err = lethe_fails(&[
        "learn",
        "--state",
        s(&state),
        "--bundle",
        BUNDLE,
        "--text",
        s(&texts),
        "--input",
        s(&y),
        "--labels",
        s(&y),
        "--ids",
        s(&ids),
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
}

/// Writes the first `n` tweets of a split of tests/data (lines and labels) into `dir`.
fn tweet_subset(dir: &Path, split: &str, n: usize) {
    let data = common::repo_root().join("tests/data");
    let lines = lethe::data::read_lines(&data.join(format!("tweets_{split}.txt"))).unwrap();
    std::fs::write(
        dir.join(format!("tweets_{split}.txt")),
        lines[..n].join("\n") + "\n",
    )
    .unwrap();
    let name = format!("tweets_{split}_labels.npy");
    let labels = Array1::<u8>::read_npy(std::fs::File::open(data.join(&name)).unwrap()).unwrap();
    labels
        .slice(ndarray::s![..n])
        .to_owned()
        .write_npy(std::fs::File::create(dir.join(name)).unwrap())
        .unwrap();
}

#[test]
fn text_demo_forgets_exactly() {
    let tmp = common::temp_dir();
    tweet_subset(tmp.path(), "train", 120);
    tweet_subset(tmp.path(), "test", 40);
    let out = lethe(&["demo", "--bundle", BUNDLE, "--data", s(tmp.path())]);
    assert!(out.contains("120 user tweets and 40 test tweets"), "{out}");
    assert!(out.contains("forget class positive"), "{out}");
    let weights = numbers_after(&out, "max |W − W_retrained| =");
    assert_eq!(weights, [0.0, 0.0], "{out}");
    // No core logits: after forget-all the head predicts exactly 0, the core's (absent) logits.
    let core = numbers_after(&out, "max |head logits − core logits| =");
    assert_eq!(core, [0.0], "{out}");
    assert!(
        !out.contains("differs") && !out.contains("DIFFER"),
        "the demo reports a difference:\n{out}"
    );
}
