//! Reading logits: the top class, and accuracy against labels.

use ndarray::Array2;

/// Accuracy (%) of `logits` on `rows` (NaN for no rows).
pub fn accuracy(logits: &Array2<f32>, labels: &[u32], rows: &[usize]) -> f64 {
    if rows.is_empty() {
        return f64::NAN;
    }
    let hits = rows
        .iter()
        .filter(|&&r| argmax(logits.row(r).as_slice().expect("contiguous")) == labels[r] as usize)
        .count();
    100.0 * hits as f64 / rows.len() as f64
}

/// The index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// max |a − b| over two arrays of the same shape; NaN if any difference is NaN (`f32::max`
/// alone would skip it).
pub fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "logits of different shapes");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) })
}
