//! Writes `tests/data/state-v5-solution/`: a small closed state dir of format version 5 whose
//! `stats.bin` also holds the canonical factor L and weights Θ, as Lethe wrote it before it
//! kept only the exact statistics there. Run as an example of commit b3a9f1d, the last such
//! build: `cargo run --release --example make_state_v5_solution -- DIR`.
use lethe::FixedPoint;
use lethe::{Head, HeadOptions, HeadSpec};
use ndarray::Array2;
const D: usize = 6;
const C: usize = 3;
fn spec() -> HeadSpec {
    HeadSpec {
        features: "features".into(),
        dim: D,
        classes: (0..C).map(|i| format!("class {i}")).collect(),
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
fn feature(id: u64, j: usize) -> f32 {
    let mix = |mut x: u64| {
        x = x.wrapping_add(0x9e3779b97f4a7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
        x ^ (x >> 31)
    };
    let u = |x: u64| (mix(x) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    3.0 * u(id) + 0.25 * u(id * 1000 + j as u64 + 1)
}
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let head = Head::open_detached(
        spec(),
        "7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de",
        &dir,
        &HeadOptions::default(),
    )
    .unwrap();
    let ids: Vec<u64> = (1..=12).collect();
    let phi = Array2::from_shape_fn((ids.len(), D), |(i, j)| feature(ids[i], j));
    let z = Array2::zeros((ids.len(), C));
    let labels: Vec<u32> = ids.iter().map(|&id| (id % C as u64) as u32).collect();
    head.learn_features(&ids, &phi, &z, &labels).unwrap();
    head.forget(&[4, 9]).unwrap();
    head.close().unwrap();
}
