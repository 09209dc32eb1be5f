//! Solving for the head's weights: Θ = [W b]ᵀ = A⁻¹ B with A = L Lᵀ.
//!
//! Three paths, one result up to rounding:
//! - [`canonical`] factors A from the exact integer statistics and solves for Θ in a fixed
//!   operation order (DESIGN.md G7): L and Θ are a pure function of the integer statistics,
//!   λ, the fixed-point scale and [`ALGORITHM_VERSION`]. Two heads holding the same samples
//!   get bit-identical L and Θ on any CPU, with any kernel and any thread count. Cost
//!   O(p³ + p²C).
//! - [`apply`] updates an existing solution for k learned or forgotten samples on the caller's
//!   path: a rank-k Cholesky update (or downdate) of L and the Newton step
//!   Θ' = Θ ± A'⁻¹ Xᵀ (T − X Θ). Cost O(k·p² + k·p·C). It uses faer, whose SIMD level and
//!   blocking depend on the CPU, so its bits are not portable; the head serves its result at
//!   once and restores the canonical solution off the caller's path (see `crate::head::Head`).
//! - [`blocked::solve`] re-solves from the statistics as [`canonical`] does, but in blocks whose
//!   bulk is matrix products in register tiles: faster, and not portable bit for bit. A call
//!   that re-solves serves it while the canonical solution is restored off its path.
//!
//! # The canonical order (algorithm version 1)
//! Every entry is one dot product of two contiguous rows in a fixed order (its terms split
//! into 8 lanes by index, each lane accumulated in increasing index with `f64::mul_add` from
//! +0, the lanes added as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))), then one subtraction and one
//! square root or division, all correctly rounded IEEE 754 operations:
//! - A = `ExactStats::a_f64` (each integer rounded to f64 and scaled by 2^(−2F), λ added to
//!   the diagonal), B = `ExactStats::b_f64`.
//! - Cholesky, for j = 0..p and i > j:
//!   `L[j][j] = sqrt(A[j][j] − dot(L[j][..j], L[j][..j]))`,
//!   `L[i][j] = (A[i][j] − dot(L[i][..j], L[j][..j])) / L[j][j]`.
//! - Forward substitution, for each class c and i = 0..p:
//!   `Y[i][c] = (B[i][c] − dot(L[i][..i], Y[..i][c])) / L[i][i]`.
//! - Back substitution, for each class c and i = p−1 down to 0, the dot's terms taken in
//!   decreasing k (term t is k = p−1−t):
//!   `Θ[i][c] = (Y[i][c] − dot(L[k][i], Θ[k][c] for k = p−1, …, i+1)) / L[i][i]`.
//!
//! The kernels that compute the dots ([`CanonicalKernel`]: scalar, AVX2, AVX-512) and the cache
//! blocking change only the speed; the tests compare every kernel's bits to the scalar one's
//! and to a plain loop over the definitions above, on one thread and on several: the
//! factorization shares the rows below each block of columns among threads, the substitutions
//! share the right-hand sides, and each entry is computed the same way whichever thread does it.
//! [`canonical`] uses the fastest kernel the CPU has unless the environment variable
//! `LETHE_CANONICAL_KERNEL` ([`KERNEL_ENV`]) forces one (see [`CanonicalKernel::selected`]). Any change to these formulas, the lanes, the
//! reduction tree or the conversion of A and B changes the bits, and must bump
//! [`ALGORITHM_VERSION`].

pub mod blocked;
mod fixed_order;

use faer::linalg::cholesky::llt;
use std::sync::atomic::{AtomicBool, Ordering};

use faer::{Accum, Mat, Par};
use zeroize::Zeroizing;

use super::dense;
use super::secret::{SecretMat, SecretScratch};
use super::stats::ExactStats;
use super::threads;
use fixed_order::Rows;
pub use fixed_order::{CanonicalKernel, KERNEL_ENV};

/// The version of the canonical solve's operation order (see the module docs). The canonical
/// bits, and every byte persisted from them, are a function of the integer statistics, the spec
/// and this number.
pub const ALGORITHM_VERSION: u32 = 1;

/// The Cholesky factor of A and the weights Θ it gives (both zeroized when dropped).
#[derive(Clone, PartialEq)]
pub struct Solution {
    /// Lower-triangular L with A = L Lᵀ (strict upper triangle zero), p × p.
    pub l: SecretMat,
    /// Θ = A⁻¹ B, p × C: row i < d is column i of W, row d is b.
    pub theta: SecretMat,
}

/// A factorization or update met a non-positive pivot (rounding broke positive definiteness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPositiveDefinite;

/// The largest diagonal entry A may have (in real units, λ included) for its canonical
/// Cholesky factorization in f64 to be certain to succeed, for ridge `lambda` and size p.
///
/// Demmel's condition (Higham, *Accuracy and Stability of Numerical Algorithms*, Thm 10.7):
/// Cholesky of a symmetric A with positive diagonal D runs to completion in floating point
/// when λ_min(D^-½ A D^-½) > p·γ_{p+1} / (1 − p·γ_{p+1}), γ_k = k·u / (1 − k·u). Every
/// eigenvalue of A is at least λ, so λ_min(D^-½ A D^-½) ≥ λ / max_i A_ii, and the condition
/// holds when max_i A_ii ≤ λ / bound. A factor of 2 covers rounding A's exact integer entries
/// to f64 (a perturbation of at most p·u in the scaled matrix, far below the bound). The
/// condition does not depend on the operation order, so it holds for every code path.
pub fn max_solvable_diagonal(lambda: f64, p: usize) -> f64 {
    let u = f64::EPSILON / 2.0;
    let p = p as f64;
    let gamma = (p + 1.0) * u / (1.0 - (p + 1.0) * u);
    let bound = p * gamma / (1.0 - p * gamma);
    lambda / (2.0 * bound)
}

/// The canonical solution for `stats` with ridge `lambda`, computed by the kernel this
/// process selected ([`CanonicalKernel::selected`]) on [`threads_for`] threads.
pub fn canonical(
    stats: &ExactStats,
    lambda: f64,
    frac_bits: u32,
) -> Result<Solution, NotPositiveDefinite> {
    let threads = threads_for(stats.dim() + 1);
    canonical_with(
        stats,
        lambda,
        frac_bits,
        CanonicalKernel::selected(),
        threads,
    )
}

/// The threads a canonical solve of size p shares its work among to finish soonest: every core
/// from p = [`PARALLEL_FROM`] on, else one.
pub fn threads_for(p: usize) -> usize {
    threads::cores_if(p >= PARALLEL_FROM)
}

/// Canonical solves of at least this size p share their work among threads.
const PARALLEL_FROM: usize = 256;

/// [`canonical`] computed by `kernel` (the scalar kernel if this CPU cannot run it) on up to
/// `threads` threads: the same bits whatever the kernel and the thread count.
pub fn canonical_with(
    stats: &ExactStats,
    lambda: f64,
    frac_bits: u32,
    kernel: CanonicalKernel,
    threads: usize,
) -> Result<Solution, NotPositiveDefinite> {
    let never = AtomicBool::new(false);
    canonical_until(stats, lambda, frac_bits, kernel, threads, &never)
        .map(|solved| solved.expect("nothing stops it"))
}

/// [`canonical_with`] that gives up once `stop` is set, looked at every few columns of the
/// factorization and before each substitution: `Ok(None)` then (every partial result is
/// zeroized). So a close does not wait for a solve on fewer threads than it has.
pub fn canonical_until(
    stats: &ExactStats,
    lambda: f64,
    frac_bits: u32,
    kernel: CanonicalKernel,
    threads: usize,
    stop: &AtomicBool,
) -> Result<Option<Solution>, NotPositiveDefinite> {
    // Symmetric A's rows are its columns: the factor replaces them by L's rows, in the upper
    // triangle (L[i][j] at (j, i)).
    let mut a = Rows(stats.a_f64(lambda, frac_bits));
    // On failure or once stopped, the partial factor is zeroized when `a` drops.
    match fixed_order::factor(kernel, &mut a, threads, stop) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(_) => return Err(NotPositiveDefinite),
    }
    if stop.load(Ordering::Relaxed) {
        return Ok(None);
    }
    // One right-hand side per column of B, solved in place: Y = L⁻¹ B.
    let mut y = Rows(stats.b_f64(frac_bits));
    fixed_order::forward_solve(kernel, &a, &mut y, threads);
    if stop.load(Ordering::Relaxed) {
        return Ok(None);
    }

    // Lᵀ Θ = Y with both index orders reversed is the lower-triangular system
    // (J Lᵀ J)(J Θ) = J Y (J the reversal), solved by the same forward substitution. L goes to
    // the strict lower triangle, where the result keeps it, and the rows of M = J Lᵀ J take the
    // upper one.
    let mut l = a.0;
    mirror_upper_to_lower(&mut l);
    reverse_transpose_upper(&mut l);
    let m = Rows(l);
    for c in 0..y.rows() {
        y.row_mut(c).reverse();
    }
    fixed_order::forward_solve(kernel, &m, &mut y, threads);
    for c in 0..y.rows() {
        y.row_mut(c).reverse();
    }

    // M's diagonal is L's, reversed; the upper triangle is cleared.
    let mut l = m.0;
    let p = l.nrows();
    for i in 0..p / 2 {
        let (d, e) = (l[(i, i)], l[(p - 1 - i, p - 1 - i)]);
        l[(i, i)] = e;
        l[(p - 1 - i, p - 1 - i)] = d;
    }
    for j in 1..p {
        l.col_as_slice_mut(j)[..j].fill(0.0);
    }
    Ok(Some(Solution { l, theta: y.0 }))
}

/// The lower triangle of A⁻¹ for A = L Lᵀ (`l` lower-triangular, its strict upper triangle not
/// read), packed column by column: (i, j) with i ≥ j at `j·p − j·(j−1)/2 + i − j`. It runs in
/// the canonical solve's kernels, never in a library's products, whose packing buffers would
/// keep parts of L (DESIGN.md G4). Cost p³/3 multiply-adds. `None` when `stop` was set before
/// it finished (it is looked at every few columns).
pub fn inverse(l: &Mat<f64>, stop: &AtomicBool) -> Option<Zeroizing<Vec<f64>>> {
    let p = l.nrows();
    // L by rows: row i (a column of the buffer) holds L[i][..=i], then zeros.
    let mut rows = Rows(SecretMat::zeros(p, p));
    for j0 in (0..p).step_by(COPY_TILE) {
        for i0 in (j0..p).step_by(COPY_TILE) {
            for i in i0..(i0 + COPY_TILE).min(p) {
                for j in j0..(j0 + COPY_TILE).min(i + 1) {
                    rows.0[(j, i)] = l[(i, j)];
                }
            }
        }
    }
    let mut packed = Zeroizing::new(vec![0.0; p * (p + 1) / 2]);
    fixed_order::invert(CanonicalKernel::selected(), &rows, &mut packed, stop).then_some(packed)
}

/// Side of the square tiles in which the copies below work, so that the columns read and
/// written stay in cache.
const COPY_TILE: usize = 32;

/// (i, j) ← (j, i) below the diagonal.
fn mirror_upper_to_lower(m: &mut Mat<f64>) {
    let p = m.nrows();
    for j0 in (0..p).step_by(COPY_TILE) {
        for i0 in (j0..p).step_by(COPY_TILE) {
            for j in j0..(j0 + COPY_TILE).min(p) {
                for i in i0.max(j + 1)..(i0 + COPY_TILE).min(p) {
                    m[(i, j)] = m[(j, i)];
                }
            }
        }
    }
}

/// Maps the upper triangle (diagonal included) through (r, c) → (p−1−c, p−1−r), which pairs
/// its entries: the rows of L stored there (L[c][r] at (r, c)) become those of J Lᵀ J.
fn reverse_transpose_upper(m: &mut Mat<f64>) {
    let p = m.nrows();
    for c0 in (0..p).step_by(COPY_TILE) {
        for r0 in (0..=c0).step_by(COPY_TILE) {
            for c in c0..(c0 + COPY_TILE).min(p) {
                for r in r0..(r0 + COPY_TILE).min(c + 1) {
                    let (r2, c2) = (p - 1 - c, p - 1 - r);
                    if (r, c) < (r2, c2) {
                        let v = m[(r, c)];
                        m[(r, c)] = m[(r2, c2)];
                        m[(r2, c2)] = v;
                    }
                }
            }
        }
    }
}

/// Replaces the symmetric positive definite `a` by its lower Cholesky factor L (strict upper
/// triangle zeroed) with faer, sequentially: deterministic on one machine, but not the
/// canonical order (its bits depend on the CPU).
pub fn cholesky_in_place(a: &mut Mat<f64>) -> Result<(), NotPositiveDefinite> {
    let p = a.nrows();
    let mut buf = SecretScratch::new(llt::factor::cholesky_in_place_scratch::<f64>(
        p,
        Par::Seq,
        Default::default(),
    ));
    llt::factor::cholesky_in_place(
        a.as_mut(),
        Default::default(),
        Par::Seq,
        buf.stack(),
        Default::default(),
    )
    .map_err(|_| NotPositiveDefinite)?;
    for j in 1..p {
        for i in 0..j {
            a[(i, j)] = 0.0;
        }
    }
    Ok(())
}

/// x ← A⁻¹ x using A = L Lᵀ, with faer, sequentially (not the canonical order).
pub fn solve_in_place(l: &Mat<f64>, x: &mut Mat<f64>) {
    let mut buf = SecretScratch::new(llt::solve::solve_in_place_scratch::<f64>(
        l.nrows(),
        x.ncols(),
        Par::Seq,
    ));
    llt::solve::solve_in_place(l.as_ref(), x.as_mut(), Par::Seq, buf.stack());
}

/// How the weights would otherwise follow a change (see [`resolve_is_cheaper`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// [`apply`]: the rank-k update of the factor and the Newton step.
    RankK,
    /// The fast path's Woodbury correction from the inverse of an earlier A, with `pending`
    /// rows changed since that inverse ([`super::woodbury::Woodbury::apply`]).
    Correction { pending: usize },
    /// The correction applied through the current factor, nothing pending
    /// ([`super::woodbury::Woodbury::on_factor`]): the factor is not updated, but kept as the
    /// base of the corrections until the background re-solves.
    OnFactor,
}

/// The model's cost of `update` for a change of k samples at size p with C classes (see
/// [`resolve_is_cheaper`]).
pub fn update_cost(update: Update, k: usize, p: usize, classes: usize) -> f64 {
    let (k, p, c) = (k as f64, p as f64, classes as f64);
    match update {
        Update::RankK => k * (0.21 * p * p + 0.18 * p * c),
        Update::Correction { pending } => {
            let m = pending as f64;
            k * (0.074 * p * p + 0.06 * p * c)
                + 0.92 * k * k * k
                + 0.074 * (2.0 * m * p * k + m * m * k)
        }
        Update::OnFactor => k * (ON_FACTOR_P2 * p * p + 0.06 * p * c) + 0.92 * k * k * k,
    }
}

/// [`Update::OnFactor`]'s weight of k·p², for the two blocked solves with the factor (its
/// other terms are the correction's): 0.101 by least squares over `examples/resolve_choice.rs`'s
/// 42 shapes on the 2-core Xeon, where it was faster than the rank-k update at every d ≥ 512
/// from k = 4 on (at d = 1280, C = 10, k = 64: 6.8 vs 19.3 ms).
const ON_FACTOR_P2: f64 = 0.1;

/// Whether re-solving from the statistics ([`blocked::solve`], on [`threads_for`]`(p)`
/// threads) is expected to take less time than `update` for a change of k samples at size
/// p = d + 1 with C classes.
///
/// The model's terms are each path's dominant work, with weights in nanoseconds (only the
/// ratios between them matter for the choice):
/// - the re-solve: the factorization's p³/3 multiply-adds and the substitutions' p²·C, both
///   shared among the threads, and its fixed costs: a term in p·C (copies of B and Θ) and a
///   constant (at small p they weigh most);
/// - the rank-k update: k·p² for the factor's update and the solves, k·p·C for the residual
///   and the step;
/// - the correction: k·p² for the pass over the inverse, k·p·C for the residual and the step,
///   k³ for the k × k system, and 2·m·p·k + m²·k for the m pending rows (at the pass's rate);
/// - the correction through the factor: the same, with k·p² for the two solves instead.
///
/// The correction's weights were fitted by least squares to timings at d from 128 to 2048,
/// C from 10 to 1000 and k from 16 to 256 (`examples/resolve_choice.rs`, a 2-core AMD EPYC
/// with AVX-512); the re-solve's, the correction's k·p·C term since its register tiles, and
/// the rank-k update's since its solves are blocked ([`blocked::solve_rows`]), to timings on a
/// 2-core Intel Xeon with AVX-512. Over the 42 rank-k choices measured there, the path picked
/// took at most 1.07× the other's time; with the rank-k weights from before its solves were
/// blocked, 2.1× (d = 1280, C = 1000, k = 128).
pub fn resolve_is_cheaper(update: Update, k: usize, p: usize, classes: usize) -> bool {
    let threads = threads_for(p) as f64;
    let cost = update_cost(update, k, p, classes);
    let (p, c) = (p as f64, classes as f64);
    let resolve = (0.07 * p * p * p / 3.0 + 0.09 * p * p * c) / threads + 10.0 * p * c + 20e3;
    resolve < cost
}

/// Updates `sol` for k samples learned (`sign` = 1) or forgotten (`sign` = −1): `x` holds
/// their augmented features [φ, 1] (k × p) and `t` their targets (k × C), in real units.
/// On error `sol` is unusable and must be recomputed with [`canonical`].
pub fn apply(
    sol: &mut Solution,
    x: &Mat<f64>,
    t: &Mat<f64>,
    sign: f64,
) -> Result<(), NotPositiveDefinite> {
    let k = x.nrows();
    if k == 0 {
        return Ok(());
    }
    // Every temporary holds values of the samples: zeroized when dropped, whatever happens.
    let mut w = SecretMat::from(x.transpose().to_owned());
    let mut alpha = SecretMat::from_fn(k, 1, |_, _| sign);
    llt::update::rank_r_update_clobber(
        sol.l.as_mut(),
        w.as_mut(),
        alpha.col_mut(0).as_diagonal_mut(),
    )
    .map_err(|_| NotPositiveDefinite)?;
    // E = T − X Θ: the residual of the samples under the current weights. The products and
    // the solves are Lethe's own (`dense`, `blocked`): a library's would keep the rows in
    // buffers that are never zeroized (G4).
    let mut e = SecretMat::from(t.clone());
    dense::product(e.as_mut(), Accum::Add, x.as_ref(), sol.theta.as_ref(), -1.0);
    // Gᵀ = X A'⁻¹ (each row a right-hand side of the blocked solves), then Θ' = Θ ± G E.
    let mut gt = SecretMat::from(x.clone());
    blocked::solve_rows(sol.l.as_ref(), gt.as_mut());
    dense::product(
        sol.theta.as_mut(),
        Accum::Add,
        gt.as_ref().transpose(),
        e.as_ref(),
        sign,
    );
    let finite = (0..sol.theta.ncols()).all(|j| sol.theta.col(j).iter().all(|v| v.is_finite()))
        && (0..sol.l.ncols()).all(|j| sol.l[(j, j)].is_finite() && sol.l[(j, j)] > 0.0);
    if finite {
        Ok(())
    } else {
        Err(NotPositiveDefinite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At DESIGN.md's size (d = 1280, C = 100), one sample takes either update and a thousand
    /// the re-solve; once the re-solve is cheaper for k samples, it is for more; and the
    /// correction, which is cheaper per sample, takes more samples than the rank-k update.
    #[test]
    fn the_cost_model_switches_once_as_k_grows() {
        let (p, c) = (1281, 100);
        let mut switches = Vec::new();
        for update in [
            Update::RankK,
            Update::Correction { pending: 0 },
            Update::Correction { pending: 200 },
        ] {
            assert!(!resolve_is_cheaper(update, 1, p, c), "{update:?}");
            assert!(resolve_is_cheaper(update, 1000, p, c), "{update:?}");
            let first = (1..=1000)
                .find(|&k| resolve_is_cheaper(update, k, p, c))
                .unwrap();
            assert!(
                (first..=5000).all(|k| resolve_is_cheaper(update, k, p, c)),
                "{update:?}"
            );
            switches.push(first);
        }
        assert!(switches[0] < switches[1], "{switches:?}");
        assert!(switches[2] < switches[1], "{switches:?}");
    }

    /// The factor of a random well-conditioned A = VᵀV + I (p × p), and faer's inverse of it
    /// (the independent reference).
    fn factor_and_inverse(p: usize) -> (Mat<f64>, Mat<f64>) {
        let v = crate::math::dense::tests::matrix(p as u64, 2 * p + 3, p);
        let mut l = crate::math::dense::tests::gram(&v, 1.0);
        cholesky_in_place(&mut l).unwrap();
        let mut reference = Mat::zeros(p, p);
        let mut scratch = SecretScratch::new(llt::inverse::inverse_scratch::<f64>(p, Par::Seq));
        llt::inverse::inverse(reference.as_mut(), l.as_ref(), Par::Seq, scratch.stack());
        (l, reference)
    }

    /// The inverse agrees with faer's to rounding at sizes around every tile and lane
    /// boundary, and leaves nothing of the strict upper triangle of L read.
    #[test]
    fn inverse_matches_a_reference() {
        for p in [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 65, 100] {
            let (mut l, reference) = factor_and_inverse(p);
            for j in 1..p {
                for i in 0..j {
                    l[(i, j)] = f64::NAN;
                }
            }
            let packed = inverse(&l, &AtomicBool::new(false)).unwrap();
            let mut at = 0;
            for j in 0..p {
                for i in j..p {
                    let (got, want) = (packed[at], reference[(i, j)]);
                    assert!(
                        (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                        "p = {p}, ({i}, {j}): {got} vs {want}"
                    );
                    at += 1;
                }
            }
            assert_eq!(at, packed.len());
        }
    }

    /// A stop set before the inversion ends makes it give up.
    #[test]
    fn a_stopped_inverse_gives_up() {
        let (l, _) = factor_and_inverse(70);
        assert!(inverse(&l, &AtomicBool::new(true)).is_none());
        assert!(inverse(&l, &AtomicBool::new(false)).is_some());
    }

    /// Statistics of 200 pseudo-random samples, d = 70, C = 3, 16 fractional bits.
    fn small_stats() -> ExactStats {
        let (d, c, n, one) = (70, 3, 200, 1 << 16);
        let mut state = 7u64;
        let q: Vec<i32> = (0..n * d)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as i32 % one
            })
            .collect();
        let r: Vec<i32> = (0..n * c)
            .map(|i| if i % c == (i / c) % c { one } else { 0 })
            .collect();
        let mut stats = ExactStats::new(d, c);
        stats.accumulate(&q, &r, one, 1);
        stats
    }

    /// A stop set before the canonical solve ends makes it give up; unset, the solve gives
    /// the bits of the one that cannot be stopped.
    #[test]
    fn a_stopped_canonical_solve_gives_up() {
        let stats = small_stats();
        let kernel = CanonicalKernel::selected();
        let solve = |stop: bool| {
            canonical_until(&stats, 1.0, 16, kernel, 2, &AtomicBool::new(stop)).unwrap()
        };
        assert!(solve(true).is_none());
        assert!(solve(false) == Some(canonical_with(&stats, 1.0, 16, kernel, 2).unwrap()));
    }

    /// When no thread can be started, a solve on several threads runs its parts on the
    /// calling thread and gives the same bits.
    #[test]
    fn a_solve_without_threads_gives_the_same_bits() {
        let stats = small_stats();
        let kernel = CanonicalKernel::selected();
        let one = canonical_with(&stats, 1.0, 16, kernel, 1).unwrap();
        crate::math::threads::tests::REFUSED.with(|r| r.set(true));
        let refused = canonical_with(&stats, 1.0, 16, kernel, 3);
        crate::math::threads::tests::REFUSED.with(|r| r.set(false));
        assert!(refused.unwrap() == one);
    }

    /// The blocked re-solve gives the canonical solution up to rounding: the factor and the
    /// weights within 1e-12 relative, at a size past several of its splits.
    #[test]
    fn the_blocked_solve_is_the_canonical_one_up_to_rounding() {
        let stats = small_stats();
        let want = canonical_with(&stats, 1.0, 16, CanonicalKernel::Scalar, 1).unwrap();
        let got = blocked::solve(&stats, 1.0, 16, SecretMat::zeros(0, 0)).unwrap();
        // A buffer of the right size, full of junk, gives the same bits.
        let junk = SecretMat::from_fn(71, 71, |i, j| (i * 71 + j) as f64 - 1e3);
        assert!(blocked::solve(&stats, 1.0, 16, junk).unwrap() == got);
        for (g, w) in [(&got.l, &want.l), (&got.theta, &want.theta)] {
            let scale = w.norm_max();
            assert!((g.as_ref() - w.as_ref()).norm_max() <= 1e-12 * scale);
        }
        for j in 1..got.l.nrows() {
            assert!(got.l.col_as_slice(j)[..j].iter().all(|&v| v == 0.0));
        }
    }

    /// Every kernel this CPU runs gives the scalar kernel's bits.
    #[test]
    fn inverse_kernels_agree_bit_for_bit() {
        for p in [9, 33, 70] {
            let (l, _) = factor_and_inverse(p);
            let rows = Rows(SecretMat::from_fn(p, p, |r, c| {
                if r <= c {
                    l[(c, r)]
                } else {
                    0.0
                }
            }));
            let run = |kernel| {
                let mut packed = vec![0.0; p * (p + 1) / 2];
                assert!(fixed_order::invert(
                    kernel,
                    &rows,
                    &mut packed,
                    &AtomicBool::new(false)
                ));
                packed.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let scalar = run(CanonicalKernel::Scalar);
            for kernel in CanonicalKernel::available() {
                assert!(run(kernel) == scalar, "{kernel:?} at p = {p}");
            }
        }
    }
}
