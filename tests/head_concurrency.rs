//! G6: predictions from many threads while learn/forget runs see the old or the new weights,
//! never a mix. And a head persisted in a state dir reopens with identical predictions.

use std::sync::{Arc, Mutex};

use lethe::device::cpu;
use lethe::FixedPoint;
use lethe::{Core, Head, HeadOptions, HeadSpec};
use ndarray::Array2;

fn features(k: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut s = seed;
    Array2::from_shape_fn((k, d), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    })
}

#[test]
fn concurrent_predictions_see_whole_weights() {
    let (d, c) = (48, 7);
    let spec = HeadSpec {
        features: "f".into(),
        dim: d,
        classes: (0..c).map(|i| i.to_string()).collect(),
        core_logits: None,
        lambda: 1.0,
        target_scale: 1.0,
        fixed: FixedPoint {
            frac_bits: 16,
            feature_max_abs: 4.0,
            target_max_abs: 2.0,
        },
    };
    // Canonical re-solves inside each call: every weights version is published by the writer
    // thread, which records it.
    let head = Arc::new(
        Head::detached(
            spec,
            &HeadOptions {
                synchronous_resolve: true,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let probe = features(5, d, 99);
    let zero_z = Array2::<f32>::zeros((5, c));
    let versions = Arc::new(Mutex::new(vec![head.served()]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (head, versions, done) = (head.clone(), versions.clone(), done.clone());
        std::thread::spawn(move || {
            for round in 0..40u64 {
                let k = 1 + (round % 4) as usize;
                let ids: Vec<u64> = (0..k as u64).map(|i| round * 10 + i).collect();
                let labels: Vec<u32> = ids.iter().map(|&i| (i % c as u64) as u32).collect();
                head.learn_features(
                    &ids,
                    &features(k, d, round),
                    &Array2::zeros((k, c)),
                    &labels,
                )
                .unwrap();
                versions.lock().unwrap().push(head.served());
                if round % 3 == 2 {
                    head.forget(&[round * 10]).unwrap();
                    versions.lock().unwrap().push(head.served());
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (head, probe, z) = (head.clone(), probe.clone(), zero_z.clone());
            let done = done.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    seen.push(head.predict_features(&probe, &z).unwrap());
                }
                seen
            })
        })
        .collect();
    writer.join().unwrap();
    let versions = versions.lock().unwrap();
    let expected: Vec<Array2<f32>> = versions
        .iter()
        .map(|w| cpu::logits(&probe, &zero_z, w))
        .collect();
    let mut distinct = std::collections::HashSet::new();
    for r in readers {
        for logits in r.join().unwrap() {
            let which = expected.iter().position(|e| *e == logits);
            assert!(
                which.is_some(),
                "a prediction matches no published weights: torn read"
            );
            distinct.insert(which.unwrap());
        }
    }
    assert!(versions.len() > 40);
    eprintln!(
        "predictions saw {} of {} weight versions",
        distinct.len(),
        versions.len()
    );
}

#[test]
fn a_state_dir_reopens_with_identical_predictions() {
    let core = Arc::new(Core::open("models/mnist-core", &Default::default()).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("head");
    let images = lethe::data::Digits::read(std::path::Path::new("tests/data"), "train").unwrap();
    let rows: Vec<usize> = (0..300).collect();
    let inputs = images.inputs(&rows);
    let ids: Vec<u64> = (0..300).collect();
    let labels: Vec<u32> = rows.iter().map(|&r| images.labels[r]).collect();
    let head = Head::open(core.clone(), &dir, &HeadOptions::default()).unwrap();
    head.learn(&ids, &inputs, &labels).unwrap();
    head.forget(&[3, 50, 299]).unwrap();
    let before = head.predict(&inputs, 300).unwrap();
    let weights = head.weights().unwrap();
    head.close().unwrap();

    let head = Head::open(core.clone(), &dir, &HeadOptions::default()).unwrap();
    assert_eq!(head.info().samples, 297);
    assert_eq!(head.weights().unwrap(), weights);
    assert_eq!(head.predict(&inputs, 300).unwrap(), before);
    // A second opener of the same state dir is refused while this one holds it.
    assert!(Head::open(core.clone(), &dir, &HeadOptions::default()).is_err());
    head.close().unwrap();

    // A state dir belongs to one bundle.
    let other = Arc::new(Core::open("models/mobilenetv2-imagenet", &Default::default()).unwrap());
    let err = Head::open(other, &dir, &HeadOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("belongs to bundle"), "{err}");
}
