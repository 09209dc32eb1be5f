//! The exact statistics of a head: A = Σ φ̃ φ̃ᵀ and B = Σ φ̃ rᵀ over the current samples, in
//! integers.
//!
//! φ̃ = [q(φ); 2^F] and r are fixed-point integers with |value| ≤ 2^24 (see [`super::fixed`]), so
//! each product is at most 2^48 in magnitude. Sums are kept in i128: overflow would need more
//! than 2^78 samples, far beyond the documented limit of [`MAX_SAMPLES`]. Integer addition is
//! exact and commutative, so A and B depend only on the set of samples, never on the order of
//! learn and forget calls: after forgetting, they are bit-identical to never having learned.
//!
//! Products of a batch are formed with an f64 matrix product over blocks of [`EXACT_BLOCK`]
//! samples: each product is an integer below 2^48 and each partial sum of at most 16 of them is
//! an integer below 2^52 < 2^53, so every f64 operation in the block is exact, whatever order
//! the matrix product uses. The block sums are then added into the i128 totals.

use faer::{Accum, Mat, Par};

/// The most samples a head may hold (far below where the i128 sums could overflow).
pub const MAX_SAMPLES: u64 = 1 << 40;

/// Samples per exact f64 block (see the module docs).
pub const EXACT_BLOCK: usize = 16;

/// Batches smaller than this are summed directly in integers, without the f64 block product.
const DIRECT_BELOW: usize = 4;

/// A and B of one head, as exact integers in units of 2^(−2F).
#[derive(Clone, PartialEq, Eq)]
pub struct ExactStats {
    /// Augmented dimension p = d + 1 (features and the bias).
    p: usize,
    classes: usize,
    /// The lower triangle of A, column by column: (i, j) with i ≥ j at `offset(j) + i − j`.
    a: Vec<i128>,
    /// B, p × C, row-major.
    b: Vec<i128>,
    n: u64,
}

impl std::fmt::Debug for ExactStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactStats")
            .field("p", &self.p)
            .field("classes", &self.classes)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl ExactStats {
    /// Empty statistics for `dim` features and `classes` classes.
    pub fn new(dim: usize, classes: usize) -> ExactStats {
        let p = dim + 1;
        ExactStats {
            p,
            classes,
            a: vec![0; p * (p + 1) / 2],
            b: vec![0; p * classes],
            n: 0,
        }
    }

    /// Rebuilds statistics from their parts (as stored); `None` when the sizes disagree.
    pub fn from_parts(
        dim: usize,
        classes: usize,
        n: u64,
        a: Vec<i128>,
        b: Vec<i128>,
    ) -> Option<ExactStats> {
        let p = dim + 1;
        (a.len() == p * (p + 1) / 2 && b.len() == p * classes).then_some(ExactStats {
            p,
            classes,
            a,
            b,
            n,
        })
    }

    pub fn dim(&self) -> usize {
        self.p - 1
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The number of samples summed.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// The packed lower triangle of A (see the field docs).
    pub fn a_packed(&self) -> &[i128] {
        &self.a
    }

    /// B, p × C, row-major.
    pub fn b(&self) -> &[i128] {
        &self.b
    }

    fn offset(&self, j: usize) -> usize {
        j * self.p - (j * j - j) / 2
    }

    /// A[i][j] (either triangle).
    pub fn a(&self, i: usize, j: usize) -> i128 {
        let (i, j) = if i >= j { (i, j) } else { (j, i) };
        self.a[self.offset(j) + i - j]
    }

    /// Adds (`sign` = 1) or subtracts (`sign` = −1) samples: `q` holds k × d quantized features
    /// and `r` k × C quantized targets, row-major; `one` is the fixed-point 1 of the bias.
    pub fn accumulate(&mut self, q: &[i32], r: &[i32], one: i32, sign: i8) {
        let d = self.p - 1;
        let k = r.len() / self.classes;
        assert_eq!(q.len(), k * d, "features are k × d");
        assert_eq!(r.len(), k * self.classes, "targets are k × C");
        if k < DIRECT_BELOW {
            self.accumulate_direct(q, r, one, sign);
            return;
        }
        let mut x = Mat::<f64>::zeros(0, 0);
        let mut t = Mat::<f64>::zeros(0, 0);
        let mut xtx = Mat::<f64>::zeros(self.p, self.p);
        let mut xtr = Mat::<f64>::zeros(self.p, self.classes);
        for start in (0..k).step_by(EXACT_BLOCK) {
            let m = EXACT_BLOCK.min(k - start);
            x.resize_with(m, self.p, |_, _| 0.0);
            t.resize_with(m, self.classes, |_, _| 0.0);
            for s in 0..m {
                let row = &q[(start + s) * d..(start + s + 1) * d];
                for (j, &v) in row.iter().enumerate() {
                    x[(s, j)] = v as f64;
                }
                x[(s, d)] = one as f64;
                for c in 0..self.classes {
                    t[(s, c)] = r[(start + s) * self.classes + c] as f64;
                }
            }
            faer::linalg::matmul::matmul(
                xtx.as_mut(),
                Accum::Replace,
                x.transpose(),
                x.as_ref(),
                1.0,
                Par::Seq,
            );
            faer::linalg::matmul::matmul(
                xtr.as_mut(),
                Accum::Replace,
                x.transpose(),
                t.as_ref(),
                1.0,
                Par::Seq,
            );
            let sign = sign as i128;
            for j in 0..self.p {
                let off = self.offset(j);
                let col = xtx.col(j);
                for i in j..self.p {
                    self.a[off + i - j] += sign * (col[i] as i64 as i128);
                }
            }
            for i in 0..self.p {
                for c in 0..self.classes {
                    self.b[i * self.classes + c] += sign * (xtr[(i, c)] as i64 as i128);
                }
            }
        }
        scrub(&mut x);
        scrub(&mut t);
        scrub(&mut xtx);
        scrub(&mut xtr);
        if sign > 0 {
            self.n += k as u64;
        } else {
            self.n -= k as u64;
        }
    }

    /// [`ExactStats::accumulate`] for a few samples: products of the lower triangle straight
    /// into the i128 sums (no p × p temporary, half the multiplications).
    fn accumulate_direct(&mut self, q: &[i32], r: &[i32], one: i32, sign: i8) {
        let (d, c) = (self.p - 1, self.classes);
        let k = r.len() / c;
        let sign = sign as i128;
        let mut x = vec![0i64; self.p];
        for s in 0..k {
            for (xi, &v) in x.iter_mut().zip(&q[s * d..(s + 1) * d]) {
                *xi = v as i64;
            }
            x[d] = one as i64;
            for j in 0..self.p {
                let off = self.offset(j);
                let xj = x[j];
                for (a, &xi) in self.a[off..off + self.p - j].iter_mut().zip(&x[j..]) {
                    *a += sign * (xi * xj) as i128;
                }
            }
            for (i, &xi) in x.iter().enumerate() {
                for (b, &rc) in self.b[i * c..(i + 1) * c]
                    .iter_mut()
                    .zip(&r[s * c..(s + 1) * c])
                {
                    *b += sign * (xi * rc as i64) as i128;
                }
            }
        }
        x.fill(0);
        if sign > 0 {
            self.n += k as u64;
        } else {
            self.n -= k as u64;
        }
    }

    /// A in f64, real units, with the ridge λ added to the diagonal: the matrix to factor.
    pub fn a_f64(&self, lambda: f64, frac_bits: u32) -> Mat<f64> {
        let unit = (-2.0 * frac_bits as f64).exp2();
        let mut a = Mat::<f64>::zeros(self.p, self.p);
        for j in 0..self.p {
            let off = self.offset(j);
            for i in j..self.p {
                let v = self.a[off + i - j] as f64 * unit;
                a[(i, j)] = v;
                a[(j, i)] = v;
            }
            a[(j, j)] += lambda;
        }
        a
    }

    /// B in f64, real units, p × C.
    pub fn b_f64(&self, frac_bits: u32) -> Mat<f64> {
        let unit = (-2.0 * frac_bits as f64).exp2();
        Mat::from_fn(self.p, self.classes, |i, c| {
            self.b[i * self.classes + c] as f64 * unit
        })
    }

    /// The largest diagonal entry of A after adding the samples `q` (k × d, row-major) with
    /// bias `one`, exactly (units of 2^(−2F)).
    pub fn max_diagonal_with(&self, q: &[i32], one: i32) -> i128 {
        let d = self.p - 1;
        let k = q.len().checked_div(d).unwrap_or(0);
        let bias = self.a(d, d) + k as i128 * one as i128 * one as i128;
        (0..d)
            .map(|j| {
                let added: i128 = q
                    .chunks_exact(d)
                    .map(|row| row[j] as i128 * row[j] as i128)
                    .sum();
                self.a(j, j) + added
            })
            .fold(bias, i128::max)
    }

    /// Back to no samples at all.
    pub fn clear(&mut self) {
        self.a.fill(0);
        self.b.fill(0);
        self.n = 0;
    }
}

/// Overwrites a matrix that held sample data.
pub(crate) fn scrub(m: &mut Mat<f64>) {
    for j in 0..m.ncols() {
        m.col_mut(j).fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_diagonal_with_is_the_largest_diagonal_entry_after_accumulating() {
        let (d, c, one) = (4, 2, 1 << 10);
        let mut stats = ExactStats::new(d, c);
        stats.accumulate(&[3, -500, 7, 0, 1, 2, 3, 4], &[1, 2, 3, 4], one, 1);
        for q in [&[0, 0, 0, 0][..], &[40_000, 0, 0, 1, 0, -60_000, 0, 0]] {
            let k = q.len() / d;
            let mut after = stats.clone();
            after.accumulate(q, &vec![0; k * c], one, 1);
            let expect = (0..=d).map(|i| after.a(i, i)).max().unwrap();
            assert_eq!(stats.max_diagonal_with(q, one), expect);
        }
    }

    /// The plain definition, for comparison: Σ over samples of products, one at a time.
    fn naive(
        q: &[i32],
        r: &[i32],
        d: usize,
        c: usize,
        one: i32,
    ) -> (Vec<Vec<i128>>, Vec<Vec<i128>>) {
        let k = r.len() / c;
        let p = d + 1;
        let mut a = vec![vec![0i128; p]; p];
        let mut b = vec![vec![0i128; c]; p];
        for s in 0..k {
            let mut x: Vec<i128> = q[s * d..(s + 1) * d].iter().map(|&v| v as i128).collect();
            x.push(one as i128);
            for i in 0..p {
                for j in 0..p {
                    a[i][j] += x[i] * x[j];
                }
                for t in 0..c {
                    b[i][t] += x[i] * r[s * c + t] as i128;
                }
            }
        }
        (a, b)
    }

    #[test]
    fn matches_the_definition_at_the_range_limits() {
        let (d, c, one) = (5, 3, 1 << 24);
        let lim = 1 << 24;
        // The direct path (k < 4) and the block path, with partial and several blocks.
        for k in [1, 2, 3, 4, 16, 17, 37] {
            let q: Vec<i32> = (0..k * d)
                .map(|i| {
                    if i % 3 == 0 {
                        lim
                    } else if i % 3 == 1 {
                        -lim
                    } else {
                        (i as i32) * 7919 % lim
                    }
                })
                .collect();
            let r: Vec<i32> = (0..k * c)
                .map(|i| if i % 2 == 0 { lim } else { -(i as i32) })
                .collect();
            let mut s = ExactStats::new(d, c);
            s.accumulate(&q, &r, one, 1);
            let (a, b) = naive(&q, &r, d, c, one);
            for (i, (a_row, b_row)) in a.iter().zip(&b).enumerate() {
                for (j, &v) in a_row.iter().enumerate() {
                    assert_eq!(s.a(i, j), v, "k = {k}: A[{i}][{j}]");
                }
                for (t, &v) in b_row.iter().enumerate() {
                    assert_eq!(s.b()[i * c + t], v, "k = {k}: B[{i}][{t}]");
                }
            }
            assert_eq!(s.n(), k as u64);
            s.accumulate(&q, &r, one, -1);
            assert_eq!(
                s,
                ExactStats::new(d, c),
                "k = {k}: subtracting restores zero"
            );
        }
    }

    #[test]
    fn subtracting_restores_the_bits() {
        let (d, c, one) = (4, 2, 256);
        let q1: Vec<i32> = (0..20 * d as i32).map(|i| i * 31 % 977 - 400).collect();
        let r1: Vec<i32> = (0..20 * c as i32).map(|i| i * 17 % 301 - 150).collect();
        let q2: Vec<i32> = (0..3 * d as i32).map(|i| i * 13 % 511 - 255).collect();
        let r2: Vec<i32> = (0..3 * c as i32).map(|i| i % 7).collect();
        let mut s = ExactStats::new(d, c);
        s.accumulate(&q1, &r1, one, 1);
        let before = s.clone();
        s.accumulate(&q2, &r2, one, 1);
        assert_ne!(s, before);
        s.accumulate(&q2, &r2, one, -1);
        assert_eq!(s, before);
    }
}
