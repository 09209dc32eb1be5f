//! Helpers of the CUDA tests: skipping without a GPU (or NVRTC), random data, tolerances.
//!
//! Each test crate uses a subset of these, so unused ones are not dead code.
#![allow(dead_code)]

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;

use lethe::device::cuda::{self, GpuDevice};
use ndarray::Array2;

/// The repository root: `CARGO_MANIFEST_DIR` at run time (cargo sets it, and so does
/// scripts/gpu-check.sh, which runs these binaries on another machine), else where it was built.
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// With `LETHE_REQUIRE_GPU=1` a test that would skip fails instead (scripts/gpu-check.sh).
pub const REQUIRE_GPU_ENV: &str = "LETHE_REQUIRE_GPU";

pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1")
}

/// Says why a test does nothing here; under `LETHE_REQUIRE_GPU=1` that is a failure.
pub fn skip(test: &str, reason: impl Display) {
    assert!(
        !gpu_required(),
        "{test}: {REQUIRE_GPU_ENV}=1, but it would be skipped: {reason}"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// With `LETHE_REQUIRE_CUDA_EP=1` a test that needs ONNX Runtime's CUDA execution provider
/// fails instead of skipping when the loaded ONNX Runtime has none (the GPU machines have a CPU
/// build unless the onnxruntime-gpu library is brought over).
pub const REQUIRE_CUDA_EP_ENV: &str = "LETHE_REQUIRE_CUDA_EP";

/// Says why a test that needs the CUDA EP does nothing here; a failure under
/// `LETHE_REQUIRE_CUDA_EP=1`.
pub fn skip_without_cuda_ep(test: &str, reason: impl Display) {
    assert!(
        std::env::var(REQUIRE_CUDA_EP_ENV).map_or(true, |v| v != "1"),
        "{test}: {REQUIRE_CUDA_EP_ENV}=1, but it would be skipped: {reason}"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// CUDA device 0 with the head's kernels compiled, or `None` (after [`skip`]).
pub fn gpu(test: &str) -> Option<Arc<GpuDevice>> {
    match cuda::open_device(0) {
        Ok(device) => Some(device),
        Err(reason) => {
            skip(test, format!("no usable GPU: {reason}"));
            None
        }
    }
}

/// A deterministic generator of values in [-1, 1) (an LCG; the tests need no quality).
pub struct Values(u64);

impl Values {
    pub fn new(seed: u64) -> Values {
        Values(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn matrix(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |_| self.next())
    }
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
