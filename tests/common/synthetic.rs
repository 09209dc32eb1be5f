//! A detached head over synthetic features, each a deterministic function of its sample's id
//! (`tests/canonical_portable.rs`, `tests/store_upgrade.rs`; the program that wrote
//! `tests/data/state-v5-solution/` holds a copy, built with an earlier version of Lethe).

use lethe::{FixedPoint, Head, HeadSpec};
use ndarray::Array2;

pub const CORE_SHA256: &str = "7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de";

/// d features, C classes named "class 0" to "class C-1", no core logits.
pub fn spec(dim: usize, classes: usize) -> HeadSpec {
    HeadSpec {
        features: "features".into(),
        dim,
        classes: (0..classes).map(|i| format!("class {i}")).collect(),
        core_logits: None,
        lambda: 0.01,
        target_scale: 1.0,
        fixed: FixedPoint {
            frac_bits: 16,
            feature_max_abs: 8.0,
            target_max_abs: 16.0,
        },
    }
}

/// Feature j of sample `id`: a common value plus a little noise, so that A is far from
/// diagonal (splitmix64).
pub fn feature(id: u64, j: usize) -> f32 {
    let mix = |mut x: u64| {
        x = x.wrapping_add(0x9e3779b97f4a7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
        x ^ (x >> 31)
    };
    let u = |x: u64| (mix(x) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    3.0 * u(id) + 0.25 * u(id * 1000 + j as u64 + 1)
}

/// Learns samples `ids` (label: id mod C) into a head of [`spec`].
pub fn learn(head: &Head, ids: &[u64]) {
    let (d, c) = (head.spec().dim, head.spec().num_classes());
    let phi = Array2::from_shape_fn((ids.len(), d), |(i, j)| feature(ids[i], j));
    let z = Array2::zeros((ids.len(), c));
    let labels: Vec<u32> = ids.iter().map(|&id| (id % c as u64) as u32).collect();
    head.learn_features(ids, &phi, &z, &labels).unwrap();
}
