//! The exact integer statistics (`ExactStats::accumulate`) at d = 1280, C = 100: the median
//! time to add, and to subtract, a batch of k samples to statistics that already hold some, for
//! k from one sample (a forget of one) to a learn of thousands.
//!
//! ```text
//! cargo run --release --example stats_bench -- [REPEATS]
//! ```

use std::time::Instant;

use lethe::math::stats::ExactStats;

const D: usize = 1280;
const C: usize = 100;
const FRAC_BITS: u32 = 21;

/// k samples with deterministic features in [−4, 4) and one-hot targets, quantized.
fn batch(k: usize, seed: u64) -> (Vec<i32>, Vec<i32>) {
    let one = 1i32 << FRAC_BITS;
    let mut state = 0x9e3779b97f4a7c15u64 ^ seed;
    let q = (0..k * D)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((((state >> 11) as f64 / (1u64 << 53) as f64) * 8.0 - 4.0) * one as f64) as i32
        })
        .collect();
    let r = (0..k * C)
        .map(|i| if i % C == (i / C) % C { one } else { 0 })
        .collect();
    (q, r)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("REPEATS is a number"))
        .unwrap_or(7);
    let one = 1i32 << FRAC_BITS;
    let mut stats = ExactStats::new(D, C);
    let (q, r) = batch(64, 0);
    stats.accumulate(&q, &r, one, 1);
    println!("ExactStats::accumulate, d = {D}, C = {C}, median of {repeats}");
    println!("| k | add | subtract | per sample |");
    println!("| --- | --- | --- | --- |");
    for k in [1, 3, 4, 16, 100, 1000, 2500, 10_000] {
        let (q, r) = batch(k, k as u64);
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
