//! A small detached head persisted in a state dir (`tests/store_*.rs`), samples that are a
//! deterministic function of their id, and file listings.

use std::collections::BTreeMap;
use std::path::Path;

use lethe::{Head, HeadOptions, HeadSpec, Result, StateKey};
use ndarray::Array2;
use rand::Rng;

pub const D: usize = 8;
pub const C: usize = 3;
pub const CORE_SHA256: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A head with core logits on every class.
pub fn spec() -> HeadSpec {
    let mut spec = super::detached_spec(D, C, 0.25);
    spec.core_logits = Some(("logits".into(), (0..C).collect()));
    spec
}

pub fn open(dir: &Path) -> Result<Head> {
    open_keyed(dir, None)
}

/// Opens (or creates) the state dir with the application key `key`, or without one.
pub fn open_keyed(dir: &Path, key: Option<StateKey>) -> Result<Head> {
    let options = HeadOptions {
        key,
        ..HeadOptions::default()
    };
    Head::open_detached(spec(), CORE_SHA256, dir, &options)
}

/// Sample `id`: (features φ, core logits z, label), drawn by the generator seeded with `id`.
pub fn sample(id: u64) -> (Vec<f32>, Vec<f32>, u32) {
    let mut rng = super::rng(id);
    let phi = (0..D).map(|_| rng.random_range(-7.5..7.5)).collect();
    let z = (0..C).map(|_| rng.random_range(-6.0..6.0)).collect();
    (phi, z, rng.random_range(0..C as u32))
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
    let scale = (spec().fixed.frac_bits as f64).exp2();
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

/// The names of a state dir's bucket files (`samples-XX.bin`), sorted.
pub fn bucket_files(dir: &Path) -> Vec<String> {
    files(dir)
        .into_keys()
        .filter(|n| n.starts_with("samples-") && n.ends_with(".bin"))
        .collect()
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
