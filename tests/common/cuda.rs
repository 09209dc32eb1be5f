//! The GPU tests' device and tolerances.
//!
//! A test that needs a GPU is `#[ignore = "needs a GPU"]` (or "needs a GPU and the CUDA EP"),
//! so that without one it shows as ignored, not as passed; `make test` and scripts/gpu-check.sh
//! run it with `--include-ignored` under `LETHE_REQUIRE_GPU=1`, and it then fails when the GPU
//! path does not run.

use std::sync::Arc;

use lethe::device::cuda::{self, GpuDevice};
use ndarray::Array2;

/// CUDA device 0 with the head's kernels compiled; panics without one.
pub fn gpu() -> Arc<GpuDevice> {
    cuda::open_device(0).unwrap_or_else(|reason| panic!("this test needs a GPU: {reason}"))
}

/// How far an f32 dot product of `d` terms may be from another summation order: each is within
/// d·ε·Σ|terms| of the exact value (Higham's bound for recursive summation), so two are within
/// twice that. Every GPU/CPU comparison uses this bound, scaled by the terms' magnitude.
pub fn f32_dot_tolerance(d: usize) -> f32 {
    2.0 * (d as f32 + 2.0) * f32::EPSILON
}

/// Asserts `got` ≈ `want` for logits z + φWᵀ + b, each entry within [`f32_dot_tolerance`] of
/// the magnitude Σ|φ_j w_j| + |z| + |b| of its terms.
pub fn assert_logits_close(
    got: &Array2<f32>,
    want: &Array2<f32>,
    phi: &Array2<f32>,
    z: &Array2<f32>,
    w: &Array2<f32>,
    b: &[f32],
    what: &str,
) {
    assert_eq!(got.dim(), want.dim(), "{what}: shapes");
    let d = phi.ncols();
    let tolerance = f32_dot_tolerance(d);
    let abs_w = w.mapv(f32::abs);
    let magnitude = phi.mapv(f32::abs).dot(&abs_w.t());
    for ((i, c), &g) in got.indexed_iter() {
        let scale = magnitude[(i, c)] + z[(i, c)].abs() + b[c].abs();
        let diff = (g - want[(i, c)]).abs();
        assert!(
            diff <= tolerance * scale.max(f32::MIN_POSITIVE),
            "{what}: logit [{i}, {c}] is {g} on the GPU and {} on the CPU (|diff| {diff} > {} \
             = tolerance {tolerance} × magnitude {scale})",
            want[(i, c)],
            tolerance * scale
        );
    }
}
