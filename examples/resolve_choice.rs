//! The ways a head's weights follow a change of k samples: the rank-k update
//! (`solver::apply`), the fast path's Woodbury correction from the inverse of A
//! (`Woodbury::apply`, nothing pending), the same correction applied through the factor
//! (`Woodbury::on_factor`) and the re-solve from the statistics that a call makes
//! (`solver::blocked::solve`, on every core), timed at several d, C and k (medians), next to the choices the cost
//! model makes (`solver::resolve_is_cheaper`) for each update. The model is right when, for
//! every k, the path it picks takes at most about the time of the other.
//!
//! ```text
//! cargo run --release --example resolve_choice -- [REPEATS]
//! ```

use std::time::Instant;

use std::sync::atomic::AtomicBool;

use lethe::math::secret::SecretMat;
use lethe::math::solver::{self, Solution, Update};
use lethe::math::stats::ExactStats;
use lethe::math::woodbury::Woodbury;
use support::{median, quantized_rows, repeats};

mod support;

const LAMBDA: f64 = 1.0;
const FRAC_BITS: u32 = 16;

fn main() {
    let repeats = repeats(5);
    println!("rank-k update and correction vs the blocked re-solve, median of {repeats}");
    println!(
        "| d | C | k | rank-k update | correction | correction on the factor | re-solve | \
         rank-k / re-solve | correction / re-solve | on the factor / re-solve | \
         model picks (rank-k) | model picks (correction) | model picks (on the factor) |"
    );
    println!("|{}", " --- |".repeat(13));
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
                    std::hint::black_box(
                        solver::blocked::solve(&stats, LAMBDA, FRAC_BITS, SecretMat::zeros(0, 0))
                            .ok(),
                    );
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
            // The correction from a fresh base (not timed), with nothing pending.
            let time_correction = |base_of: &dyn Fn() -> Woodbury| {
                median(
                    (0..repeats)
                        .map(|_| {
                            let mut fast = base_of();
                            let mut theta = base.theta.clone();
                            let start = Instant::now();
                            let applied = fast.apply(&mut theta, &x, &t, -1.0, 1);
                            let seconds = start.elapsed().as_secs_f64();
                            match applied {
                                Ok(()) => seconds,
                                Err(_) => f64::NAN,
                            }
                        })
                        .collect(),
                )
            };
            let correction = time_correction(&|| {
                Woodbury::from_factor(&base.l, 0, &AtomicBool::new(false)).expect("not stopped")
            });
            let on_factor = time_correction(&|| Woodbury::on_factor(base.l.clone(), 0));
            let pick = |update| match solver::resolve_is_cheaper(update, k, d + 1, c) {
                true => "re-solve",
                false => "update",
            };
            println!(
                "| {d} | {c} | {k} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.2} | {:.2} | \
                 {:.2} | {} | {} | {} |",
                update * 1e3,
                correction * 1e3,
                on_factor * 1e3,
                resolve * 1e3,
                update / resolve,
                correction / resolve,
                on_factor / resolve,
                pick(Update::RankK),
                pick(Update::Correction { pending: 0 }),
                pick(Update::OnFactor),
            );
        }
    }
}
