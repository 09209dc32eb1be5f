//! Exact sums of products of fixed-point rows, through f64 matrix products, for
//! [`super::ExactStats::accumulate`].
//!
//! Every value is an integer with |value| ≤ 2^24, and an f64 holds every integer of magnitude
//! up to 2^53 exactly. A product of two such values is exact in f64 (at most 2^48), and so is a
//! sum of them as long as every partial sum is an integer of at most 2^53: whatever the order
//! of the additions, blocked, vectorized or fused into multiply-adds, nothing is rounded. Every
//! partial sum of an entry Σ_s x_si · x_sj is at most Σ_s |x_si · x_sj| in magnitude, and by
//! Cauchy–Schwarz that is at most max(Σ_s x_si², Σ_s x_sj²). So a batch is cut into chunks in
//! which every column's sum of squares (features, bias and targets alike) is at most 2^53
//! ([`exact_chunk`]), and each chunk's A = XᵀX and B = XᵀR are computed in f64, exactly, then
//! converted to i64 and added into the caller's sums.
//!
//! The products are Lethe's own kernel, not a library's matrix product: those pack their
//! operands (here, the samples' rows) into scratch memory of their own that is never zeroized,
//! against G4. A batch is transposed into feature rows (one row per feature, one value per
//! sample), and each entry is the dot product of two such rows, computed in register tiles of
//! R × S entries with fused multiply-adds; each tile's kernel is compiled for the widest of
//! AVX-512 and AVX2 the CPU has (chosen at run time) and as plain Rust otherwise.

use zeroize::Zeroizing;

use crate::math::threads::{cores_if, run_parts};

/// The most samples an i64 sum may hold: each product is at most 2^48 in magnitude, and
/// (2^15 − 1) · 2^48 < 2^63.
pub const EXACT_ROWS: usize = (1 << 15) - 1;

/// The largest magnitude every partial sum of an exact f64 product may reach.
const EXACT_F64: u64 = 1 << 53;

/// Where column j of a packed lower triangle of side p (each column from its diagonal down)
/// starts.
pub fn packed_offset(p: usize, j: usize) -> usize {
    j * p - (j * j - j) / 2
}

/// How many of the rows `rows(0), rows(1), …` (at most `most`, at least one) form a chunk
/// whose f64 products are exact: every column's sum of squares stays at most 2^53. Each row
/// yields `columns` values, integers with |value| ≤ 2^24.
pub fn exact_chunk<I: IntoIterator<Item = i64>>(
    columns: usize,
    most: usize,
    mut rows: impl FnMut(usize) -> I,
) -> usize {
    // Sums of squares reveal the magnitudes of a chunk's values: zeroized like them (G4).
    let mut sums = Zeroizing::new(vec![0u64; columns]);
    let square = |v: i64| v.unsigned_abs() * v.unsigned_abs();
    for s in 0..most {
        let fits = rows(s)
            .into_iter()
            .zip(sums.iter())
            .all(|(v, &sum)| sum + square(v) <= EXACT_F64);
        if !fits {
            return s.max(1);
        }
        for (sum, v) in sums.iter_mut().zip(rows(s)) {
            *sum += square(v);
        }
    }
    most
}

/// `a[i][j] += sign · Σ_s xt[i][s] · xt[j][s]` for i ≥ j, `a` packed as in
/// [`super::ExactStats`] (column j from its diagonal down), and
/// `b[i][c] += sign · Σ_s xt[i][s] · rt[c][s]` (`b` p × C row-major), where `xt` holds p rows
/// and `rt` C rows of `k` values each: the k samples transposed, one row per feature or
/// target. The samples must form an exact chunk ([`exact_chunk`]), and `a` and `b` must stay
/// within i64 (at most [`EXACT_ROWS`] samples' products in all).
pub fn add_products(a: &mut [i64], b: &mut [i64], xt: &[f64], rt: &[f64], k: usize, sign: i64) {
    let p = xt.len().checked_div(k).unwrap_or(0);
    let threads = cores_if(k * p * p / 2 >= PARALLEL_FROM);
    add_products_with(Width::widest(), threads, a, b, xt, rt, k, sign);
}

/// The instruction sets a tile kernel is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    Plain,
    Avx2,
    Avx512,
}

impl Width {
    fn available(self) -> bool {
        match self {
            Width::Plain => true,
            #[cfg(target_arch = "x86_64")]
            Width::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Width::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Width::Avx2 | Width::Avx512 => false,
        }
    }

    fn widest() -> Width {
        [Width::Avx512, Width::Avx2]
            .into_iter()
            .find(|w| w.available())
            .unwrap_or(Width::Plain)
    }
}

/// [`add_products`] with the kernel `width` on up to `threads` threads.
#[allow(clippy::too_many_arguments)]
fn add_products_with(
    width: Width,
    threads: usize,
    a: &mut [i64],
    b: &mut [i64],
    xt: &[f64],
    rt: &[f64],
    k: usize,
    sign: i64,
) {
    assert!(width.available(), "the CPU runs {width:?}");
    let p = xt.len().checked_div(k).unwrap_or(0);
    let c = rt.len().checked_div(k).unwrap_or(0);
    assert_eq!(a.len(), p * (p + 1) / 2, "a is p's packed triangle");
    assert_eq!(b.len(), p * c, "b is p × C");
    if k == 0 || p == 0 {
        return;
    }
    let job = Job {
        xt,
        rt,
        k,
        p,
        c,
        sign,
    };
    // A's columns in blocks whose rows stay in L2 while every row tile below them streams
    // past once (each tile reused from L1 for all of the block's columns); the blocks are
    // dealt out in turn to the threads, each block's part of `a` its own.
    let block = (COLUMN_BLOCK_BYTES / (8 * k)).max(1).div_ceil(LARGEST_S) * LARGEST_S;
    let mut blocks = Vec::new();
    let mut rest = a;
    for jb in (0..p).step_by(block) {
        let end = (jb + block).min(p);
        let len = job.offset(end) - job.offset(jb);
        let (this, next) = rest.split_at_mut(len);
        blocks.push((jb..end, this));
        rest = next;
    }
    let threads = threads.clamp(1, blocks.len());
    let mut shares: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
    for (n, block) in blocks.into_iter().enumerate() {
        shares[n % threads].push(block);
    }
    // B's rows are shared out evenly (in whole tiles): with many classes, B is most of the
    // work.
    let mut b_rest = b;
    let tiles = p.div_ceil(ROW_TILE);
    let parts: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(t, share)| {
            let rows = (tiles * t / threads * ROW_TILE).min(p)
                ..(tiles * (t + 1) / threads * ROW_TILE).min(p);
            let (this, next) = std::mem::take(&mut b_rest).split_at_mut(rows.len() * c);
            b_rest = next;
            (share, (rows, this))
        })
        .collect();
    run_parts(parts, |(share, b)| job.dispatch(width, share, b));
}

/// Products over at least this many multiply-adds are shared among threads.
const PARALLEL_FROM: usize = 1 << 23;

/// The chunk's transposed rows and the shape of the products.
struct Job<'a> {
    xt: &'a [f64],
    rt: &'a [f64],
    k: usize,
    p: usize,
    c: usize,
    sign: i64,
}

/// A range of A's columns and their part of the packed triangle.
type Block<'a> = (std::ops::Range<usize>, &'a mut [i64]);

impl Job<'_> {
    fn offset(&self, j: usize) -> usize {
        packed_offset(self.p, j)
    }

    /// [`Job::run`] with the kernel `width`, on A's `blocks` and B's rows `b`.
    fn dispatch(&self, width: Width, blocks: Vec<Block<'_>>, b: Block<'_>) {
        match width {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` checked that the CPU has AVX-512F.
            Width::Avx512 => unsafe { self.run_avx512(blocks, b) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` checked that the CPU has AVX2 and FMA.
            Width::Avx2 => unsafe { self.run_avx2(blocks, b) },
            _ => self.run::<2, 4, PLAIN>(blocks, b),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn run_avx512(&self, blocks: Vec<Block<'_>>, b: Block<'_>) {
        self.run::<4, LARGEST_S, AVX512>(blocks, b);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, blocks: Vec<Block<'_>>, b: Block<'_>) {
        self.run::<2, 4, AVX2>(blocks, b);
    }

    /// Every tile of A's lower triangle in `blocks`, and of B's rows in `b` (a range of rows
    /// whose start is a multiple of [`ROW_TILE`], and their part of B), each summed over the
    /// chunk's samples in registers, then added as i64 (exact: every sum is an integer of at
    /// most 2^53). Rows past the end (in the last tiles) are clamped to the last row and their
    /// results dropped.
    #[inline(always)]
    fn run<const R: usize, const S: usize, const KERNEL: u8>(
        &self,
        blocks: Vec<Block<'_>>,
        (b_rows, b): Block<'_>,
    ) {
        let (p, c, k) = (self.p, self.c, self.k);
        let x = |i: usize| &self.xt[i.min(p - 1) * k..(i.min(p - 1) + 1) * k];
        for (columns, a) in blocks {
            let base = self.offset(columns.start);
            for i0 in (columns.start / R * R..p).step_by(R) {
                let rows: [&[f64]; R] = std::array::from_fn(|r| x(i0 + r));
                for j0 in (columns.start..columns.end.min(i0 + R)).step_by(S) {
                    let cols: [&[f64]; S] = std::array::from_fn(|s| x(j0 + s));
                    let t = tile::<R, S, KERNEL>(rows, cols, k);
                    for (s, column) in (0..S).map(|s| (s, j0 + s)) {
                        for (r, i) in (0..R).map(|r| (r, i0 + r)) {
                            if i >= column && i < p && column < columns.end {
                                a[self.offset(column) - base + i - column] +=
                                    self.sign * t[r][s] as i64;
                            }
                        }
                    }
                }
            }
        }
        if c == 0 || b_rows.is_empty() {
            return;
        }
        let r_row = |t: usize| &self.rt[t.min(c - 1) * k..(t.min(c - 1) + 1) * k];
        for c0 in (0..c).step_by(S) {
            let cols: [&[f64]; S] = std::array::from_fn(|s| r_row(c0 + s));
            for i0 in b_rows.clone().step_by(R) {
                let t = tile::<R, S, KERNEL>(std::array::from_fn(|r| x(i0 + r)), cols, k);
                for r in (0..R).take_while(|&r| i0 + r < b_rows.end) {
                    for s in (0..S).take_while(|&s| c0 + s < c) {
                        b[(i0 + r - b_rows.start) * c + c0 + s] += self.sign * t[r][s] as i64;
                    }
                }
            }
        }
    }
}

/// The widest tile of any kernel: column blocks are a multiple of it.
const LARGEST_S: usize = 6;

/// A multiple of every kernel's rows per tile (R): B's rows are shared out in multiples of it.
const ROW_TILE: usize = 4;

/// The most bytes of the column rows one block of A's columns holds (see [`Job::run`]).
const COLUMN_BLOCK_BYTES: usize = 192 << 10;

/// Samples per lane group of the widest kernel: chunks padded with zero samples to a multiple
/// of it need no scalar remainder.
pub const LANES: usize = 8;

/// The tile kernels: plain Rust, AVX2 with FMA, AVX-512.
const PLAIN: u8 = 0;
const AVX2: u8 = 1;
const AVX512: u8 = 2;

/// The R × S dot products of `rows` with `cols` over their k values (each of them k long).
#[inline(always)]
fn tile<const R: usize, const S: usize, const KERNEL: u8>(
    rows: [&[f64]; R],
    cols: [&[f64]; S],
    k: usize,
) -> [[f64; S]; R] {
    assert!(rows.iter().chain(&cols).all(|v| v.len() == k));
    match KERNEL {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only `Job::run_avx512`, compiled for AVX-512F, runs this kernel, and every
        // row is k long.
        AVX512 => unsafe { x86::tile_avx512(rows, cols, k) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only `Job::run_avx2`, compiled for AVX2 and FMA, runs this kernel, and every
        // row is k long.
        AVX2 => unsafe { x86::tile_avx2(rows, cols, k) },
        _ => tile_plain(rows, cols, k),
    }
}

fn tile_plain<const R: usize, const S: usize>(
    rows: [&[f64]; R],
    cols: [&[f64]; S],
    k: usize,
) -> [[f64; S]; R] {
    let mut sums = [[0f64; S]; R];
    for (sum, row) in sums.iter_mut().zip(rows) {
        for (t, col) in sum.iter_mut().zip(cols) {
            *t = (0..k).map(|at| row[at] * col[at]).sum();
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::tile`] in 512-bit lanes of 8 samples.
    #[inline(always)]
    pub unsafe fn tile_avx512<const R: usize, const S: usize>(
        rows: [&[f64]; R],
        cols: [&[f64]; S],
        k: usize,
    ) -> [[f64; S]; R] {
        let mut acc = [[_mm512_setzero_pd(); S]; R];
        let whole = k / 8 * 8;
        let mut at = 0;
        while at < whole {
            let mut u = [_mm512_setzero_pd(); R];
            for r in 0..R {
                u[r] = _mm512_loadu_pd(rows[r].as_ptr().add(at));
            }
            for s in 0..S {
                let v = _mm512_loadu_pd(cols[s].as_ptr().add(at));
                for r in 0..R {
                    acc[r][s] = _mm512_fmadd_pd(u[r], v, acc[r][s]);
                }
            }
            at += 8;
        }
        let mut sums = [[0f64; S]; R];
        for r in 0..R {
            for s in 0..S {
                let mut t = _mm512_reduce_add_pd(acc[r][s]);
                for i in whole..k {
                    t = rows[r][i].mul_add(cols[s][i], t);
                }
                sums[r][s] = t;
            }
        }
        sums
    }

    /// [`super::tile`] in 256-bit lanes of 4 samples.
    #[inline(always)]
    pub unsafe fn tile_avx2<const R: usize, const S: usize>(
        rows: [&[f64]; R],
        cols: [&[f64]; S],
        k: usize,
    ) -> [[f64; S]; R] {
        let mut acc = [[_mm256_setzero_pd(); S]; R];
        let whole = k / 4 * 4;
        let mut at = 0;
        while at < whole {
            let mut u = [_mm256_setzero_pd(); R];
            for r in 0..R {
                u[r] = _mm256_loadu_pd(rows[r].as_ptr().add(at));
            }
            for s in 0..S {
                let v = _mm256_loadu_pd(cols[s].as_ptr().add(at));
                for r in 0..R {
                    acc[r][s] = _mm256_fmadd_pd(u[r], v, acc[r][s]);
                }
            }
            at += 4;
        }
        let mut sums = [[0f64; S]; R];
        for r in 0..R {
            for s in 0..S {
                let mut lanes = [0f64; 4];
                _mm256_storeu_pd(lanes.as_mut_ptr(), acc[r][s]);
                let mut t = lanes.iter().sum::<f64>();
                for i in whole..k {
                    t = rows[r][i].mul_add(cols[s][i], t);
                }
                sums[r][s] = t;
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, lim: i64, seed: u64) -> Vec<i64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 4 {
                    0 => lim,
                    1 => -lim,
                    _ => (x >> 8) as i64 % (lim + 1),
                }
            })
            .collect()
    }

    /// The chunks' f64 products equal the plain definition's i128 sums, on chunks cut at the
    /// exactness bound with values at the range limits, where one more row would round.
    #[test]
    fn chunked_products_match_the_definition_at_the_range_limits() {
        let lim = 1i64 << 24;
        for (p, c, k) in [
            (1, 1, 1),
            (5, 3, 7),
            (9, 10, 70),
            (70, 2, 33),
            (130, 4, 300),
        ] {
            // The first column all at ±2^24 cuts the chunks at 32 rows: 32 · 2^48 = 2^53.
            let mut rows = values(k * (p + c), lim, 0x2545f4914f6cdd1d + k as u64);
            for (s, v) in rows.iter_mut().step_by(p + c).enumerate() {
                *v = if s % 3 == 0 { -lim } else { lim };
            }
            let row = |s: usize| &rows[s * (p + c)..(s + 1) * (p + c)];
            let mut chunks = Vec::new();
            let mut start = 0;
            while start < k {
                let m = exact_chunk(p + c, k - start, |s| row(start + s).iter().copied());
                assert_eq!(m, 32.min(k - start), "chunks end at the bound");
                chunks.push(start..start + m);
                start += m;
            }
            // The chunks transposed: one row per feature (or target), one value per sample.
            let transposed = |chunk: &std::ops::Range<usize>, columns: std::ops::Range<usize>| {
                columns
                    .flat_map(|j| chunk.clone().map(move |s| (s, j)))
                    .map(|(s, j)| row(s)[j] as f64)
                    .collect::<Vec<f64>>()
            };
            let mut results = Vec::new();
            for width in [Width::Plain, Width::Avx2, Width::Avx512] {
                if !width.available() {
                    eprintln!("{width:?}: not on this CPU");
                    continue;
                }
                for threads in [1, 3] {
                    let mut a = vec![0i64; p * (p + 1) / 2];
                    let mut b = vec![0i64; p * c];
                    for chunk in &chunks {
                        let (xt, rt) = (transposed(chunk, 0..p), transposed(chunk, p..p + c));
                        let k = chunk.len();
                        add_products_with(width, threads, &mut a, &mut b, &xt, &rt, k, -1);
                    }
                    results.push((width, threads, a, b));
                }
            }
            let dot = |i: usize, j: usize| -> i128 {
                (0..k).map(|s| row(s)[i] as i128 * row(s)[j] as i128).sum()
            };
            let mut want_a = Vec::new();
            for j in 0..p {
                for i in j..p {
                    want_a.push(-dot(i, j));
                }
            }
            let want_b: Vec<i128> = (0..p * c).map(|e| -dot(e / c, p + e % c)).collect();
            for (width, threads, a, b) in results {
                let got_a: Vec<i128> = a.iter().map(|&v| v as i128).collect();
                let got_b: Vec<i128> = b.iter().map(|&v| v as i128).collect();
                let what = format!("{width:?} on {threads} threads, p {p} C {c} k {k}");
                assert_eq!(got_a, want_a, "{what}: A");
                assert_eq!(got_b, want_b, "{what}: B");
            }
        }
    }

    /// A chunk large enough for several column blocks (p 200, k 600: blocks of 42 columns),
    /// shared among threads, gives the definition's sums with every kernel.
    #[test]
    fn threads_sharing_the_column_blocks_match_the_definition() {
        let (p, c, k) = (200, 3, 600);
        let lim = 1i64 << 16;
        let xt: Vec<i64> = values(p * k, lim, 7);
        let rt: Vec<i64> = values(c * k, lim, 8);
        let (x_ref, r_ref) = (&xt, &rt);
        let chunk = exact_chunk(p + c, k, |s| {
            let features = (0..p).map(move |j| x_ref[j * k + s]);
            features.chain((0..c).map(move |t| r_ref[t * k + s]))
        });
        assert_eq!(chunk, k, "one chunk");
        assert!(
            COLUMN_BLOCK_BYTES / (8 * k) < p / 2,
            "several column blocks"
        );
        let dot = |u: &[i64], v: &[i64]| -> i64 { u.iter().zip(v).map(|(a, b)| a * b).sum() };
        let row = |m: &[i64], i: usize| m[i * k..(i + 1) * k].to_vec();
        let mut want_a = Vec::new();
        for j in 0..p {
            for i in j..p {
                want_a.push(dot(&row(&xt, i), &row(&xt, j)));
            }
        }
        let want_b: Vec<i64> = (0..p * c)
            .map(|e| dot(&row(&xt, e / c), &row(&rt, e % c)))
            .collect();
        let (xf, rf): (Vec<f64>, Vec<f64>) = (
            xt.iter().map(|&v| v as f64).collect(),
            rt.iter().map(|&v| v as f64).collect(),
        );
        for width in [Width::Plain, Width::Avx2, Width::Avx512] {
            if !width.available() {
                continue;
            }
            for threads in [1, 2, 5] {
                let mut a = vec![0i64; p * (p + 1) / 2];
                let mut b = vec![0i64; p * c];
                add_products_with(width, threads, &mut a, &mut b, &xf, &rf, k, 1);
                assert_eq!(a, want_a, "{width:?} on {threads} threads: A");
                assert_eq!(b, want_b, "{width:?} on {threads} threads: B");
            }
        }
    }

    /// A chunk is cut where one more row would take a column's sum of squares past 2^53, and
    /// never holds fewer than one row.
    #[test]
    fn a_chunk_ends_at_the_bound() {
        let lim = 1i64 << 24;
        let full = [lim, 1];
        assert_eq!(exact_chunk(2, 100, |_| full), 32);
        let small = [1i64 << 20, -(1 << 20)];
        assert_eq!(exact_chunk(2, 10_000, |_| small), 8192);
        assert_eq!(exact_chunk(2, 5, |_| small), 5);
        let rows = [[lim - 1, 0], [lim, 0]];
        assert_eq!(exact_chunk(2, 2, |s| rows[s]), 2);
    }
}
