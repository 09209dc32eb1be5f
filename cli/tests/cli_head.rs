//! The head through the CLI on real MNIST, checked against scikit-learn Ridge (DESIGN.md's
//! reference for exactness) and against `lethe verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array1, Array4};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use support::{lethe, lethe_fails};

fn root() -> PathBuf {
    common::repo_root()
}

fn python() -> PathBuf {
    root().join(".lethe/venv/bin/python")
}

fn write<A: WriteNpyExt>(path: &Path, a: &A) {
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

/// The first `n` user digits as mnist-core inputs (pixel / 256), their labels and ids.
fn digits(dir: &Path, n: usize) -> (PathBuf, PathBuf, Vec<u64>) {
    let data = root().join("tests/data");
    let images = ndarray::Array3::<u8>::read_npy(
        std::fs::File::open(data.join("train_images.npy")).unwrap(),
    )
    .unwrap();
    let labels =
        Array1::<u8>::read_npy(std::fs::File::open(data.join("train_labels.npy")).unwrap())
            .unwrap();
    let x = Array4::from_shape_fn((n, 1, 28, 28), |(i, _, r, c)| {
        images[(i, r, c)] as f32 / 256.0
    });
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    write(&xp, &x);
    write(&yp, &labels.slice(ndarray::s![..n]).to_owned());
    // Arbitrary, non-contiguous ids.
    let ids = (0..n as u64).map(|i| i * 7919 + 13).collect();
    (xp, yp, ids)
}

fn ids_file(dir: &Path, name: &str, ids: &[u64]) -> PathBuf {
    let p = dir.join(name);
    write(&p, &Array1::from(ids.to_vec()));
    p
}

fn check_against_sklearn(features: Option<&str>, n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = dir.join("state");
    let state_s = state.to_str().unwrap();
    let (x, y, ids) = digits(dir, n);
    let mut head_args = vec!["--state", state_s];
    if let Some(f) = features {
        head_args.extend(["--features", f]);
    }

    // Learn the first 70 %, forget every 9th of them, learn the rest, forget every 11th.
    let first = n * 7 / 10;
    let first_x = dir.join("x1.npy");
    let first_y = dir.join("y1.npy");
    let xs = ndarray::Array4::<f32>::read_npy(std::fs::File::open(&x).unwrap()).unwrap();
    let ys = Array1::<u8>::read_npy(std::fs::File::open(&y).unwrap()).unwrap();
    write(
        &first_x,
        &xs.slice(ndarray::s![..first, .., .., ..]).to_owned(),
    );
    write(&first_y, &ys.slice(ndarray::s![..first]).to_owned());
    let first_ids = ids_file(dir, "ids1.npy", &ids[..first]);
    let mut learn = vec!["learn"];
    learn.extend(&head_args);
    let (fx, fy, fi) = (
        first_x.to_str().unwrap(),
        first_y.to_str().unwrap(),
        first_ids.to_str().unwrap(),
    );
    learn.extend(["--input", fx, "--labels", fy, "--ids", fi]);
    lethe(&learn);

    let forget1: Vec<u64> = (0..first).step_by(9).map(|i| ids[i]).collect();
    let list: Vec<String> = forget1.iter().map(|i| i.to_string()).collect();
    lethe(&["forget", "--state", state_s, "--ids", &list.join(",")]);

    let rest_x = dir.join("x2.npy");
    let rest_y = dir.join("y2.npy");
    write(
        &rest_x,
        &xs.slice(ndarray::s![first.., .., .., ..]).to_owned(),
    );
    write(&rest_y, &ys.slice(ndarray::s![first..]).to_owned());
    let rest_ids = ids_file(dir, "ids2.npy", &ids[first..]);
    lethe(&[
        "learn",
        "--state",
        state_s,
        "--input",
        rest_x.to_str().unwrap(),
        "--labels",
        rest_y.to_str().unwrap(),
        "--ids",
        rest_ids.to_str().unwrap(),
    ]);
    let forget2: Vec<u64> = (first..n).step_by(11).map(|i| ids[i]).collect();
    let forget2_file = dir.join("forget2.txt");
    std::fs::write(
        &forget2_file,
        forget2.iter().map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    lethe(&[
        "forget",
        "--state",
        state_s,
        "--ids-file",
        forget2_file.to_str().unwrap(),
    ]);

    let keep: Vec<i64> = (0..n)
        .filter(|&i| !forget1.contains(&ids[i]) && !forget2.contains(&ids[i]))
        .map(|i| i as i64)
        .collect();
    let info = lethe(&["info", "--state", state_s]);
    assert!(
        info.contains(&format!("samples     {}", keep.len())),
        "{info}"
    );
    let verify = lethe(&["verify", "--state", state_s]);
    assert!(verify.contains("bit-identical"), "{verify}");

    // The reference's inputs come from `lethe features`.
    let w = dir.join("w.npz");
    lethe(&["weights", "--state", state_s, "--out", w.to_str().unwrap()]);
    let f = dir.join("f.npy");
    let z = dir.join("z.npy");
    let mut feat = vec![
        "features",
        "--input",
        x.to_str().unwrap(),
        "--out",
        f.to_str().unwrap(),
    ];
    if let Some(name) = features {
        feat.extend(["--features", name]);
    }
    lethe(&feat);
    lethe(&[
        "features",
        "--input",
        x.to_str().unwrap(),
        "--out",
        z.to_str().unwrap(),
        "--features",
        "logits",
    ]);
    let keep_file = dir.join("keep.npy");
    write(&keep_file, &Array1::from(keep));
    let out = Command::new(python())
        .arg(root().join("tests/py/ridge_reference.py"))
        .args([
            "--features",
            f.to_str().unwrap(),
            "--logits",
            z.to_str().unwrap(),
        ])
        .args([
            "--labels",
            y.to_str().unwrap(),
            "--keep",
            keep_file.to_str().unwrap(),
        ])
        .args([
            "--weights",
            w.to_str().unwrap(),
            "--bundle",
            "models/mnist-core",
        ])
        .current_dir(root())
        .output()
        .expect("run python (scripts/setup.sh makes .lethe/venv)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "scikit-learn disagrees:\n{text}");
    assert!(text.contains("relative difference"), "{text}");
}

#[test]
fn weights_equal_sklearn_ridge_after_learn_and_forget_at_d128() {
    check_against_sklearn(None, 1000);
}

#[test]
fn weights_equal_sklearn_ridge_after_learn_and_forget_at_d3136() {
    check_against_sklearn(Some("conv_features"), 300);
}

#[test]
fn cli_errors_are_clear_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state = dir.join("state");
    let s = state.to_str().unwrap();
    let (x, y, ids) = digits(dir, 20);
    let idf = ids_file(dir, "ids.npy", &ids);
    let (xs, ys, is) = (
        x.to_str().unwrap(),
        y.to_str().unwrap(),
        idf.to_str().unwrap(),
    );
    lethe(&[
        "learn", "--state", s, "--input", xs, "--labels", ys, "--ids", is,
    ]);
    // Learning the same ids again, forgetting unknown ids: errors, nothing changes.
    let err = lethe_fails(&[
        "learn", "--state", s, "--input", xs, "--labels", ys, "--ids", is,
    ]);
    assert!(err.contains("already learned"), "{err}");
    let err = lethe_fails(&[
        "forget",
        "--state",
        s,
        "--ids",
        &format!("{},424242", ids[0]),
    ]);
    assert!(err.contains("not learned"), "{err}");
    assert!(lethe(&["info", "--state", s]).contains("samples     20"));
    // The wrong bundle for the state dir.
    let err = lethe_fails(&[
        "info",
        "--state",
        s,
        "--bundle",
        "models/mobilenetv2-imagenet",
    ]);
    assert!(err.contains("belongs to bundle"), "{err}");
    // Asking for another features output than the state dir was created with.
    let err = lethe_fails(&["info", "--state", s, "--features", "conv_features"]);
    assert!(err.contains("was created with features"), "{err}");
    // Predictions through the CLI, then forget-all gives back the core's logits.
    let logits = dir.join("l.npy");
    lethe(&[
        "predict",
        "--state",
        s,
        "--input",
        xs,
        "--out",
        logits.to_str().unwrap(),
    ]);
    lethe(&["forget-all", "--state", s]);
    lethe(&[
        "predict",
        "--state",
        s,
        "--input",
        xs,
        "--out",
        logits.to_str().unwrap(),
    ]);
    let z = dir.join("z.npy");
    lethe(&[
        "features",
        "--input",
        xs,
        "--out",
        z.to_str().unwrap(),
        "--features",
        "logits",
    ]);
    let got = ndarray::Array2::<f32>::read_npy(std::fs::File::open(&logits).unwrap()).unwrap();
    let core = ndarray::Array2::<f32>::read_npy(std::fs::File::open(&z).unwrap()).unwrap();
    assert_eq!(got.slice(ndarray::s![.., ..5]), core);
    assert!(got.slice(ndarray::s![.., 5..]).iter().all(|&v| v == 0.0));
    assert!(lethe(&["info", "--state", s]).contains("samples     0"));
}
