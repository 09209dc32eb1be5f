//! A head's weights W (C × d) and b (C): in f64 as solved, and in f32 as served to predictions.

use faer::Mat;
use ndarray::Array2;
use zeroize::Zeroize;

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
        w.zeroize();
        self.b.zeroize();
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
    let c = theta.ncols();
    ServedWeights {
        w: Array2::from_shape_fn((c, d), |(i, j)| theta[(j, i)] as f32),
        b: (0..c).map(|i| theta[(d, i)] as f32).collect(),
    }
}

/// The f64 weights of Θ = [W b]ᵀ (p × C) for d features.
pub fn to_weights(theta: &Mat<f64>, d: usize) -> Weights {
    let c = theta.ncols();
    Weights {
        w: Array2::from_shape_fn((c, d), |(i, j)| theta[(j, i)]),
        b: (0..c).map(|i| theta[(d, i)]).collect(),
    }
}
