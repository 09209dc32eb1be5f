//! Fixed point: how features and targets become the integers that the exact statistics sum.
//!
//! A value v is stored as q = round(v · 2^F) (F = `frac_bits`, ties away from zero), with
//! |v| ≤ max_abs and max_abs · 2^F ≤ 2^24 checked when the bundle is opened. So |q| ≤ 2^24 and
//! every product of two stored values is at most 2^48 in magnitude, which the exact statistics
//! rely on. Values out of range or not finite are errors: nothing is ever clamped.

use serde::{Deserialize, Serialize};

use crate::bundle::QUANT_LIMIT;
use crate::error::{Error, Result};

/// The fixed-point format of one head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedPoint {
    pub frac_bits: u32,
    pub feature_max_abs: f64,
    pub target_max_abs: f64,
}

/// The most fractional bits a fixed-point format may have.
pub const MAX_FRAC_BITS: u32 = 24;

impl FixedPoint {
    /// Checks that stored values stay within ±2^24 (what the exact statistics rely on).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let scale = (self.frac_bits as f64).exp2();
        let fits = |v: f64| v.is_finite() && v > 0.0 && v * scale <= QUANT_LIMIT;
        if !(1..=MAX_FRAC_BITS).contains(&self.frac_bits) {
            return Err(format!(
                "frac_bits = {} is not in 1..={MAX_FRAC_BITS}",
                self.frac_bits
            ));
        }
        if !fits(self.feature_max_abs) || !fits(self.target_max_abs) {
            return Err(format!(
                "feature_max_abs = {} and target_max_abs = {} must be positive with \
                 max_abs·2^frac_bits ≤ 2^24",
                self.feature_max_abs, self.target_max_abs
            ));
        }
        Ok(())
    }

    /// 2^F: the fixed-point value of 1.0 (the bias feature).
    pub fn one(&self) -> i32 {
        1 << self.frac_bits
    }

    /// 2^F as f64.
    pub fn scale(&self) -> f64 {
        (self.frac_bits as f64).exp2()
    }

    /// Checks one sample's features against the head's range: finite and |v| ≤ feature_max_abs.
    /// Learning quantizes only such features and predictions serve only such features. `index`
    /// names the sample in errors.
    pub fn check_features(&self, phi: &[f32], index: usize) -> Result<()> {
        let outside = |v: f64| !v.is_finite() || v.abs() > self.feature_max_abs;
        match phi.iter().position(|&v| outside(v as f64)) {
            None => Ok(()),
            Some(j) => Err(Error::InvalidInput(format!(
                "sample {index}: feature {j} is {}, outside the head's range ±{} (the bundle's \
                 features max_abs)",
                phi[j], self.feature_max_abs
            ))),
        }
    }

    /// Quantizes one sample's features (checked by [`FixedPoint::check_features`]), appending
    /// to `out`. `index` names the sample in errors.
    pub fn quantize_features(&self, phi: &[f32], index: usize, out: &mut Vec<i32>) -> Result<()> {
        self.check_features(phi, index)?;
        let scale = self.scale();
        out.extend(phi.iter().map(|&v| quantize(v as f64, scale)));
        Ok(())
    }

    /// Quantizes one sample's targets r = s·e_label − z, appending to `out`. `z` is the core's
    /// logits on the head's classes (zeros where the core has none).
    pub fn quantize_targets(
        &self,
        label: usize,
        target_scale: f64,
        z: &[f32],
        index: usize,
        out: &mut Vec<i32>,
    ) -> Result<()> {
        let scale = self.scale();
        for (c, &zc) in z.iter().enumerate() {
            let y = if c == label { target_scale } else { 0.0 };
            let r = y - zc as f64;
            if !r.is_finite() || r.abs() > self.target_max_abs {
                return Err(Error::InvalidInput(format!(
                    "sample {index}: target for class {c} is {r} (core logit {zc}), outside the \
                     head's range ±{} (the bundle's target_max_abs)",
                    self.target_max_abs
                )));
            }
            out.push(quantize(r, scale));
        }
        Ok(())
    }
}

fn quantize(v: f64, scale: f64) -> i32 {
    let q = (v * scale).round();
    debug_assert!(q.abs() <= QUANT_LIMIT);
    q as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> FixedPoint {
        FixedPoint {
            frac_bits: 8,
            feature_max_abs: 4.0,
            target_max_abs: 2.0,
        }
    }

    #[test]
    fn quantizes_and_rejects_out_of_range() {
        let mut out = Vec::new();
        fp().quantize_features(&[0.5, -1.0, 4.0, 0.001], 0, &mut out)
            .unwrap();
        assert_eq!(out, vec![128, -256, 1024, 0]);
        for bad in [f32::NAN, f32::INFINITY, 4.01, -5.0] {
            let err = fp().quantize_features(&[0.0, bad], 3, &mut Vec::new());
            assert!(matches!(err, Err(Error::InvalidInput(m)) if m.contains("sample 3")));
        }
    }

    #[test]
    fn targets_subtract_core_logits() {
        let mut out = Vec::new();
        fp().quantize_targets(1, 1.0, &[0.5, 0.25, 0.0], 0, &mut out)
            .unwrap();
        assert_eq!(out, vec![-128, 192, 0]);
        assert!(fp()
            .quantize_targets(0, 1.0, &[-1.5, 0.0], 0, &mut Vec::new())
            .is_err());
    }
}
