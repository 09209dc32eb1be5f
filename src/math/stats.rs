//! The exact statistics of a head: A = Σ φ̃ φ̃ᵀ and B = Σ φ̃ rᵀ over the current samples, in
//! integers.
//!
//! φ̃ = [q(φ); 2^F] and r are fixed-point integers with |value| ≤ 2^24 (see [`super::fixed`]), so
//! each product is at most 2^48 in magnitude. Sums are kept in i128: overflow would need more
//! than 2^78 samples, far beyond the documented limit of [`MAX_SAMPLES`]. Integer addition is
//! exact and commutative, so A and B depend only on the set of samples, never on the order of
//! learn and forget calls: after forgetting, they are bit-identical to never having learned.
//!
//! Changes go into i64 deltas beside the totals, half the bytes of the totals to read and
//! write: the deltas stay exact while they hold the products of at most [`EXACT_ROWS`]
//! samples (each product is at most 2^48), and they are folded into the totals before they
//! could hold more. Every value read is total + delta. A few samples at a time (a typical
//! forget) are added entry by entry; larger batches through exact f64 matrix products, in
//! chunks small enough that no f64 sum is ever rounded (see the `products` module).

pub(crate) mod products;

use faer::Mat;
use zeroize::Zeroizing;

use super::secret::{wipe, SecretMat};

use products::Chunk;
pub use products::EXACT_ROWS;

/// The most samples a head may hold (far below where the i128 sums could overflow).
pub const MAX_SAMPLES: u64 = 1 << 40;

/// Batches smaller than this are added entry by entry, without matrix products.
const DIRECT_BELOW: usize = 4;

/// The most bytes of f64 rows one chunk holds: large batches are split into chunks of at most
/// this many, and of at most [`EXACT_ROWS`] samples.
const BLOCK_BYTES: usize = 32 << 20;

/// Adds (`sign` = 1) or subtracts (−1) one sample's products to the i64 deltas: `a` (the lower
/// triangle, column by column) += sign · x xᵀ and `b` (p × C, row-major) += sign · x rᵀ, for
/// x = [q; 2^F] and r of at most 2^24 in magnitude: each product is exact in i64, and a delta
/// sums at most [`EXACT_ROWS`] of them (no overflow). Compiled for the widest vectors the CPU
/// has, where an i32 × i32 → i64 product is one instruction for several entries.
fn add_sample(a: &mut [i64], b: &mut [i64], x: &[i32], r: &[i32], sign: i32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        unsafe { add_sample_avx512(a, b, x, r, sign) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe { add_sample_avx2(a, b, x, r, sign) };
        return;
    }
    add_sample_any(a, b, x, r, sign);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_sample_avx512(a: &mut [i64], b: &mut [i64], x: &[i32], r: &[i32], sign: i32) {
    add_sample_any(a, b, x, r, sign);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_sample_avx2(a: &mut [i64], b: &mut [i64], x: &[i32], r: &[i32], sign: i32) {
    add_sample_any(a, b, x, r, sign);
}

#[inline(always)]
fn add_sample_any(a: &mut [i64], b: &mut [i64], x: &[i32], r: &[i32], sign: i32) {
    let (p, c) = (x.len(), r.len());
    let mut off = 0;
    for j in 0..p {
        let xj = (sign * x[j]) as i64;
        for (a, &xi) in a[off..off + p - j].iter_mut().zip(&x[j..]) {
            *a += xi as i64 * xj;
        }
        off += p - j;
    }
    for (i, &xi) in x.iter().enumerate() {
        let xi = (sign * xi) as i64;
        for (b, &rc) in b[i * c..(i + 1) * c].iter_mut().zip(r) {
            *b += xi * rc as i64;
        }
    }
}

/// A and B of one head, as exact integers in units of 2^(−2F); zeroized when dropped (G4).
#[derive(Clone)]
pub struct ExactStats {
    /// Augmented dimension p = d + 1 (features and the bias).
    p: usize,
    classes: usize,
    /// The lower triangle of A, column by column: (i, j) with i ≥ j at `offset(j) + i − j`
    /// (plus `a_delta`'s entry).
    a: Vec<i128>,
    /// B, p × C, row-major (plus `b_delta`'s entry).
    b: Vec<i128>,
    /// Recent samples' products, laid out as `a` and `b` (see the module docs).
    a_delta: Vec<i64>,
    b_delta: Vec<i64>,
    /// How many samples' products the deltas hold (at most [`EXACT_ROWS`]).
    delta_rows: usize,
    n: u64,
}

impl PartialEq for ExactStats {
    fn eq(&self, other: &Self) -> bool {
        self.p == other.p
            && self.classes == other.classes
            && self.n == other.n
            && self.a_values().eq(other.a_values())
            && self.b_values().eq(other.b_values())
    }
}

impl Eq for ExactStats {}

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
            a_delta: vec![0; p * (p + 1) / 2],
            b_delta: vec![0; p * classes],
            delta_rows: 0,
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
        (a.len() == p * (p + 1) / 2 && b.len() == p * classes).then(|| ExactStats {
            p,
            classes,
            a_delta: vec![0; a.len()],
            b_delta: vec![0; b.len()],
            delta_rows: 0,
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

    /// The packed lower triangle of A (column j from its diagonal down), entry by entry.
    pub fn a_values(&self) -> impl Iterator<Item = i128> + '_ {
        self.a
            .iter()
            .zip(&self.a_delta)
            .map(|(&t, &d)| t + d as i128)
    }

    /// B, p × C, row-major, entry by entry.
    pub fn b_values(&self) -> impl Iterator<Item = i128> + '_ {
        self.b
            .iter()
            .zip(&self.b_delta)
            .map(|(&t, &d)| t + d as i128)
    }

    fn offset(&self, j: usize) -> usize {
        products::packed_offset(self.p, j)
    }

    /// A's entry (i, j) (either triangle).
    pub fn a(&self, i: usize, j: usize) -> i128 {
        let (i, j) = if i >= j { (i, j) } else { (j, i) };
        let at = self.offset(j) + i - j;
        self.a[at] + self.a_delta[at] as i128
    }

    /// Adds the deltas into the totals and clears them.
    fn fold(&mut self) {
        for (t, d) in self.a.iter_mut().zip(self.a_delta.iter_mut()) {
            *t += *d as i128;
            *d = 0;
        }
        for (t, d) in self.b.iter_mut().zip(self.b_delta.iter_mut()) {
            *t += *d as i128;
            *d = 0;
        }
        self.delta_rows = 0;
    }

    /// Adds (`sign` = 1) or subtracts (`sign` = −1) samples: `q` holds k × d quantized features
    /// and `r` k × C quantized targets, row-major; `one` is the fixed-point 1 of the bias.
    pub fn accumulate(&mut self, q: &[i32], r: &[i32], one: i32, sign: i8) {
        let block = EXACT_ROWS
            .min(BLOCK_BYTES / (8 * (self.p + self.classes)))
            .max(1);
        self.accumulate_in_blocks(q, r, one, sign, block);
    }

    /// [`ExactStats::accumulate`] in chunks of at most `block` ≤ [`EXACT_ROWS`] samples (and
    /// fewer where the f64 products would not be exact: see the `products` module).
    fn accumulate_in_blocks(&mut self, q: &[i32], r: &[i32], one: i32, sign: i8, block: usize) {
        let (d, c) = (self.p - 1, self.classes);
        let k = r.len() / c;
        assert_eq!(q.len(), k * d, "features are k × d");
        assert_eq!(r.len(), k * c, "targets are k × C");
        if k < DIRECT_BELOW {
            self.accumulate_direct(q, r, one, sign);
            return;
        }
        let mut chunk = Chunk::new(self.p, c, block.min(k));
        let mut x = Zeroizing::new(vec![one; self.p]);
        let mut s = 0;
        while s < k {
            chunk.clear();
            while s < k {
                x[..d].copy_from_slice(&q[s * d..(s + 1) * d]);
                if !chunk.push(&x, &r[s * c..(s + 1) * c]) {
                    break;
                }
                s += 1;
            }
            if self.delta_rows + chunk.len() > EXACT_ROWS {
                self.fold();
            }
            chunk.add_products(&mut self.a_delta, &mut self.b_delta, sign as i64);
            self.delta_rows += chunk.len();
        }
        if sign > 0 {
            self.n += k as u64;
        } else {
            self.n -= k as u64;
        }
    }

    /// [`ExactStats::accumulate`] for a few samples: products of the lower triangle into the
    /// i64 deltas (no p × p temporary, half the multiplications).
    fn accumulate_direct(&mut self, q: &[i32], r: &[i32], one: i32, sign: i8) {
        let (d, c) = (self.p - 1, self.classes);
        let k = r.len() / c;
        if self.delta_rows + k > EXACT_ROWS {
            self.fold();
        }
        self.delta_rows += k;
        let sign = sign as i32;
        let mut x = Zeroizing::new(vec![0i32; self.p]);
        for s in 0..k {
            x[..d].copy_from_slice(&q[s * d..(s + 1) * d]);
            x[d] = one;
            add_sample(
                &mut self.a_delta,
                &mut self.b_delta,
                &x,
                &r[s * c..(s + 1) * c],
                sign,
            );
        }
        if sign > 0 {
            self.n += k as u64;
        } else {
            self.n -= k as u64;
        }
    }

    /// A in f64, real units, with the ridge λ added to the diagonal: the matrix to factor.
    /// Each entry is the integer rounded to the nearest f64 (ties to even), times 2^(−2F).
    pub fn a_f64(&self, lambda: f64, frac_bits: u32) -> SecretMat {
        let p = self.p;
        let mut a = SecretMat::zeros(p, p);
        self.a_f64_lower_into(&mut a, lambda, frac_bits);
        // The upper triangle mirrors the lower one, in tiles so that the columns read and
        // written stay in cache.
        const TILE: usize = 32;
        for j0 in (0..p).step_by(TILE) {
            for i0 in (0..j0 + TILE).step_by(TILE) {
                for j in j0..(j0 + TILE).min(p) {
                    for i in i0..(i0 + TILE).min(j) {
                        a[(i, j)] = a[(j, i)];
                    }
                }
            }
        }
        a
    }

    /// [`ExactStats::a_f64`]'s lower triangle (diagonal included) written into `a` (p × p, with
    /// contiguous columns), whose strict upper triangle is left as it was.
    pub fn a_f64_lower_into(&self, a: &mut Mat<f64>, lambda: f64, frac_bits: u32) {
        let unit = (-2.0 * frac_bits as f64).exp2();
        let p = self.p;
        assert!(a.nrows() == p && a.ncols() == p, "A is p × p");
        for j in 0..p {
            let at = self.offset(j)..self.offset(j) + p - j;
            let (total, delta) = (&self.a[at.clone()], &self.a_delta[at]);
            for ((v, &t), &e) in a.col_as_slice_mut(j)[j..].iter_mut().zip(total).zip(delta) {
                *v = to_f64(t + e as i128) * unit;
            }
            a[(j, j)] += lambda;
        }
    }

    /// Bᵀ in f64, real units, C × p (rounded as in [`ExactStats::a_f64`]).
    pub fn bt_f64(&self, frac_bits: u32) -> SecretMat {
        let unit = (-2.0 * frac_bits as f64).exp2();
        SecretMat::from_fn(self.classes, self.p, |c, i| self.b_real(i, c, unit))
    }

    /// B in f64, real units, p × C (rounded as in [`ExactStats::a_f64`]).
    pub fn b_f64(&self, frac_bits: u32) -> SecretMat {
        let unit = (-2.0 * frac_bits as f64).exp2();
        SecretMat::from_fn(self.p, self.classes, |i, c| self.b_real(i, c, unit))
    }

    /// B's entry (i, c) rounded to f64 and scaled by `unit`.
    fn b_real(&self, i: usize, c: usize, unit: f64) -> f64 {
        let at = i * self.classes + c;
        to_f64(self.b[at] + self.b_delta[at] as i128) * unit
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
        self.a_delta.fill(0);
        self.b_delta.fill(0);
        self.delta_rows = 0;
        self.n = 0;
    }
}

impl Drop for ExactStats {
    fn drop(&mut self) {
        wipe(&mut self.a);
        wipe(&mut self.b);
        wipe(&mut self.a_delta);
        wipe(&mut self.b_delta);
    }
}

/// `x` rounded to the nearest f64, ties to even, as `x as f64` does: through i64 when it fits
/// (one instruction on x86-64 and aarch64, the same rounding) instead of the software i128
/// conversion.
fn to_f64(x: i128) -> f64 {
    match i64::try_from(x) {
        Ok(x) => x as f64,
        Err(_) => wide_to_f64(x),
    }
}

/// Out of line, or the optimizer merges both of [`to_f64`]'s branches back into the slow one.
#[inline(never)]
fn wide_to_f64(x: i128) -> f64 {
    x as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The fast conversion rounds exactly as the i128 one, at the edges of i64 and of f64's
    /// 53-bit significand (where ties to even show) and beyond i64.
    #[test]
    fn to_f64_rounds_as_i128_as_f64() {
        let mut cases = vec![0i128, 1, -1, i64::MAX as i128, i64::MIN as i128];
        for e in [52u32, 53, 54, 62, 63, 64, 70, 100] {
            for d in -3i128..=3 {
                cases.push((1i128 << e) + d);
                cases.push(-(1i128 << e) + d);
                cases.push((1i128 << e) * 3 / 2 + d);
            }
        }
        let mut x = 0x9e3779b97f4a7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push((x as i64 as i128) >> (x % 64));
        }
        for v in cases {
            assert_eq!(to_f64(v).to_bits(), (v as f64).to_bits(), "{v}");
        }
    }

    /// Each compiled version of [`add_sample`] this CPU runs gives the exact products, at ±2^24
    /// (the largest stored values) and at random values, adding and subtracting.
    #[test]
    fn every_add_sample_kernel_is_exact() {
        type Kernel = fn(&mut [i64], &mut [i64], &[i32], &[i32], i32);
        let mut kernels: Vec<(&str, Kernel)> = vec![("portable", add_sample_any)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                kernels.push(("avx2", |a, b, x, r, s| unsafe {
                    add_sample_avx2(a, b, x, r, s)
                }));
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                kernels.push(("avx512", |a, b, x, r, s| unsafe {
                    add_sample_avx512(a, b, x, r, s)
                }));
            }
        }
        let (p, c) = (37, 5);
        let mut rng = StdRng::seed_from_u64(7);
        let limit = 1i32 << 24;
        let mut samples: Vec<(Vec<i32>, Vec<i32>)> = vec![
            (vec![limit; p], vec![-limit; c]),
            (vec![-limit; p], vec![limit; c]),
        ];
        for _ in 0..4 {
            samples.push((
                (0..p).map(|_| rng.random_range(-limit..=limit)).collect(),
                (0..c).map(|_| rng.random_range(-limit..=limit)).collect(),
            ));
        }
        for (name, kernel) in kernels {
            let (mut a, mut b) = (vec![0i64; p * (p + 1) / 2], vec![0i64; p * c]);
            let (mut a_ref, mut b_ref) = (vec![0i128; a.len()], vec![0i128; b.len()]);
            for (n, (x, r)) in samples.iter().enumerate() {
                let sign = if n % 3 == 2 { -1 } else { 1 };
                kernel(&mut a, &mut b, x, r, sign);
                let mut at = 0;
                for j in 0..p {
                    for i in j..p {
                        a_ref[at] += sign as i128 * x[i] as i128 * x[j] as i128;
                        at += 1;
                    }
                }
                for i in 0..p {
                    for k in 0..c {
                        b_ref[i * c + k] += sign as i128 * x[i] as i128 * r[k] as i128;
                    }
                }
            }
            assert!(
                a.iter().zip(&a_ref).all(|(&v, &e)| v as i128 == e),
                "{name}: A"
            );
            assert!(
                b.iter().zip(&b_ref).all(|(&v, &e)| v as i128 == e),
                "{name}: B"
            );
        }
    }

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
        let mut rng = StdRng::seed_from_u64(1);
        // The direct path (k < DIRECT_BELOW) and the block path, with partial and several blocks.
        for k in [1, 2, 3, 11, 12, 16, 17, 37] {
            // Every third value at each limit, the others anywhere in range.
            let q: Vec<i32> = (0..k * d)
                .map(|i| match i % 3 {
                    0 => lim,
                    1 => -lim,
                    _ => rng.random_range(-lim..=lim),
                })
                .collect();
            let r: Vec<i32> = (0..k * c)
                .map(|i| {
                    if i % 2 == 0 {
                        lim
                    } else {
                        rng.random_range(-lim..=lim)
                    }
                })
                .collect();
            let (a, b) = naive(&q, &r, d, c, one);
            // One block, and blocks of 5 (several, the last one partial).
            for block in [EXACT_ROWS, 5] {
                let mut s = ExactStats::new(d, c);
                s.accumulate_in_blocks(&q, &r, one, 1, block);
                assert_same(&s, &a, &b, &format!("k = {k}, blocks of {block}"));
                assert_eq!(s.n(), k as u64);
                s.accumulate_in_blocks(&q, &r, one, -1, block);
                assert_eq!(
                    s,
                    ExactStats::new(d, c),
                    "k = {k}: subtracting restores zero"
                );
            }
        }
    }

    fn assert_same(s: &ExactStats, a: &[Vec<i128>], b: &[Vec<i128>], what: &str) {
        let c = s.classes();
        for (i, (a_row, b_row)) in a.iter().zip(b).enumerate() {
            for (j, &v) in a_row.iter().enumerate() {
                assert_eq!(s.a(i, j), v, "{what}: A[{i}][{j}]");
            }
            for (t, &v) in b_row.iter().enumerate() {
                assert_eq!(s.b_values().nth(i * c + t), Some(v), "{what}: B[{i}][{t}]");
            }
        }
    }

    /// The i64 block bound is tight and holds: one block of [`EXACT_ROWS`] samples whose every
    /// value is at the range limit (every product ±2^48, all of one sign in each entry) sums
    /// exactly, while one more such product would not fit in i64.
    #[test]
    fn a_full_block_at_the_range_limits_is_exact() {
        let (d, c, one) = (3, 2, 1 << 24);
        let lim = 1i32 << 24;
        assert!(((EXACT_ROWS as i64 + 1) as i128 * (1i128 << 48)) > i64::MAX as i128);
        assert!((EXACT_ROWS as i128 * (1i128 << 48)) <= i64::MAX as i128);
        let k = EXACT_ROWS;
        // Feature 0 at +2^24, feature 1 at −2^24, feature 2 alternating; targets at ±2^24.
        let q: Vec<i32> = (0..k)
            .flat_map(|s| [lim, -lim, if s % 2 == 0 { lim } else { -lim }])
            .collect();
        let r: Vec<i32> = (0..k).flat_map(|_| [lim, -lim]).collect();
        let (a, b) = naive(&q, &r, d, c, one);
        let mut s = ExactStats::new(d, c);
        s.accumulate_in_blocks(&q, &r, one, 1, EXACT_ROWS);
        assert_same(&s, &a, &b, "a full block");
        let full = k as i128 * (1i128 << 48);
        assert_eq!(s.a(0, 0), full);
        assert_eq!(s.a(1, 0), -full);
        assert_eq!(s.b_values().nth(1), Some(-full));
        s.accumulate_in_blocks(&q, &r, one, -1, EXACT_ROWS);
        assert_eq!(s, ExactStats::new(d, c));
    }

    #[test]
    fn subtracting_restores_the_bits() {
        let (d, c, one) = (4, 2, 256);
        let mut rng = StdRng::seed_from_u64(2);
        let mut values =
            |n: usize| -> Vec<i32> { (0..n).map(|_| rng.random_range(-1000..=1000)).collect() };
        let (q1, r1, q2, r2) = (values(20 * d), values(20 * c), values(3 * d), values(3 * c));
        let mut s = ExactStats::new(d, c);
        s.accumulate(&q1, &r1, one, 1);
        let before = s.clone();
        s.accumulate(&q2, &r2, one, 1);
        assert_ne!(s, before);
        s.accumulate(&q2, &r2, one, -1);
        assert_eq!(s, before);
    }

    /// One sample at a time (the i64 deltas), at the range limits and past the most samples a
    /// delta may hold: every entry stays exact, the deltas folded before they could overflow.
    #[test]
    fn single_samples_at_the_range_limits_stay_exact_past_a_fold() {
        let (d, c) = (2, 1);
        let top = 1i32 << 24;
        let (q, r) = ([top, -top], [top]);
        let mut s = ExactStats::new(d, c);
        let rows = EXACT_ROWS + 5;
        for _ in 0..rows {
            s.accumulate(&q, &r, top, 1);
        }
        assert!(s.delta_rows <= EXACT_ROWS);
        let big = rows as i128 * (1i128 << 48);
        assert_eq!(s.a(0, 0), big);
        assert_eq!(s.a(1, 0), -big);
        assert_eq!(s.a(2, 1), -big);
        assert_eq!(s.b_values().collect::<Vec<_>>(), vec![big, -big, big]);
        for _ in 0..rows {
            s.accumulate(&q, &r, top, -1);
        }
        assert_eq!(s, ExactStats::new(d, c));
        assert!(s.a_values().chain(s.b_values()).all(|v| v == 0));
    }
}
