//! The text bundle (models/minilm-l6-sentiment): Lethe's tokenizer (the Rust `tokenizers`
//! crate) gives the token ids of the committed fixture and of Python `tokenizers` on real
//! tweets; its core's features equal Python ONNX Runtime's on the same tweets; named tensors
//! that do not match the manifest are refused with a clear error and change nothing (G5); a
//! head over the text core forgets exactly (G1).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lethe::bundle::tensor::{DType, Tensor};
use lethe::{Core, CoreOptions, Head, HeadOptions};
use ndarray::{s, Array2, ArrayD, IxDyn};
use ndarray_npy::ReadNpyExt;
use serde_json::Value;

const TEXT: &str = "minilm-l6-sentiment";
/// Rust vs Python ONNX Runtime: max abs difference / max abs reference value.
const PARITY_REL_TOL: f64 = 1e-5;
/// A text alone vs inside a padded batch.
const BATCH_REL_TOL: f64 = 1e-5;
/// Tweets whose features are compared with Python's (the core takes ~20-50 ms per text here).
const PARITY_TWEETS: usize = 24;
/// Of those, how many also run alone.
const ALONE_TWEETS: usize = 4;

fn text_core() -> Arc<Core> {
    Arc::new(
        Core::open(common::bundle_dir(TEXT), &CoreOptions::default())
            .expect("open the text bundle"),
    )
}

fn tweets(split: &str) -> Vec<String> {
    let path = common::repo_root().join(format!("tests/data/tweets_{split}.txt"));
    lethe::data::read_lines(&path).unwrap().to_vec()
}

fn labels(split: &str) -> Vec<u32> {
    let path = common::repo_root().join(format!("tests/data/tweets_{split}_labels.npy"));
    lethe::data::read_ids(&path)
        .unwrap()
        .into_iter()
        .map(|l| l as u32)
        .collect()
}

fn refs(texts: &[String]) -> Vec<&str> {
    texts.iter().map(String::as_str).collect()
}

fn fixture() -> Value {
    let path = common::repo_root().join("tests/data/tokenizer_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids_of(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn i64_values(t: &Tensor<'_>) -> Vec<i64> {
    assert_eq!(t.dtype(), DType::Int64);
    t.bytes()
        .chunks_exact(8)
        .map(|b| i64::from_ne_bytes(b.try_into().unwrap()))
        .collect()
}

/// Runs tests/py/text_reference.py on `lines` (a file of texts); returns its stdout.
fn python_reference(lines: &Path, out_dir: Option<&Path>) -> String {
    let mut cmd = Command::new(common::python());
    cmd.arg(common::repo_root().join("tests/py/text_reference.py"))
        .arg("--bundle")
        .arg(common::bundle_dir(TEXT))
        .arg("--lines")
        .arg(lines);
    if let Some(dir) = out_dir {
        cmd.arg("--out-dir").arg(dir);
    }
    let out = cmd.output().expect("run tests/py/text_reference.py");
    assert!(
        out.status.success(),
        "text_reference.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn token_ids_equal_the_fixture() {
    let core = text_core();
    let encoder = core.text().expect("a text bundle has a tokenizer");
    let fixture = fixture();
    assert_eq!(
        fixture["tokenizer_sha256"],
        core.bundle()
            .manifest
            .preprocessing
            .text()
            .unwrap()
            .tokenizer_sha256
    );
    let cases = fixture["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let ours = encoder.token_ids(&texts).unwrap();
    for (case, ids) in cases.iter().zip(&ours) {
        assert_eq!(*ids, ids_of(&case["ids"]), "text {:?}", case["text"]);
    }
    // The fixture covers truncation: its longest case keeps exactly max_length tokens.
    assert_eq!(ours.iter().map(Vec::len).max(), Some(128));

    // One padded batch, as the core receives it.
    let batch = &fixture["batch"];
    let texts: Vec<&str> = batch["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let inputs = core.encode_text(&texts).unwrap();
    assert_eq!(inputs.len(), 2);
    for t in &inputs {
        let rows = batch[t.name()].as_array().unwrap();
        let expected: Vec<i64> = rows
            .iter()
            .flat_map(|r| ids_of(r).into_iter().map(i64::from))
            .collect();
        assert_eq!(t.shape(), [rows.len(), rows[0].as_array().unwrap().len()]);
        assert_eq!(i64_values(t), expected, "{}", t.name());
    }
}

#[test]
fn token_ids_equal_python_tokenizers_on_real_tweets() {
    let core = text_core();
    let encoder = core.text().unwrap();
    let path = common::repo_root().join("tests/data/tweets_train.txt");
    let texts = tweets("train");
    let python: Vec<Vec<u32>> = python_reference(&path, None)
        .lines()
        .map(|line| ids_of(&serde_json::from_str::<Value>(line).unwrap()["ids"]))
        .collect();
    assert_eq!(python.len(), texts.len());
    let ours = encoder.token_ids(&refs(&texts)).unwrap();
    let differ: Vec<usize> = (0..texts.len()).filter(|&i| ours[i] != python[i]).collect();
    assert!(
        differ.is_empty(),
        "{} of {} tweets differ, e.g. {:?}",
        differ.len(),
        texts.len(),
        differ.first().map(|&i| &texts[i])
    );
}

#[test]
fn features_equal_python_onnxruntime_on_real_tweets() {
    let core = text_core();
    let dir = common::temp_dir();
    let texts: Vec<String> = tweets("test").into_iter().take(PARITY_TWEETS).collect();
    let lines = dir.path().join("texts.txt");
    std::fs::write(&lines, texts.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    python_reference(&lines, Some(&out));

    let inputs = core.encode_text(&refs(&texts)).unwrap();
    for t in &inputs {
        let path = out.join(format!("{}.npy", t.name()));
        let python = ArrayD::<i64>::read_npy(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(python.shape(), t.shape(), "{}", t.name());
        assert_eq!(
            python.iter().copied().collect::<Vec<_>>(),
            i64_values(t),
            "{}",
            t.name()
        );
    }
    let ours = core.run_tensors(&inputs, &["features"]).unwrap();
    let ours = ours.get("features").unwrap();
    let python = common::read_npy_2d(&out.join("features.npy"));
    let rel = common::max_rel_diff(ours.view(), python.view());
    assert!(
        rel <= PARITY_REL_TOL,
        "Rust vs Python: {rel:e} > {PARITY_REL_TOL:e}"
    );
    assert_ne!(ours.row(0), ours.row(1), "rows 0 and 1 equal");
    // L2-normalized inside the graph.
    for row in ours.rows() {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }

    // A text alone (no padding) vs inside the padded batch.
    for (i, text) in texts.iter().take(ALONE_TWEETS).enumerate() {
        let alone = core.run_text(&[text.as_str()], &["features"]).unwrap();
        let rel = common::max_rel_diff(
            alone.get("features").unwrap().view(),
            ours.slice(s![i..i + 1, ..]),
        );
        assert!(rel <= BATCH_REL_TOL, "text {i} alone: {rel:e}");
    }
}

/// The text core's inputs for two texts, as owned (name, dtype, shape, values) to edit.
fn good_inputs(core: &Core) -> Vec<(String, DType, Vec<usize>, Vec<u8>)> {
    core.encode_text(&["fine weather today", "my flight was cancelled again"])
        .unwrap()
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                t.dtype(),
                t.shape().to_vec(),
                t.bytes().to_vec(),
            )
        })
        .collect()
}

fn tensors(parts: &[(String, DType, Vec<usize>, Vec<u8>)]) -> Vec<Tensor<'_>> {
    parts
        .iter()
        .map(|(name, dtype, shape, bytes)| Tensor::from_bytes(name.as_str(), *dtype, shape, bytes))
        .collect()
}

#[test]
fn mismatched_tensors_are_clear_errors_and_change_nothing() {
    let core = text_core();
    let head = Head::in_memory(core.clone(), &HeadOptions::default()).unwrap();
    let good = good_inputs(&core);
    head.learn_tensors(&[1, 2], &tensors(&good), &[0, 2])
        .unwrap();
    let weights = head.weights().unwrap();

    type Edit = fn(&mut Vec<(String, DType, Vec<usize>, Vec<u8>)>);
    let cases: [(&str, Edit, &[&str]); 10] = [
        (
            "a missing input",
            |t| drop(t.remove(1)),
            &["\"attention_mask\" is missing"],
        ),
        (
            "an unknown name",
            |t| t[1].0 = "mask".into(),
            &["no input \"mask\"", "input_ids (int64 [n, seq])"],
        ),
        (
            "an input twice",
            |t| t[1].0 = "input_ids".into(),
            &["given twice"],
        ),
        (
            "int32 for int64",
            |t| {
                t[0].1 = DType::Int32;
                let half = t[0].3.len() / 2;
                t[0].3.truncate(half);
            },
            &["is int32, the core takes int64"],
        ),
        (
            "a third axis",
            |t| t[0].2.push(1),
            &["shape [2, ", "[n, seq]"],
        ),
        (
            "batch sizes differ",
            |t| {
                let per = t[1].3.len() / 2;
                t[1].2[0] = 1;
                t[1].3.truncate(per);
            },
            &["has 1 samples", "same batch size"],
        ),
        (
            "seq lengths differ",
            |t| {
                let (n, l) = (t[1].2[0], t[1].2[1]);
                t[1].2[1] = l - 1;
                let rows: Vec<u8> = t[1]
                    .3
                    .chunks(l * 8)
                    .flat_map(|r| r[..(l - 1) * 8].to_vec())
                    .collect();
                assert_eq!(rows.len(), n * (l - 1) * 8);
                t[1].3 = rows;
            },
            &["seq", "same size on it"],
        ),
        (
            "a byte short",
            |t| {
                t[0].3.pop();
            },
            &["needs", "bytes, got"],
        ),
        (
            "a seq of 0",
            |t| {
                t[0].2[1] = 0;
                t[0].3.clear();
                t[1].2[1] = 0;
                t[1].3.clear();
            },
            &["at least 1"],
        ),
        ("no inputs", |t| t.clear(), &["is missing"]),
    ];
    for (what, edit, mentions) in cases {
        let mut parts = good.clone();
        edit(&mut parts);
        let inputs = tensors(&parts);
        for (call, message) in [
            (
                "run_tensors",
                common::invalid_input(core.run_tensors(&inputs, &["features"]), what),
            ),
            (
                "learn_tensors",
                common::invalid_input(head.learn_tensors(&[3, 4], &inputs, &[1, 1]), what),
            ),
            (
                "predict_tensors",
                common::invalid_input(head.predict_tensors(&inputs), what),
            ),
        ] {
            for m in mentions {
                assert!(
                    message.contains(m),
                    "{what}, {call}: {message:?} lacks {m:?}"
                );
            }
        }
    }
    // More ids than samples, and texts for ids.
    let m = common::invalid_input(
        head.learn_tensors(&[3, 4, 5], &tensors(&good), &[0, 1, 2]),
        "3 ids",
    );
    assert!(m.contains("2 samples but there are 3 ids"), "{m}");
    let m = common::invalid_input(head.learn_text(&[3], &["a", "b"], &[0]), "2 texts, 1 id");
    assert!(m.contains("2 texts but 1 ids"), "{m}");
    // The float32 shorthand names what the core takes.
    let m = common::invalid_input(core.run(&[0.0; 4], 1, &["features"]), "f32 shorthand");
    assert!(
        m.contains("does not take one float32 array") && m.contains("or text"),
        "{m}"
    );
    assert_eq!(core.input_len(), 0);

    assert_eq!(head.ids(), [1, 2]);
    assert_eq!(
        head.weights().unwrap(),
        weights,
        "a refused call changed the head"
    );
}

#[test]
fn image_bundles_refuse_text_and_check_their_float_tensor() {
    let core = Core::open(common::bundle_dir("mnist-core"), &CoreOptions::default()).unwrap();
    let m = common::invalid_input(core.encode_text(&["a digit"]), "text for mnist-core");
    assert!(
        m.contains("does not take text") && m.contains("image (float32 [n, 1, 28, 28])"),
        "{m}"
    );

    let x = common::mnist_core_input(2);
    let named = Tensor::from_array("image", x.view().into_dyn());
    let a = core.run_tensors(&[named], &["features"]).unwrap();
    let b = core.run(x.as_slice().unwrap(), 2, &["features"]).unwrap();
    assert_eq!(a.get("features"), b.get("features"));

    let mut bad = x.clone();
    bad[[1, 0, 3, 4]] = f32::NAN;
    let m = common::invalid_input(
        core.run_tensors(
            &[Tensor::from_array("image", bad.view().into_dyn())],
            &["features"],
        ),
        "NaN",
    );
    assert!(m.contains("NaN") && m.contains("sample 1"), "{m}");
    let ids = ArrayD::<i64>::zeros(IxDyn(&[2, 1, 28, 28]));
    let m = common::invalid_input(
        core.run_tensors(&[Tensor::from_array("image", ids.view())], &["features"]),
        "int64 image",
    );
    assert!(m.contains("is int64, the core takes float32"), "{m}");
}

/// Every user tweet's features, computed once in fixed batches (as `lethe demo` does).
fn features_of(core: &Core, texts: &[String], batch: usize) -> Array2<f32> {
    let mut rows = Vec::new();
    for chunk in texts.chunks(batch) {
        let out = core.run_text(&refs(chunk), &["features"]).unwrap();
        rows.extend(out.get("features").unwrap().iter().copied());
    }
    Array2::from_shape_vec((texts.len(), 384), rows).unwrap()
}

/// G1 on real tweets: learned through `learn_text` in batches, then forget some and a whole
/// class: the weights equal a fresh head's on the remaining tweets' features bit for bit, and
/// `verify` recomputes them from the state dir.
#[test]
fn forgetting_tweets_equals_a_fresh_head_bit_for_bit() {
    const N: usize = 36;
    const BATCH: usize = 12;
    let core = text_core();
    let texts: Vec<String> = tweets("train").into_iter().take(N).collect();
    let labels = &labels("train")[..N];
    let dir = common::temp_dir();
    let head = Head::open(
        core.clone(),
        dir.path().join("state"),
        &HeadOptions::default(),
    )
    .unwrap();
    for (k, chunk) in texts.chunks(BATCH).enumerate() {
        let ids: Vec<u64> = (k * BATCH..k * BATCH + chunk.len())
            .map(|i| i as u64)
            .collect();
        head.learn_text(
            &ids,
            &refs(chunk),
            &labels[k * BATCH..k * BATCH + chunk.len()],
        )
        .unwrap();
    }
    // The same batches give the same features: the fresh heads learn exactly those.
    let phi = features_of(&core, &texts, BATCH);
    let z = Array2::<f32>::zeros((N, 3));

    let every_fifth: Vec<u64> = (0..N as u64).step_by(5).collect();
    head.forget(&every_fifth).unwrap();
    let class = 1;
    let of_class: Vec<u64> = (0..N as u64)
        .filter(|i| !every_fifth.contains(i) && labels[*i as usize] == class)
        .collect();
    assert!(!of_class.is_empty());
    head.forget(&of_class).unwrap();
    let kept: Vec<usize> = (0..N)
        .filter(|&i| !every_fifth.contains(&(i as u64)) && !of_class.contains(&(i as u64)))
        .collect();
    assert_eq!(
        head.ids(),
        kept.iter().map(|&i| i as u64).collect::<Vec<_>>()
    );

    let fresh = Head::in_memory(
        core.clone(),
        &HeadOptions {
            synchronous_resolve: true,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<u64> = kept.iter().map(|&i| i as u64).collect();
    let kept_labels: Vec<u32> = kept.iter().map(|&i| labels[i]).collect();
    fresh
        .learn_features(
            &ids,
            &phi.select(ndarray::Axis(0), &kept),
            &z.select(ndarray::Axis(0), &kept),
            &kept_labels,
        )
        .unwrap();
    let (ours, theirs) = (head.weights().unwrap(), fresh.weights().unwrap());
    assert_eq!(ours, theirs, "forget is not bit-identical to a fresh head");
    assert!(ours.w.iter().any(|&v| v != 0.0));
    assert!(head.verify().unwrap().ok());
    // The class is forgotten: the head predicts the same logits as the fresh one.
    let probe = [texts[0].as_str(), texts[1].as_str()];
    assert_eq!(
        head.predict_text(&probe).unwrap(),
        fresh.predict_text(&probe).unwrap()
    );
    head.close().unwrap();
}
