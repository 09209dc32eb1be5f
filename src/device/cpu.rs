//! The head's forward pass on the CPU, in f32: logits = z + φ Wᵀ + b.

use ndarray::{Array2, Axis};

use crate::math::weights::ServedWeights;

/// Logits `[n, C]` for features `phi` `[n, d]` and mapped core logits `z` `[n, C]`.
pub fn logits(phi: &Array2<f32>, z: &Array2<f32>, weights: &ServedWeights) -> Array2<f32> {
    let mut out = z.clone();
    let (n, d) = phi.dim();
    match (phi.as_slice(), weights.w.as_slice()) {
        (Some(phi), Some(w)) if n * d * weights.b.len() <= DOTS_UP_TO => {
            for (row, x) in out.rows_mut().into_iter().zip(phi.chunks_exact(d)) {
                for (v, w) in row.into_iter().zip(w.chunks_exact(d)) {
                    *v += dot(x, w);
                }
            }
        }
        _ => ndarray::linalg::general_mat_mul(1.0, phi, &weights.w.t(), 1.0, &mut out),
    }
    for mut row in out.axis_iter_mut(Axis(0)) {
        for (v, b) in row.iter_mut().zip(&weights.b) {
            *v += b;
        }
    }
    out
}

/// Products of at most this many multiply-adds (mnist-core's at batch 1: 1 280) take one dot
/// product per logit: a matrix product's set-up (packing both operands) costs more than they
/// do.
const DOTS_UP_TO: usize = 1 << 12;

/// x · y in 8 independent partial sums.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The obvious loop, for comparison.
    fn naive(phi: &Array2<f32>, z: &Array2<f32>, w: &ServedWeights) -> Array2<f64> {
        let (n, d) = phi.dim();
        let c = w.b.len();
        Array2::from_shape_fn((n, c), |(i, k)| {
            let mut acc = z[(i, k)] as f64 + w.b[k] as f64;
            for j in 0..d {
                acc += phi[(i, j)] as f64 * w.w[(k, j)] as f64;
            }
            acc
        })
    }

    /// f32 accumulation over d terms of magnitude ≤ 1 differs from f64 by at most d·2^-23·scale.
    const F32_DOT_TOLERANCE: f64 = 1e-5;

    proptest! {
        #[test]
        /// Both ways: one dot product per logit (up to `DOTS_UP_TO` multiply-adds) and the
        /// matrix product.
        fn matches_the_naive_loop(n in 0usize..9, d in 1usize..600, c in 1usize..13, seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut next = move || rng.random_range(-1.0f32..1.0);
            let phi = Array2::from_shape_fn((n, d), |_| next());
            let z = Array2::from_shape_fn((n, c), |_| next());
            let w = ServedWeights {
                w: Array2::from_shape_fn((c, d), |_| next()),
                b: (0..c).map(|_| next()).collect(),
            };
            let got = logits(&phi, &z, &w);
            let want = naive(&phi, &z, &w);
            prop_assert_eq!(got.dim(), (n, c));
            for (g, w) in got.iter().zip(want.iter()) {
                prop_assert!((*g as f64 - w).abs() <= F32_DOT_TOLERANCE * (d as f64 + 2.0));
            }
        }
    }
}
