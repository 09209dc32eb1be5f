//! A head linear in several features outputs concatenated (`features` names joined by `+`):
//! the bundle resolves the joined name, the head's features are exactly the outputs' columns
//! side by side in the order named, it learns exactly what a head fed that concatenation
//! learns, and its state dir records the joined name.

mod common;

use std::sync::Arc;

use lethe::{Core, CoreOptions, Error, Head, HeadOptions};
use ndarray::{concatenate, Axis};

/// Samples learned: enough for a solvable, non-trivial head, few enough for d = 3264.
const SAMPLES: usize = 64;
const JOINED: &str = "conv_features+features";

fn mnist_core() -> Arc<Core> {
    Arc::new(
        Core::open(common::bundle_dir("mnist-core"), &CoreOptions::default())
            .expect("mnist-core opens"),
    )
}

fn joined_options(features: &str) -> HeadOptions {
    HeadOptions {
        features: Some(features.into()),
        ..HeadOptions::default()
    }
}

#[test]
fn the_bundle_resolves_joined_names() {
    let core = mnist_core();
    let b = core.bundle();
    let joined = b.features(Some(JOINED)).unwrap();
    assert_eq!((joined.output.as_str(), joined.dim), (JOINED, 3136 + 128));
    let (conv, narrow) = (
        b.features(Some("conv_features")).unwrap(),
        b.features(Some("features")).unwrap(),
    );
    assert_eq!(joined.max_abs, conv.max_abs.max(narrow.max_abs));
    for bad in [
        "features+pooled",
        "features+features",
        "features+",
        "+features",
    ] {
        match b.features(Some(bad)) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("features"), "{bad}: {m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn a_joined_head_learns_exactly_the_concatenated_outputs() {
    let core = mnist_core();
    let input = common::mnist_core_input(SAMPLES);
    let flat = input.as_slice().unwrap();
    let tmp = common::temp_dir();
    let state = tmp.path().join("state");
    let head = Head::open(core.clone(), &state, &joined_options(JOINED)).unwrap();
    assert_eq!(head.spec().features, JOINED);
    assert_eq!(head.spec().dim, 3136 + 128);

    // The features: the two outputs' columns side by side, in the order named.
    let out = core
        .run(flat, SAMPLES, &["conv_features", "features"])
        .unwrap();
    let expected = concatenate(
        Axis(1),
        &[
            out.get("conv_features").unwrap().view(),
            out.get("features").unwrap().view(),
        ],
    )
    .unwrap();
    let (phi, z) = head.core_features(flat, SAMPLES).unwrap();
    assert_eq!(*phi, expected);

    // Learning through the core equals learning the concatenation directly.
    let ids: Vec<u64> = (0..SAMPLES as u64).collect();
    let labels: Vec<u32> = (0..SAMPLES).map(|i| (i % 10) as u32).collect();
    head.learn(&ids, flat, &labels).unwrap();
    let fed = Head::detached(head.spec().clone(), &HeadOptions::default()).unwrap();
    fed.learn_features(&ids, &expected, &z, &labels).unwrap();
    let (a, b) = (head.weights().unwrap(), fed.weights().unwrap());
    assert_eq!(
        (a.w, a.b),
        (b.w, b.b),
        "joined head vs fed the concatenation"
    );
    let logits = head.predict(flat, SAMPLES).unwrap();
    assert_eq!(logits, fed.predict_features(&expected, &z).unwrap());
    head.close().unwrap();

    // The state dir records the joined name: reopened by default, refused in another order.
    let reopened = Head::open(core.clone(), &state, &HeadOptions::default()).unwrap();
    assert_eq!(reopened.spec().features, JOINED);
    assert_eq!(reopened.info().samples, SAMPLES as u64);
    reopened.close().unwrap();
    match Head::open(core, &state, &joined_options("features+conv_features")) {
        Err(e) => assert!(e.to_string().contains(JOINED), "{e}"),
        Ok(_) => panic!("reopened with the outputs in another order"),
    }
}
