//! State dirs through the `lethe` binary: only a successful learn creates one, every other
//! command refuses a missing or non-Lethe dir (creating nothing), a state dir records its
//! bundle, which is used when `--bundle` is not given, and receipts check forgets.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::Array1;

/// `lethe ARGS` run in `cwd`.
fn lethe_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the lethe binary")
}

fn lethe_ok(args: &[&str]) -> String {
    let out = lethe_in(&common::repo_root(), args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lethe {args:?} failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Runs in `cwd`, asserts a clean failure (exit status 1), returns stderr.
fn lethe_fails_in(cwd: &Path, args: &[&str]) -> String {
    let out = lethe_in(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "lethe {args:?} should fail with status 1:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn lethe_fails(args: &[&str]) -> String {
    lethe_fails_in(&common::repo_root(), args)
}

/// Learn inputs for mnist-core in `dir`: (inputs, labels, ids) of `n` test digits.
struct Inputs {
    x: PathBuf,
    y: PathBuf,
    ids: PathBuf,
}

fn inputs(dir: &Path, n: usize) -> Inputs {
    let x = dir.join("x.npy");
    common::write_npy(&x, &common::mnist_core_input(n));
    let y = dir.join("y.npy");
    common::write_npy(&y, &Array1::from_iter((0..n as i64).map(|i| i % 10)));
    let ids = dir.join("ids.npy");
    common::write_npy(&ids, &Array1::from_iter(0..n as i64));
    Inputs { x, y, ids }
}

impl Inputs {
    /// `lethe learn --state STATE` of these inputs, then `extra`; asserts success.
    fn learn(&self, state: &Path, extra: &[&str]) {
        let mut args = vec![
            "learn",
            "--state",
            s(state),
            "--input",
            s(&self.x),
            "--labels",
            s(&self.y),
            "--ids",
            s(&self.ids),
        ];
        args.extend(extra);
        lethe_ok(&args);
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// The names in a dir, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every command but learn, on `state`.
fn non_learn_commands<'a>(state: &'a str, x: &'a str, out: &'a str) -> Vec<Vec<&'a str>> {
    vec![
        vec!["info", "--state", state],
        vec!["verify", "--state", state],
        vec!["weights", "--state", state, "--out", out],
        vec!["predict", "--state", state, "--input", x],
        vec!["forget", "--state", state, "--ids", "1,2"],
        vec!["forget-all", "--state", state],
    ]
}

#[test]
fn commands_other_than_learn_refuse_a_missing_or_foreign_dir_and_create_nothing() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let inp = inputs(dir, 20);
    let real = dir.join("real");
    inp.learn(&real, &[]);
    let typo = dir.join("typo").join("state");
    let foreign = dir.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "not a state dir").unwrap();
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = dir.join("w.npz");
    for state in [&typo, &foreign, &empty] {
        for args in non_learn_commands(s(state), s(&inp.x), s(&out)) {
            // With the bundle named and without: neither may create a state dir.
            for bundle in [None, Some("models/mnist-core")] {
                let mut args = args.clone();
                if let Some(bundle) = bundle {
                    args.extend(["--bundle", bundle]);
                }
                let err = lethe_fails(&args);
                assert!(err.contains("not a state dir"), "{args:?}: {err}");
            }
        }
    }
    assert!(
        !dir.join("typo").exists(),
        "a refused command created a dir"
    );
    assert_eq!(listing(&foreign), ["notes.txt"]);
    assert!(listing(&empty).is_empty(), "{:?}", listing(&empty));
    assert!(!out.exists());
    // The real state dir next to the typo kept its samples.
    let info = lethe_ok(&["info", "--state", s(&real)]);
    assert!(info.contains("samples     20"), "{info}");
}

#[test]
fn a_refused_learn_leaves_no_state_dir_behind() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let inp = inputs(dir, 20);
    let bad_labels = dir.join("bad_labels.npy");
    common::write_npy(&bad_labels, &Array1::from_elem(20, 10i64));
    let few_ids = dir.join("few_ids.npy");
    common::write_npy(&few_ids, &Array1::from_iter(0..19i64));
    let not_npy = dir.join("not.npy");
    std::fs::write(&not_npy, "not an array").unwrap();
    // The wrong number of values per sample for mnist-core (1 × 28 × 28).
    let wrong_shape = dir.join("wrong_shape.npy");
    common::write_npy(&wrong_shape, &ndarray::Array2::<f32>::zeros((20, 100)));
    // Found only once the core runs, after the state dir is opened.
    let nan = dir.join("nan.npy");
    let mut x = common::mnist_core_input(20);
    x[[3, 0, 5, 5]] = f32::NAN;
    common::write_npy(&nan, &x);

    let (xs, ys, is) = (s(&inp.x), s(&inp.y), s(&inp.ids));
    let cases: [(&str, [&str; 3]); 5] = [
        ("labels out of range", [xs, s(&bad_labels), is]),
        ("fewer ids than inputs", [xs, ys, s(&few_ids)]),
        ("not a .npy", [s(&not_npy), ys, is]),
        ("wrong shape", [s(&wrong_shape), ys, is]),
        ("a NaN input", [s(&nan), ys, is]),
    ];
    let new = dir.join("new").join("state");
    let existing = dir.join("existing");
    std::fs::create_dir(&existing).unwrap();
    for (what, [x, y, ids]) in cases {
        for state in [&new, &existing] {
            let args = [
                "learn",
                "--state",
                s(state),
                "--input",
                x,
                "--labels",
                y,
                "--ids",
                ids,
            ];
            lethe_fails(&args);
            assert!(!dir.join("new").exists(), "{what}: a new dir was left");
            assert!(
                listing(&existing).is_empty(),
                "{what}: left {:?} in an existing empty dir",
                listing(&existing)
            );
        }
    }
    // The same learn with good inputs creates the state dir.
    inp.learn(&new, &[]);
    assert!(lethe_ok(&["info", "--state", s(&new)]).contains("samples     20"));
}

/// Two learns that create the same state dir at once: the one that waits for the other's lock
/// fails cleanly, and a learn that fails (here: of ids the other learned first) never removes
/// what the other made. So every learn that succeeded is in the state dir afterwards, and at
/// least one succeeds. Racing processes, repeated: every interleaving must keep this.
#[test]
fn learns_racing_to_create_a_state_dir_keep_whatever_succeeded() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let inp = inputs(dir, 10);
    let learn = |state: &Path| {
        Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["learn", "--state", s(state), "--input", s(&inp.x)])
            .args(["--labels", s(&inp.y), "--ids", s(&inp.ids)])
            .current_dir(common::repo_root())
            .output()
            .expect("run the lethe binary")
    };
    for round in 0..12 {
        let state = dir.join(format!("race{round}"));
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| learn(&state));
            let b = scope.spawn(|| learn(&state));
            (a.join().unwrap(), b.join().unwrap())
        });
        let ok: Vec<bool> = [&a, &b].iter().map(|o| o.status.success()).collect();
        let why = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            ok.contains(&true),
            "round {round}: both learns failed:\n{}\n{}",
            why(&a),
            why(&b)
        );
        let info = lethe_ok(&["info", "--state", s(&state)]);
        assert!(info.contains("samples     10"), "round {round}: {info}");
    }
}

#[test]
fn a_state_dir_records_its_bundle() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let inp = inputs(dir, 12);
    let state = dir.join("state");
    inp.learn(&state, &["--bundle", "models/mnist-core"]);
    // Without --bundle: models/mnist-core, as the state dir records.
    let info = lethe_ok(&["info", "--state", s(&state)]);
    assert!(info.contains("bundle      mnist-core"), "{info}");
    lethe_ok(&["forget", "--state", s(&state), "--ids", "3"]);
    assert!(lethe_ok(&["info", "--state", s(&state)]).contains("samples     11"));

    // Run from a folder without models/: the recorded bundle is not found.
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let err = lethe_fails_in(&elsewhere, &["info", "--state", s(&state)]);
    assert!(
        err.contains("models/mnist-core") && err.contains("pass --bundle"),
        "{err}"
    );

    // A models/mnist-core whose core is another one (mobilenetv2-imagenet's, renamed).
    let impostor = elsewhere.join("models").join("mnist-core");
    std::fs::create_dir_all(&impostor).unwrap();
    let source = common::bundle_dir("mobilenetv2-imagenet");
    std::fs::copy(source.join("core.onnx"), impostor.join("core.onnx")).unwrap();
    let manifest = std::fs::read_to_string(source.join("manifest.json")).unwrap();
    let renamed = manifest.replace(
        "\"name\": \"mobilenetv2-imagenet\"",
        "\"name\": \"mnist-core\"",
    );
    assert_ne!(renamed, manifest, "the manifest's name field moved");
    std::fs::write(impostor.join("manifest.json"), renamed).unwrap();
    let err = lethe_fails_in(&elsewhere, &["forget-all", "--state", s(&state)]);
    assert!(
        err.contains("sha256") && err.contains("pass --bundle"),
        "{err}"
    );
    assert!(lethe_ok(&["info", "--state", s(&state)]).contains("samples     11"));

    // A state dir whose meta.json is a symlink is not followed.
    let meta = state.join("meta.json");
    let moved = dir.join("meta.json");
    std::fs::rename(&meta, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &meta).unwrap();
    let err = lethe_fails(&["info", "--state", s(&state)]);
    assert!(err.contains("symlink"), "{err}");
}

#[test]
fn erase_removes_a_state_dir_that_cannot_be_opened() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let inp = inputs(dir, 6);
    let state = dir.join("state");
    inp.learn(&state, &[]);
    let buckets: Vec<String> = listing(&state)
        .into_iter()
        .filter(|name| name.starts_with("samples-"))
        .collect();
    assert!(!buckets.is_empty(), "the learn stored its samples");
    // A damaged meta.json: the state dir no longer opens, but erase needs no parsing.
    std::fs::write(state.join("meta.json"), "{").unwrap();
    lethe_fails(&["info", "--state", s(&state)]);
    let out = lethe_in(&common::repo_root(), &["erase", "--state", s(&state)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for bucket in &buckets {
        assert!(
            stderr.contains(&format!("scrubbed and removed {bucket}")),
            "{stderr}"
        );
    }
    assert!(!state.exists(), "the state dir is gone: {stderr}");
    // Erasing what is not there is not an error; a foreign file next to Lethe's stays.
    lethe_ok(&["erase", "--state", s(&state)]);
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("notes.txt"), "mine").unwrap();
    // A dir that does not look like a state dir is refused, and nothing in it is touched.
    let refused = lethe_fails(&["erase", "--state", s(&state)]);
    assert!(refused.contains("not"), "{refused}");
    assert_eq!(listing(&state), ["notes.txt"]);
    assert_eq!(std::fs::read(state.join("notes.txt")).unwrap(), b"mine");
}

/// G8 from the command line: `--receipt` after learn, forget and forget-all, and `lethe receipt
/// verify` accepts the retained samples and refuses them with one sample changed, missing or
/// added, or with a "forgotten" id that was retained.
#[test]
fn a_forget_receipt_verifies_against_the_retained_samples_only() {
    use ndarray::Axis;
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let n = 30;
    let inp = inputs(dir, n);
    let state = dir.join("state");
    let learned = dir.join("learned.json");
    inp.learn(&state, &["--receipt", s(&learned)]);
    let forgotten = [3usize, 7, 11, 29];
    let receipt = dir.join("forget.json");
    lethe_ok(&[
        "forget",
        "--state",
        s(&state),
        "--ids",
        "3,7,11,29",
        "--receipt",
        s(&receipt),
    ]);
    let text = std::fs::read_to_string(&receipt).unwrap();
    assert!(text.contains("\"operation\": \"forget\""), "{text}");
    assert!(text.contains("\"samples\": 26"), "{text}");

    // The retained samples as .npy files (`label` changes one label, `rows` picks them).
    let write_set = |name: &str, rows: &[usize], label: Option<(usize, i64)>| -> [PathBuf; 3] {
        let x = dir.join(format!("{name}-x.npy"));
        common::write_npy(&x, &common::mnist_core_input(n).select(Axis(0), rows));
        let mut labels: Array1<i64> = rows.iter().map(|&i| i as i64 % 10).collect();
        if let Some((at, value)) = label {
            labels[at] = value;
        }
        let y = dir.join(format!("{name}-y.npy"));
        common::write_npy(&y, &labels);
        let ids = dir.join(format!("{name}-ids.npy"));
        common::write_npy(
            &ids,
            &rows.iter().map(|&i| i as i64).collect::<Array1<i64>>(),
        );
        [x, y, ids]
    };
    let verify = |receipt: &Path, set: &[PathBuf; 3], forgotten: &str| -> Vec<String> {
        let mut args = vec![
            "receipt".to_string(),
            "verify".into(),
            "--bundle".into(),
            "models/mnist-core".into(),
            "--receipt".into(),
            s(receipt).into(),
            "--input".into(),
            s(&set[0]).into(),
            "--labels".into(),
            s(&set[1]).into(),
            "--ids".into(),
            s(&set[2]).into(),
        ];
        if !forgotten.is_empty() {
            args.extend(["--forgotten".into(), forgotten.into()]);
        }
        args
    };
    let run_ok = |args: Vec<String>| lethe_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run_fails =
        |args: Vec<String>| lethe_fails(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let rest: Vec<usize> = (0..n).filter(|i| !forgotten.contains(i)).collect();
    let retained = write_set("retained", &rest, None);
    let out = run_ok(verify(&receipt, &retained, "3,7,11,29"));
    assert!(
        out.contains("verified") && out.contains("4 forgotten ids are absent"),
        "{out}"
    );
    let all = write_set("all", &(0..n).collect::<Vec<_>>(), None);
    run_ok(verify(&learned, &all, ""));

    let changed = write_set("changed", &rest, Some((5, 9)));
    let err = run_fails(verify(&receipt, &changed, ""));
    assert!(err.contains("a sample's inputs or label differ"), "{err}");
    let missing = write_set("missing", &rest[1..], None);
    let err = run_fails(verify(&receipt, &missing, ""));
    assert!(err.contains("are not the 26 ids"), "{err}");
    let err = run_fails(verify(&receipt, &all, ""));
    assert!(err.contains("are not the 26 ids"), "{err}");
    let err = run_fails(verify(&receipt, &retained, "4"));
    assert!(
        err.contains("forgotten id 4 is among the retained ids"),
        "{err}"
    );

    // A receipt that cannot be written does not undo the forget, and the error says so.
    let err = lethe_fails(&[
        "forget",
        "--state",
        s(&state),
        "--ids",
        "0",
        "--receipt",
        s(&dir.join("no-such-dir").join("r.json")),
    ]);
    assert!(err.contains("the forget is done and durable"), "{err}");
    assert!(lethe_ok(&["info", "--state", s(&state)]).contains("samples     25"));

    let cleared = dir.join("forget-all.json");
    lethe_ok(&["forget-all", "--state", s(&state), "--receipt", s(&cleared)]);
    let text = std::fs::read_to_string(&cleared).unwrap();
    assert!(text.contains("\"samples\": 0"), "{text}");
}

/// An ids file or a key file is read only as far as it can be valid: a device that never ends
/// (or a file that is too long for a key) is refused at once, not read into memory.
#[test]
fn an_ids_or_key_file_is_read_only_as_far_as_it_can_be_valid() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let inp = inputs(dir, 6);
    let state = dir.join("state");
    inp.learn(&state, &[]);
    let ids = dir.join("ids.txt");
    std::fs::write(&ids, "1, 2\n3 ").unwrap();
    let state = s(&state);
    for bad in ["/dev/zero", "/dev/urandom"] {
        let m = lethe_fails(&["forget", "--state", state, "--ids-file", bad]);
        assert!(m.contains("is not an id"), "{bad}: {m}");
    }
    let long = dir.join("long-key");
    std::fs::write(&long, [7u8; 33]).unwrap();
    for bad in ["/dev/zero", s(&long)] {
        let m = lethe_fails(&["info", "--state", state, "--key-file", bad]);
        assert!(m.contains("longer than a key"), "{bad}: {m}");
    }
    lethe_ok(&["forget", "--state", state, "--ids-file", s(&ids)]);
    assert!(lethe_ok(&["info", "--state", state]).contains("samples     3"));
}

/// `--key-file` creates an encrypted state dir, which then needs exactly its key; `lethe
/// rekey` moves it to a new key, after which the old one is refused.
#[test]
fn a_key_file_encrypts_the_state_dir_and_rekey_replaces_the_key() {
    let tmp = common::temp_dir();
    let dir = tmp.path();
    let inp = inputs(dir, 6);
    let (key, new_key, short) = (dir.join("key"), dir.join("new-key"), dir.join("short"));
    std::fs::write(&key, [0x33; 32]).unwrap();
    std::fs::write(&new_key, [0x44; 32]).unwrap();
    std::fs::write(&short, [0x55; 31]).unwrap();
    let state = dir.join("state");
    inp.learn(&state, &["--key-file", s(&key)]);
    let info = |extra: &[&str]| -> Vec<String> {
        ["info", "--state", s(&state)]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    let run_ok = |args: Vec<String>| lethe_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let run_fails =
        |args: Vec<String>| lethe_fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run_fails(info(&[])).contains("encrypted"));
    assert!(run_fails(info(&["--key-file", s(&short)])).contains("32 bytes"));
    assert!(run_fails(info(&["--key-file", s(&new_key)])).contains("does not open"));
    assert!(run_ok(info(&["--key-file", s(&key)])).contains("samples     6"));
    lethe_ok(&[
        "rekey",
        "--state",
        s(&state),
        "--key-file",
        s(&key),
        "--new-key-file",
        s(&new_key),
    ]);
    assert!(run_fails(info(&["--key-file", s(&key)])).contains("does not open"));
    assert!(run_ok(info(&["--key-file", s(&new_key)])).contains("samples     6"));
    // A state dir without a key refuses one, and has nothing to rekey.
    let plain = dir.join("plain");
    inp.learn(&plain, &[]);
    let err = lethe_fails(&["info", "--state", s(&plain), "--key-file", s(&key)]);
    assert!(err.contains("not encrypted"), "{err}");
}
