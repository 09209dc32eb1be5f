//! A head's weights W (C × d) and b (C): in f64 as solved, and in f32 as served to predictions.

use super::secret::wipe;
use faer::Mat;
use ndarray::Array2;

/// The f32 weights predictions use: an immutable snapshot, zeroized when dropped (G4).
#[derive(Debug, Clone, PartialEq)]
pub struct ServedWeights {
    /// W, C × d row-major.
    pub w: Array2<f32>,
    /// b, C.
    pub b: Vec<f32>,
}

impl Drop for ServedWeights {
    fn drop(&mut self) {
        let (mut w, _) = std::mem::take(&mut self.w).into_raw_vec_and_offset();
        wipe(&mut w);
        wipe(&mut self.b);
    }
}

/// W and b in f64 (canonical), as returned by `Head::weights`.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// W, C × d.
    pub w: Array2<f64>,
    /// b, C.
    pub b: Vec<f64>,
}

/// The served (f32) weights of Θ = [W b]ᵀ (p × C) for d features.
pub fn to_served(theta: &Mat<f64>, d: usize) -> ServedWeights {
    let (w, b) = split(theta, d, |v| v as f32);
    ServedWeights { w, b }
}

/// The f64 weights of Θ = [W b]ᵀ (p × C) for d features.
pub fn to_weights(theta: &Mat<f64>, d: usize) -> Weights {
    let (w, b) = split(theta, d, |v| v);
    Weights { w, b }
}

/// W (C × d, row-major) and b of Θ = [W b]ᵀ, each value converted by `f`: a column of Θ (its
/// contiguous storage) becomes a row of W and an entry of b.
fn split<T: Copy + Default>(
    theta: &Mat<f64>,
    d: usize,
    f: impl Fn(f64) -> T,
) -> (Array2<T>, Vec<T>) {
    let c = theta.ncols();
    let mut w = Array2::from_elem((c, d), T::default());
    let mut b = Vec::with_capacity(c);
    for (i, mut row) in w.rows_mut().into_iter().enumerate() {
        let column = theta.col_as_slice(i);
        let row = row
            .as_slice_mut()
            .expect("a row of a standard-layout array");
        for (out, &v) in row.iter_mut().zip(&column[..d]) {
            *out = f(v);
        }
        b.push(f(column[d]));
    }
    (w, b)
}
