//! Exact sums of products of fixed-point rows in i64, for [`super::ExactStats::accumulate`].
//!
//! A batch of k samples is transposed into feature rows (one row per feature, one value per
//! sample, sign-extended to i64), and each entry of A = Σ φ̃ φ̃ᵀ (lower triangle) and
//! B = Σ φ̃ rᵀ is the dot product of two such rows, summed in i64 lanes with wrapping
//! arithmetic. Wrapping sums are exact modulo 2^64, so an entry is exact whenever its true
//! value fits in i64, whatever the order and whatever the partial sums did; with
//! |value| ≤ 2^24, every product is at most 2^48 in magnitude and a block of at most
//! [`EXACT_ROWS`] = 2^15 − 1 samples sums to less than 2^63 (see `super::tests`).
//!
//! The dots are computed in register tiles of R × S entries; the operands are taken as the
//! low 32 bits of each lane sign-extended (`as i32 as i64`), which compiles to the signed
//! 32 × 32 → 64-bit multiply (`vpmuldq`) of AVX2 and AVX-512. Each tile's kernel is compiled
//! for the widest of those the CPU has (chosen at run time) and as plain Rust otherwise.

/// The most samples one i64 block may sum: (2^15 − 1) · 2^48 < 2^63.
pub const EXACT_ROWS: usize = (1 << 15) - 1;

/// Values per lane group: one 256-bit register of i64.
const LANES: usize = 4;

/// `a[i][j] += sign · Σ_s xt[i][s] · xt[j][s]` for i ≥ j, `a` packed as in
/// [`super::ExactStats`] (column j from its diagonal down), and
/// `b[i][c] += sign · Σ_s xt[i][s] · rt[c][s]` (`b` p × C row-major), where `xt` holds p rows
/// and `rt` C rows of `k` values each; k ≤ [`EXACT_ROWS`].
pub fn add_products(a: &mut [i128], b: &mut [i128], xt: &[i64], rt: &[i64], k: usize, sign: i8) {
    add_products_with(Width::widest(), a, b, xt, rt, k, sign);
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
            Width::Avx2 => is_x86_feature_detected!("avx2"),
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

fn add_products_with(
    width: Width,
    a: &mut [i128],
    b: &mut [i128],
    xt: &[i64],
    rt: &[i64],
    k: usize,
    sign: i8,
) {
    assert!(
        k <= EXACT_ROWS,
        "an i64 block sums at most EXACT_ROWS samples"
    );
    assert!(width.available(), "the CPU runs {width:?}");
    let p = xt.len().checked_div(k).unwrap_or(0);
    let c = rt.len().checked_div(k).unwrap_or(0);
    assert_eq!(a.len(), p * (p + 1) / 2, "a is p's packed triangle");
    assert_eq!(b.len(), p * c, "b is p × C");
    if k == 0 || p == 0 {
        return;
    }
    let job = Job {
        a,
        b,
        xt,
        rt,
        k,
        p,
        c,
        sign: sign as i128,
    };
    match width {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` checked that the CPU has AVX-512F.
        Width::Avx512 => unsafe { job.run_avx512() },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` checked that the CPU has AVX2.
        Width::Avx2 => unsafe { job.run_avx2() },
        _ => job.run::<2, 4>(),
    }
}

struct Job<'a> {
    a: &'a mut [i128],
    b: &'a mut [i128],
    xt: &'a [i64],
    rt: &'a [i64],
    k: usize,
    p: usize,
    c: usize,
    sign: i128,
}

impl Job<'_> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(self) {
        self.run::<4, 8>();
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(self) {
        self.run::<2, 4>();
    }

    /// Every tile of A's lower triangle and of B. Rows past the end (in the last tiles) are
    /// clamped to the last row and their results dropped.
    #[inline(always)]
    fn run<const R: usize, const S: usize>(self) {
        let (p, c, k) = (self.p, self.c, self.k);
        let x = |i: usize| &self.xt[i.min(p - 1) * k..(i.min(p - 1) + 1) * k];
        let offset = |j: usize| j * p - (j * j - j) / 2;
        for j0 in (0..p).step_by(S) {
            let cols: [&[i64]; S] = std::array::from_fn(|s| x(j0 + s));
            for i0 in (j0 / R * R..p).step_by(R) {
                let t = tile::<R, S>(std::array::from_fn(|r| x(i0 + r)), cols, k);
                for (s, row) in (0..S).map(|s| (s, j0 + s)).take_while(|&(_, j)| j < p) {
                    for (r, i) in (0..R).map(|r| (r, i0 + r)) {
                        if i >= row && i < p {
                            self.a[offset(row) + i - row] += self.sign * t[r][s] as i128;
                        }
                    }
                }
            }
        }
        if c == 0 {
            return;
        }
        let r_row = |t: usize| &self.rt[t.min(c - 1) * k..(t.min(c - 1) + 1) * k];
        for c0 in (0..c).step_by(S) {
            let cols: [&[i64]; S] = std::array::from_fn(|s| r_row(c0 + s));
            for i0 in (0..p).step_by(R) {
                let t = tile::<R, S>(std::array::from_fn(|r| x(i0 + r)), cols, k);
                for r in (0..R).take_while(|&r| i0 + r < p) {
                    for s in (0..S).take_while(|&s| c0 + s < c) {
                        self.b[(i0 + r) * c + c0 + s] += self.sign * t[r][s] as i128;
                    }
                }
            }
        }
    }
}

/// The R × S dot products of `rows` with `cols` over their k values, wrapping.
#[inline(always)]
fn tile<const R: usize, const S: usize>(
    rows: [&[i64]; R],
    cols: [&[i64]; S],
    k: usize,
) -> [[i64; S]; R] {
    let mut acc = [[[0i64; LANES]; S]; R];
    let whole = k / LANES * LANES;
    for at in (0..whole).step_by(LANES) {
        let u: [[i64; LANES]; R] = std::array::from_fn(|r| lanes(rows[r], at));
        let v: [[i64; LANES]; S] = std::array::from_fn(|s| lanes(cols[s], at));
        for r in 0..R {
            for s in 0..S {
                for l in 0..LANES {
                    acc[r][s][l] = acc[r][s][l].wrapping_add(mul(u[r][l], v[s][l]));
                }
            }
        }
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|s| {
            let lanes = acc[r][s].iter().fold(0i64, |t, &v| t.wrapping_add(v));
            (whole..k).fold(lanes, |t, at| t.wrapping_add(mul(rows[r][at], cols[s][at])))
        })
    })
}

#[inline(always)]
fn lanes(row: &[i64], at: usize) -> [i64; LANES] {
    row[at..at + LANES].try_into().expect("LANES values")
}

/// The product of two values that fit in i32 (as the rows hold them), in the form the
/// compiler turns into a signed 32 × 32 → 64-bit multiply.
#[inline(always)]
fn mul(u: i64, v: i64) -> i64 {
    (u as i32 as i64).wrapping_mul(v as i32 as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU runs gives the plain definition's sums, on sizes that leave
    /// partial tiles and partial lanes, with values at the range limits.
    #[test]
    fn every_kernel_matches_the_definition() {
        let lim = 1i64 << 24;
        for (p, c, k) in [(1, 1, 1), (5, 3, 7), (9, 10, 13), (17, 2, 33)] {
            let mut x = 0x2545f4914f6cdd1du64;
            let mut value = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 4 {
                    0 => lim,
                    1 => -lim,
                    _ => (x >> 8) as i64 % (lim + 1),
                }
            };
            let xt: Vec<i64> = (0..p * k).map(|_| value()).collect();
            let rt: Vec<i64> = (0..c * k).map(|_| value()).collect();
            let dot = |u: &[i64], v: &[i64]| -> i128 {
                u.iter().zip(v).map(|(&a, &b)| a as i128 * b as i128).sum()
            };
            let row = |m: &[i64], i: usize| m[i * k..(i + 1) * k].to_vec();
            let mut want_a = Vec::new();
            for j in 0..p {
                for i in j..p {
                    want_a.push(-dot(&row(&xt, i), &row(&xt, j)));
                }
            }
            let want_b: Vec<i128> = (0..p * c)
                .map(|e| -dot(&row(&xt, e / c), &row(&rt, e % c)))
                .collect();
            for width in [Width::Plain, Width::Avx2, Width::Avx512] {
                if !width.available() {
                    eprintln!("{width:?}: not on this CPU");
                    continue;
                }
                let mut a = vec![0i128; p * (p + 1) / 2];
                let mut b = vec![0i128; p * c];
                add_products_with(width, &mut a, &mut b, &xt, &rt, k, -1);
                assert_eq!(a, want_a, "{width:?}, p {p} C {c} k {k}: A");
                assert_eq!(b, want_b, "{width:?}, p {p} C {c} k {k}: B");
            }
        }
    }
}
