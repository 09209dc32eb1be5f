//! Solving for the head's weights: Θ = [W b]ᵀ = A⁻¹ B with A = L Lᵀ.
//!
//! Two paths, one result up to rounding:
//! - [`canonical`] factors A from the exact integer statistics with a sequential (hence
//!   deterministic) Cholesky and solves for Θ. It is a pure function of the sample set: two
//!   heads holding the same samples get bit-identical L and Θ. Cost O(p³ + p²C).
//! - [`apply`] updates an existing solution for k learned or forgotten samples on the caller's
//!   path: a rank-k Cholesky update (or downdate) of L and the Newton step
//!   Θ' = Θ ± A'⁻¹ Xᵀ (T − X Θ). Cost O(k·p² + k·p·C).
//!
//! The head serves the result of `apply` at once and restores the canonical solution off the
//! caller's path (see `crate::head::Head`).

use faer::linalg::cholesky::llt;
use faer::{Accum, Mat, Par};

use super::secret::{SecretMat, SecretScratch};
use super::stats::ExactStats;

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

/// The canonical solution for `stats` with ridge `lambda`.
pub fn canonical(
    stats: &ExactStats,
    lambda: f64,
    frac_bits: u32,
) -> Result<Solution, NotPositiveDefinite> {
    let mut l = stats.a_f64(lambda, frac_bits);
    cholesky_in_place(&mut l)?;
    let mut theta = stats.b_f64(frac_bits);
    solve_in_place(&l, &mut theta);
    Ok(Solution { l, theta })
}

/// Replaces the symmetric positive definite `a` by its lower Cholesky factor L (strict upper
/// triangle zeroed), sequentially (deterministic).
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

/// x ← A⁻¹ x using A = L Lᵀ, sequentially (deterministic).
pub fn solve_in_place(l: &Mat<f64>, x: &mut Mat<f64>) {
    let mut buf = SecretScratch::new(llt::solve::solve_in_place_scratch::<f64>(
        l.nrows(),
        x.ncols(),
        Par::Seq,
    ));
    llt::solve::solve_in_place(l.as_ref(), x.as_mut(), Par::Seq, buf.stack());
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
    // E = T − X Θ: the residual of the samples under the current weights.
    let mut e = SecretMat::from(t.clone());
    faer::linalg::matmul::matmul(
        e.as_mut(),
        Accum::Add,
        x.as_ref(),
        sol.theta.as_ref(),
        -1.0,
        Par::Seq,
    );
    // G = A'⁻¹ Xᵀ, then Θ' = Θ ± G E.
    let mut g = SecretMat::from(x.transpose().to_owned());
    solve_in_place(&sol.l, &mut g);
    faer::linalg::matmul::matmul(
        sol.theta.as_mut(),
        Accum::Add,
        g.as_ref(),
        e.as_ref(),
        sign,
        Par::Seq,
    );
    let finite = (0..sol.theta.ncols()).all(|j| sol.theta.col(j).iter().all(|v| v.is_finite()))
        && (0..sol.l.ncols()).all(|j| sol.l[(j, j)].is_finite() && sol.l[(j, j)] > 0.0);
    if finite {
        Ok(())
    } else {
        Err(NotPositiveDefinite)
    }
}
