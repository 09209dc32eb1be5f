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
//! Where no inverse has been computed yet, the base can be the factor L₀ of A₀ = L₀L₀ᵀ instead
//! ([`Woodbury::on_factor`]): h = A₀⁻¹Xᵀ then comes from two triangular solves with L₀ (twice
//! the multiply-adds of the pass over M₀, but nothing to invert first), and the rest is the
//! same. A head takes its current factor as such a base rather than update the factor.
//!
//! Everything here serves weights that differ from the canonical ones by rounding only; the
//! canonical weights always come from [`super::solver::canonical`].

use std::sync::atomic::AtomicBool;

use faer::{Accum, Mat, MatRef};
use zeroize::Zeroizing;

use super::dense;
use super::secret::{wipe, SecretMat};
use super::solver::{self, blocked};
use super::stats::products::packed_offset;
use super::threads;

/// The most pending rows a correction keeps; a change that would exceed it is refused (the
/// caller then re-solves), which bounds the cost of the corrections to O(p · MAX_PENDING).
pub const MAX_PENDING: usize = 256;

/// The largest ratio of the terms of c's diagonal to c's diagonal that a change may have:
/// about this factor times the rounding unit is lost in c, and from it in the weights.
const MAX_CANCELLATION: f64 = 256.0;

/// A change the correction does not take (see the module docs); the caller re-solves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// How A₀⁻¹ is applied: the inverse M₀, or the factor of A₀ (see [`Woodbury::on_factor`]).
enum Base {
    /// M₀'s lower triangle, column by column: (i, j) with i ≥ j at `offset(j) + i − j`.
    Inverse(Zeroizing<Vec<f64>>),
    /// L₀ with A₀ = L₀L₀ᵀ (its lower triangle is read).
    Factor(SecretMat),
}

/// The inverse (or the factor) of a base version's A and the rows changed since, in the form
/// above; zeroized when dropped.
pub struct Woodbury {
    p: usize,
    base: u64,
    applied: Base,
    /// Z, p × m, column by column (column i is M₀ uᵢ for pending row i).
    z: Zeroizing<Vec<f64>>,
    /// S⁻¹, m × m.
    s_inv: SecretMat,
    /// The version each pending row came with, non-decreasing.
    versions: Vec<u64>,
}

impl Drop for Woodbury {
    fn drop(&mut self) {
        // Before `Zeroizing`'s own drop, which then finds nothing left.
        if let Base::Inverse(inverse) = &mut self.applied {
            wipe(inverse);
        }
        wipe(&mut self.z);
    }
}

impl Woodbury {
    /// The inverse of A = L Lᵀ, as the base of version `base` with nothing pending. Cost
    /// O(p³) (to be run off the caller's path); `None` when `stop` was set before it finished.
    pub fn from_factor(l: &Mat<f64>, base: u64, stop: &AtomicBool) -> Option<Woodbury> {
        let p = l.nrows();
        let inverse = solver::inverse(l, stop)?;
        Some(Woodbury::with(p, base, Base::Inverse(inverse)))
    }

    /// A₀⁻¹ applied through the factor `l` of A₀ = L Lᵀ, as the base of version `base` with
    /// nothing pending: nothing to compute, but each change then solves with L twice
    /// ([`blocked::solve_rows`]) instead of one pass over M₀. For a head that has no inverse,
    /// and whose current factor would otherwise be updated by each change.
    pub fn on_factor(l: SecretMat, base: u64) -> Woodbury {
        Woodbury::with(l.nrows(), base, Base::Factor(l))
    }

    fn with(p: usize, base: u64, applied: Base) -> Woodbury {
        Woodbury {
            p,
            base,
            applied,
            z: Zeroizing::new(Vec::with_capacity(p * MAX_PENDING)),
            s_inv: SecretMat::zeros(0, 0),
            versions: Vec::new(),
        }
    }

    /// Whether A₀⁻¹ is applied through a factor ([`Woodbury::on_factor`]).
    pub fn on_a_factor(&self) -> bool {
        matches!(self.applied, Base::Factor(_))
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
        // h = A₀⁻¹ Xᵀ.
        let h = match &self.applied {
            Base::Inverse(inverse) => {
                let mut h = SecretMat::zeros(p, k);
                packed_symmetric_times(inverse, &xt, &mut h);
                h
            }
            Base::Factor(l) => {
                let mut ht = SecretMat::from(x.clone());
                blocked::solve_rows(l.as_ref(), ht.as_mut());
                SecretMat::from_fn(p, k, |i, r| ht[(r, i)])
            }
        };
        // g = h − Z S⁻¹ w with w = Zᵀ Xᵀ; c = s I + X g.
        let z = MatRef::from_column_major_slice(&self.z, p, m);
        let mut w = SecretMat::zeros(m, k);
        dense::product(w.as_mut(), Accum::Replace, z.transpose(), xt.as_ref(), 1.0);
        let mut u = SecretMat::zeros(m, k);
        dense::product(
            u.as_mut(),
            Accum::Replace,
            self.s_inv.as_ref(),
            w.as_ref(),
            1.0,
        );
        let mut g = h.clone();
        dense::product(g.as_mut(), Accum::Add, z, u.as_ref(), -1.0);
        // c = s I + X g = s I + X h − wᵀ u, its two products kept to see how much of c's
        // diagonal cancelled.
        let mut xh = SecretMat::zeros(k, k);
        dense::product(
            xh.as_mut(),
            Accum::Replace,
            xt.as_ref().transpose(),
            h.as_ref(),
            1.0,
        );
        let mut wu = SecretMat::zeros(k, k);
        dense::product(wu.as_mut(), Accum::Replace, w.transpose(), u.as_ref(), 1.0);
        let c = SecretMat::from_fn(k, k, |i, j| {
            xh[(i, j)] - wu[(i, j)] + if i == j { sign } else { 0.0 }
        });
        if (0..k)
            .any(|i| 1.0 + xh[(i, i)].abs() + wu[(i, i)].abs() > MAX_CANCELLATION * c[(i, i)].abs())
        {
            return Err(Refused);
        }
        // A' is positive definite iff s·c is: factor s·c (symmetrized) to know, and to solve.
        let mut sc = SecretMat::from_fn(k, k, |i, j| sign * 0.5 * (c[(i, j)] + c[(j, i)]));
        dense::cholesky(sc.as_mut()).map_err(|_| Refused)?;
        // c⁻¹ = s (s c)⁻¹.
        let mut c_inv = SecretMat::from_fn(k, k, |i, j| if i == j { sign } else { 0.0 });
        dense::solve_cholesky(sc.as_ref(), &mut c_inv);
        // Θ' = Θ + g c⁻¹ (T − X Θ).
        let mut e = SecretMat::from(t.clone());
        dense::product(
            e.as_mut(),
            Accum::Add,
            xt.as_ref().transpose(),
            theta.as_ref(),
            -1.0,
        );
        let mut step = SecretMat::zeros(k, e.ncols());
        dense::product(
            step.as_mut(),
            Accum::Replace,
            c_inv.as_ref(),
            e.as_ref(),
            1.0,
        );
        if !all_finite(&g) || !all_finite(&step) || !all_finite(&c_inv) {
            return Err(Refused);
        }
        // X's rows join the pending ones: S⁻¹ bordered by c,
        // [[S⁻¹ + u c⁻¹ uᵀ, −u c⁻¹], [−c⁻¹ uᵀ, c⁻¹]].
        let mut uc = SecretMat::zeros(m, k);
        dense::product(uc.as_mut(), Accum::Replace, u.as_ref(), c_inv.as_ref(), 1.0);
        let mut s_inv = SecretMat::zeros(m + k, m + k);
        s_inv
            .as_mut()
            .submatrix_mut(0, 0, m, m)
            .copy_from(self.s_inv.as_ref());
        dense::product(
            s_inv.as_mut().submatrix_mut(0, 0, m, m),
            Accum::Add,
            uc.as_ref(),
            u.transpose(),
            1.0,
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
        dense::product(theta.as_mut(), Accum::Add, g.as_ref(), step.as_ref(), 1.0);
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
            let mut y = SecretMat::from(q.transpose().to_owned());
            dense::solve_lu(&rr, &mut y);
            let z = MatRef::from_column_major_slice(&self.z, p, m);
            let mut z_next = SecretMat::from(z.submatrix(0, mv, p, r).to_owned());
            dense::product(
                z_next.as_mut(),
                Accum::Add,
                z.submatrix(0, 0, p, mv),
                y.transpose(),
                1.0,
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

/// H = M Xᵀ for symmetric M given by its packed lower triangle (column j from its diagonal
/// down) and `xt` = Xᵀ (p × k), with the CPU's widest kernel; see [`symmetric_times_with`].
fn packed_symmetric_times(m: &[f64], xt: &Mat<f64>, h: &mut Mat<f64>) {
    let (p, k) = (xt.nrows(), xt.ncols());
    let threads = threads::cores_if(k >= PARALLEL_FROM && k * p * p / 2 >= dense::PARALLEL_FROM);
    symmetric_times_with(
        Kernel::for_many(xt.ncols()),
        threads,
        COLUMN_BLOCK_BYTES,
        m,
        xt,
        h,
    );
}

/// Right-hand sides per pass over a block of M.
const BLOCK: usize = 4;

/// The most bytes of M's columns one block holds: they stay in the L2 cache while every
/// right-hand side passes over them.
const COLUMN_BLOCK_BYTES: usize = 512 << 10;

/// From this many right-hand sides on, they are shared among threads, if the product is also
/// large enough to repay starting them ([`dense::PARALLEL_FROM`] multiply-adds): at p = 129,
/// 64 right-hand sides (0.5 M multiply-adds) took 722 µs on two threads and 85 µs on one, in a
/// learn right after a run of the core (2-core Xeon).
const PARALLEL_FROM: usize = 16;

/// From this many right-hand sides on, the product takes the register tiles. (At d = 1280, 64
/// right-hand sides: 6.5 → 4.0 ms on two threads, warm; 9–11 → 6–9 ms in a learn, where M
/// comes from memory. Fewer right-hand sides share each pass of the lower triangle's tiles
/// over M's rows among fewer groups, so the column kernel keeps them.)
const TILES_FROM: usize = 32;

/// The code a product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The column kernel in AVX-512 registers ([`columns_avx512`]).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 register tiles ([`tiles_avx512`]), for many right-hand sides.
    #[cfg(target_arch = "x86_64")]
    Tiles,
}

impl Kernel {
    /// Every kernel this CPU runs, the portable one first, then the column kernels from the
    /// narrowest vectors to the widest, then the tiles.
    fn available() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            kernels.push(Kernel::Avx2);
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            kernels.extend([Kernel::Avx512, Kernel::Tiles]);
        }
        kernels
    }

    /// The kernel for k right-hand sides: the tiles from [`TILES_FROM`] on (they read M twice,
    /// but keep their sums in registers), the column kernel below (it reads M once: a forget
    /// of one sample is a pass over M).
    fn for_many(k: usize) -> Kernel {
        let kernels = Kernel::available();
        let columns = kernels.iter().rfind(|&&kernel| !kernel.tiles());
        match kernels.last() {
            Some(&tiles) if tiles.tiles() && k >= TILES_FROM => tiles,
            _ => *columns.expect("the portable kernel"),
        }
    }

    fn tiles(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Tiles {
            return true;
        }
        false
    }
}

/// [`packed_symmetric_times`] with `kernel` on up to `threads` threads (each takes a share of
/// the right-hand sides, in whole groups of [`BLOCK`]), visiting M in blocks of columns of at
/// most `block_bytes` (at least one column), each entry of M used for both of its places.
fn symmetric_times_with(
    kernel: Kernel,
    threads: usize,
    block_bytes: usize,
    m: &[f64],
    xt: &Mat<f64>,
    h: &mut Mat<f64>,
) {
    let (p, k) = (xt.nrows(), xt.ncols());
    assert_eq!(m.len(), p * (p + 1) / 2, "M is p's packed triangle");
    assert_eq!((h.nrows(), h.ncols()), (p, k), "H is p × k");
    let x: Vec<&[f64]> = (0..k).map(|b| xt.col_as_slice(b)).collect();
    let mut out: Vec<&mut [f64]> = Vec::with_capacity(k);
    let mut rest = h.as_mut();
    for _ in 0..k {
        let (first, tail) = rest.split_at_col_mut(1);
        let column = first.col_mut(0).try_as_col_major_mut();
        let column = column.expect("a column of an owned matrix is contiguous");
        out.push(column.as_slice_mut());
        rest = tail;
    }
    for o in out.iter_mut() {
        o.fill(0.0);
    }
    let groups = k.div_ceil(BLOCK);
    let threads = threads.clamp(1, groups.max(1));
    let mut parts = Vec::with_capacity(threads);
    let (mut x_rest, mut out_rest) = (&x[..], &mut out[..]);
    for t in 0..threads {
        let take = ((groups * (t + 1) / threads - groups * t / threads) * BLOCK).min(x_rest.len());
        let (xs, x_tail) = x_rest.split_at(take);
        let (os, out_tail) = std::mem::take(&mut out_rest).split_at_mut(take);
        parts.push((xs, os));
        (x_rest, out_rest) = (x_tail, out_tail);
    }
    threads::run_parts(parts, |(xs, os)| match kernel {
        // SAFETY: `Kernel::Tiles` is made only by `Kernel::available`, where the CPU has
        // AVX-512F; M is p's packed triangle (asserted above) and every x and out p long.
        #[cfg(target_arch = "x86_64")]
        Kernel::Tiles => unsafe { tiles_avx512(m, xs, os) },
        _ => by_blocks(kernel, block_bytes, m, xs, os),
    });
}

/// out[b] += M x[b] for every right-hand side: M's lower triangle (with the diagonal) in
/// register tiles of 16 rows × 8 right-hand sides, each summed over M's columns (16 rows of a
/// column in two vectors, times each right-hand side's entry for that column, broadcast), and
/// its strictly upper triangle as dot products of M's columns below the diagonal with the
/// right-hand sides, 8 at a time. M is read twice, but no sum goes through memory.
///
/// # Safety
/// The CPU must have AVX-512F; `m` holds p's packed triangle and every x and out p entries.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tiles_avx512(m: &[f64], x: &[&[f64]], out: &mut [&mut [f64]]) {
    use std::arch::x86_64::*;
    const ROWS: usize = 16;
    const RHS: usize = dense::x86::BROADCAST;
    let Some(p) = x.first().map(|x| x.len()) else {
        return;
    };
    assert_eq!(m.len(), p * (p + 1) / 2, "M is p's packed triangle");
    assert!(x.iter().all(|v| v.len() == p) && out.iter().all(|v| v.len() == p));
    // Each group's pointers (past the group's last right-hand side: its last, never written).
    let groups: Vec<([*const f64; RHS], [*mut f64; RHS], usize)> = x
        .chunks(RHS)
        .zip(out.chunks_mut(RHS))
        .map(|(xg, og)| {
            let n = xg.len();
            let xp = std::array::from_fn(|b| xg[b.min(n - 1)].as_ptr());
            let op = std::array::from_fn(|b| og[b.min(n - 1)].as_mut_ptr());
            (xp, op, n)
        })
        .collect();
    // SAFETY (every access below): M's column j holds rows j … p − 1 from offset(j), and
    // only those rows are loaded (masked lanes are not read); x[b] and out[b] hold p entries,
    // and only rows below p are read or written; each out[b] is its own `&mut` slice.
    for i0 in (0..p).step_by(ROWS) {
        let rows = ROWS.min(p - i0);
        let valid = ((1u32 << rows) - 1) as u16;
        for &(xp, op, n) in &groups {
            // Rows i0 … i0 + 15 of each column j up to them, those above the diagonal masked.
            let sums = dense::x86::sum_tile(
                i0 + rows,
                |j| {
                    let mask = valid & !(((1u32 << j.saturating_sub(i0)) - 1) as u16);
                    let at = m.as_ptr().wrapping_add(packed_offset(p, j) + i0);
                    (at.wrapping_sub(j), mask)
                },
                |j, b| xp[b].wrapping_add(j),
            );
            let to = op.map(|o| o.wrapping_add(i0));
            dense::x86::add_tile(&sums, &to[..n], valid, _mm512_set1_pd(1.0));
        }
    }
    for j in 0..p {
        // Column j's entry in row i at `column + i − j`, for the rows i > j.
        let column = m.as_ptr().add(packed_offset(p, j));
        for &(xp, op, n) in &groups {
            let mut acc = [_mm512_setzero_pd(); RHS];
            // Rows in groups of 8 from a multiple of 8 (so that the right-hand sides' loads
            // do not straddle cache lines where their columns start on one), those up to j
            // masked.
            for i in ((j + 1) / 8 * 8..p).step_by(8) {
                let below = ((1u32 << (j + 1).saturating_sub(i)) - 1) as u8;
                let mask = (((1u32 << (p - i).min(8)) - 1) as u8) & !below;
                let v = _mm512_maskz_loadu_pd(mask, column.wrapping_add(i).wrapping_sub(j));
                for (sum, &xb) in acc.iter_mut().zip(&xp) {
                    let xv = _mm512_maskz_loadu_pd(mask, xb.wrapping_add(i));
                    *sum = _mm512_fmadd_pd(v, xv, *sum);
                }
            }
            for (sum, &ob) in acc.iter().zip(&op).take(n) {
                *ob.add(j) += _mm512_reduce_add_pd(*sum);
            }
        }
    }
}

/// out[b] += M x[b] for every right-hand side, block of columns by block of columns.
fn by_blocks(kernel: Kernel, block_bytes: usize, m: &[f64], x: &[&[f64]], out: &mut [&mut [f64]]) {
    let Some(p) = x.first().map(|x| x.len()) else {
        return;
    };
    let (mut j0, mut offset) = (0, 0);
    while j0 < p {
        let (mut j1, mut len) = (j0 + 1, p - j0);
        while j1 < p && (len + p - j1) * size_of::<f64>() <= block_bytes {
            len += p - j1;
            j1 += 1;
        }
        let block = &m[offset..offset + len];
        for (xg, og) in x.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            if xg.len() == BLOCK {
                columns::<BLOCK>(kernel, block, j0..j1, xg, og);
            } else {
                for (xb, ob) in xg.iter().zip(og.iter_mut()) {
                    columns::<1>(kernel, block, j0..j1, &[xb], &mut [ob]);
                }
            }
        }
        (j0, offset) = (j1, offset + len);
    }
}

/// out[b] += M[.., cols] x[b][cols] + (the columns' entries below the diagonal, in their
/// row's place) for B right-hand sides, where `block` holds M's packed columns `cols`.
fn columns<const B: usize>(
    kernel: Kernel,
    block: &[f64],
    cols: std::ops::Range<usize>,
    x: &[&[f64]],
    out: &mut [&mut [f64]],
) {
    assert!(x.len() == B && out.len() == B, "B right-hand sides");
    let p = x[0].len();
    assert!(x.iter().all(|x| x.len() == p) && out.iter().all(|o| o.len() == p));
    assert!(cols.end <= p);
    let len: usize = cols.clone().map(|j| p - j).sum();
    assert_eq!(
        block.len(),
        len,
        "the block holds the columns' packed entries"
    );
    match kernel {
        // SAFETY: `Kernel::Avx2` is made only by `Kernel::available`, where the CPU has the
        // features; the shapes are checked above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { columns_avx2::<B>(block, cols, x, out) },
        // SAFETY: as above, with AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { columns_avx512::<B>(block, cols, x, out) },
        _ => columns_portable::<B>(block, cols, x, out),
    }
}

/// [`columns`] in AVX2 registers: each 4-wide load of M serves every right-hand side, for both
/// of its places (the dot of column j and the update of the entries below j).
///
/// # Safety
/// The CPU must have AVX2 and FMA, and the shapes must be those [`columns`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_avx2<const B: usize>(
    block: &[f64],
    cols: std::ops::Range<usize>,
    x: &[&[f64]],
    out: &mut [&mut [f64]],
) {
    use std::arch::x86_64::{
        _mm256_fmadd_pd, _mm256_loadu_pd, _mm256_set1_pd, _mm256_setzero_pd, _mm256_storeu_pd,
    };
    let p = x[0].len();
    let xp: [*const f64; B] = std::array::from_fn(|b| x[b].as_ptr());
    let op: [*mut f64; B] = std::array::from_fn(|b| out[b].as_mut_ptr());
    // Partial sums of M x, spilled here: zeroized on return (G4).
    let mut lanes = Zeroizing::new([[0.0f64; 4]; 2]);
    let mut offset = 0;
    for j in cols {
        let n = p - j - 1;
        // SAFETY (every access below): column j holds p − j entries from `offset`, within
        // `block` (checked by the caller); x[b] and out[b] hold p entries, and every index
        // used is j or j + 1 + t with t < n = p − j − 1. out[b] is a distinct `&mut` slice, so
        // writing through op[b] aliases nothing else.
        unsafe {
            let column = block.as_ptr().add(offset);
            let below = column.add(1);
            offset += p - j;
            let xj: [f64; B] = std::array::from_fn(|b| *xp[b].add(j));
            let xjv = xj.map(|v| _mm256_set1_pd(v));
            let mut acc = [[_mm256_setzero_pd(); 2]; B];
            let mut t = 0;
            while t + 8 <= n {
                let (m0, m1) = (
                    _mm256_loadu_pd(below.add(t)),
                    _mm256_loadu_pd(below.add(t + 4)),
                );
                for b in 0..B {
                    let at = j + 1 + t;
                    let (x0, x1) = (
                        _mm256_loadu_pd(xp[b].add(at)),
                        _mm256_loadu_pd(xp[b].add(at + 4)),
                    );
                    acc[b][0] = _mm256_fmadd_pd(m0, x0, acc[b][0]);
                    acc[b][1] = _mm256_fmadd_pd(m1, x1, acc[b][1]);
                    let (o0, o1) = (op[b].add(at), op[b].add(at + 4));
                    _mm256_storeu_pd(o0, _mm256_fmadd_pd(m0, xjv[b], _mm256_loadu_pd(o0)));
                    _mm256_storeu_pd(o1, _mm256_fmadd_pd(m1, xjv[b], _mm256_loadu_pd(o1)));
                }
                t += 8;
            }
            for b in 0..B {
                _mm256_storeu_pd(lanes[0].as_mut_ptr(), acc[b][0]);
                _mm256_storeu_pd(lanes[1].as_mut_ptr(), acc[b][1]);
                let mut dot = *column * xj[b] + lanes.iter().flatten().sum::<f64>();
                for u in t..n {
                    let mv = *below.add(u);
                    dot = mv.mul_add(*xp[b].add(j + 1 + u), dot);
                    let o = op[b].add(j + 1 + u);
                    *o = mv.mul_add(xj[b], *o);
                }
                *op[b].add(j) += dot;
            }
        }
    }
}

/// How far ahead of its loads [`columns_avx512`] asks for M's entries (in entries: 4 KiB).
/// The columns are packed one after the other, so the entries ahead are the next ones to be
/// read, in this column or the next. In a forget of one sample at p = 1281 (2-core Xeon,
/// medians of 40 calls), the pass over M took 594–743 µs with this kernel and 2 KiB ahead vs
/// 970–976 µs with the AVX2 kernel; 4 KiB took 679–757 µs, 8 KiB 677–757 µs, 512 B 813–881 µs.
const PREFETCH: usize = 512;

/// [`columns`] in AVX-512 registers, 16 rows of a column per step (the last 0–15 masked), with
/// M's entries asked for [`PREFETCH`] entries ahead of their use: the pass over M is bound by
/// memory, and for a forget of one sample it is the whole of the correction's cost.
///
/// # Safety
/// The CPU must have AVX-512F, and the shapes must be those [`columns`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn columns_avx512<const B: usize>(
    block: &[f64],
    cols: std::ops::Range<usize>,
    x: &[&[f64]],
    out: &mut [&mut [f64]],
) {
    use std::arch::x86_64::{
        _mm512_add_pd, _mm512_fmadd_pd, _mm512_loadu_pd, _mm512_mask_storeu_pd,
        _mm512_maskz_loadu_pd, _mm512_reduce_add_pd, _mm512_set1_pd, _mm512_setzero_pd,
        _mm512_storeu_pd, _mm_prefetch, _MM_HINT_T0,
    };
    let p = x[0].len();
    let xp: [*const f64; B] = std::array::from_fn(|b| x[b].as_ptr());
    let op: [*mut f64; B] = std::array::from_fn(|b| out[b].as_mut_ptr());
    let mut offset = 0;
    for j in cols {
        let n = p - j - 1;
        // SAFETY (every access below): column j holds p − j entries from `offset`, within
        // `block` (checked by the caller); x[b] and out[b] hold p entries, and every index
        // used is j or j + 1 + t with t < n = p − j − 1 (the masked lanes past n are neither
        // read nor written). out[b] is a distinct `&mut` slice, so writing through op[b]
        // aliases nothing else. A prefetch reads nothing: its address may lie past `block`.
        unsafe {
            let column = block.as_ptr().add(offset);
            let below = column.add(1);
            offset += p - j;
            let xj: [f64; B] = std::array::from_fn(|b| *xp[b].add(j));
            let xjv = xj.map(|v| _mm512_set1_pd(v));
            let mut acc = [[_mm512_setzero_pd(); 2]; B];
            let mut t = 0;
            while t + 16 <= n {
                let ahead = below.wrapping_add(t + PREFETCH);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(8).cast());
                let (m0, m1) = (
                    _mm512_loadu_pd(below.add(t)),
                    _mm512_loadu_pd(below.add(t + 8)),
                );
                for b in 0..B {
                    let at = j + 1 + t;
                    let (x0, x1) = (
                        _mm512_loadu_pd(xp[b].add(at)),
                        _mm512_loadu_pd(xp[b].add(at + 8)),
                    );
                    acc[b][0] = _mm512_fmadd_pd(m0, x0, acc[b][0]);
                    acc[b][1] = _mm512_fmadd_pd(m1, x1, acc[b][1]);
                    let (o0, o1) = (op[b].add(at), op[b].add(at + 8));
                    _mm512_storeu_pd(o0, _mm512_fmadd_pd(m0, xjv[b], _mm512_loadu_pd(o0)));
                    _mm512_storeu_pd(o1, _mm512_fmadd_pd(m1, xjv[b], _mm512_loadu_pd(o1)));
                }
                t += 16;
            }
            while t < n {
                let mask = ((1u32 << (n - t).min(8)) - 1) as u8;
                let m0 = _mm512_maskz_loadu_pd(mask, below.add(t));
                for b in 0..B {
                    let at = j + 1 + t;
                    let x0 = _mm512_maskz_loadu_pd(mask, xp[b].add(at));
                    acc[b][0] = _mm512_fmadd_pd(m0, x0, acc[b][0]);
                    let o0 = op[b].add(at);
                    let updated = _mm512_fmadd_pd(m0, xjv[b], _mm512_maskz_loadu_pd(mask, o0));
                    _mm512_mask_storeu_pd(o0, mask, updated);
                }
                t += 8;
            }
            for b in 0..B {
                let dot = _mm512_reduce_add_pd(_mm512_add_pd(acc[b][0], acc[b][1]));
                *op[b].add(j) += *column * xj[b] + dot;
            }
        }
    }
}

/// [`columns`] in portable code, 8 lanes per right-hand side.
fn columns_portable<const B: usize>(
    block: &[f64],
    cols: std::ops::Range<usize>,
    x: &[&[f64]],
    out: &mut [&mut [f64]],
) {
    const L: usize = 8;
    let p = x[0].len();
    // Partial sums of M x: zeroized on return (G4).
    let mut acc = Zeroizing::new([[0.0f64; L]; B]);
    let mut offset = 0;
    for j in cols {
        let column = &block[offset..offset + p - j];
        offset += p - j;
        let (diagonal, below) = (column[0], &column[1..]);
        let n = below.len();
        let xj: [f64; B] = std::array::from_fn(|b| x[b][j]);
        *acc = [[0.0f64; L]; B];
        let mut dot: [f64; B] = std::array::from_fn(|b| diagonal * xj[b]);
        for b in 0..B {
            let (xs, os) = (&x[b][j + 1..], &mut out[b][j + 1..]);
            let whole = n - n % L;
            for t in (0..whole).step_by(L) {
                for l in 0..L {
                    acc[b][l] = below[t + l].mul_add(xs[t + l], acc[b][l]);
                    os[t + l] = below[t + l].mul_add(xj[b], os[t + l]);
                }
            }
            for t in whole..n {
                dot[b] = below[t].mul_add(xs[t], dot[b]);
                os[t] = below[t].mul_add(xj[b], os[t]);
            }
        }
        for b in 0..B {
            out[b][j] += dot[b] + acc[b].iter().sum::<f64>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::dense::tests::{gram, matrix as rows};
    use crate::math::solver::cholesky_in_place;

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

    /// Every kernel, thread count and block size gives M Xᵀ (a plain loop over the full
    /// symmetric matrix): one right-hand side, whole groups of them and groups with a
    /// remainder, M in one block and in blocks of a few columns.
    #[test]
    fn the_packed_product_is_the_symmetric_product() {
        let kernels = Kernel::available();
        for p in [1, 2, 7, 8, 9, 33, 50] {
            let v = rows(p as u64, p + 3, p);
            let a = gram(&v, 1.0);
            let mut packed = Vec::new();
            for j in 0..p {
                packed.extend((j..p).map(|i| a[(i, j)]));
            }
            for k in [1, 3, 4, 6, 9, 17] {
                let xt = rows(99 + k as u64, k, p).transpose().to_owned();
                let naive = Mat::from_fn(p, k, |i, r| (0..p).map(|j| a[(i, j)] * xt[(j, r)]).sum());
                for &kernel in &kernels {
                    for threads in [1, 2, 3] {
                        for block_bytes in [1, 3 * p * 8, COLUMN_BLOCK_BYTES] {
                            let mut h = Mat::from_fn(p, k, |_, _| f64::NAN);
                            symmetric_times_with(
                                kernel,
                                threads,
                                block_bytes,
                                &packed,
                                &xt,
                                &mut h,
                            );
                            let err = max_rel(&h, &naive);
                            assert!(
                                all_finite(&h) && err <= 1e-12,
                                "p = {p}, k = {k}, {kernel:?} on {threads} threads, blocks of \
                                 {block_bytes} bytes: {err:e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A run of learns and forgets of 1–3 rows each, with rebases on the way, follows the
    /// direct solve of each version's A Θ = B (a plain Cholesky solve), and refuses a forget
    /// that would leave A indefinite.
    #[test]
    fn corrections_and_rebases_follow_the_direct_solve() {
        for starts_on_a_factor in [false, true] {
            follow_the_direct_solve(starts_on_a_factor);
        }
    }

    /// The run, from a base applied through its factor or its inverse, then rebased on the
    /// other kind and back.
    fn follow_the_direct_solve(starts_on_a_factor: bool) {
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
        let running = AtomicBool::new(false);
        let base = |l: Mat<f64>, version: u64, on_a_factor: bool| match on_a_factor {
            true => Woodbury::on_factor(SecretMat::from(l), version),
            false => Woodbury::from_factor(&l, version, &running).unwrap(),
        };
        let mut fast = base(factor(&present), 0, starts_on_a_factor);
        assert_eq!(fast.on_a_factor(), starts_on_a_factor);
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
            assert!(
                err < 1e-12,
                "version {version}, starting on a factor: {starts_on_a_factor}: {err}"
            );
            if version == 3 || version == 6 {
                // A canonical solve for the version before this one arrives late.
                let mut before = present.clone();
                if *sign > 0.0 {
                    before.retain(|s| !ids.contains(s));
                } else {
                    before.extend_from_slice(ids);
                }
                let on_a_factor = (version == 3) != starts_on_a_factor;
                fast.rebase(base(factor(&before), version - 1, on_a_factor));
                assert_eq!(fast.on_a_factor(), on_a_factor);
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
