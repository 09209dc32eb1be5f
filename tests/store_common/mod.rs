//! Helpers shared by the state dir tests (`tests/store_*.rs`): a small detached head persisted
//! in a state dir, samples that are a deterministic function of their id, and file listings.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use lethe::FixedPoint;
use lethe::{Head, HeadOptions, HeadSpec, Result};
use ndarray::Array2;

pub const D: usize = 8;
pub const C: usize = 3;
pub const FRAC_BITS: u32 = 16;
pub const CORE_SHA256: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

pub fn spec() -> HeadSpec {
    HeadSpec {
        features: "features".into(),
        dim: D,
        classes: (0..C).map(|i| format!("class {i}")).collect(),
        core_logits: Some(("logits".into(), (0..C).collect())),
        lambda: 0.25,
        target_scale: 1.0,
        fixed: FixedPoint {
            frac_bits: FRAC_BITS,
            feature_max_abs: 8.0,
            target_max_abs: 16.0,
        },
    }
}

pub fn open(dir: &Path) -> Result<Head> {
    Head::open_detached(spec(), CORE_SHA256, dir, &HeadOptions::default())
}

/// splitmix64: the values of sample `id`, all distinct and far from zero.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn value(id: u64, j: usize, range: f32) -> f32 {
    let u = (mix(id.wrapping_mul(64) + j as u64) >> 40) as f32 / (1u64 << 24) as f32;
    (u * 2.0 - 1.0) * range
}

/// Sample `id`: (features φ, core logits z, label).
pub fn sample(id: u64) -> (Vec<f32>, Vec<f32>, u32) {
    let phi = (0..D).map(|j| value(id, j, 7.5)).collect();
    let z = (0..C).map(|j| value(id, D + j, 6.0)).collect();
    (phi, z, (mix(id) % C as u64) as u32)
}

pub fn learn(head: &Head, ids: &[u64]) -> Result<()> {
    let k = ids.len();
    let rows: Vec<_> = ids.iter().map(|&id| sample(id)).collect();
    let phi = Array2::from_shape_fn((k, D), |(i, j)| rows[i].0[j]);
    let z = Array2::from_shape_fn((k, C), |(i, j)| rows[i].1[j]);
    let labels: Vec<u32> = rows.iter().map(|r| r.2).collect();
    head.learn_features(ids, &phi, &z, &labels)
}

/// The features and targets sample `id` is stored as (DESIGN.md's fixed point, little-endian
/// i32 as in `lethe::store`'s records): q = round(φ·2^F), then r = round((s·y − z)·2^F).
pub fn stored_bytes(id: u64) -> Vec<u8> {
    let (phi, z, label) = sample(id);
    let scale = (FRAC_BITS as f64).exp2();
    let q = |v: f64| ((v * scale).round() as i32).to_le_bytes();
    let mut out = Vec::new();
    for &v in &phi {
        out.extend_from_slice(&q(v as f64));
    }
    for (j, &zj) in z.iter().enumerate() {
        let y = if j as u32 == label { 1.0 } else { 0.0 };
        out.extend_from_slice(&q(y - zj as f64));
    }
    out
}

/// Every file of a state dir: relative path → bytes.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_file(), "{:?}", entry.path());
        let name = entry.file_name().into_string().unwrap();
        out.insert(name, std::fs::read(entry.path()).unwrap());
    }
    out
}

/// What a crash at this instant would leave: a copy of the state dir's files (the lock aside).
pub fn snapshot(dir: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for (name, bytes) in files(dir) {
        if name != "lock" {
            std::fs::write(to.join(name), bytes).unwrap();
        }
    }
}

/// A fresh head's canonical weights on `ids` (in memory).
pub fn fresh_weights(ids: &[u64]) -> lethe::Weights {
    let head = Head::detached(spec(), &HeadOptions::default()).unwrap();
    learn(&head, ids).unwrap();
    head.weights().unwrap()
}
