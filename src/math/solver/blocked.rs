//! The blocked re-solve: Θ = A⁻¹ B by a recursive Cholesky factorization and recursive
//! triangular solves, whose bulk (all but O(p²·[`LEAF`]) of the p³/6 + p²·C multiply-adds) is
//! matrix products in [`dense::product`]'s register tiles, shared among the cores.
//!
//! Its result is that of the canonical solve up to rounding, but not bit for bit: the order of
//! each entry's sums depends on the recursion's splits and the product's kernel. A head serves
//! it when a call re-solves, and restores the canonical weights off the caller's path (see
//! `crate::head::Head`). The factor and every temporary are [`SecretMat`]s, and the products
//! are Lethe's own (DESIGN.md G4).
//!
//! Each step splits a triangle in two at a multiple of [`ALIGN`] rows:
//! - factor: A₁₁ = L₁₁L₁₁ᵀ, then L₂₁ = A₂₁L₁₁⁻ᵀ, then A₂₂ − L₂₁L₂₁ᵀ = L₂₂L₂₂ᵀ;
//! - Z ← Z L⁻ᵀ (Z Lᵀ = Z₀, by columns of Z): Z₁ ← Z₁L₁₁⁻ᵀ, Z₂ ← (Z₂ − Z₁L₂₁ᵀ)L₂₂⁻ᵀ;
//! - Z ← Z L⁻¹ (Z L = Z₀): Z₂ ← Z₂L₂₂⁻¹, Z₁ ← (Z₁ − Z₂L₂₁)L₁₁⁻¹.
//!
//! With Z = Bᵀ (C × p), the two solves give Θᵀ = Bᵀ L⁻ᵀ L⁻¹, so that every product's lhs has
//! contiguous columns and none is copied.

use faer::{Accum, MatMut, MatRef};

use super::{threads_for, NotPositiveDefinite, Solution};
use crate::math::dense::{self, product_here, PARALLEL_FROM};
use crate::math::secret::SecretMat;
use crate::math::stats::ExactStats;
use crate::math::threads::run_parts;

/// Triangles of at most this size are solved by plain loops.
const LEAF: usize = 32;

/// Splits fall on multiples of this many rows (two AVX-512 vectors of f64).
const ALIGN: usize = 16;

/// The solution for `stats` with ridge `lambda` (see the module docs) on [`threads_for`]
/// threads, factored in `l`: a p × p buffer whose values are overwritten (one of another size
/// is replaced by a new one), such as the factor of the solution this one replaces. Reusing it
/// saves a new buffer's page faults and the old one's zeroizing. `Err` when a pivot is not
/// positive.
pub fn solve(
    stats: &ExactStats,
    lambda: f64,
    frac_bits: u32,
    mut l: SecretMat,
) -> Result<Solution, NotPositiveDefinite> {
    let p = stats.dim() + 1;
    if l.nrows() != p || l.ncols() != p {
        l = SecretMat::zeros(p, p);
    }
    stats.a_f64_lower_into(&mut l, lambda, frac_bits);
    let threads = threads_for(p);
    factor(l.as_mut(), threads)?;
    for j in 1..p {
        l.col_as_slice_mut(j)[..j].fill(0.0);
    }
    let mut z = stats.bt_f64(frac_bits);
    solve_rows(l.as_ref(), z.as_mut());
    let theta = SecretMat::from_fn(p, z.nrows(), |i, c| z[(c, i)]);
    Ok(Solution { l, theta })
}

/// From this many right-hand sides on, [`solve_rows`] takes the blocked solves; below, one
/// substitution per right-hand side (a pass over L each), since the products' 16-row register
/// tiles would be mostly empty. At p = 1281, L not in the caches (2-core Xeon, medians of 9):
/// 1 row 1.22 vs 3.44 ms blocked, 2 rows 2.03 vs 3.16 ms, 4 rows 3.48 vs 2.64 ms.
const BLOCKED_ROWS_FROM: usize = 4;

/// z ← z A⁻¹ for A = L Lᵀ (`l`'s lower triangle; its strict upper triangle is not read): each
/// of z's rows is a right-hand side of its own, and they are shared among [`threads_for`]
/// threads when the solves are large enough to repay starting them.
pub fn solve_rows(l: MatRef<'_, f64>, mut z: MatMut<'_, f64>) {
    let p = l.nrows();
    if z.nrows() < BLOCKED_ROWS_FROM {
        let mut x = SecretMat::from_fn(p, z.nrows(), |i, r| z[(r, i)]);
        dense::solve_cholesky(l, &mut x);
        z.copy_from(x.transpose());
        return;
    }
    let parts = if z.nrows() * p * p >= PARALLEL_FROM {
        threads_for(p)
    } else {
        1
    };
    by_rows(z, parts, |mut z| {
        solve_transposed(z.as_mut(), l);
        solve_plain(z, l);
    });
}

/// Where a triangle of size n > [`LEAF`] is split: about half, on a multiple of [`ALIGN`].
fn split(n: usize) -> usize {
    (n / 2).div_ceil(ALIGN) * ALIGN
}

/// `work` on up to `parts` blocks of z's rows (each a multiple of [`ALIGN`] but the last), one
/// thread each.
fn by_rows(z: MatMut<'_, f64>, parts: usize, work: impl Fn(MatMut<'_, f64>) + Sync) {
    let m = z.nrows();
    let mut blocks = Vec::with_capacity(parts);
    let (mut rest, mut from) = (z, 0);
    for t in 1..=parts {
        let to = if t == parts {
            m
        } else {
            (m * t / parts).div_ceil(ALIGN) * ALIGN
        }
        .clamp(from, m);
        let (this, next) = rest.split_at_row_mut(to - from);
        blocks.push(this);
        (rest, from) = (next, to);
    }
    run_parts(blocks, work);
}

/// The lower triangle of symmetric positive definite `a` (read from its lower triangle)
/// replaced by its Cholesky factor L, on up to `threads` threads. The strict upper triangle
/// is left as junk.
fn factor(a: MatMut<'_, f64>, threads: usize) -> Result<(), NotPositiveDefinite> {
    factor_sharing(a, threads, PARALLEL_FROM)
}

/// [`factor`], whose steps of at least `shared_from` multiply-adds are shared among the
/// threads.
fn factor_sharing(
    a: MatMut<'_, f64>,
    threads: usize,
    shared_from: usize,
) -> Result<(), NotPositiveDefinite> {
    let n = a.nrows();
    if n <= LEAF {
        return dense::cholesky(a).map_err(|_| NotPositiveDefinite);
    }
    let h = split(n);
    let (mut a11, _, mut a21, mut a22) = a.split_at_mut(h, h);
    factor_sharing(a11.as_mut(), threads, shared_from)?;
    let parts = |work: usize| if work >= shared_from { threads } else { 1 };
    let l11 = a11.as_ref();
    by_rows(a21.as_mut(), parts((n - h) * h * h / 2), |z| {
        solve_transposed(z, l11)
    });
    subtract_gram_by_columns(a22.as_mut(), a21.as_ref(), parts((n - h) * (n - h) * h / 2));
    factor_sharing(a22, threads, shared_from)
}

/// [`subtract_gram`] with c's columns shared among `parts` threads, in blocks of about equal
/// area of the lower triangle: each block's triangle on the diagonal, then the rectangle below
/// it.
fn subtract_gram_by_columns(c: MatMut<'_, f64>, g: MatRef<'_, f64>, parts: usize) {
    let n = c.nrows();
    let mut blocks = Vec::with_capacity(parts);
    let (mut rest, mut from) = (c, 0);
    for t in 1..=parts {
        // Column j0 of n leaves (n − j0)² / n² of the triangle to its right.
        let left = 1.0 - t as f64 / parts as f64;
        let to = if t == parts {
            n
        } else {
            ((n as f64 * (1.0 - left.sqrt())) as usize).div_ceil(ALIGN) * ALIGN
        }
        .clamp(from, n);
        let (this, next) = rest.split_at_col_mut(to - from);
        let (_, this) = this.split_at_row_mut(from);
        blocks.push((this, from));
        (rest, from) = (next, to);
    }
    run_parts(blocks, |(block, from)| {
        let w = block.ncols();
        let (diagonal, below) = block.split_at_row_mut(w);
        let (mine, rest) = g.subrows(from, g.nrows() - from).split_at_row(w);
        subtract_gram(diagonal, mine);
        product_here(below, Accum::Add, rest, mine.transpose(), -1.0);
    });
}

/// The lower triangle of `c` (n × n) minus that of g gᵀ (g is n × k); the strict upper
/// triangle of `c` may change too, in blocks on the diagonal.
fn subtract_gram(c: MatMut<'_, f64>, g: MatRef<'_, f64>) {
    let n = c.nrows();
    if n <= LEAF {
        product_here(c, Accum::Add, g, g.transpose(), -1.0);
        return;
    }
    let h = split(n);
    let (mut c11, _, c21, c22) = c.split_at_mut(h, h);
    let (g1, g2) = g.split_at_row(h);
    subtract_gram(c11.as_mut(), g1);
    product_here(c21, Accum::Add, g2, g1.transpose(), -1.0);
    subtract_gram(c22, g2);
}

/// z ← z L⁻ᵀ for lower-triangular `l` (its strict upper triangle is not read), on this
/// thread.
fn solve_transposed(z: MatMut<'_, f64>, l: MatRef<'_, f64>) {
    let n = l.nrows();
    if n <= LEAF {
        let mut z = z;
        for j in 0..n {
            for t in 0..j {
                axpy(&mut z, j, t, l[(j, t)]);
            }
            scale(&mut z, j, l[(j, j)]);
        }
        return;
    }
    let h = split(n);
    let (mut z1, mut z2) = z.split_at_col_mut(h);
    let (l11, _, l21, l22) = l.split_at(h, h);
    solve_transposed(z1.as_mut(), l11);
    product_here(z2.as_mut(), Accum::Add, z1.as_ref(), l21.transpose(), -1.0);
    solve_transposed(z2, l22);
}

/// z ← z L⁻¹ for lower-triangular `l` (its strict upper triangle is not read), on this
/// thread.
fn solve_plain(z: MatMut<'_, f64>, l: MatRef<'_, f64>) {
    let n = l.nrows();
    if n <= LEAF {
        let mut z = z;
        for j in (0..n).rev() {
            for t in j + 1..n {
                axpy(&mut z, j, t, l[(t, j)]);
            }
            scale(&mut z, j, l[(j, j)]);
        }
        return;
    }
    let h = split(n);
    let (mut z1, mut z2) = z.split_at_col_mut(h);
    let (l11, _, l21, l22) = l.split_at(h, h);
    solve_plain(z2.as_mut(), l22);
    product_here(z1.as_mut(), Accum::Add, z2.as_ref(), l21, -1.0);
    solve_plain(z1, l11);
}

/// Column j of z minus f times column t (t ≠ j).
fn axpy(z: &mut MatMut<'_, f64>, j: usize, t: usize, f: f64) {
    let contiguous = "columns are contiguous";
    let (from, to) = (
        z.as_ref()
            .col(t)
            .try_as_col_major()
            .expect(contiguous)
            .as_slice()
            .as_ptr(),
        z.as_mut()
            .col_mut(j)
            .try_as_col_major_mut()
            .expect(contiguous)
            .as_slice_mut()
            .as_mut_ptr(),
    );
    let m = z.nrows();
    // SAFETY: columns t and j of z are distinct, contiguous and m long.
    let (from, to) = unsafe {
        (
            std::slice::from_raw_parts(from, m),
            std::slice::from_raw_parts_mut(to, m),
        )
    };
    for (v, &u) in to.iter_mut().zip(from) {
        *v -= u * f;
    }
}

/// Column j of z divided by `pivot`.
fn scale(z: &mut MatMut<'_, f64>, j: usize, pivot: f64) {
    let column = z
        .as_mut()
        .col_mut(j)
        .try_as_col_major_mut()
        .expect("columns are contiguous")
        .as_slice_mut();
    for v in column {
        *v /= pivot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::dense::tests::{gram, matrix};
    use faer::Mat;

    /// Random symmetric positive definite p × p, well-conditioned.
    fn spd(p: usize) -> Mat<f64> {
        gram(&matrix(p as u64 + 11, 2 * p + 3, p), 1.0)
    }

    fn max_rel(got: MatRef<'_, f64>, want: MatRef<'_, f64>) -> f64 {
        let mut worst = 0.0f64;
        for j in 0..want.ncols() {
            for i in 0..want.nrows() {
                let (g, w) = (got[(i, j)], want[(i, j)]);
                worst = worst.max((g - w).abs() / w.abs().max(1.0));
            }
        }
        worst
    }

    /// The factor agrees with faer's (`solver::cholesky_in_place`) to rounding, at sizes around
    /// every split and tile boundary, on one thread and with every step shared among 2 and 3
    /// threads; the strict upper triangle is not read.
    #[test]
    fn the_factor_matches_faers() {
        for p in [
            1, 2, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 129, 257, 300,
        ] {
            let a = spd(p);
            let mut want = a.clone();
            crate::math::solver::cholesky_in_place(&mut want).unwrap();
            let mut a = a;
            for j in 1..p {
                for i in 0..j {
                    a[(i, j)] = f64::NAN;
                }
            }
            for threads in [1, 2, 3] {
                let mut got = a.clone();
                factor_sharing(got.as_mut(), threads, 0).unwrap();
                let mut worst = 0.0f64;
                for j in 0..p {
                    for i in j..p {
                        let (g, w) = (got[(i, j)], want[(i, j)]);
                        worst = worst.max((g - w).abs() / w.abs().max(1.0));
                    }
                }
                assert!(worst <= 1e-12, "p = {p}, {threads} threads: {worst:e}");
            }
        }
    }

    /// A matrix that is not positive definite is refused, in a leaf and past a split.
    #[test]
    fn a_non_positive_pivot_is_refused() {
        for (p, at) in [(10, 3), (100, 70)] {
            let mut a = spd(p);
            a[(at, at)] = -1.0;
            assert!(factor_sharing(a.as_mut(), 2, 0).is_err(), "p = {p}");
            let mut a = spd(p);
            a[(at, at)] = f64::NAN;
            assert!(factor_sharing(a.as_mut(), 2, 0).is_err(), "p = {p}, NaN");
        }
    }

    /// Both triangular solves invert their definitions: (z L⁻ᵀ) Lᵀ and (z L⁻¹) L give z back
    /// (products by the definition's plain loops), for 1, 3 and 37 rows of z.
    #[test]
    fn the_triangular_solves_invert_their_products() {
        for p in [1, 5, 32, 33, 80, 200] {
            let mut l = spd(p);
            crate::math::solver::cholesky_in_place(&mut l).unwrap();
            for j in 1..p {
                for i in 0..j {
                    l[(i, j)] = f64::NAN;
                }
            }
            let lower = |i: usize, j: usize| if i >= j { l[(i, j)] } else { 0.0 };
            for rows in [1, 3, 37] {
                let z0 = matrix(p as u64 * 7 + rows as u64, rows, p);
                let mut z = z0.clone();
                solve_transposed(z.as_mut(), l.as_ref());
                // (z Lᵀ)[r][i] = Σ_t z[r][t] L[i][t].
                let back = Mat::from_fn(rows, p, |r, i| {
                    (0..p).map(|t| z[(r, t)] * lower(i, t)).sum()
                });
                assert!(max_rel(back.as_ref(), z0.as_ref()) <= 1e-12, "Lᵀ, p = {p}");
                let mut z = z0.clone();
                solve_plain(z.as_mut(), l.as_ref());
                // (z L)[r][i] = Σ_t z[r][t] L[t][i].
                let back = Mat::from_fn(rows, p, |r, i| {
                    (0..p).map(|t| z[(r, t)] * lower(t, i)).sum()
                });
                assert!(max_rel(back.as_ref(), z0.as_ref()) <= 1e-12, "L, p = {p}");
            }
        }
    }

    /// `solve_rows` gives z A⁻¹: times A (a plain loop) it is z back, for fewer rows than the
    /// blocked solves take (one substitution per row) and for more, with L's strict upper
    /// triangle not read.
    #[test]
    fn solve_rows_is_z_times_the_inverse() {
        for p in [5, 80, 200] {
            let a = spd(p);
            let mut l = a.clone();
            crate::math::solver::cholesky_in_place(&mut l).unwrap();
            for j in 1..p {
                for i in 0..j {
                    l[(i, j)] = f64::NAN;
                }
            }
            for rows in [1, BLOCKED_ROWS_FROM - 1, BLOCKED_ROWS_FROM, 37] {
                let z0 = matrix(p as u64 * 3 + rows as u64, rows, p);
                let mut z = z0.clone();
                solve_rows(l.as_ref(), z.as_mut());
                let back =
                    Mat::from_fn(rows, p, |r, i| (0..p).map(|t| z[(r, t)] * a[(t, i)]).sum());
                let err = max_rel(back.as_ref(), z0.as_ref());
                assert!(err <= 1e-12, "p = {p}, {rows} rows: {err:e}");
            }
        }
    }
}
