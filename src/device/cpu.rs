//! The head's forward pass on the CPU, in f32: logits = z + φ Wᵀ + b.

use std::borrow::Cow;

use ndarray::{Array2, Axis};

use crate::math::weights::ServedWeights;

/// Logits `[n, C]` for features `phi` `[n, d]` and mapped core logits `z` `[n, C]`. A sample's
/// logits do not depend on the other samples of the batch, bit for bit: the way of computing
/// them depends only on W's size.
pub fn logits(phi: &Array2<f32>, z: &Array2<f32>, weights: &ServedWeights) -> Array2<f32> {
    let mut out = z.clone();
    let d = phi.ncols();
    match weights.w.as_slice() {
        Some(w) if w.len() <= DOTS_UP_TO => {
            for (row, x) in out.rows_mut().into_iter().zip(phi.rows()) {
                let x = x
                    .as_slice()
                    .map_or_else(|| x.to_vec().into(), Cow::Borrowed);
                for (v, w) in row.into_iter().zip(w.chunks_exact(d)) {
                    *v += dot(&x, w);
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

/// Heads whose W has at most this many entries (mnist-core's: 10 × 128) take one dot product
/// per logit: for them a matrix product's set-up (packing both operands) costs more than the
/// products do at small batches (at batch 1, 2.4–3.6 µs against 0.83 µs for the whole forward
/// pass this way).
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

    /// Features φ `[n, d]`, core logits z `[n, C]` and weights W `[C, d]`, b, uniform in
    /// [−1, 1).
    fn random_case(
        n: usize,
        d: usize,
        c: usize,
        seed: u64,
    ) -> (Array2<f32>, Array2<f32>, ServedWeights) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut next = move || rng.random_range(-1.0f32..1.0);
        let phi = Array2::from_shape_fn((n, d), |_| next());
        let z = Array2::from_shape_fn((n, c), |_| next());
        let w = ServedWeights {
            w: Array2::from_shape_fn((c, d), |_| next()),
            b: (0..c).map(|_| next()).collect(),
        };
        (phi, z, w)
    }

    /// f32 accumulation over d terms of magnitude ≤ 1 differs from f64 by at most d·2^-23·scale.
    const F32_DOT_TOLERANCE: f64 = 1e-5;

    proptest! {
        #[test]
        /// Both ways: one dot product per logit (W up to `DOTS_UP_TO` entries) and the matrix
        /// product.
        fn matches_the_naive_loop(n in 0usize..9, d in 1usize..600, c in 1usize..13, seed in any::<u64>()) {
            let (phi, z, w) = random_case(n, d, c, seed);
            let got = logits(&phi, &z, &w);
            let want = naive(&phi, &z, &w);
            prop_assert_eq!(got.dim(), (n, c));
            for (g, w) in got.iter().zip(want.iter()) {
                prop_assert!((*g as f64 - w).abs() <= F32_DOT_TOLERANCE * (d as f64 + 2.0));
            }
        }

        /// Each sample's logits alone are those of its row in the batch, bit for bit, both ways
        /// (mnist-core's head, 10 × 128, and wider ones).
        #[test]
        fn a_sample_alone_is_its_row_in_a_batch(n in 2usize..70, d in 100usize..600, c in 2usize..13, seed in any::<u64>()) {
            let (phi, z, w) = random_case(n, d, c, seed);
            let batch = logits(&phi, &z, &w);
            for i in [0, n / 2, n - 1] {
                let one = |a: &Array2<f32>| a.slice(ndarray::s![i..i + 1, ..]).to_owned();
                let alone = logits(&one(&phi), &one(&z), &w);
                prop_assert_eq!(alone.row(0), batch.row(i));
            }
        }
    }
}
