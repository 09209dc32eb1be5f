//! x86-64 kernels for the bulk of the canonical dot products. Each register holds lanes of one
//! dot product in the scalar kernel's order: an AVX-512 register all 8 lanes, an AVX2
//! register lanes 0–3 or 4–7. Every lane is updated once per 8 terms by one fused
//! multiply-add, exactly as `f64::mul_add` does it in the scalar kernel.

use std::arch::x86_64::{
    __m256d, __m512d, _mm256_fmadd_pd, _mm256_loadu_pd, _mm256_setzero_pd, _mm256_storeu_pd,
    _mm512_fmadd_pd, _mm512_loadu_pd, _mm512_setzero_pd, _mm512_storeu_pd,
};

use super::tile::{Lanes, Tile, LANES};

/// Splits a bulk call into register tiles of `$s` y rows × at most the largest of `$r` x rows.
macro_rules! tiles {
    ($tile:ident, $x:expr, $y:expr, $k0:expr, $out:expr, s = $s:literal, r = [$($r:literal),*]) => {{
        let (x, y, k0, out) = ($x, $y, $k0, $out);
        let most = *[$($r),*].iter().max().expect("a tile height");
        for s0 in (0..LANES).step_by($s) {
            let ys: [&[f64]; $s] = std::array::from_fn(|s| y[s0 + s]);
            let mut r0 = 0;
            while r0 < x.len() {
                let rows = (x.len() - r0).min(most);
                let xs = &x[r0..r0 + rows];
                match rows {
                    $($r => store($tile::<$r, $s>(xs, &ys, k0), out, r0, s0),)*
                    _ => unreachable!("every height up to the largest has a tile"),
                }
                r0 += rows;
            }
        }
    }};
}

fn store<const R: usize, const S: usize>(t: [[Lanes; S]; R], out: &mut Tile, r0: usize, s0: usize) {
    for (r, row) in t.iter().enumerate() {
        out[r0 + r][s0..s0 + S].copy_from_slice(row);
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA, and every row must hold at least `k0` values.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn bulk_avx2(x: &[&[f64]], y: &[&[f64]; LANES], k0: usize, out: &mut Tile) {
    // SAFETY: the caller's guarantees are tile_avx2's.
    unsafe { tiles!(tile_avx2, x, y, k0, out, s = 2, r = [1, 2]) }
}

/// # Safety
/// The CPU must support AVX-512F, and every row must hold at least `k0` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn bulk_avx512(x: &[&[f64]], y: &[&[f64]; LANES], k0: usize, out: &mut Tile) {
    // SAFETY: the caller's guarantees are tile_avx512's.
    unsafe { tiles!(tile_avx512, x, y, k0, out, s = 4, r = [1, 2, 3, 4]) }
}

/// Lanes of x[r] · y[s] over the first k0 terms (a multiple of 8), R ≤ x.len().
///
/// # Safety
/// As [`bulk_avx2`].
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const S: usize>(
    x: &[&[f64]],
    y: &[&[f64]; S],
    k0: usize,
) -> [[Lanes; S]; R] {
    let xp: [*const f64; R] = std::array::from_fn(|r| x[r].as_ptr());
    let yp: [*const f64; S] = y.map(|row| row.as_ptr());
    let mut lo: [[__m256d; S]; R] = [[_mm256_setzero_pd(); S]; R];
    let mut hi = lo;
    let mut k = 0;
    while k < k0 {
        // SAFETY: k + 8 ≤ k0 ≤ every row's length.
        unsafe {
            for r in 0..R {
                let x_lo = _mm256_loadu_pd(xp[r].add(k));
                let x_hi = _mm256_loadu_pd(xp[r].add(k + 4));
                for s in 0..S {
                    lo[r][s] = _mm256_fmadd_pd(x_lo, _mm256_loadu_pd(yp[s].add(k)), lo[r][s]);
                    hi[r][s] = _mm256_fmadd_pd(x_hi, _mm256_loadu_pd(yp[s].add(k + 4)), hi[r][s]);
                }
            }
        }
        k += LANES;
    }
    let mut out = [[[0.0; LANES]; S]; R];
    for r in 0..R {
        for s in 0..S {
            // SAFETY: each Lanes holds 8 values.
            unsafe {
                _mm256_storeu_pd(out[r][s].as_mut_ptr(), lo[r][s]);
                _mm256_storeu_pd(out[r][s].as_mut_ptr().add(4), hi[r][s]);
            }
        }
    }
    out
}

/// As [`tile_avx2`], one AVX-512 register per dot product.
///
/// # Safety
/// As [`bulk_avx512`].
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const S: usize>(
    x: &[&[f64]],
    y: &[&[f64]; S],
    k0: usize,
) -> [[Lanes; S]; R] {
    let xp: [*const f64; R] = std::array::from_fn(|r| x[r].as_ptr());
    let yp: [*const f64; S] = y.map(|row| row.as_ptr());
    let mut acc: [[__m512d; S]; R] = [[_mm512_setzero_pd(); S]; R];
    let mut k = 0;
    while k < k0 {
        // SAFETY: k + 8 ≤ k0 ≤ every row's length.
        unsafe {
            let ys: [__m512d; S] = std::array::from_fn(|s| _mm512_loadu_pd(yp[s].add(k)));
            for r in 0..R {
                let xr = _mm512_loadu_pd(xp[r].add(k));
                for s in 0..S {
                    acc[r][s] = _mm512_fmadd_pd(xr, ys[s], acc[r][s]);
                }
            }
        }
        k += LANES;
    }
    let mut out = [[[0.0; LANES]; S]; R];
    for r in 0..R {
        for s in 0..S {
            // SAFETY: each Lanes holds 8 values.
            unsafe { _mm512_storeu_pd(out[r][s].as_mut_ptr(), acc[r][s]) };
        }
    }
    out
}
