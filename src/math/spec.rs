//! What a head is: its feature output and dimension, its classes, how the core's logits map
//! onto them, and the constants of its objective (λ, the target scale, the fixed point).

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::fixed::FixedPoint;
use super::secret::{SecretArray, SecretMat};
use crate::bundle::Bundle;
use crate::error::{Error, Result};

/// The largest feature dimension a head may have.
pub const MAX_DIM: usize = 1 << 16;
/// The most classes a head may have.
pub const MAX_CLASSES: usize = 1 << 16;
/// The smallest ridge λ a head accepts. Smaller values leave A too close to singular for a
/// reliable f64 factorization of any useful number of samples (see
/// [`crate::math::solver::max_solvable_diagonal`]).
pub const MIN_LAMBDA: f64 = 1e-6;
/// The largest ridge λ a head accepts.
pub const MAX_LAMBDA: f64 = 1e12;

/// What a head is: its dimensions and the constants of its objective. Fixed at creation and
/// recorded in its state dir.
///
/// Its serde form is what the state dir records (`meta.json`'s `head`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// The features output the head is linear in.
    pub features: String,
    /// Feature dimension d.
    pub dim: usize,
    /// Class labels (C of them).
    pub classes: Vec<String>,
    /// The core's logits output and, per column, the head class it feeds; `None` = z is 0.
    pub core_logits: Option<(String, Vec<usize>)>,
    pub lambda: f64,
    pub target_scale: f64,
    pub fixed: FixedPoint,
}

impl HeadSpec {
    /// The spec a head over `bundle` gets: the bundle's defaults, except where `features`,
    /// `lambda` or `target_scale` say otherwise.
    pub fn from_bundle(
        bundle: &Bundle,
        features: Option<&str>,
        lambda: Option<f64>,
        target_scale: Option<f64>,
    ) -> Result<HeadSpec> {
        let m = &bundle.manifest;
        let features = bundle.features(features)?;
        let spec = HeadSpec {
            features: features.output.clone(),
            dim: features.dim,
            classes: m.classes.clone(),
            core_logits: m
                .core_logits
                .as_ref()
                .map(|cl| (cl.output.clone(), cl.classes.clone())),
            lambda: lambda.unwrap_or(m.head.lambda),
            target_scale: target_scale.unwrap_or(m.head.target_scale),
            fixed: FixedPoint {
                frac_bits: m.head.frac_bits,
                feature_max_abs: features.max_abs,
                target_max_abs: m.head.target_max_abs,
            },
        };
        spec.validate().map_err(Error::InvalidInput)?;
        Ok(spec)
    }

    /// The spec of a head whose features are computed elsewhere (a head without a core, see
    /// `Head::detached`): features output `"features"`, classes `"0"` to `"C-1"` for
    /// `num_classes` = C, no core logits, target scale 1. Set the fields that differ afterwards.
    pub fn detached(
        dim: usize,
        num_classes: usize,
        lambda: f64,
        fixed: FixedPoint,
    ) -> Result<HeadSpec> {
        let spec = HeadSpec {
            features: "features".into(),
            dim,
            classes: (0..num_classes).map(|c| c.to_string()).collect(),
            core_logits: None,
            lambda,
            target_scale: 1.0,
            fixed,
        };
        spec.validate().map_err(Error::InvalidInput)?;
        Ok(spec)
    }

    /// Checks every field against the documented ranges: d in 1..=[`MAX_DIM`], C in
    /// 1..=[`MAX_CLASSES`], λ in [[`MIN_LAMBDA`], [`MAX_LAMBDA`]], the target scale in
    /// (0, target_max_abs], and a fixed point whose values stay within ±2^24.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let c = self.num_classes();
        if !(1..=MAX_DIM).contains(&self.dim) {
            return Err(format!("d = {} is not in 1..={MAX_DIM}", self.dim));
        }
        if !(1..=MAX_CLASSES).contains(&c) {
            return Err(format!("C = {c} is not in 1..={MAX_CLASSES}"));
        }
        if !(MIN_LAMBDA..=MAX_LAMBDA).contains(&self.lambda) {
            return Err(format!(
                "lambda = {} is not in [{MIN_LAMBDA:e}, {MAX_LAMBDA:e}]",
                self.lambda
            ));
        }
        self.fixed.validate()?;
        if !(self.target_scale > 0.0 && self.target_scale <= self.fixed.target_max_abs) {
            return Err(format!(
                "target scale = {} is not in (0, {}] (the fixed point's target_max_abs)",
                self.target_scale, self.fixed.target_max_abs
            ));
        }
        if let Some((name, map)) = &self.core_logits {
            if name.is_empty() || map.is_empty() || map.len() > c {
                return Err("the core logits' output or class map is empty or too long".into());
            }
            if let Some(k) = map.iter().find(|&&k| k >= c) {
                return Err(format!(
                    "core logit class {k} is not one of the {c} classes"
                ));
            }
        }
        Ok(())
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Maps core logits `[n, K]` onto the head's classes `[n, C]` (zeros elsewhere).
    pub fn map_core_logits(&self, z: Option<&Array2<f32>>, n: usize) -> SecretArray {
        let mut out = SecretArray::zeros((n, self.num_classes()));
        if let (Some(z), Some((_, classes))) = (z, &self.core_logits) {
            for (j, &c) in classes.iter().enumerate() {
                out.column_mut(c).assign(&z.column(j));
            }
        }
        out
    }

    /// Fixed-point rows (k × d features `q`, k × C targets `r`) as real-valued X = [φ, 1]
    /// (k × p) and T (k × C).
    pub fn real_rows(&self, q: &[i32], r: &[i32]) -> (SecretMat, SecretMat) {
        let spec = self;
        let one = spec.fixed.one();
        let (d, c) = (spec.dim, spec.num_classes());
        let k = r.len() / c;
        let unit = 1.0 / spec.fixed.scale();
        let x = SecretMat::from_fn(k, d + 1, |s, j| {
            let v = if j < d { q[s * d + j] } else { one };
            v as f64 * unit
        });
        let t = SecretMat::from_fn(k, c, |s, j| r[s * c + j] as f64 * unit);
        (x, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: FixedPoint = FixedPoint {
        frac_bits: 16,
        feature_max_abs: 8.0,
        target_max_abs: 16.0,
    };

    #[test]
    fn a_detached_spec_has_the_documented_defaults() {
        let spec = HeadSpec::detached(3, 4, 0.5, FIXED).unwrap();
        assert_eq!(spec.features, "features");
        assert_eq!((spec.dim, spec.lambda, spec.fixed), (3, 0.5, FIXED));
        assert_eq!(spec.classes, ["0", "1", "2", "3"]);
        assert_eq!(spec.core_logits, None);
        assert_eq!(spec.target_scale, 1.0);
    }

    #[test]
    fn a_detached_spec_is_validated() {
        for (d, c, lambda) in [(0, 3, 1.0), (4, 0, 1.0), (4, 3, 0.0), (MAX_DIM + 1, 3, 1.0)] {
            assert!(
                matches!(
                    HeadSpec::detached(d, c, lambda, FIXED),
                    Err(Error::InvalidInput(_))
                ),
                "d = {d}, C = {c}, lambda = {lambda}"
            );
        }
    }
}
