//! Image files through the CLI (`--image`): `lethe features` on real PNG photos equals Python
//! ONNX Runtime on Pillow's preprocessing of them; a head learned from image files predicts
//! exactly what it predicts from Pillow's preprocessed arrays; files and bundles that cannot be
//! used are refused before a state dir is created.

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array1, Array3, Array4, Axis};
use ndarray_npy::{read_npy, write_npy};

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use support::{lethe, lethe_fails};

const BUNDLE: &str = "models/mobilenetv2-imagenet";
const PNGS: [&str; 3] = ["photo_china.png", "photo_china_rgba.png", "digit_7.png"];
/// Rust vs Python ONNX Runtime: max abs difference / max abs reference value.
const PARITY_REL_TOL: f64 = 1e-5;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn data(name: &str) -> PathBuf {
    common::repo_root().join("tests/data").join(name)
}

/// Pillow's preprocessed inputs `[n, 3, 224, 224]` of `files`, and the core's features on them
/// (Python ONNX Runtime), written into `dir`.
fn reference(dir: &Path, files: &[PathBuf]) -> (PathBuf, PathBuf) {
    let out = Command::new(common::python())
        .arg(common::repo_root().join("tests/py/image_reference.py"))
        .args(["--bundle", BUNDLE, "--features", "features", "--out-dir"])
        .arg(dir)
        .args(files)
        .current_dir(common::repo_root())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inputs: Vec<Array3<f32>> = (0..files.len())
        .map(|i| read_npy(dir.join(format!("input_{i}.npy"))).unwrap())
        .collect();
    let views: Vec<_> = inputs.iter().map(|a| a.view()).collect();
    let stacked: Array4<f32> = ndarray::stack(Axis(0), &views).unwrap();
    let path = dir.join("inputs.npy");
    write_npy(&path, &stacked).unwrap();
    (path, dir.join("features.npy"))
}

#[test]
fn image_files_learn_and_predict_as_pillows_arrays_do() {
    let dir = common::temp_dir();
    let dir = dir.path();
    let files: Vec<PathBuf> = PNGS.iter().map(|f| data(f)).collect();
    let (inputs, features) = reference(dir, &files);

    let mut args = vec!["features", "--bundle", BUNDLE, "--image"];
    args.extend(files.iter().map(|p| s(p)));
    let ours = dir.join("f.npy");
    args.extend(["--out", s(&ours)]);
    lethe(&args);
    let rel = common::max_rel_diff(
        common::read_npy_2d(&ours).view(),
        common::read_npy_2d(&features).view(),
    );
    assert!(rel <= PARITY_REL_TOL, "features vs Python: {rel:e}");

    let (y, ids) = (dir.join("y.npy"), dir.join("ids.npy"));
    write_npy(&y, &Array1::from(vec![3u8, 5, 7])).unwrap();
    write_npy(&ids, &Array1::from(vec![10u64, 11, 12])).unwrap();
    let state = dir.join("state");
    let mut learn = vec!["learn", "--state", s(&state), "--bundle", BUNDLE];
    learn.extend(["--labels", s(&y), "--ids", s(&ids), "--image"]);
    learn.extend(files.iter().map(|p| s(p)));
    lethe(&learn);

    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    let mut predict = vec!["predict", "--state", s(&state), "--out", s(&a), "--image"];
    predict.extend(files.iter().map(|p| s(p)));
    lethe(&predict);
    lethe(&[
        "predict",
        "--state",
        s(&state),
        "--out",
        s(&b),
        "--input",
        s(&inputs),
    ]);
    assert_eq!(
        common::read_npy_2d(&a),
        common::read_npy_2d(&b),
        "logits from image files and from Pillow's arrays differ"
    );
}

#[test]
fn unusable_images_and_bundles_are_refused_before_a_state_dir_exists() {
    let dir = common::temp_dir();
    let dir = dir.path();
    let (y, ids) = (dir.join("y.npy"), dir.join("ids.npy"));
    write_npy(&y, &Array1::from(vec![1u8])).unwrap();
    write_npy(&ids, &Array1::from(vec![1u64])).unwrap();
    let state = dir.join("state");
    let learn = |bundle: &str, image: &Path| {
        let err = lethe_fails(&[
            "learn",
            "--state",
            s(&state),
            "--bundle",
            bundle,
            "--labels",
            s(&y),
            "--ids",
            s(&ids),
            "--image",
            s(image),
        ]);
        assert!(!state.exists(), "a failed learn left {}", state.display());
        err
    };
    let err = learn("models/mnist-core", &data("digit_7.png"));
    assert!(err.contains("does not take image files"), "{err}");
    let missing = dir.join("missing.png");
    let err = learn(BUNDLE, &missing);
    assert!(err.contains(s(&missing)), "{err}");
    let not_an_image = dir.join("notes.png");
    std::fs::write(&not_an_image, "not a picture").unwrap();
    let err = learn(BUNDLE, &not_an_image);
    assert!(
        err.contains(s(&not_an_image)) && err.contains("not a PNG or JPEG"),
        "{err}"
    );
    let err = lethe_fails(&[
        "features",
        "--bundle",
        BUNDLE,
        "--image",
        s(&data("digit_7.png")),
        "--input",
        s(&y),
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
}
