//! The core run by Lethe (Rust, ort) agrees with Python ONNX Runtime on real digits, for both
//! bundles and every output; batch size does not change a sample's outputs; bad input gets a
//! clear error (G5).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use lethe::{Core, CoreOptions};
use ndarray::{s, Array2, Array4};

/// Rust vs Python ONNX Runtime, per output: max abs difference / max abs reference value.
const PARITY_REL_TOL: f64 = 1e-5;
/// A sample run alone vs inside a batch (kernels may differ with the batch size).
const BATCH_REL_TOL: f64 = 1e-5;

const MNIST_SAMPLES: usize = 64;
const MOBILENET_SAMPLES: usize = 8;

/// ImageNet channel statistics from mobilenetv2-imagenet's manifest `preprocessing`.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// 28 × 8 = 224: each MNIST pixel becomes an 8 × 8 block.
const UPSCALE: usize = 8;

fn open(bundle: &str) -> Core {
    Core::open(common::bundle_dir(bundle), &CoreOptions::default())
        .unwrap_or_else(|e| panic!("open {bundle}: {e}"))
}

/// MNIST test digits preprocessed as the mobilenetv2-imagenet manifest says for 28×28 digits:
/// repeat each pixel 8×8, gray into R, G and B, p / 255, then (v − mean) / std per channel.
fn mobilenet_input(n: usize) -> Array4<f32> {
    let digits = common::test_digits(n);
    let side = 28 * UPSCALE;
    Array4::from_shape_fn((n, 3, side, side), |(i, c, y, x)| {
        let v = f32::from(digits[[i, y / UPSCALE, x / UPSCALE]]) / 255.0;
        (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    })
}

/// Every graph output of `tests/py/ort_reference.py` on `input`, by name.
fn python_reference(bundle: &Path, input: &Array4<f32>) -> BTreeMap<String, Array2<f32>> {
    let dir = common::temp_dir();
    let input_path = dir.path().join("input.npy");
    common::write_npy(&input_path, input);
    let out_dir = dir.path().join("out");
    let output = Command::new(common::python())
        .arg(common::repo_root().join("tests/py/ort_reference.py"))
        .arg("--bundle")
        .arg(bundle)
        .arg("--input")
        .arg(&input_path)
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .expect("run tests/py/ort_reference.py");
    assert!(
        output.status.success(),
        "ort_reference.py failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, common::read_npy_2d(&path))
        })
        .collect()
}

/// Runs `bundle` on `input` in Rust and in Python and compares every output in `names`, which
/// must be all of the graph's outputs; then compares each sample run alone with the batch.
fn check_parity(bundle: &str, input: &Array4<f32>, names: &[&str]) {
    let core = open(bundle);
    let n = input.shape()[0];
    let flat = input.as_slice().expect("standard layout");
    let rust = core.run(flat, n, names).expect("Core::run");
    let reference = python_reference(&common::bundle_dir(bundle), input);

    let mut graph_outputs: Vec<&str> = reference.keys().map(String::as_str).collect();
    let mut checked = names.to_vec();
    graph_outputs.sort_unstable();
    checked.sort_unstable();
    assert_eq!(
        checked, graph_outputs,
        "{bundle}: compare every graph output"
    );

    for &name in names {
        let ours = rust.get(name).expect("requested output");
        let rel = common::max_rel_diff(ours.view(), reference[name].view());
        assert!(
            rel <= PARITY_REL_TOL,
            "{bundle} {name}: Rust vs Python relative difference {rel:e} > {PARITY_REL_TOL:e}"
        );
        // The outputs must tell the samples apart, or the comparison proves little.
        assert_ne!(
            ours.row(0),
            ours.row(1),
            "{bundle} {name}: rows 0 and 1 equal"
        );
    }

    let per = core.input_len();
    for i in 0..n {
        let alone = core
            .run(&flat[i * per..(i + 1) * per], 1, names)
            .expect("Core::run, batch 1");
        for &name in names {
            let batch_row = rust.get(name).unwrap().slice(s![i..i + 1, ..]);
            let rel = common::max_rel_diff(alone.get(name).unwrap().view(), batch_row);
            assert!(
                rel <= BATCH_REL_TOL,
                "{bundle} {name}: sample {i} alone vs in a batch of {n}: {rel:e} > {BATCH_REL_TOL:e}"
            );
        }
    }
}

#[test]
fn mnist_core_matches_python_onnxruntime() {
    check_parity(
        "mnist-core",
        &common::mnist_core_input(MNIST_SAMPLES),
        &["features", "conv_features", "logits"],
    );
}

#[test]
fn mobilenetv2_matches_python_onnxruntime() {
    check_parity(
        "mobilenetv2-imagenet",
        &mobilenet_input(MOBILENET_SAMPLES),
        &["features"],
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let core = open("mnist-core");
    let per = core.input_len();
    let names = ["features", "logits"];
    let good = common::mnist_core_input(3).into_raw_vec_and_offset().0;
    assert_eq!(good.len(), 3 * per);
    core.run(&good, 3, &names).expect("valid input runs");

    let message = common::invalid_input(core.run(&good[..2 * per + 1], 2, &names), "n × len + 1");
    assert!(message.contains(&(2 * per).to_string()), "{message}");
    common::invalid_input(core.run(&good[..2 * per], 3, &names), "too few values");
    common::invalid_input(core.run(&good, 2, &names), "too many values");
    common::invalid_input(core.run(&good, 0, &names), "n = 0 with values");
    common::invalid_input(core.run(&[], usize::MAX, &names), "n × len overflows");

    for (bad, shown) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let mut x = good.clone();
        x[per + 100] = bad;
        let message = common::invalid_input(core.run(&x, 3, &names), shown);
        assert!(
            message.contains(shown) && message.contains("sample 1"),
            "{shown}: the message should name the value and the sample: {message}"
        );
    }
}

#[test]
fn zero_samples_give_empty_outputs() {
    let core = open("mnist-core");
    let out = core
        .run(&[], 0, &["features", "conv_features", "logits"])
        .expect("n = 0 runs");
    assert_eq!(out.get("features").unwrap().shape(), &[0, 128]);
    assert_eq!(out.get("conv_features").unwrap().shape(), &[0, 3136]);
    assert_eq!(out.get("logits").unwrap().shape(), &[0, 5]);
    assert!(out.get("image").is_none());
}

#[test]
fn unknown_output_names_are_errors() {
    let core = open("mnist-core");
    let x = common::mnist_core_input(1).into_raw_vec_and_offset().0;
    for n in [0, 1] {
        let err = core.run(&x[..n * x.len()], n, &["pooled"]).unwrap_err();
        assert!(
            matches!(&err, lethe::Error::InvalidInput(m) if m.contains("pooled")),
            "{err}"
        );
    }
}
