//! What the benchmark examples share: quantized synthetic rows, the repeats argument, medians.

/// n rows of d deterministic features, uniform in [−range, range), and one-hot targets over
/// C classes, in fixed point with `frac_bits` fractional bits: (q: n × d, r: n × C).
pub fn quantized_rows(
    n: usize,
    d: usize,
    c: usize,
    range: f64,
    frac_bits: u32,
    seed: u64,
) -> (Vec<i32>, Vec<i32>) {
    let one = 1i32 << frac_bits;
    let mut state = 0x9e3779b97f4a7c15u64 ^ seed;
    let q = (0..n * d)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            ((unit * 2.0 - 1.0) * range * one as f64) as i32
        })
        .collect();
    let r = (0..n * c)
        .map(|i| if i % c == (i / c) % c { one } else { 0 })
        .collect();
    (q, r)
}

/// The first argument as the number of timed repeats, or `default`.
pub fn repeats(default: usize) -> usize {
    std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("REPEATS is a number"))
        .unwrap_or(default)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
