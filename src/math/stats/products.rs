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
//! ([`Chunk::push`]), and each chunk's A = XᵀX and B = XᵀR are computed in f64, exactly (any
//! part of a chunk's samples is exact too), then converted to i64 and added into the caller's
//! sums.
//!
//! The products are Lethe's own kernel, not a library's matrix product: those pack their
//! operands (here, the samples' rows) into scratch memory of their own that is never zeroized,
//! against G4. A chunk is packed into panels as its samples are pushed ([`Chunk`]): [`PANEL`]
//! columns (features or targets) side by side, sample after sample, so that one sample's values
//! of a panel are contiguous (and the panels start on a cache line). Each register tile is an
//! outer product summed over the samples: one panel's values in vector lanes, times each of
//! [`BROADCAST`] columns of another panel broadcast, so that the tile's lines go to the
//! destination (a column of A from some row down, or a row of B) as whole vectors, converted to
//! i64 eight lanes at a time, with no sums across lanes. Tiles are blocked for the caches:
//! [`SAMPLES_PER_PASS`] samples at a time, the broadcast columns from L1, [`ROWS_PER_BLOCK`]
//! rows of vector panels from L2, and each tile's destination lines fetched ahead while it is
//! summed. Each tile's kernel is compiled for the widest of AVX-512 and AVX2 the CPU has
//! (chosen at run time) and as plain Rust otherwise.

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

/// Columns per panel: the vector lanes of one tile.
pub const PANEL: usize = 16;

/// Columns broadcast per tile: a tile is [`PANEL`] × `BROADCAST`.
const BROADCAST: usize = 8;

/// Samples summed per pass over the destination: a broadcast panel's share (8 columns of 8
/// bytes per sample) stays in L1.
const SAMPLES_PER_PASS: usize = 384;

/// Rows of vector panels per block: a block's share of a pass (8 bytes per row and sample)
/// stays in L2 while the broadcast columns above it, eight at a time, are summed with it from
/// L1.
const ROWS_PER_BLOCK: usize = 128;

/// Samples' values, `columns` per sample, in panels of [`PANEL`] columns: panel q holds
/// columns 16q … 16q + 15 (zero past `columns`), sample after sample, with room for `stride`
/// samples; the first m are filled.
struct Panels<'a> {
    values: &'a [f64],
    columns: usize,
    stride: usize,
    m: usize,
}

impl Panels<'_> {
    /// The length of panels of `columns` columns with room for `stride` samples.
    fn len(columns: usize, stride: usize) -> usize {
        columns.div_ceil(PANEL) * PANEL * stride
    }

    /// Where sample s's value of column j sits.
    fn at(&self, s: usize, j: usize) -> usize {
        (j / PANEL * self.stride + s) * PANEL + j % PANEL
    }
}

/// A chunk of samples, each p values of x (features and bias) and C of r (targets), packed
/// into panels as they are pushed, as long as their f64 products stay exact.
pub struct Chunk {
    x: Aligned,
    r: Aligned,
    /// Each column's sum of squares over the chunk, x's then r's. They reveal the magnitudes
    /// of the chunk's values: zeroized like them (G4).
    squares: Zeroizing<Vec<u64>>,
    p: usize,
    c: usize,
    capacity: usize,
    m: usize,
}

impl Chunk {
    /// An empty chunk for up to `capacity` samples of p and C values.
    pub fn new(p: usize, c: usize, capacity: usize) -> Chunk {
        // Fixed capacities (a reallocation would free values unzeroed).
        Chunk {
            x: Aligned::zeros(Panels::len(p, capacity)),
            r: Aligned::zeros(Panels::len(c, capacity)),
            squares: Zeroizing::new(vec![0; p + c]),
            p,
            c,
            capacity,
            m: 0,
        }
    }

    /// The samples pushed since the chunk was last cleared.
    pub fn len(&self) -> usize {
        self.m
    }

    /// Empties the chunk (the panels' old values stay until overwritten).
    pub fn clear(&mut self) {
        self.squares.fill(0);
        self.m = 0;
    }

    /// Adds a sample, its values integers with |value| ≤ 2^24, unless the chunk is full or the
    /// sample would take some column's sum of squares past 2^53 (so an empty chunk always
    /// takes it). Returns whether it was added.
    pub fn push(&mut self, x: &[i32], r: &[i32]) -> bool {
        assert_eq!(
            (x.len(), r.len()),
            (self.p, self.c),
            "a sample is p and C values"
        );
        let (x_squares, r_squares) = self.squares.split_at_mut(self.p);
        if self.m == self.capacity || !(fits(x_squares, x) && fits(r_squares, r)) {
            return false;
        }
        add_squares(x_squares, x);
        add_squares(r_squares, r);
        pack(self.x.values_mut(), self.capacity, self.m, x);
        pack(self.r.values_mut(), self.capacity, self.m, r);
        self.m += 1;
        true
    }

    /// `a[i][j] += sign · Σ_s x[s][i] · x[s][j]` for i ≥ j, `a` packed as in
    /// [`super::ExactStats`] (column j from its diagonal down), and
    /// `b[i][c] += sign · Σ_s x[s][i] · r[s][c]` (`b` p × C row-major), over the chunk's
    /// samples. `a` and `b` must stay within i64 (at most [`EXACT_ROWS`] samples' products in
    /// all).
    pub fn add_products(&self, a: &mut [i64], b: &mut [i64], sign: i64) {
        let threads = cores_if(self.m * self.p * self.p / 2 >= PARALLEL_FROM);
        self.add_products_with(Width::widest(), threads, a, b, sign);
    }

    fn add_products_with(
        &self,
        width: Width,
        threads: usize,
        a: &mut [i64],
        b: &mut [i64],
        sign: i64,
    ) {
        let panels = |values, columns| Panels {
            values,
            columns,
            stride: self.capacity,
            m: self.m,
        };
        let (x, r) = (
            panels(self.x.values(), self.p),
            panels(self.r.values(), self.c),
        );
        add_products_with(width, threads, a, b, &x, &r, sign);
    }
}

/// Zeroized f64 values whose first sits at a multiple of 64 bytes, a cache line: a panel's
/// row (16 values, 128 bytes) then spans two whole lines, and no vector load is split.
struct Aligned {
    buffer: Zeroizing<Vec<f64>>,
    start: usize,
    len: usize,
}

impl Aligned {
    const LINE: usize = 64;

    fn zeros(len: usize) -> Aligned {
        let buffer = Zeroizing::new(vec![0.0; len + Self::LINE / 8]);
        // (At most 7 for an f64's alignment; the bound only keeps an odd answer in range:
        // alignment is for speed, not for correctness.)
        let start = buffer.as_ptr().align_offset(Self::LINE).min(Self::LINE / 8);
        Aligned { buffer, start, len }
    }

    fn values(&self) -> &[f64] {
        &self.buffer[self.start..self.start + self.len]
    }

    fn values_mut(&mut self) -> &mut [f64] {
        &mut self.buffer[self.start..self.start + self.len]
    }
}

fn square(v: i32) -> u64 {
    let v = v.unsigned_abs() as u64;
    v * v
}

/// Whether every column's sum of squares stays at most 2^53 with `values` added.
fn fits(squares: &[u64], values: &[i32]) -> bool {
    squares
        .iter()
        .zip(values)
        .fold(true, |fit, (&sum, &v)| fit & (sum + square(v) <= EXACT_F64))
}

fn add_squares(squares: &mut [u64], values: &[i32]) {
    for (sum, &v) in squares.iter_mut().zip(values) {
        *sum += square(v);
    }
}

/// Writes sample s's `values` into their panels (room for `stride` samples), each panel's
/// columns past the last zero.
fn pack(panels: &mut [f64], stride: usize, s: usize, values: &[i32]) {
    for (q, part) in values.chunks(PANEL).enumerate() {
        let to = &mut panels[(q * stride + s) * PANEL..][..PANEL];
        for (to, &v) in to.iter_mut().zip(part) {
            *to = v as f64;
        }
        to[part.len()..].fill(0.0);
    }
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
            Width::Avx512 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq")
            }
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

/// Products over at least this many multiply-adds are shared among threads.
const PARALLEL_FROM: usize = 1 << 23;

/// [`Chunk::add_products`] with the kernel `width` on up to `threads` threads.
fn add_products_with(
    width: Width,
    threads: usize,
    a: &mut [i64],
    b: &mut [i64],
    x: &Panels<'_>,
    r: &Panels<'_>,
    sign: i64,
) {
    assert!(width.available(), "the CPU runs {width:?}");
    let (p, c) = (x.columns, r.columns);
    assert_eq!(x.m, r.m, "x and r hold the same samples");
    assert_eq!(a.len(), p * (p + 1) / 2, "a is p's packed triangle");
    assert_eq!(b.len(), p * c, "b is p × C");
    if x.m == 0 || p == 0 {
        return;
    }
    let job = Job { x, r, sign };
    // A's columns in ranges of equal work (the triangle below them), B's rows in equal ranges,
    // all in whole broadcast groups; thread t takes the t-th of each.
    let threads = threads.clamp(1, p.div_ceil(BROADCAST));
    let groups = p.div_ceil(BROADCAST);
    let total = packed_offset(p, p) as f64;
    let column_split = |t: usize| {
        if t == threads {
            return p;
        }
        // The first j columns hold p·j − j(j − 1)/2 entries: the j where that is t/T of all.
        let share = total * t as f64 / threads as f64;
        let half = p as f64 + 0.5;
        let j = half - (half * half - 2.0 * share).max(0.0).sqrt();
        ((j / BROADCAST as f64).round() as usize * BROADCAST).min(p)
    };
    let row_split = |t: usize| (groups * t / threads * BROADCAST).min(p);
    let (mut a_rest, mut b_rest) = (a, b);
    let mut parts = Vec::new();
    for t in 0..threads {
        let columns = column_split(t)..column_split(t + 1);
        let rows = row_split(t)..row_split(t + 1);
        let a_len = packed_offset(p, columns.end) - packed_offset(p, columns.start);
        let (a_part, a_next) = std::mem::take(&mut a_rest).split_at_mut(a_len);
        let (b_part, b_next) = std::mem::take(&mut b_rest).split_at_mut(rows.len() * c);
        (a_rest, b_rest) = (a_next, b_next);
        parts.push(((columns, a_part), (rows, b_part)));
    }
    run_parts(parts, |(a, b)| job.dispatch(width, a, b));
}

/// The chunk's panels and the sign of the sums.
struct Job<'a, 'v> {
    x: &'a Panels<'v>,
    r: &'a Panels<'v>,
    sign: i64,
}

/// A range of columns of A (or rows of B) and their part of the destination.
type Part<'a> = (std::ops::Range<usize>, &'a mut [i64]);

/// A tile's sums: `BROADCAST` lines of `PANEL` lanes.
type Tile = [[f64; PANEL]; BROADCAST];

impl Job<'_, '_> {
    /// [`Job::run`] with the kernel `width`.
    fn dispatch(&self, width: Width, a: Part<'_>, b: Part<'_>) {
        match width {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` checked that the CPU has AVX-512F and AVX-512DQ.
            Width::Avx512 => unsafe { self.run_avx512(a, b) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` checked that the CPU has AVX2 and FMA.
            Width::Avx2 => unsafe { self.run_avx2(a, b) },
            _ => self.run::<PLAIN>(a, b),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,fma")]
    unsafe fn run_avx512(&self, a: Part<'_>, b: Part<'_>) {
        self.run::<AVX512>(a, b);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(&self, a: Part<'_>, b: Part<'_>) {
        self.run::<AVX2>(a, b);
    }

    /// Every tile of A's lower triangle in the columns `a`, and of B's rows `b`, one pass of
    /// samples at a time. A tile of A is rows i0 … i0 + 15 (a panel of x, in lanes) of columns
    /// j0 … j0 + 7 (broadcast); a tile of B is columns c0 … c0 + 15 (a panel of r) of rows
    /// i0 … i0 + 7 (broadcast). Lanes past the triangle or the edges are summed and dropped.
    #[inline(always)]
    fn run<const KERNEL: u8>(&self, (columns, a): Part<'_>, (rows, b): Part<'_>) {
        let (x, r) = (self.x, self.r);
        let (p, c, m) = (x.columns, r.columns, x.m);
        let base = packed_offset(p, columns.start);
        for s0 in (0..m).step_by(SAMPLES_PER_PASS) {
            let n = SAMPLES_PER_PASS.min(m - s0);
            for block in (columns.start / PANEL * PANEL..p).step_by(ROWS_PER_BLOCK) {
                let block_end = (block + ROWS_PER_BLOCK).min(p);
                for j0 in (columns.start..columns.end.min(block_end)).step_by(BROADCAST) {
                    for i0 in (block.max(j0 / PANEL * PANEL)..block_end).step_by(PANEL) {
                        let lines = (j0..(j0 + BROADCAST).min(columns.end)).map(|j| {
                            // Column j's entries from row i0 (some before the diagonal,
                            // never written), and its valid lanes.
                            let at = (packed_offset(p, j) - base + i0) as isize - j as isize;
                            (at, j.saturating_sub(i0)..(p - i0).min(PANEL))
                        });
                        self.tile::<KERNEL>(x, (i0, j0), (s0, n), a, lines);
                    }
                }
            }
            if c == 0 {
                continue;
            }
            for block in rows.clone().step_by(ROWS_PER_BLOCK) {
                let block_end = (block + ROWS_PER_BLOCK).min(rows.end);
                for c0 in (0..c).step_by(PANEL) {
                    for i0 in (block..block_end).step_by(BROADCAST) {
                        let lines = (i0..(i0 + BROADCAST).min(block_end)).map(|i| {
                            (((i - rows.start) * c + c0) as isize, 0..(c - c0).min(PANEL))
                        });
                        self.tile::<KERNEL>(r, (c0, i0), (s0, n), b, lines);
                    }
                }
            }
        }
    }

    /// The tile of `lanes`' panel from column `first` times x's columns `broadcast` … + 7, over
    /// samples `s0` … `s0 + n − 1`, added (times the sign) to `dst`: line t of the tile (the
    /// broadcast column `broadcast + t`) goes to `dst[at + l]` for each lane l of its range.
    #[inline(always)]
    fn tile<const KERNEL: u8>(
        &self,
        lanes: &Panels<'_>,
        (first, broadcast): (usize, usize),
        (s0, n): (usize, usize),
        dst: &mut [i64],
        lines: impl Iterator<Item = (isize, std::ops::Range<usize>)> + Clone,
    ) {
        prefetch(dst, lines.clone());
        let vectors = &lanes.values[lanes.at(s0, first)..][..n * PANEL];
        let scalars = &self.x.values[self.x.at(s0, broadcast)..];
        assert!(scalars.len() >= (n - 1) * PANEL + BROADCAST);
        match KERNEL {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only `Job::run_avx512`, compiled for AVX-512F and DQ, runs this kernel;
            // the operands' lengths were checked above, and `add_lines_avx512` checks each
            // line's lanes against `dst`.
            AVX512 => unsafe {
                let sums = x86::tile_avx512(vectors.as_ptr(), scalars.as_ptr(), n);
                x86::add_lines_avx512(sums, self.sign, dst, lines);
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only `Job::run_avx2`, compiled for AVX2 and FMA, runs this kernel; the
            // operands' lengths were checked above.
            AVX2 => unsafe {
                let sums = x86::tile_avx2(vectors.as_ptr(), scalars.as_ptr(), n);
                add_lines(&sums, self.sign, dst, lines);
            },
            _ => add_lines(&tile_plain(vectors, scalars, n), self.sign, dst, lines),
        }
    }
}

/// Asks for the destination's lines into the cache, to arrive while the tile is summed.
fn prefetch(dst: &[i64], lines: impl Iterator<Item = (isize, std::ops::Range<usize>)>) {
    #[cfg(target_arch = "x86_64")]
    for (at, lanes) in lines {
        for l in lanes.step_by(8) {
            let to = dst.as_ptr().wrapping_offset(at + l as isize);
            // SAFETY: a prefetch is a hint: it reads nothing the program sees, and faults on
            // no address.
            unsafe { std::arch::x86_64::_mm_prefetch(to.cast(), std::arch::x86_64::_MM_HINT_T0) };
        }
    }
}

/// The tile kernels: plain Rust, AVX2 with FMA, AVX-512.
const PLAIN: u8 = 0;
const AVX2: u8 = 1;
const AVX512: u8 = 2;

/// Adds each line of `sums` (times `sign`) to `dst` where `lines` says (see [`Job::tile`]).
fn add_lines(
    sums: &Tile,
    sign: i64,
    dst: &mut [i64],
    lines: impl Iterator<Item = (isize, std::ops::Range<usize>)>,
) {
    for (line, (at, lanes)) in sums.iter().zip(lines) {
        for l in lanes {
            dst[(at + l as isize) as usize] += sign * line[l] as i64;
        }
    }
}

/// The tile of `n` samples: line t, lane l is Σ_s vectors[16s + l] · scalars[16s + t].
fn tile_plain(vectors: &[f64], scalars: &[f64], n: usize) -> Tile {
    let mut sums = [[0f64; PANEL]; BROADCAST];
    for s in 0..n {
        let v = &vectors[s * PANEL..(s + 1) * PANEL];
        for (line, &w) in sums
            .iter_mut()
            .zip(&scalars[s * PANEL..s * PANEL + BROADCAST])
        {
            for (sum, &u) in line.iter_mut().zip(v) {
                *sum += u * w;
            }
        }
    }
    sums
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, BROADCAST, PANEL};
    use std::arch::x86_64::*;

    /// [`super::tile_plain`] in two 512-bit vectors of 8 lanes per line.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `vectors` holds 16n values and `scalars` 16(n − 1) + 8.
    #[inline(always)]
    pub unsafe fn tile_avx512(
        vectors: *const f64,
        scalars: *const f64,
        n: usize,
    ) -> [[__m512d; 2]; BROADCAST] {
        let mut acc = [[_mm512_setzero_pd(); 2]; BROADCAST];
        for s in 0..n {
            let u = [
                _mm512_loadu_pd(vectors.add(s * PANEL)),
                _mm512_loadu_pd(vectors.add(s * PANEL + 8)),
            ];
            for (t, line) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_pd(*scalars.add(s * PANEL + t));
                line[0] = _mm512_fmadd_pd(u[0], w, line[0]);
                line[1] = _mm512_fmadd_pd(u[1], w, line[1]);
            }
        }
        acc
    }

    /// [`super::add_lines`] for the sums of [`tile_avx512`], eight lanes at a time (each sum an
    /// integer of at most 2^53, converted exactly).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512DQ.
    #[inline(always)]
    pub unsafe fn add_lines_avx512(
        sums: [[__m512d; 2]; BROADCAST],
        sign: i64,
        dst: &mut [i64],
        lines: impl Iterator<Item = (isize, std::ops::Range<usize>)>,
    ) {
        for (line, (at, lanes)) in sums.iter().zip(lines) {
            if lanes.is_empty() {
                continue;
            }
            let (first, end) = (at + lanes.start as isize, at + lanes.end as isize);
            assert!(first >= 0 && end as usize <= dst.len(), "lanes inside dst");
            let mask = ((1u32 << lanes.end) - (1u32 << lanes.start)) as u16;
            let start = dst.as_mut_ptr().wrapping_offset(at);
            for (half, &sum) in line.iter().enumerate() {
                let mask = (mask >> (8 * half)) as u8;
                if mask == 0 {
                    continue;
                }
                // Masked lanes are neither read nor written: only those in the range, which
                // the assertion placed inside `dst`.
                let to = start.wrapping_add(8 * half);
                let old = _mm512_maskz_loadu_epi64(mask, to);
                let add = _mm512_cvtpd_epi64(sum);
                let new = if sign > 0 {
                    _mm512_add_epi64(old, add)
                } else {
                    _mm512_sub_epi64(old, add)
                };
                _mm512_mask_storeu_epi64(to, mask, new);
            }
        }
    }

    /// [`super::tile_plain`] in 256-bit vectors of 4 lanes: the tile in four quarters of 8
    /// lanes × 4 lines, each summed over the samples in 8 registers.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `vectors` holds 16n values and `scalars` 16(n − 1) + 8.
    #[inline(always)]
    pub unsafe fn tile_avx2(vectors: *const f64, scalars: *const f64, n: usize) -> Tile {
        let mut sums = [[0f64; PANEL]; BROADCAST];
        for lanes in [0, 8] {
            for lines in [0, 4] {
                let mut acc = [[_mm256_setzero_pd(); 2]; 4];
                for s in 0..n {
                    let u = [
                        _mm256_loadu_pd(vectors.add(s * PANEL + lanes)),
                        _mm256_loadu_pd(vectors.add(s * PANEL + lanes + 4)),
                    ];
                    for (t, line) in acc.iter_mut().enumerate() {
                        let w = _mm256_broadcast_sd(&*scalars.add(s * PANEL + lines + t));
                        line[0] = _mm256_fmadd_pd(u[0], w, line[0]);
                        line[1] = _mm256_fmadd_pd(u[1], w, line[1]);
                    }
                }
                for (t, line) in acc.iter().enumerate() {
                    let out = &mut sums[lines + t][lanes..lanes + 8];
                    _mm256_storeu_pd(out.as_mut_ptr(), line[0]);
                    _mm256_storeu_pd(out.as_mut_ptr().add(4), line[1]);
                }
            }
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, lim: i32, seed: u64) -> Vec<i32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 4 {
                    0 => lim,
                    1 => -lim,
                    _ => ((x >> 8) % (lim as u64 + 1)) as i32,
                }
            })
            .collect()
    }

    /// k samples of p + C values each, cut into chunks (of at most `capacity` samples) where
    /// the pushes say, with each chunk's products added by every kernel on 1 and several
    /// threads. Returns the chunks' lengths and, for each kernel and thread count, A and B.
    #[allow(clippy::type_complexity)]
    fn products(
        rows: &[i32],
        (p, c): (usize, usize),
        capacity: usize,
        sign: i64,
    ) -> (Vec<usize>, Vec<(String, Vec<i64>, Vec<i64>)>) {
        let k = rows.len() / (p + c);
        let mut chunks = Vec::new();
        let mut results = Vec::new();
        for width in [Width::Plain, Width::Avx2, Width::Avx512] {
            if !width.available() {
                eprintln!("{width:?}: not on this CPU");
                continue;
            }
            for threads in [1, 2, 5] {
                let (mut a, mut b) = (vec![0i64; p * (p + 1) / 2], vec![0i64; p * c]);
                let mut chunk = Chunk::new(p, c, capacity);
                let mut lengths = Vec::new();
                let mut s = 0;
                while s < k {
                    chunk.clear();
                    while s < k {
                        let row = &rows[s * (p + c)..(s + 1) * (p + c)];
                        if !chunk.push(&row[..p], &row[p..]) {
                            break;
                        }
                        s += 1;
                    }
                    lengths.push(chunk.len());
                    chunk.add_products_with(width, threads, &mut a, &mut b, sign);
                }
                chunks = lengths;
                results.push((format!("{width:?} on {threads} threads"), a, b));
            }
        }
        (chunks, results)
    }

    /// The definition's sums in i128: A's packed lower triangle and B, times `sign`.
    fn definition(rows: &[i32], (p, c): (usize, usize), sign: i128) -> (Vec<i128>, Vec<i128>) {
        let k = rows.len() / (p + c);
        let v = |s: usize, j: usize| rows[s * (p + c) + j] as i128;
        let dot = |i: usize, j: usize| -> i128 { (0..k).map(|s| v(s, i) * v(s, j)).sum() };
        let mut a = Vec::new();
        for j in 0..p {
            for i in j..p {
                a.push(sign * dot(i, j));
            }
        }
        let b = (0..p * c).map(|e| sign * dot(e / c, p + e % c)).collect();
        (a, b)
    }

    fn wide(v: &[i64]) -> Vec<i128> {
        v.iter().map(|&v| v as i128).collect()
    }

    /// The chunks' f64 products equal the plain definition's i128 sums, on chunks cut at the
    /// exactness bound with values at the range limits, where one more row would round.
    #[test]
    fn chunked_products_match_the_definition_at_the_range_limits() {
        let lim = 1i32 << 24;
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
            let (chunks, results) = products(&rows, (p, c), 1000, -1);
            let want: Vec<usize> = (0..k).step_by(32).map(|s| 32.min(k - s)).collect();
            assert_eq!(chunks, want, "chunks end at the bound");
            let (want_a, want_b) = definition(&rows, (p, c), -1);
            for (what, a, b) in results {
                assert_eq!(wide(&a), want_a, "{what}, p {p} C {c} k {k}: A");
                assert_eq!(wide(&b), want_b, "{what}, p {p} C {c} k {k}: B");
            }
        }
    }

    /// Chunks large enough for several passes of samples and several blocks of rows, with
    /// partial panels and a last chunk cut by the capacity, shared among threads, give the
    /// definition's sums with every kernel.
    #[test]
    fn threads_sharing_passes_and_blocks_match_the_definition() {
        let (p, c, k, capacity) = (300, 37, 1000, 900);
        assert!(p > ROWS_PER_BLOCK && capacity > 2 * SAMPLES_PER_PASS && p % PANEL != 0);
        let rows = values(k * (p + c), 1 << 16, 7);
        let (chunks, results) = products(&rows, (p, c), capacity, 1);
        assert_eq!(
            chunks,
            [capacity, k - capacity],
            "chunks end at the capacity"
        );
        let (want_a, want_b) = definition(&rows, (p, c), 1);
        for (what, a, b) in results {
            assert_eq!(wide(&a), want_a, "{what}: A");
            assert_eq!(wide(&b), want_b, "{what}: B");
        }
    }

    /// A sample is refused where it would take a column's sum of squares past 2^53, and an
    /// empty chunk takes any sample.
    #[test]
    fn a_chunk_ends_at_the_bound() {
        let lim = 1i32 << 24;
        let fill = |chunk: &mut Chunk, x: &[i32], r: &[i32], most: usize| {
            chunk.clear();
            (0..most).take_while(|_| chunk.push(x, r)).count()
        };
        let mut chunk = Chunk::new(1, 1, 10_000);
        assert_eq!(fill(&mut chunk, &[lim], &[1], 100), 32);
        assert_eq!(chunk.len(), 32);
        assert_eq!(fill(&mut chunk, &[1 << 20], &[-(1 << 20)], 10_000), 8192);
        assert_eq!(fill(&mut chunk, &[1], &[-(1 << 20)], 5), 5);
        assert_eq!(fill(&mut chunk, &[1], &[lim], 100), 32, "targets count too");
        chunk.clear();
        assert!(chunk.push(&[lim - 1], &[0]) && chunk.push(&[lim], &[0]));
        let mut small = Chunk::new(1, 1, 3);
        assert_eq!(fill(&mut small, &[1], &[1], 10), 3, "full at the capacity");
    }
}
