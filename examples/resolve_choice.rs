//! The two ways a head's weights follow a change of k samples: the rank-k update
//! (`solver::apply`) and the canonical re-solve from the statistics (`solver::canonical`),
//! timed at several d, C and k (medians), next to the choice the cost model makes
//! (`solver::resolve_is_cheaper`). The model is right when, for every k, the path it picks takes
//! at most about the time of the other.
//!
//! ```text
//! cargo run --release --example resolve_choice -- [REPEATS]
//! ```

use std::time::Instant;

use lethe::math::solver::{self, Solution};
use lethe::math::stats::ExactStats;
use support::{median, quantized_rows, repeats};

mod support;

const LAMBDA: f64 = 1.0;
const FRAC_BITS: u32 = 16;

fn main() {
    let repeats = repeats(5);
    println!("rank-k update vs canonical re-solve, median of {repeats}");
    println!("| d | C | k | update | re-solve | update / re-solve | model picks |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (d, c) in [
        (128, 100),
        (512, 100),
        (1280, 10),
        (1280, 100),
        (1280, 1000),
        (2048, 100),
    ] {
        let n = 2 * (d + 1);
        let (q, r) = quantized_rows(n, d, c, 1.0, FRAC_BITS, d as u64);
        let mut stats = ExactStats::new(d, c);
        stats.accumulate(&q, &r, 1 << FRAC_BITS, 1);
        let base: Solution = solver::canonical(&stats, LAMBDA, FRAC_BITS).expect("solvable");
        let resolve = median(
            (0..repeats)
                .map(|_| {
                    let start = Instant::now();
                    std::hint::black_box(solver::canonical(&stats, LAMBDA, FRAC_BITS).ok());
                    start.elapsed().as_secs_f64()
                })
                .collect(),
        );
        let unit = (-(FRAC_BITS as f64)).exp2();
        for k in [1, 4, 16, 32, 64, 128, 256] {
            let x = faer::Mat::from_fn(k, d + 1, |s, j| {
                if j < d {
                    q[s * d + j] as f64 * unit
                } else {
                    1.0
                }
            });
            let t = faer::Mat::from_fn(k, c, |s, j| r[s * c + j] as f64 * unit);
            let update = median(
                (0..repeats)
                    .map(|_| {
                        let mut sol = base.clone();
                        let start = Instant::now();
                        solver::apply(&mut sol, &x, &t, -1.0).expect("a downdate of held rows");
                        start.elapsed().as_secs_f64()
                    })
                    .collect(),
            );
            let pick = if solver::resolve_is_cheaper(k, d + 1, c) {
                "re-solve"
            } else {
                "update"
            };
            println!(
                "| {d} | {c} | {k} | {:.3} ms | {:.3} ms | {:.2} | {pick} |",
                update * 1e3,
                resolve * 1e3,
                update / resolve
            );
        }
    }
}
