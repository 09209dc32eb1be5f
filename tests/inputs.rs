//! G5 at the inputs: arrays in another layout or with other axes, inputs whose features leave
//! the head's range, and a bundle that no longer matches its state dir are refused with an
//! error that names what was expected; nothing changes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use lethe::{Core, CoreOptions, Head, HeadOptions};
use ndarray::{Array2, Array4, Array5, ArrayD, Axis, IxDyn};

fn mnist() -> Arc<Core> {
    Arc::new(Core::open(common::bundle_dir("mnist-core"), &CoreOptions::default()).unwrap())
}

fn message<T>(r: lethe::Result<T>) -> String {
    match r {
        Ok(_) => panic!("should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn only_the_manifest_shape_or_its_flat_form_is_accepted() {
    let core = mnist();
    let x = common::mnist_core_input(3);
    let flat = x.clone().into_shape_with_order((3, 784)).unwrap();
    let names = ["features", "logits"];
    let reference = core.run(x.as_slice().unwrap(), 3, &names).unwrap();
    for accepted in [x.view().into_dyn(), flat.view().into_dyn()] {
        let out = core.run_array(accepted, &names).unwrap();
        for name in names {
            assert_eq!(out.get(name), reference.get(name), "{name}");
        }
    }
    // A transposed view (not in standard layout) is copied in its own order, not reinterpreted.
    let transposed = flat.t().to_owned();
    let out = core.run_array(transposed.t().into_dyn(), &names).unwrap();
    assert_eq!(out.get("features"), reference.get("features"));

    // The same 3 × 784 values with other axes: each would be read as scrambled samples.
    let extra_axis: Array5<f32> = x.clone().insert_axis(Axis(1));
    let no_channel = x.clone().remove_axis(Axis(1));
    let swapped = x
        .clone()
        .permuted_axes([0, 2, 3, 1])
        .as_standard_layout()
        .to_owned();
    let one_dim =
        ArrayD::from_shape_vec(IxDyn(&[3 * 784]), flat.iter().copied().collect()).unwrap();
    for refused in [
        extra_axis.into_dyn(),
        no_channel.into_dyn(),
        swapped.into_dyn(),
        one_dim,
    ] {
        let m = message(core.run_array(refused.view(), &names));
        assert!(
            m.contains(&format!("{:?}", refused.shape()))
                && m.contains("[n, 1, 28, 28]")
                && m.contains("[n, 784]"),
            "{m}"
        );
        let head = Head::in_memory(core.clone(), &HeadOptions::default()).unwrap();
        let m = message(head.learn_array(&[1, 2, 3], refused.view(), &[0, 1, 2]));
        assert!(m.contains("[n, 1, 28, 28]"), "{m}");
        assert!(head.ids().is_empty());
        assert!(message(head.predict_array(refused.view())).contains("[n, 1, 28, 28]"));
    }
}

#[test]
fn an_nhwc_array_for_an_nchw_core_is_refused() {
    let core = Core::open(
        common::bundle_dir("mobilenetv2-imagenet"),
        &CoreOptions::default(),
    )
    .unwrap();
    let nhwc = Array4::<f32>::zeros((5, 224, 224, 3));
    let m = message(core.run_array(nhwc.view().into_dyn(), &["features"]));
    assert!(
        m.contains("[5, 224, 224, 3]") && m.contains("[n, 3, 224, 224]"),
        "{m}"
    );
}

#[test]
fn learn_array_and_predict_array_equal_the_flat_calls() {
    let core = mnist();
    let x = common::mnist_core_input(4);
    let flat_head = Head::in_memory(core.clone(), &HeadOptions::default()).unwrap();
    let array_head = Head::in_memory(core, &HeadOptions::default()).unwrap();
    let (ids, labels) = ([10, 11, 12, 13], [5, 6, 7, 8]);
    flat_head
        .learn(&ids, x.as_slice().unwrap(), &labels)
        .unwrap();
    array_head
        .learn_array(&ids, x.view().into_dyn(), &labels)
        .unwrap();
    assert_eq!(flat_head.weights().unwrap(), array_head.weights().unwrap());
    assert_eq!(
        flat_head.predict(x.as_slice().unwrap(), 4).unwrap(),
        array_head.predict_array(x.view().into_dyn()).unwrap()
    );
    let m = message(array_head.learn_array(&[1, 2], x.view().into_dyn(), &[0, 1]));
    assert!(m.contains("4 inputs but 2 ids"), "{m}");
}

#[test]
fn predict_refuses_what_learn_refuses() {
    let core = mnist();
    let head = Head::in_memory(core.clone(), &HeadOptions::default()).unwrap();
    let x = common::mnist_core_input(2);
    head.learn(&[1, 2], x.as_slice().unwrap(), &[3, 7]).unwrap();
    let before = head.weights().unwrap();

    // Finite inputs whose features are not: 3e38 overflows inside the core.
    let huge = vec![3e38f32; 784];
    // Finite features far outside the bundle's features range (max_abs 128).
    let bright: Vec<f32> = x.as_slice().unwrap()[..784]
        .iter()
        .map(|v| v * 1e4)
        .collect();
    for (input, what) in [(&huge, "features inf/NaN"), (&bright, "features > max_abs")] {
        let (phi, _) = head.core_features(input, 1).unwrap();
        assert!(
            phi.iter().any(|v| !v.is_finite() || v.abs() > 128.0),
            "{what}: the case no longer reaches the check"
        );
        let learned = message(head.learn(&[99], input, &[0]));
        let predicted = message(head.predict(input, 1));
        for m in [&learned, &predicted] {
            assert!(
                m.contains("outside the head's range ±128 (the bundle's features max_abs)"),
                "{what}: {m}"
            );
        }
    }
    assert_eq!(head.weights().unwrap(), before);
    assert_eq!(head.ids(), [1, 2]);

    // The same checks for features and core logits the caller passes.
    let phi = Array2::from_elem((1, 128), 200.0f32);
    let z = Array2::zeros((1, 10));
    assert!(message(head.predict_features(&phi, &z)).contains("feature 0 is 200"));
    assert!(message(head.learn_features(&[5], &phi, &z, &[1])).contains("feature 0 is 200"));
    let phi = Array2::zeros((2, 128));
    let mut z = Array2::zeros((2, 10));
    z[(1, 3)] = f32::NAN;
    let m = message(head.predict_features(&phi, &z));
    assert!(
        m.contains("sample 1: the core's logit for class 3 is NaN"),
        "{m}"
    );
}

/// A copy of the mnist-core bundle in `dir` with its manifest edited by `edit`.
fn edited_bundle(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let from = common::bundle_dir("mnist-core");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(from.join("core.onnx"), dir.join("core.onnx")).unwrap();
    let text = std::fs::read_to_string(from.join("manifest.json")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut manifest);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    dir.to_path_buf()
}

/// Every file of a state dir: relative path → bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_bundle_that_no_longer_matches_its_state_dir_is_refused() {
    let tmp = common::temp_dir();
    let state = tmp.path().join("state");
    let head = Head::open(mnist(), &state, &HeadOptions::default()).unwrap();
    let x = common::mnist_core_input(2);
    head.learn(&[1, 2], x.as_slice().unwrap(), &[3, 9]).unwrap();
    head.close().unwrap();
    let before = files(&state);

    let nine_classes = edited_bundle(&tmp.path().join("nine"), |m| {
        m["classes"].as_array_mut().unwrap().pop();
    });
    let renamed = edited_bundle(&tmp.path().join("renamed"), |m| {
        m["name"] = "digits".into();
    });
    let relabeled = edited_bundle(&tmp.path().join("relabeled"), |m| {
        m["classes"][7] = "seven".into();
    });
    let remapped = edited_bundle(&tmp.path().join("remapped"), |m| {
        m["core_logits"]["classes"] = serde_json::json!([4, 3, 2, 1, 0]);
    });
    for (bundle, expect) in [
        (
            &nine_classes,
            vec!["records classes: 10", "the bundle has 9"],
        ),
        (&renamed, vec!["\"mnist-core\"", "\"digits\""]),
        (
            &relabeled,
            vec!["class 7 as \"7\"", "the bundle has \"seven\""],
        ),
        (
            &remapped,
            vec![
                "onto classes [0, 1, 2, 3, 4]",
                "onto classes [4, 3, 2, 1, 0]",
            ],
        ),
    ] {
        let core = Arc::new(Core::open(bundle, &CoreOptions::default()).unwrap());
        let m = message(Head::open(core, &state, &HeadOptions::default()));
        for e in expect {
            assert!(m.contains(e), "{}: {m}", bundle.display());
        }
        assert_eq!(files(&state), before, "{}", bundle.display());
    }
    // The bundle it was created with still opens it.
    let head = Head::open(mnist(), &state, &HeadOptions::default()).unwrap();
    assert_eq!(head.ids(), [1, 2]);
}
