//! Dense products and small factorizations of matrices that hold samples' values: the changed
//! rows of the fast path's correction and their images under the inverse. They run in Lethe's
//! own loops, because a library's matrix product packs its operands into per-thread buffers
//! that are never zeroized, where a forgotten row would outlive its forget (G4). Every
//! temporary here is a [`SecretMat`], zeroized when dropped.

use faer::{Accum, Mat, MatMut, MatRef};

use super::secret::SecretMat;
use super::threads;

/// `dst ← alpha · lhs · rhs` (`Accum::Replace`) or `dst += alpha · lhs · rhs` (`Accum::Add`).
/// `dst`'s columns must be contiguous (a column-major matrix or a block of one).
pub fn product(
    dst: MatMut<'_, f64>,
    accum: Accum,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
) {
    assert_eq!(dst.nrows(), lhs.nrows(), "dst and lhs have the same rows");
    assert_eq!(
        dst.ncols(),
        rhs.ncols(),
        "dst and rhs have the same columns"
    );
    assert_eq!(lhs.ncols(), rhs.nrows(), "lhs's columns are rhs's rows");
    let (m, n, k) = (dst.nrows(), dst.ncols(), lhs.ncols());
    let threads = threads::cores_if(m * n * k >= PARALLEL_FROM).min(n.max(1));
    // dst's columns (and rhs's) shared out among the threads, each a product of its own.
    let mut parts = Vec::with_capacity(threads);
    let mut rest = dst;
    for t in 0..threads {
        let (from, to) = (n * t / threads, n * (t + 1) / threads);
        let (this, next) = rest.split_at_col_mut(to - from);
        parts.push((this, rhs.subcols(from, to - from)));
        rest = next;
    }
    threads::run_parts(parts, |(dst, rhs)| {
        product_here(dst, accum, lhs, rhs, alpha)
    });
}

/// Products of at least this many multiply-adds are shared among threads.
pub const PARALLEL_FROM: usize = 1 << 22;

/// [`product`] on this thread only: for callers that share their work among threads
/// themselves.
pub fn product_here(
    dst: MatMut<'_, f64>,
    accum: Accum,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
) {
    #[cfg(target_arch = "x86_64")]
    if tiles_pay(lhs, rhs, dst.nrows()) && is_x86_feature_detected!("avx512f") {
        let mut dst = dst;
        if matches!(accum, Accum::Replace) {
            dst.fill(0.0);
        }
        // The tiles read lhs by columns: a zeroized column-major copy where its columns are not
        // contiguous.
        let copy;
        let lhs = if lhs.row_stride() == 1 {
            lhs
        } else {
            copy = SecretMat::from(lhs.to_owned());
            copy.as_ref()
        };
        // SAFETY: the CPU has AVX-512F; lhs's columns are contiguous.
        unsafe { x86::product_avx512(dst, lhs, rhs, alpha) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe { product_avx2(dst, accum, lhs, rhs, alpha) };
        return;
    }
    product_any(dst, accum, lhs, rhs, alpha);
}

/// Whether [`product_here`] takes the register tiles: the product is large enough, and either
/// lhs's columns are contiguous or dst has columns enough to repay copying lhs into columns
/// (a dot product per entry reads lhs once per column of dst as it is).
#[cfg(target_arch = "x86_64")]
fn tiles_pay(lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>, m: usize) -> bool {
    let (n, k) = (rhs.ncols(), lhs.ncols());
    m * n * k >= TILES_FROM && (lhs.row_stride() == 1 || n >= x86::BROADCAST)
}

/// Products of at least this many multiply-adds take the register tiles.
#[cfg(target_arch = "x86_64")]
const TILES_FROM: usize = 1 << 14;

/// [`product_any`] compiled for AVX2, so that its loops are vectorized 4 wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn product_avx2(
    dst: MatMut<'_, f64>,
    accum: Accum,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
) {
    product_any(dst, accum, lhs, rhs, alpha);
}

/// [`product`]: dot products where lhs's rows and rhs's columns are contiguous (a transposed
/// operand), column updates (axpy) where lhs's columns are, entry by entry otherwise.
#[inline(always)]
fn product_any(
    mut dst: MatMut<'_, f64>,
    accum: Accum,
    lhs: MatRef<'_, f64>,
    rhs: MatRef<'_, f64>,
    alpha: f64,
) {
    let (m, n, k) = (dst.nrows(), dst.ncols(), lhs.ncols());
    if m == 0 || n == 0 {
        return;
    }
    let contiguous = "dst's columns are contiguous";
    for j in 0..n {
        let d = dst
            .as_mut()
            .col_mut(j)
            .try_as_col_major_mut()
            .expect(contiguous)
            .as_slice_mut();
        if matches!(accum, Accum::Replace) {
            d.fill(0.0);
        }
        if k == 0 {
            continue;
        }
        if lhs.col_stride() == 1 && rhs.row_stride() == 1 {
            let r = rhs.col(j).try_as_col_major().expect("a contiguous column");
            for (i, di) in d.iter_mut().enumerate() {
                let row = lhs.row(i).try_as_row_major().expect("a contiguous row");
                *di += alpha * dot(row.as_slice(), r.as_slice());
            }
        } else if lhs.row_stride() == 1 {
            for l in 0..k {
                let b = alpha * rhs[(l, j)];
                let column = lhs.col(l).try_as_col_major().expect("a contiguous column");
                for (di, &a) in d.iter_mut().zip(column.as_slice()) {
                    *di += b * a;
                }
            }
        } else {
            for (i, di) in d.iter_mut().enumerate() {
                *di += alpha * (0..k).map(|l| lhs[(i, l)] * rhs[(l, j)]).sum::<f64>();
            }
        }
    }
}

/// x · y in 8 independent partial sums (so that the loop vectorizes).
#[inline(always)]
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [0.0; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f64>() + tail
}

/// The AVX-512 register tiles of [`product`], also used by the Woodbury correction's
/// symmetric product.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use faer::{MatMut, MatRef};
    use std::arch::x86_64::*;

    /// Rows per tile: two vectors of 8 lanes.
    const ROWS: usize = 16;

    /// Columns of dst per tile, each a broadcast entry of rhs.
    pub const BROADCAST: usize = 8;

    /// lhs's columns (rhs's rows) summed per pass over dst: a tile's share of rhs stays in L1.
    const DEPTH: usize = 256;

    /// lhs's rows per block: a block's share of a pass stays in L2 while dst's columns are
    /// swept.
    const BLOCK: usize = 128;

    /// `dst += alpha · lhs · rhs` in register tiles of 16 rows × 8 columns of dst, each the sum
    /// over a pass of lhs's columns (two vectors) times rhs's entries (broadcast).
    ///
    /// Masked lanes (rows past m) are neither read nor written, and every pointer read or
    /// written through is an entry of its matrix.
    ///
    /// # Safety
    /// The CPU has AVX-512F; lhs's and dst's columns are contiguous (row stride 1).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn product_avx512(
        dst: MatMut<'_, f64>,
        lhs: MatRef<'_, f64>,
        rhs: MatRef<'_, f64>,
        alpha: f64,
    ) {
        let (m, n, k) = (dst.nrows(), dst.ncols(), lhs.ncols());
        assert!(
            lhs.row_stride() == 1 && dst.row_stride() == 1,
            "contiguous columns"
        );
        assert!(lhs.nrows() == m && rhs.nrows() == k && rhs.ncols() == n);
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        let (l_col, d_col) = (lhs.col_stride(), dst.col_stride());
        let (r_row, r_col) = (rhs.row_stride(), rhs.col_stride());
        let (lp, rp, dp) = (lhs.as_ptr(), rhs.as_ptr(), dst.as_ptr_mut());
        let scale = _mm512_set1_pd(alpha);
        for l0 in (0..k).step_by(DEPTH) {
            let depth = DEPTH.min(k - l0);
            for block in (0..m).step_by(BLOCK) {
                let block_end = (block + BLOCK).min(m);
                for j0 in (0..n).step_by(BROADCAST) {
                    let columns = BROADCAST.min(n - j0);
                    // The tile's columns of rhs from row l0 (past n: the last, dropped).
                    let r: [*const f64; BROADCAST] = std::array::from_fn(|t| {
                        let j = (j0 + t).min(n - 1);
                        rp.wrapping_offset(l0 as isize * r_row + j as isize * r_col)
                    });
                    for i0 in (block..block_end).step_by(ROWS) {
                        let rows = ROWS.min(block_end - i0);
                        let mask = ((1u32 << rows) - 1) as u16;
                        let d: [*mut f64; BROADCAST] = std::array::from_fn(|t| {
                            dp.wrapping_offset((j0 + t) as isize * d_col + i0 as isize)
                        });
                        for &to in &d[..columns] {
                            _mm_prefetch(to.cast(), _MM_HINT_T0);
                        }
                        let l_start = lp.wrapping_offset(l0 as isize * l_col + i0 as isize);
                        let sums = sum_tile(
                            depth,
                            |l| (l_start.wrapping_offset(l as isize * l_col), mask),
                            |l, t| r[t].wrapping_offset(l as isize * r_row),
                        );
                        add_tile(&sums, &d[..columns], mask, scale);
                    }
                }
            }
        }
    }

    /// A tile's sums: [`BROADCAST`] lines of 16 lanes, two vectors each.
    pub type Sums = [[__m512d; 2]; BROADCAST];

    /// Line t of the tile is Σ over the `len` steps l of the 16 values at `column(l).0` (those
    /// of the lanes set in the mask `column(l).1`, the others taken as zero) times the value at
    /// `entry(l, t)`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; every unmasked lane of every `column(l)`, and every `entry(l, t)`,
    /// is readable. Masked lanes are not read.
    #[inline(always)]
    pub unsafe fn sum_tile(
        len: usize,
        column: impl Fn(usize) -> (*const f64, u16),
        entry: impl Fn(usize, usize) -> *const f64,
    ) -> Sums {
        let mut acc = [[_mm512_setzero_pd(); 2]; BROADCAST];
        for l in 0..len {
            let (at, mask) = column(l);
            let u = [
                _mm512_maskz_loadu_pd(mask as u8, at),
                _mm512_maskz_loadu_pd((mask >> 8) as u8, at.wrapping_add(8)),
            ];
            for (t, line) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_pd(*entry(l, t));
                line[0] = _mm512_fmadd_pd(u[0], w, line[0]);
                line[1] = _mm512_fmadd_pd(u[1], w, line[1]);
            }
        }
        acc
    }

    /// `to[t][lane] += scale · sums[t][lane]` for each line t < `to.len()` and each lane set in
    /// `mask` (one rounding per entry).
    ///
    /// # Safety
    /// The CPU has AVX-512F; the 16 values from each `to[t]` are writable in every lane set in
    /// `mask`, and no other `to[t]`'s overlap them. Masked lanes are neither read nor written.
    #[inline(always)]
    pub unsafe fn add_tile(sums: &Sums, to: &[*mut f64], mask: u16, scale: __m512d) {
        for (line, &to) in sums.iter().zip(to) {
            for (half, &sum) in line.iter().enumerate() {
                let lanes = (mask >> (8 * half)) as u8;
                let to = to.wrapping_add(8 * half);
                let old = _mm512_maskz_loadu_pd(lanes, to);
                _mm512_mask_storeu_pd(to, lanes, _mm512_fmadd_pd(sum, scale, old));
            }
        }
    }
}

/// The lower triangle of `a` (n × n, symmetric positive definite, read from its lower
/// triangle) replaced by its Cholesky factor L; `Err` when a pivot is not positive.
pub fn cholesky(mut a: MatMut<'_, f64>) -> Result<(), NotPositive> {
    let n = a.nrows();
    for j in 0..n {
        for i in j..n {
            let mut s = a[(i, j)];
            for l in 0..j {
                s -= a[(i, l)] * a[(j, l)];
            }
            if i == j {
                // Also refuses NaN.
                if s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    return Err(NotPositive);
                }
                a[(j, j)] = s.sqrt();
            } else {
                a[(i, j)] = s / a[(j, j)];
            }
        }
    }
    Ok(())
}

/// A pivot that was not positive: the matrix is not (numerically) positive definite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPositive;

/// `x ← (L Lᵀ)⁻¹ x` for a Cholesky factor `l` (its lower triangle; the strict upper triangle
/// is not read), by columns of L: a forward substitution that subtracts each solved entry's
/// column, then a back substitution of dot products with L's columns.
pub fn solve_cholesky(l: MatRef<'_, f64>, x: &mut Mat<f64>) {
    let n = l.nrows();
    let contiguous = "columns are contiguous";
    for c in 0..x.ncols() {
        let v = x
            .as_mut()
            .col_mut(c)
            .try_as_col_major_mut()
            .expect(contiguous)
            .as_slice_mut();
        for j in 0..n {
            let column = l.col(j).try_as_col_major().expect(contiguous).as_slice();
            v[j] /= column[j];
            let vj = v[j];
            for (vi, &lij) in v[j + 1..].iter_mut().zip(&column[j + 1..]) {
                *vi -= lij * vj;
            }
        }
        for i in (0..n).rev() {
            let column = l.col(i).try_as_col_major().expect(contiguous).as_slice();
            v[i] = (v[i] - dot(&column[i + 1..], &v[i + 1..])) / column[i];
        }
    }
}

/// `y ← R⁻¹ y` for square, invertible `r`: LU with partial pivoting, its factors zeroized when
/// dropped.
pub fn solve_lu(r: &Mat<f64>, y: &mut Mat<f64>) {
    let n = r.nrows();
    let mut lu = SecretMat::from(r.clone());
    let mut perm: Vec<usize> = (0..n).collect();
    for j in 0..n {
        let pivot = (j..n)
            .max_by(|&a, &b| lu[(a, j)].abs().total_cmp(&lu[(b, j)].abs()))
            .expect("a row at or below the diagonal");
        if pivot != j {
            perm.swap(j, pivot);
            for c in 0..n {
                let t = lu[(j, c)];
                lu[(j, c)] = lu[(pivot, c)];
                lu[(pivot, c)] = t;
            }
        }
        for i in j + 1..n {
            let f = lu[(i, j)] / lu[(j, j)];
            lu[(i, j)] = f;
            for c in j + 1..n {
                let v = lu[(j, c)];
                lu[(i, c)] -= f * v;
            }
        }
    }
    let mut permuted = SecretMat::from_fn(n, y.ncols(), |i, c| y[(perm[i], c)]);
    for c in 0..y.ncols() {
        for i in 0..n {
            let mut s = permuted[(i, c)];
            for j in 0..i {
                s -= lu[(i, j)] * permuted[(j, c)];
            }
            permuted[(i, c)] = s;
        }
        for i in (0..n).rev() {
            let mut s = permuted[(i, c)];
            for j in i + 1..n {
                s -= lu[(i, j)] * permuted[(j, c)];
            }
            permuted[(i, c)] = s / lu[(i, i)];
        }
    }
    y.copy_from(permuted.as_ref());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use faer::Par;

    /// An m × n matrix of values uniform in [−1, 1) from a fixed generator.
    pub(crate) fn matrix(seed: u64, m: usize, n: usize) -> Mat<f64> {
        let mut state = seed;
        Mat::from_fn(m, n, |_, _| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
    }

    /// VᵀV + λI: symmetric positive definite for λ > 0.
    pub(crate) fn gram(v: &Mat<f64>, lambda: f64) -> Mat<f64> {
        let p = v.ncols();
        let mut a = Mat::from_fn(p, p, |i, j| if i == j { lambda } else { 0.0 });
        faer::linalg::matmul::matmul(
            a.as_mut(),
            Accum::Add,
            v.transpose(),
            v.as_ref(),
            1.0,
            Par::Seq,
        );
        a
    }

    fn max_diff(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
        let mut d = 0.0f64;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                d = d.max((a[(i, j)] - b[(i, j)]).abs());
            }
        }
        d
    }

    /// Every layout [`product`] meets (plain, transposed operands, blocks) agrees with faer's
    /// product, for both accumulations, in sizes for each of its paths.
    #[test]
    fn products_match_faer_in_every_layout() {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 100, 129),
            (7, 3, 20),
            (129, 5, 9),
            (40, 40, 0),
            // Register tiles (on AVX-512): partial tiles of rows and columns, several passes
            // and blocks, one column.
            (130, 20, 300),
            (17, 9, 129),
            (300, 1, 64),
            (33, 8, 600),
        ] {
            let (a, at) = (matrix(1, m, k), matrix(1, m, k).transpose().to_owned());
            let (b, bt) = (matrix(2, k, n), matrix(2, k, n).transpose().to_owned());
            for lhs in [a.as_ref(), at.transpose()] {
                for rhs in [b.as_ref(), bt.transpose()] {
                    for accum in [Accum::Replace, Accum::Add] {
                        let mut want = matrix(3, m, n);
                        let mut got = want.clone();
                        faer::linalg::matmul::matmul(
                            want.as_mut(),
                            accum,
                            lhs,
                            rhs,
                            -0.5,
                            Par::Seq,
                        );
                        product(got.as_mut(), accum, lhs, rhs, -0.5);
                        assert!(max_diff(got.as_ref(), want.as_ref()) < 1e-12, "{m} {n} {k}");
                    }
                }
            }
        }
    }

    /// The factorizations solve their systems: A x = b to rounding, with A symmetric positive
    /// definite (Cholesky) and general (LU, which needs its pivoting here).
    #[test]
    fn factorizations_solve() {
        let n = 12;
        let a = gram(&matrix(4, n, n), 1.0);
        let b = matrix(5, n, 3);
        let mut l = a.clone();
        cholesky(l.as_mut()).unwrap();
        let mut x = b.clone();
        solve_cholesky(l.as_ref(), &mut x);
        assert!(max_diff((&a * &x).as_ref(), b.as_ref()) < 1e-10);
        let mut g = matrix(6, n, n);
        g[(0, 0)] = 0.0;
        let mut x = b.clone();
        solve_lu(&g, &mut x);
        assert!(max_diff((&g * &x).as_ref(), b.as_ref()) < 1e-10);
        let mut indefinite = a.clone();
        indefinite[(3, 3)] = -1.0;
        assert_eq!(cholesky(indefinite.as_mut()), Err(NotPositive));
    }
}
