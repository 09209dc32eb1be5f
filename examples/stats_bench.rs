//! The exact integer statistics (`ExactStats::accumulate`) at d = 1280, C = 100: the median
//! time to add, and to subtract, a batch of k samples to statistics that already hold some, for
//! k from one sample (a forget of one) to a learn of thousands.
//!
//! ```text
//! cargo run --release --example stats_bench -- [REPEATS]
//! ```

use std::time::Instant;

use lethe::math::stats::ExactStats;
use support::{median, quantized_rows, repeats};

mod support;

const D: usize = 1280;
const C: usize = 100;
const FRAC_BITS: u32 = 21;

fn main() {
    let repeats = repeats(7);
    let one = 1i32 << FRAC_BITS;
    let mut stats = ExactStats::new(D, C);
    let (q, r) = quantized_rows(64, D, C, 4.0, FRAC_BITS, 0);
    stats.accumulate(&q, &r, one, 1);
    println!("ExactStats::accumulate, d = {D}, C = {C}, median of {repeats}");
    println!("| k | add | subtract | per sample |");
    println!("| --- | --- | --- | --- |");
    for k in [1, 3, 4, 16, 100, 1000, 2500, 10_000] {
        let (q, r) = quantized_rows(k, D, C, 4.0, FRAC_BITS, k as u64);
        let (mut add, mut sub) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let start = Instant::now();
            stats.accumulate(&q, &r, one, 1);
            add.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            stats.accumulate(&q, &r, one, -1);
            sub.push(start.elapsed().as_secs_f64());
        }
        let (add, sub) = (median(add), median(sub));
        println!(
            "| {k} | {:.3} ms | {:.3} ms | {:.1} µs |",
            add * 1e3,
            sub * 1e3,
            add / k as f64 * 1e6
        );
    }
    std::hint::black_box(stats.n());
}
