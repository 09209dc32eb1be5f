//! The fast path's Woodbury correction: the weights after a change of k samples from the inverse
//! of an earlier A, in one pass over that inverse, without touching the factor.
//!
//! A base version's A₀ has the inverse M₀ = A₀⁻¹ (kept as a packed lower triangle, half of
//! A's size). The changes since then are rows U (m × p) with signs D = diag(±1): now
//! A = A₀ + Uᵀ D U. Their rows themselves are not kept (DESIGN.md G4): only Z = M₀ Uᵀ (p × m)
//! and S⁻¹, where S = D + U M₀ Uᵀ (m × m), so that by the Woodbury identity
//! A⁻¹ = M₀ − Z S⁻¹ Zᵀ.
//!
//! A change of k rows X (k × p) with targets T and sign s (+1 learn, −1 forget), where
//! A' = A + s XᵀX:
//! - h = M₀ Xᵀ (the pass over M₀), w = Zᵀ Xᵀ = U M₀ Xᵀ, g = A⁻¹ Xᵀ = h − Z S⁻¹ w;
//! - c = s I + X g (k × k; it is also S's Schur complement once X's rows join U);
//! - Θ' = Θ + s A'⁻¹ Xᵀ (T − X Θ) = Θ + g c⁻¹ (T − X Θ), since A'⁻¹ Xᵀ = g (I + s X g)⁻¹;
//! - X's rows join the pending ones: Z gains h, S⁻¹ is bordered by c.
//!
//! A' is positive definite exactly when s·c is (for a forget, 1 − xᵀA⁻¹x > 0); when rounding
//! says otherwise the update is refused and the caller re-solves. It is refused too when c
//! comes out of a cancellation (|c| far below the terms it is summed from: a sample forgotten
//! soon after it was learned, whose leverage is high), which would cost the weights more
//! digits than the bound on served weights (DESIGN.md G1) allows.
//!
//! When the canonical solve for a later version v arrives with M_v = A_v⁻¹, the rows pending
//! up to v are folded in ([`Woodbury::rebase`]) with no rows needed either: split
//! S = [[S_v, S_vr], [S_rv, S_rr]] and S⁻¹ = [[P, Q], [Qᵀ, R]]; then for the rows r after v,
//! Z' = M_v U_rᵀ = Z_r − Z_v S_v⁻¹ S_vr = Z_r + Z_v Q R⁻¹, and their new S' is the Schur
//! complement S_rr − S_rv S_v⁻¹ S_vr, whose inverse is R.
//!
//! Everything here serves weights that differ from the canonical ones by rounding only; the
//! canonical weights always come from [`super::solver::canonical`].

use faer::linalg::cholesky::llt;
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatRef, Par};
use zeroize::Zeroizing;

use super::secret::{SecretMat, SecretScratch};

/// The most pending rows a correction keeps; a change that would exceed it is refused (the
/// caller then re-solves), which bounds the cost of the corrections to O(p · MAX_PENDING).
pub const MAX_PENDING: usize = 256;

/// The largest ratio of the terms of c's diagonal to c's diagonal that a change may have:
/// about this factor times the rounding unit is lost in c, and from it in the weights.
const MAX_CANCELLATION: f64 = 256.0;

/// A change the correction does not take (see the module docs); the caller re-solves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// The inverse of a base version's A and the rows changed since, in the form above; zeroized
/// when dropped.
pub struct Woodbury {
    p: usize,
    base: u64,
    /// M₀'s lower triangle, column by column: (i, j) with i ≥ j at `offset(j) + i − j`.
    inverse: Zeroizing<Vec<f64>>,
    /// Z, p × m, column by column (column i is M₀ uᵢ for pending row i).
    z: Zeroizing<Vec<f64>>,
    /// S⁻¹, m × m.
    s_inv: SecretMat,
    /// The version each pending row came with, non-decreasing.
    versions: Vec<u64>,
}

impl Woodbury {
    /// The inverse of A = L Lᵀ, as the base of version `base` with nothing pending. Cost
    /// O(p³) (to be run off the caller's path).
    pub fn from_factor(l: &Mat<f64>, base: u64) -> Woodbury {
        let p = l.nrows();
        let mut full = SecretMat::zeros(p, p);
        let mut scratch = SecretScratch::new(llt::inverse::inverse_scratch::<f64>(p, Par::Seq));
        llt::inverse::inverse(full.as_mut(), l.as_ref(), Par::Seq, scratch.stack());
        let mut inverse = Zeroizing::new(Vec::with_capacity(p * (p + 1) / 2));
        for j in 0..p {
            inverse.extend_from_slice(&full.col_as_slice(j)[j..]);
        }
        Woodbury {
            p,
            base,
            inverse,
            z: Zeroizing::new(Vec::with_capacity(p * MAX_PENDING)),
            s_inv: SecretMat::zeros(0, 0),
            versions: Vec::new(),
        }
    }

    /// The version whose A the kept inverse inverts.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// How many rows changed since the base.
    pub fn pending(&self) -> usize {
        self.versions.len()
    }

    /// Updates `theta` (p × C) for k samples learned (`sign` = 1) or forgotten (`sign` = −1) by
    /// the change numbered `version`: `x` holds their augmented features (k × p) and `t` their
    /// targets (k × C), in real units. On error nothing changed: the change would leave A not
    /// numerically positive definite, would lose too many digits, or would keep more than
    /// [`MAX_PENDING`] rows.
    pub fn apply(
        &mut self,
        theta: &mut Mat<f64>,
        x: &Mat<f64>,
        t: &Mat<f64>,
        sign: f64,
        version: u64,
    ) -> Result<(), Refused> {
        let (k, p, m) = (x.nrows(), self.p, self.pending());
        if k == 0 {
            return Ok(());
        }
        if m + k > MAX_PENDING {
            return Err(Refused);
        }
        let xt = SecretMat::from(x.transpose().to_owned());
        // h = M₀ Xᵀ.
        let mut h = SecretMat::zeros(p, k);
        for r in 0..k {
            packed_symmetric_times(&self.inverse, xt.col_as_slice(r), h.col_as_slice_mut(r));
        }
        // g = h − Z S⁻¹ w with w = Zᵀ Xᵀ; c = s I + X g.
        let z = MatRef::from_column_major_slice(&self.z, p, m);
        let mut w = SecretMat::zeros(m, k);
        matmul(
            w.as_mut(),
            Accum::Replace,
            z.transpose(),
            xt.as_ref(),
            1.0,
            Par::Seq,
        );
        let mut u = SecretMat::zeros(m, k);
        matmul(
            u.as_mut(),
            Accum::Replace,
            self.s_inv.as_ref(),
            w.as_ref(),
            1.0,
            Par::Seq,
        );
        let mut g = h.clone();
        matmul(g.as_mut(), Accum::Add, z, u.as_ref(), -1.0, Par::Seq);
        let mut c = SecretMat::from_fn(k, k, |i, j| if i == j { sign } else { 0.0 });
        matmul(
            c.as_mut(),
            Accum::Add,
            x.as_ref(),
            g.as_ref(),
            1.0,
            Par::Seq,
        );
        // c's diagonal is s + xᵢᵀh − wᵢᵀu: how much of it cancelled.
        for i in 0..k {
            let xh: f64 = (0..p).map(|j| x[(i, j)] * h[(j, i)]).sum();
            let wu: f64 = (0..m).map(|j| w[(j, i)] * u[(j, i)]).sum();
            if (1.0 + xh.abs() + wu.abs()) > MAX_CANCELLATION * c[(i, i)].abs() {
                return Err(Refused);
            }
        }
        // A' is positive definite iff s·c is: factor s·c (symmetrized) to know, and to solve.
        let mut sc = SecretMat::from_fn(k, k, |i, j| sign * 0.5 * (c[(i, j)] + c[(j, i)]));
        let mut scratch = SecretScratch::new(llt::factor::cholesky_in_place_scratch::<f64>(
            k,
            Par::Seq,
            Default::default(),
        ));
        llt::factor::cholesky_in_place(
            sc.as_mut(),
            Default::default(),
            Par::Seq,
            scratch.stack(),
            Default::default(),
        )
        .map_err(|_| Refused)?;
        // c⁻¹ = s (s c)⁻¹.
        let mut c_inv = SecretMat::from_fn(k, k, |i, j| if i == j { sign } else { 0.0 });
        super::solver::solve_in_place(&sc, &mut c_inv);
        // Θ' = Θ + g c⁻¹ (T − X Θ).
        let mut e = SecretMat::from(t.clone());
        matmul(
            e.as_mut(),
            Accum::Add,
            x.as_ref(),
            theta.as_ref(),
            -1.0,
            Par::Seq,
        );
        let mut step = SecretMat::zeros(k, e.ncols());
        matmul(
            step.as_mut(),
            Accum::Replace,
            c_inv.as_ref(),
            e.as_ref(),
            1.0,
            Par::Seq,
        );
        if !all_finite(&g) || !all_finite(&step) || !all_finite(&c_inv) {
            return Err(Refused);
        }
        // X's rows join the pending ones: S⁻¹ bordered by c,
        // [[S⁻¹ + u c⁻¹ uᵀ, −u c⁻¹], [−c⁻¹ uᵀ, c⁻¹]].
        let mut uc = SecretMat::zeros(m, k);
        matmul(
            uc.as_mut(),
            Accum::Replace,
            u.as_ref(),
            c_inv.as_ref(),
            1.0,
            Par::Seq,
        );
        let mut s_inv = SecretMat::zeros(m + k, m + k);
        s_inv
            .as_mut()
            .submatrix_mut(0, 0, m, m)
            .copy_from(self.s_inv.as_ref());
        matmul(
            s_inv.as_mut().submatrix_mut(0, 0, m, m),
            Accum::Add,
            uc.as_ref(),
            u.transpose(),
            1.0,
            Par::Seq,
        );
        for i in 0..m {
            for j in 0..k {
                s_inv[(i, m + j)] = -uc[(i, j)];
                s_inv[(m + j, i)] = -uc[(i, j)];
            }
        }
        s_inv
            .as_mut()
            .submatrix_mut(m, m, k, k)
            .copy_from(c_inv.as_ref());
        self.s_inv = s_inv;
        for r in 0..k {
            self.z.extend_from_slice(h.col_as_slice(r));
        }
        self.versions.extend(std::iter::repeat_n(version, k));
        matmul(
            theta.as_mut(),
            Accum::Add,
            g.as_ref(),
            step.as_ref(),
            1.0,
            Par::Seq,
        );
        Ok(())
    }

    /// Takes `newer`, the inverse for a later version (nothing pending in it), as the base:
    /// the rows pending up to its version are folded into it, the later ones kept.
    pub fn rebase(&mut self, newer: Woodbury) {
        assert!(newer.base >= self.base && newer.pending() == 0 && newer.p == self.p);
        let (p, m) = (self.p, self.pending());
        let mv = self.versions.partition_point(|&v| v <= newer.base);
        let r = m - mv;
        let mut next = newer;
        if r > 0 {
            // Z' = Z_r + Z_v Q R⁻¹ (Q R⁻¹ = (R⁻¹ Qᵀ)ᵀ, R symmetric).
            let q = self.s_inv.as_ref().submatrix(0, mv, mv, r);
            let rr = SecretMat::from(self.s_inv.as_ref().submatrix(mv, mv, r, r).to_owned());
            let lu = rr.partial_piv_lu();
            let mut y = SecretMat::from(q.transpose().to_owned());
            lu.solve_in_place(y.as_mut());
            let z = MatRef::from_column_major_slice(&self.z, p, m);
            let mut z_next = SecretMat::from(z.submatrix(0, mv, p, r).to_owned());
            matmul(
                z_next.as_mut(),
                Accum::Add,
                z.submatrix(0, 0, p, mv),
                y.transpose(),
                1.0,
                Par::Seq,
            );
            for j in 0..r {
                next.z.extend_from_slice(z_next.col_as_slice(j));
            }
            next.s_inv = rr;
            next.versions = self.versions[mv..].to_vec();
        }
        *self = next;
    }
}

fn all_finite(m: &Mat<f64>) -> bool {
    (0..m.ncols()).all(|j| m.col_as_slice(j).iter().all(|v| v.is_finite()))
}

/// out = M x for symmetric M given by its packed lower triangle (column j from its diagonal
/// down): one pass over M, each entry used for both of its places.
fn packed_symmetric_times(m: &[f64], x: &[f64], out: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { packed_symmetric_times_avx2(m, x, out) };
        return;
    }
    packed_symmetric_times_plain(m, x, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn packed_symmetric_times_avx2(m: &[f64], x: &[f64], out: &mut [f64]) {
    packed_symmetric_times_plain(m, x, out);
}

#[inline(always)]
fn packed_symmetric_times_plain(m: &[f64], x: &[f64], out: &mut [f64]) {
    const LANES: usize = 8;
    let p = x.len();
    assert_eq!(m.len(), p * (p + 1) / 2, "M is p's packed triangle");
    assert_eq!(out.len(), p, "out has p entries");
    out.fill(0.0);
    let mut offset = 0;
    for j in 0..p {
        let column = &m[offset..offset + p - j];
        offset += p - j;
        let xj = x[j];
        let (below, xs, outs) = (&column[1..], &x[j + 1..], &mut out[j + 1..]);
        let mut acc = [0.0f64; LANES];
        let mut chunks = below.chunks_exact(LANES);
        let mut xc = xs.chunks_exact(LANES);
        let mut oc = outs.chunks_exact_mut(LANES);
        for ((mc, xv), ov) in (&mut chunks).zip(&mut xc).zip(&mut oc) {
            for l in 0..LANES {
                acc[l] = mc[l].mul_add(xv[l], acc[l]);
                ov[l] = mc[l].mul_add(xj, ov[l]);
            }
        }
        let mut dot = column[0] * xj;
        for ((&mv, &xv), ov) in chunks
            .remainder()
            .iter()
            .zip(xc.remainder())
            .zip(oc.into_remainder())
        {
            dot = mv.mul_add(xv, dot);
            *ov = mv.mul_add(xj, *ov);
        }
        out[j] += dot + acc.iter().sum::<f64>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::solver::cholesky_in_place;

    /// A random SPD A = VᵀV + I (p × p) from a fixed generator, with rows to change.
    fn rows(seed: u64, k: usize, p: usize) -> Mat<f64> {
        let mut state = seed;
        Mat::from_fn(k, p, |_, _| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
    }

    fn gram(v: &Mat<f64>, lambda: f64) -> Mat<f64> {
        let p = v.ncols();
        let mut a = Mat::from_fn(p, p, |i, j| if i == j { lambda } else { 0.0 });
        matmul(
            a.as_mut(),
            Accum::Add,
            v.transpose(),
            v.as_ref(),
            1.0,
            Par::Seq,
        );
        a
    }

    fn solve(a: &Mat<f64>, b: &Mat<f64>) -> Mat<f64> {
        let mut l = a.clone();
        cholesky_in_place(&mut l).unwrap();
        let mut x = b.clone();
        crate::math::solver::solve_in_place(&l, &mut x);
        x
    }

    fn max_rel(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
        let scale = (0..b.ncols())
            .flat_map(|j| b.col_as_slice(j).iter().map(|v| v.abs()))
            .fold(0.0, f64::max);
        (0..a.ncols())
            .flat_map(|j| {
                a.col_as_slice(j)
                    .iter()
                    .zip(b.col_as_slice(j))
                    .map(|(x, y)| (x - y).abs())
            })
            .fold(0.0, f64::max)
            / scale
    }

    #[test]
    fn the_packed_product_is_the_symmetric_product() {
        for p in [1, 2, 7, 8, 9, 33] {
            let v = rows(p as u64, p + 3, p);
            let a = gram(&v, 1.0);
            let x = rows(99, 1, p);
            let mut packed = Vec::new();
            for j in 0..p {
                packed.extend((j..p).map(|i| a[(i, j)]));
            }
            let mut out = vec![0.0; p];
            packed_symmetric_times(
                &packed,
                x.row(0).iter().copied().collect::<Vec<_>>().as_slice(),
                &mut out,
            );
            let mut naive = vec![0.0; p];
            for (i, n) in naive.iter_mut().enumerate() {
                for j in 0..p {
                    *n += a[(i, j)] * x[(0, j)];
                }
            }
            for (o, n) in out.iter().zip(&naive) {
                assert!(
                    (o - n).abs() <= 1e-12 * n.abs().max(1.0),
                    "p = {p}: {o} vs {n}"
                );
            }
        }
    }

    /// A run of learns and forgets of 1–3 rows each, with rebases on the way, follows the
    /// direct solve of each version's A Θ = B (a plain Cholesky solve), and refuses a forget
    /// that would leave A indefinite.
    #[test]
    fn corrections_and_rebases_follow_the_direct_solve() {
        let (p, c, lambda) = (12, 3, 0.5);
        let held = rows(1, 20, p);
        let targets = rows(2, 20, c);
        let mut present: Vec<usize> = (0..10).collect();
        let a_of = |present: &[usize]| {
            let v = Mat::from_fn(present.len(), p, |i, j| held[(present[i], j)]);
            gram(&v, lambda)
        };
        let b_of = |present: &[usize]| {
            let mut b = Mat::<f64>::zeros(p, c);
            for &s in present {
                for i in 0..p {
                    for j in 0..c {
                        b[(i, j)] += held[(s, i)] * targets[(s, j)];
                    }
                }
            }
            b
        };
        let factor = |present: &[usize]| {
            let mut l = a_of(present);
            cholesky_in_place(&mut l).unwrap();
            l
        };
        let mut theta = solve(&a_of(&present), &b_of(&present));
        let mut fast = Woodbury::from_factor(&factor(&present), 0);
        let steps: [(&[usize], f64); 8] = [
            (&[3], -1.0),
            (&[12, 13], 1.0),
            (&[0, 5, 7], -1.0),
            (&[3], 1.0),
            (&[15], 1.0),
            (&[12], -1.0),
            (&[16, 17, 18], 1.0),
            (&[1], -1.0),
        ];
        for (version, (ids, sign)) in steps.iter().enumerate() {
            let version = version as u64 + 1;
            let x = Mat::from_fn(ids.len(), p, |i, j| held[(ids[i], j)]);
            let t = Mat::from_fn(ids.len(), c, |i, j| targets[(ids[i], j)]);
            fast.apply(&mut theta, &x, &t, *sign, version).unwrap();
            if *sign > 0.0 {
                present.extend_from_slice(ids);
            } else {
                present.retain(|s| !ids.contains(s));
            }
            let direct = solve(&a_of(&present), &b_of(&present));
            let err = max_rel(&theta, &direct);
            assert!(err < 1e-12, "version {version}: {err}");
            if version == 3 || version == 6 {
                // A canonical solve for the version before this one arrives late.
                let mut before = present.clone();
                if *sign > 0.0 {
                    before.retain(|s| !ids.contains(s));
                } else {
                    before.extend_from_slice(ids);
                }
                fast.rebase(Woodbury::from_factor(&factor(&before), version - 1));
                assert_eq!(fast.pending(), ids.len());
                assert_eq!(fast.base(), version - 1);
            }
        }
        // Forgetting a row twice would leave A indefinite: refused, nothing changed.
        let gone = Mat::from_fn(1, p, |_, j| held[(1, j)] * 40.0);
        let t = Mat::<f64>::zeros(1, c);
        let before = theta.clone();
        let pending = fast.pending();
        assert!(fast.apply(&mut theta, &gone, &t, -1.0, 9).is_err());
        assert_eq!(theta, before);
        assert_eq!(fast.pending(), pending);
    }
}
