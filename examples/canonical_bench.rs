//! The canonical re-solve (fixed operation order, DESIGN.md G7) and the blocked re-solve
//! (`solver::blocked`, on every core) against faer's sequential Cholesky and triangular solves
//! on the same statistics, at d = 128, 1280 and 3136 with
//! C = 100: median times of interleaved runs and their ratios to faer, for each kernel this CPU
//! runs on one thread (the scalar one only where it finishes in reasonable time), and for the
//! fastest on the threads `solver::canonical` uses.
//!
//! ```text
//! cargo run --release --example canonical_bench -- [REPEATS]
//! ```

use std::time::Instant;

use lethe::math::secret::SecretMat;
use lethe::math::solver::{self, CanonicalKernel};
use lethe::math::stats::ExactStats;
use support::{median, quantized_rows, repeats};

mod support;

const C: usize = 100;
const LAMBDA: f64 = 1.0;
const FRAC_BITS: u32 = 16;
/// The scalar kernel is timed up to this d (it exists to be matched, not to be fast).
const SCALAR_UP_TO: usize = 1280;

/// Statistics of `n` samples with deterministic features in [−1, 1) and one-hot targets.
fn stats(d: usize, n: usize) -> ExactStats {
    let mut s = ExactStats::new(d, C);
    let (q, r) = quantized_rows(n, d, C, 1.0, FRAC_BITS, d as u64);
    s.accumulate(&q, &r, 1 << FRAC_BITS, 1);
    s
}

fn faer_solve(s: &ExactStats) -> f64 {
    let mut l = s.a_f64(LAMBDA, FRAC_BITS);
    solver::cholesky_in_place(&mut l).expect("positive definite");
    let mut theta = s.b_f64(FRAC_BITS);
    solver::solve_in_place(&l, &mut theta);
    theta[(0, 0)]
}

fn canonical_solve(s: &ExactStats, kernel: CanonicalKernel, threads: usize) -> f64 {
    let sol =
        solver::canonical_with(s, LAMBDA, FRAC_BITS, kernel, threads).expect("positive definite");
    sol.theta[(0, 0)]
}

fn main() {
    let repeats = repeats(7);
    println!(
        "canonical re-solve vs faer (sequential), C = {C}, median of {repeats} interleaved runs; \
         kernels here: {:?}",
        CanonicalKernel::available()
    );
    for d in [128, 1280, 3136] {
        let s = stats(d, (2 * d).min(2048));
        // Every kernel on one thread, and the fastest on the threads `canonical` uses.
        let mut runs: Vec<(CanonicalKernel, usize)> = CanonicalKernel::available()
            .into_iter()
            .filter(|&k| k != CanonicalKernel::Scalar || d <= SCALAR_UP_TO)
            .map(|k| (k, 1))
            .collect();
        let threads = solver::threads_for(d + 1);
        if threads > 1 {
            runs.push((CanonicalKernel::fastest(), threads));
        }
        let mut faer = Vec::new();
        let mut blocked = Vec::new();
        let mut ours = vec![Vec::new(); runs.len()];
        for _ in 0..repeats {
            let t = Instant::now();
            std::hint::black_box(faer_solve(&s));
            faer.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let sol = solver::blocked::solve(&s, LAMBDA, FRAC_BITS, SecretMat::zeros(0, 0))
                .expect("positive definite");
            std::hint::black_box(sol.theta[(0, 0)]);
            blocked.push(t.elapsed().as_secs_f64());
            for (&(k, threads), times) in runs.iter().zip(&mut ours) {
                let t = Instant::now();
                std::hint::black_box(canonical_solve(&s, k, threads));
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let faer = median(faer);
        let blocked = median(blocked);
        print!(
            "d = {d:4}: faer {:8.2} ms | blocked {:8.2} ms = {:.2}× faer",
            faer * 1e3,
            blocked * 1e3,
            blocked / faer
        );
        for (&(k, threads), times) in runs.iter().zip(ours) {
            let t = median(times);
            print!(
                " | {} ×{threads} {:8.2} ms = {:.2}× faer",
                k.name(),
                t * 1e3,
                t / faer
            );
        }
        println!();
    }
}
