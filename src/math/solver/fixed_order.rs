//! The canonical solve's fixed operation order (DESIGN.md G7) and the kernels that run it.
//!
//! Every entry of L, of Y = L⁻¹B and of Θ = L⁻ᵀY is one dot product of two contiguous rows,
//! followed by one subtraction and one square root or division. The dot product splits its
//! terms into [`LANES`] lanes by index (term k goes to lane k mod 8), accumulates each lane in
//! increasing k with fused multiply-adds starting from +0, and adds the lanes in a fixed tree.
//! Fused multiply-add, addition, division and square root are correctly rounded in IEEE 754 on
//! every target, so each entry's bits depend only on its inputs, never on the CPU, the kernel,
//! the cache sizes or the thread count.
//!
//! The drivers ([`factor`], [`forward_solve`], [`invert`]) visit the entries in blocks for cache reuse, and
//! hand the bulk of each dot (its terms before a multiple of 8) to a [`CanonicalKernel`] that
//! computes many lanes at once; the remaining terms, the reduction and the division run in
//! code shared by all kernels. Splitting a dot at a multiple of 8 leaves every lane's sequence
//! of operations unchanged, so the blocking changes only speed, and every kernel must give the
//! scalar kernel's bits (the tests compare them bit for bit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use faer::{MatMut, MatRef};
use zeroize::{Zeroize, Zeroizing};

use crate::math::secret::SecretMat;
use crate::math::stats::products::packed_offset;
use crate::math::threads::run_parts;

mod tile;
#[cfg(target_arch = "x86_64")]
mod x86;

use tile::{Lanes, Tile, LANES, TILE_ROWS};

/// Columns (of L) or rows (of the triangular system) per cache block: the rows of one block
/// stay in the L2 cache while every row of the other operand streams past them once.
const BLOCK: usize = 32;

/// The environment variable that chooses the kernel of the canonical solve in a process.
pub const KERNEL_ENV: &str = "LETHE_CANONICAL_KERNEL";

/// The code that computes the bulk of the canonical solve's dot products. All kernels give
/// bit-identical results; they differ only in speed and in the CPUs that can run them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonicalKernel {
    /// Plain Rust with `f64::mul_add`: runs on every target and defines the bits the others
    /// must match.
    Scalar,
    /// x86-64 AVX2 with FMA.
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
}

impl CanonicalKernel {
    /// Every kernel, available here or not.
    pub const ALL: [CanonicalKernel; 3] = [
        CanonicalKernel::Scalar,
        CanonicalKernel::Avx2,
        CanonicalKernel::Avx512,
    ];

    /// The name [`KERNEL_ENV`] gives it.
    pub fn name(self) -> &'static str {
        match self {
            CanonicalKernel::Scalar => "scalar",
            CanonicalKernel::Avx2 => "avx2",
            CanonicalKernel::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            CanonicalKernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            CanonicalKernel::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            CanonicalKernel::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            CanonicalKernel::Avx2 | CanonicalKernel::Avx512 => false,
        }
    }

    /// The kernels this CPU can run.
    pub fn available() -> Vec<CanonicalKernel> {
        CanonicalKernel::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// The fastest kernel this CPU can run.
    pub fn fastest() -> CanonicalKernel {
        [CanonicalKernel::Avx512, CanonicalKernel::Avx2]
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(CanonicalKernel::Scalar)
    }

    /// The kernel this process uses, read once from [`KERNEL_ENV`]: unset or `auto` is the
    /// fastest available; `scalar`, `avx2` or `avx512` force that kernel. A kernel this CPU
    /// cannot run, or an unknown value, falls back to the scalar kernel (the same bits, slower)
    /// with a warning.
    pub fn selected() -> CanonicalKernel {
        static SELECTED: OnceLock<CanonicalKernel> = OnceLock::new();
        *SELECTED.get_or_init(|| match std::env::var(KERNEL_ENV) {
            Err(std::env::VarError::NotPresent) => CanonicalKernel::fastest(),
            Ok(v) if v == "auto" => CanonicalKernel::fastest(),
            Ok(v) => match CanonicalKernel::ALL.into_iter().find(|k| k.name() == v) {
                Some(k) if k.is_available() => k,
                _ => {
                    tracing::warn!(
                        "{KERNEL_ENV}={v:?} is not a kernel this CPU runs (auto, scalar{}); \
                         using scalar",
                        CanonicalKernel::available()
                            .iter()
                            .skip(1)
                            .map(|k| format!(", {}", k.name()))
                            .collect::<String>()
                    );
                    CanonicalKernel::Scalar
                }
            },
            Err(e) => {
                tracing::warn!("{KERNEL_ENV}: {e}; using scalar");
                CanonicalKernel::Scalar
            }
        })
    }
}

/// Lanes of `x[r] · y[s]` over the terms `0..k0` (k0 a multiple of [`LANES`]) into
/// `out[r][s]`, for r < x.len() ≤ [`TILE_ROWS`] and s < [`LANES`]: each lane accumulated in
/// increasing k with fused multiply-adds from +0. Every SIMD kernel computes exactly this.
fn bulk_scalar(x: &[&[f64]], y: &[&[f64]; LANES], k0: usize, out: &mut Tile) {
    for (xr, out_r) in x.iter().zip(out.iter_mut()) {
        for (ys, acc) in y.iter().zip(out_r.iter_mut()) {
            *acc = [0.0; LANES];
            for (xc, yc) in xr[..k0]
                .chunks_exact(LANES)
                .zip(ys[..k0].chunks_exact(LANES))
            {
                for l in 0..LANES {
                    acc[l] = xc[l].mul_add(yc[l], acc[l]);
                }
            }
        }
    }
}

/// Continues the lanes `acc` (the terms before `k0`, a multiple of [`LANES`]) with the terms
/// `k0..x.len()` of x · y, then adds the lanes: the dot product in the fixed order (with `acc`
/// zero and `k0` = 0, its definition).
#[inline(always)]
fn finish(mut acc: Lanes, x: &[f64], y: &[f64], k0: usize) -> f64 {
    for k in k0..x.len() {
        acc[k % LANES] = x[k].mul_add(y[k], acc[k % LANES]);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// A matrix stored by rows, each row a column of a faer matrix: the canonical solve works in
/// the buffers that hold A and B (symmetric A's rows are its columns) and then L and Θ, without
/// copies.
pub struct Rows(pub SecretMat);

impl Rows {
    pub fn rows(&self) -> usize {
        self.0.ncols()
    }

    pub fn cols(&self) -> usize {
        self.0.nrows()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        self.0.col_as_slice(i)
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        self.0.col_as_slice_mut(i)
    }
}

/// One entry per (lane-group column s, tile row r), `[s][r]`: a tile's entries of the factor or
/// the solve, or their running sums.
type Entries = [[f64; TILE_ROWS]; LANES];

/// The drivers' temporaries on the stack hold entries of L, L⁻¹ or their partial sums: they
/// live in these, zeroized when the driver returns (also on error), since a thread's stack
/// outlives its use (DESIGN.md G4).
fn zeroed<T: Zeroize + Default>() -> Zeroizing<T> {
    Zeroizing::new(T::default())
}

/// A non-positive (or NaN) pivot: rounding broke positive definiteness at this column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonPositivePivot(pub usize);

/// The bulk of a kernel's dot products: [`bulk_scalar`]'s contract.
trait Bulk {
    /// The kernel this is, for the threads a driver starts to dispatch to.
    const KERNEL: CanonicalKernel;

    /// # Safety
    /// The CPU must have the kernel's target features.
    unsafe fn bulk(x: &[&[f64]], y: &[&[f64]; LANES], k0: usize, out: &mut Tile);
}

struct Scalar;

impl Bulk for Scalar {
    const KERNEL: CanonicalKernel = CanonicalKernel::Scalar;

    unsafe fn bulk(x: &[&[f64]], y: &[&[f64]; LANES], k0: usize, out: &mut Tile) {
        bulk_scalar(x, y, k0, out)
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Bulk for Avx2 {
    const KERNEL: CanonicalKernel = CanonicalKernel::Avx2;

    #[inline(always)]
    unsafe fn bulk(x: &[&[f64]], y: &[&[f64]; LANES], k0: usize, out: &mut Tile) {
        // SAFETY: the caller guarantees AVX2 and FMA; `checked` the rows' lengths.
        unsafe { x86::bulk_avx2(checked(x, y, k0), y, k0, out) }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Bulk for Avx512 {
    const KERNEL: CanonicalKernel = CanonicalKernel::Avx512;

    #[inline(always)]
    unsafe fn bulk(x: &[&[f64]], y: &[&[f64]; LANES], k0: usize, out: &mut Tile) {
        // SAFETY: the caller guarantees AVX-512F; `checked` the rows' lengths.
        unsafe { x86::bulk_avx512(checked(x, y, k0), y, k0, out) }
    }
}

/// `$name(args)` runs `$driver::<K>(args)` with the kernel `$kernel` selects. Each SIMD
/// instance is compiled for its kernel's target features as a whole, so that the driver's own
/// fused multiply-adds are single instructions too (compiled without FMA, `f64::mul_add` calls
/// the C library's `fma`: the same result, much slower).
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $driver:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        pub fn $name(kernel: CanonicalKernel, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) -> $ret {
                // SAFETY: this function runs only where AVX2 and FMA are available.
                unsafe { $driver::<Avx2>($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,fma")]
            fn avx512($($arg: $ty),*) -> $ret {
                // SAFETY: this function runs only where AVX-512F is available.
                unsafe { $driver::<Avx512>($($arg),*) }
            }
            match kernel {
                // SAFETY: the CPU has the kernel's features.
                #[cfg(target_arch = "x86_64")]
                CanonicalKernel::Avx2 if kernel.is_available() => unsafe { avx2($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                CanonicalKernel::Avx512 if kernel.is_available() => unsafe { avx512($($arg),*) },
                // SAFETY: the scalar kernel needs no target feature.
                _ => unsafe { $driver::<Scalar>($($arg),*) },
            }
        }
    };
}

/// `x`, after checking that every row holds at least `k0` values (the SIMD kernels read them
/// through raw pointers).
#[inline(always)]
fn checked<'a, 'b>(x: &'a [&'b [f64]], y: &[&[f64]; LANES], k0: usize) -> &'a [&'b [f64]] {
    assert!(k0.is_multiple_of(LANES) && x.len() <= TILE_ROWS);
    assert!(x.iter().chain(y).all(|row| row.len() >= k0));
    x
}

dispatch!(
    /// Replaces the lower triangle of `a` (p × p, symmetric positive definite; the upper triangle
    /// is not read) by its Cholesky factor L in the fixed order:
    /// `L[j][j] = sqrt(a[j][j] − dot(L[j][..j], L[j][..j]))`,
    /// `L[i][j] = (a[i][j] − dot(L[i][..j], L[j][..j])) / L[j][j]` for i > j.
    /// The strict upper triangle is left as it was. The rows below each block of columns are
    /// shared among `threads` threads: each entry is computed as on one thread. `stop` is
    /// looked at before each block of columns: once it is set, the factorization gives up and
    /// returns `Ok(false)` (`a` then holds a part of the factor).
    factor, factor_with,
    (a: &mut Rows, threads: usize, stop: &AtomicBool) -> Result<bool, NonPositivePivot>);

/// # Safety
/// The CPU must have `K`'s target features.
#[inline(always)]
unsafe fn factor_with<K: Bulk>(
    a: &mut Rows,
    threads: usize,
    stop: &AtomicBool,
) -> Result<bool, NonPositivePivot> {
    let p = a.rows();
    debug_assert_eq!(a.cols(), p);
    let mut diagonal: Zeroizing<[Tile; BLOCK / LANES]> = zeroed();
    for j0 in (0..p).step_by(BLOCK) {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let j_end = (j0 + BLOCK).min(p);
        // The block's own rows, TILE_ROWS at a time: the terms before j0 in bulk, then the
        // entries in order (each needs the ones before it in its row and in row j).
        for i0 in (j0..j_end).step_by(TILE_ROWS) {
            let i_end = (i0 + TILE_ROWS).min(j_end);
            let x: [&[f64]; TILE_ROWS] = std::array::from_fn(|r| a.row((i0 + r).min(p - 1)));
            for (jb, tile) in (j0..i_end).step_by(LANES).zip(diagonal.iter_mut()) {
                // SAFETY: the caller guarantees K's features.
                unsafe { K::bulk(&x[..i_end - i0], &rows_from(a.0.as_ref(), jb), j0, tile) };
            }
            for i in i0..i_end {
                for j in j0..=i {
                    let acc = diagonal[(j - j0) / LANES][i - i0][(j - j0) % LANES];
                    set_entry(a, i, j, acc, j0)?;
                }
            }
        }
        // The rows below, against the finished block: each needs only its own entries and the
        // block's rows, so they are shared among the threads.
        let (done, rest) = a.0.as_mut().split_at_col_mut(j_end);
        let done = done.as_ref();
        // Every part goes through the dispatch: the closure is compiled without the kernel's
        // target features, and the driver inlined into it would call the C library's `fma`
        // for every multiply-add outside the bulk.
        run_parts(split_rows(rest, threads), |part| {
            below(K::KERNEL, done, part, j0)
        });
    }
    Ok(true)
}

/// Rows of a matrix stored by rows (each a column of `m`) cut into at most `threads` parts of
/// whole tiles (at least [`MIN_TILES_PER_THREAD`] each, or one part), for threads to share;
/// none when it has no rows.
const MIN_TILES_PER_THREAD: usize = 4;

fn split_rows(m: MatMut<'_, f64>, threads: usize) -> Vec<MatMut<'_, f64>> {
    let rows = m.ncols();
    let tiles = rows.div_ceil(TILE_ROWS);
    let threads = threads.clamp(1, (tiles / MIN_TILES_PER_THREAD).max(1));
    let mut parts = Vec::with_capacity(threads);
    let mut rest = m;
    for t in 0..threads {
        let take = ((tiles * (t + 1) / threads) - (tiles * t / threads)) * TILE_ROWS;
        let left = rest.ncols();
        let (part, tail) = rest.split_at_col_mut(take.min(left));
        if part.ncols() > 0 {
            parts.push(part);
        }
        rest = tail;
    }
    parts
}

dispatch!(
    /// [`factor`]'s rows below the block of columns `j0..done.ncols()` (rows `done.ncols()..`
    /// of the factor, or a part of them, in `part`), against the finished rows `done`.
    below, below_with, (done: MatRef<'_, f64>, part: MatMut<'_, f64>, j0: usize) -> ());

/// # Safety
/// The CPU must have `K`'s target features.
#[inline(always)]
unsafe fn below_with<K: Bulk>(done: MatRef<'_, f64>, mut part: MatMut<'_, f64>, j0: usize) {
    let j_end = done.ncols();
    let rows = part.ncols();
    let (mut tile, mut v, mut acc) = (zeroed::<Tile>(), zeroed::<Entries>(), zeroed::<Entries>());
    for i0 in (0..rows).step_by(TILE_ROWS) {
        let i_end = (i0 + TILE_ROWS).min(rows);
        for jb in (j0..j_end).step_by(LANES) {
            let y = rows_from(done, jb);
            {
                let x: [&[f64]; TILE_ROWS] =
                    std::array::from_fn(|r| row_of(part.as_ref(), (i0 + r).min(rows - 1)));
                // SAFETY: the caller guarantees K's features.
                unsafe { K::bulk(&x[..i_end - i0], &y, jb, &mut tile) };
            }
            let count = (jb + LANES).min(j_end) - jb;
            finish_rows(
                &tile,
                &y,
                jb,
                count,
                part.as_mut(),
                i0..i_end,
                &mut v,
                &mut acc,
            );
        }
    }
}

/// [`finish_tile`] for the rows `tile_rows` of `m` (stored by rows, each a column), whose
/// entries `k0..k0 + count` it reads into `v` and replaces by the finished ones.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn finish_rows(
    tile: &Tile,
    rows: &[&[f64]; LANES],
    k0: usize,
    count: usize,
    mut m: MatMut<'_, f64>,
    tile_rows: std::ops::Range<usize>,
    v: &mut Entries,
    acc: &mut Entries,
) {
    *v = Entries::default();
    for (r, i) in tile_rows.clone().enumerate() {
        for (s, &value) in row_of(m.as_ref(), i)[k0..k0 + count].iter().enumerate() {
            v[s][r] = value;
        }
    }
    finish_tile(tile, rows, k0, count, v, acc);
    for (r, i) in tile_rows.enumerate() {
        let row = m
            .as_mut()
            .col_mut(i)
            .try_as_col_major_mut()
            .expect("a column of an owned matrix is contiguous")
            .as_slice_mut();
        for (s, value) in row[k0..k0 + count].iter_mut().enumerate() {
            *value = v[s][r];
        }
    }
}

/// Row `i` of a matrix stored by rows: column `i` of `m`.
#[inline(always)]
fn row_of(m: MatRef<'_, f64>, i: usize) -> &[f64] {
    m.col(i)
        .try_as_col_major()
        .expect("a column of an owned matrix is contiguous")
        .as_slice()
}

/// Rows jb..jb+LANES of `m`; rows past the end repeat row jb (their lanes are not used).
#[inline(always)]
fn rows_from(m: MatRef<'_, f64>, jb: usize) -> [&[f64]; LANES] {
    std::array::from_fn(|s| row_of(m, if jb + s < m.ncols() { jb + s } else { jb }))
}

/// Finishes the entries of a bulk call past its block's diagonal, where `rows` holds the rows
/// k0.. of the triangular matrix m: for each x row r (an entry is independent of the other
/// rows') and s = 0..count in order, `v[s][r] ← (v[s][r] − dot) / m[k0 + s][k0 + s]`, where
/// the dot continues the lanes `tile[r][s]` with the terms `m[k0 + s][k0 + t] · v[t][r]` for
/// t < s (the entries of the same row finished before), in `acc`. Every operation on row r is
/// the one [`finish`] would do; the rows go side by side (SIMD across rows), so that their
/// chains of dependent operations overlap.
#[inline(always)]
fn finish_tile(
    tile: &Tile,
    rows: &[&[f64]; LANES],
    k0: usize,
    count: usize,
    v: &mut Entries,
    acc: &mut Entries,
) {
    for s in 0..count {
        let row = &rows[s][k0..k0 + s + 1];
        for (l, acc_l) in acc.iter_mut().enumerate() {
            for (r, a) in acc_l.iter_mut().enumerate() {
                *a = tile[r][s][l];
            }
        }
        for (t, &mt) in row[..s].iter().enumerate() {
            for r in 0..TILE_ROWS {
                acc[t][r] = mt.mul_add(v[t][r], acc[t][r]);
            }
        }
        for r in 0..TILE_ROWS {
            let dot = ((acc[0][r] + acc[1][r]) + (acc[2][r] + acc[3][r]))
                + ((acc[4][r] + acc[5][r]) + (acc[6][r] + acc[7][r]));
            v[s][r] = (v[s][r] - dot) / row[s];
        }
    }
}

/// Finishes L[i][j] from the lanes of its dot's first `k0` terms.
#[inline(always)]
fn set_entry(
    l: &mut Rows,
    i: usize,
    j: usize,
    acc: Lanes,
    k0: usize,
) -> Result<(), NonPositivePivot> {
    let s = finish(acc, &l.row(i)[..j], &l.row(j)[..j], k0);
    let a = l.row(i)[j];
    let v = if i == j {
        let d = a - s;
        // Also refuses NaN.
        if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(NonPositivePivot(j));
        }
        d.sqrt()
    } else {
        (a - s) / l.row(j)[j]
    };
    l.row_mut(i)[j] = v;
    Ok(())
}

dispatch!(
    /// Solves M Y = B in place for lower-triangular `m` (p × p; the strict upper triangle is not
    /// read) and `yt` = Bᵀ (C × p, one right-hand side per row), in the fixed order:
    /// `Y[c][i] = (B[c][i] − dot(M[i][..i], Y[c][..i])) / M[i][i]`. The right-hand sides are
    /// shared among `threads` threads.
    forward_solve, forward_solve_with, (m: &Rows, yt: &mut Rows, threads: usize) -> ());

/// # Safety
/// The CPU must have `K`'s target features.
#[inline(always)]
unsafe fn forward_solve_with<K: Bulk>(m: &Rows, yt: &mut Rows, threads: usize) {
    let m = m.0.as_ref();
    // Through the dispatch, as in `factor_with`.
    run_parts(split_rows(yt.0.as_mut(), threads), |part| {
        substitute(K::KERNEL, m, part, 0, false)
    });
}

dispatch!(
    /// [`forward_solve`] for the right-hand sides in `yt` (stored by rows), the first of them
    /// numbered `first`. With `lower`, right-hand side c must be zero before index c (as in
    /// the identity), and the terms that are zero for a whole tile of them are skipped: the
    /// skipped entries stay zero, the others come out as without skipping, since each lane only
    /// loses leading products of zeros.
    substitute, substitute_with,
    (m: MatRef<'_, f64>, yt: MatMut<'_, f64>, first: usize, lower: bool) -> ());

/// # Safety
/// The CPU must have `K`'s target features.
#[inline(always)]
unsafe fn substitute_with<K: Bulk>(
    m: MatRef<'_, f64>,
    mut yt: MatMut<'_, f64>,
    first: usize,
    lower: bool,
) {
    let p = m.ncols();
    debug_assert!(m.nrows() == p && yt.nrows() == p);
    let classes = yt.ncols();
    let (mut tile, mut v, mut acc) = (zeroed::<Tile>(), zeroed::<Entries>(), zeroed::<Entries>());
    for i0 in (0..p).step_by(BLOCK) {
        let i_end = (i0 + BLOCK).min(p);
        for c0 in (0..classes).step_by(TILE_ROWS) {
            let c_end = (c0 + TILE_ROWS).min(classes);
            // The first term that is not zero in every row of the tile, rounded down to a
            // whole lane group so that every term keeps its lane.
            let s0 = if lower {
                (first + c0) - (first + c0) % LANES
            } else {
                0
            };
            for ib in (i0.max(s0)..i_end).step_by(LANES) {
                let y = rows_from(m, ib);
                {
                    let x: [&[f64]; TILE_ROWS] = std::array::from_fn(|r| {
                        &row_of(yt.as_ref(), (c0 + r).min(classes - 1))[s0..]
                    });
                    let ys = y.map(|row| &row[s0..]);
                    // SAFETY: the caller guarantees K's features.
                    unsafe { K::bulk(&x[..c_end - c0], &ys, ib - s0, &mut tile) };
                }
                let count = (ib + LANES).min(i_end) - ib;
                finish_rows(
                    &tile,
                    &y,
                    ib,
                    count,
                    yt.as_mut(),
                    c0..c_end,
                    &mut v,
                    &mut acc,
                );
            }
        }
    }
}

dispatch!(
    /// The lower triangle of A⁻¹ for A = L Lᵀ, `l` holding L by rows (row i: L[i][..=i], then
    /// zeros), written into `packed` column by column ((i, j), i ≥ j, at
    /// `j·p − j·(j−1)/2 + i − j`): first N = L⁻¹ by columns (a forward substitution of the
    /// identity), then A⁻¹[i][j] = dot(N[.., i], N[.., j]), whose terms before i are zero.
    /// Cost p³/3 multiply-adds; every temporary is zeroized when dropped. `stop` is looked at
    /// between blocks of columns: once it is set, the inversion gives up and returns false
    /// (`packed` then holds a part of the result).
    invert, invert_with, (l: &Rows, packed: &mut [f64], stop: &AtomicBool) -> bool);

/// # Safety
/// The CPU must have `K`'s target features.
#[inline(always)]
unsafe fn invert_with<K: Bulk>(l: &Rows, packed: &mut [f64], stop: &AtomicBool) -> bool {
    let p = l.rows();
    assert!(l.cols() == p && packed.len() == p * (p + 1) / 2);
    // Row c of `n` is column c of N = L⁻¹ (zero before c).
    let mut n = Rows(SecretMat::zeros(p, p));
    for c in 0..p {
        n.row_mut(c)[c] = 1.0;
    }
    // One block of columns of N at a time, so that `stop` is seen soon.
    let (mut done, mut rest) = (0, n.0.as_mut());
    while rest.ncols() > 0 {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let take = BLOCK.min(rest.ncols());
        let (part, tail) = rest.split_at_col_mut(take);
        // SAFETY: the caller guarantees K's features.
        unsafe { substitute_with::<K>(l.0.as_ref(), part, done, true) };
        done += take;
        rest = tail;
    }
    let mut tile = zeroed::<Tile>();
    // Columns j in blocks whose rows of `n` stay in cache while the rows i ≥ j stream past.
    for j0 in (0..p).step_by(BLOCK) {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let j_end = (j0 + BLOCK).min(p);
        for i0 in (j0..p).step_by(TILE_ROWS) {
            let i_end = (i0 + TILE_ROWS).min(p);
            // Row i of `n` is zero before i: the terms start at the tile's first row, rounded
            // down to a lane group.
            let s0 = i0 - i0 % LANES;
            let k0 = (p - s0) - (p - s0) % LANES;
            let x: [&[f64]; TILE_ROWS] = std::array::from_fn(|r| &n.row((i0 + r).min(p - 1))[s0..]);
            for jb in (j0..j_end.min(i_end)).step_by(LANES) {
                let y = rows_from(n.0.as_ref(), jb).map(|row| &row[s0..]);
                // SAFETY: as above.
                unsafe { K::bulk(&x[..i_end - i0], &y, k0, &mut tile) };
                for (r, i) in (i0..i_end).enumerate() {
                    for (s, j) in (jb..(jb + LANES).min(j_end).min(i + 1)).enumerate() {
                        packed[packed_offset(p, j) + i - j] = finish(tile[r][s], x[r], y[s], k0);
                    }
                }
            }
        }
    }
    true
}
