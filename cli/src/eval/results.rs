//! What `lethe eval` measured.

use crate::harness::Machine;

/// Accuracy (%) on the forgotten, retained and test samples.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Accuracies {
    pub forgotten: f64,
    pub retained: f64,
    pub test: f64,
}

/// A loss-threshold membership-inference attack: members = the forgotten samples, non-members
/// = never-seen test samples (of the same class for a class).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attack {
    /// Area under the ROC curve of "lower loss ⇒ member" (0.5 = chance).
    pub auc: f64,
    /// The best balanced accuracy (%) over all thresholds (an optimistic upper bound).
    pub best_accuracy: f64,
}

/// A linear probe for the forgotten class (from scikit-learn).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Probe {
    /// Balanced accuracy (%) on held-out test samples.
    pub held_out: f64,
    /// % of the forgotten training samples the probe flags as the class.
    pub forgotten_recall: f64,
}

/// The three heads an audit compares.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Trio<T> {
    /// The head just before the forget.
    pub before: T,
    /// Lethe's head after the forget.
    pub lethe: T,
    /// A head retrained from scratch on the remaining samples.
    pub retrained: T,
}

/// A head retrained from scratch independently of Lethe: scikit-learn's Ridge on the remaining
/// samples' features (scripts/eval_sklearn.py).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RidgeRetrain {
    pub accuracies: Accuracies,
    /// ||Θ_ridge − Θ_Lethe||_F / ||Θ_ridge||_F over W and b (f64, Lethe's canonical weights).
    pub weight_rel_diff: f64,
}

/// After forget-all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForgetAll {
    /// The head's test accuracy.
    pub test: f64,
    /// The core alone's test accuracy.
    pub core_test: f64,
    /// max |head logits − core logits| on the test samples.
    pub max_logit_diff: f32,
    /// max |W|, |b| of the canonical weights.
    pub max_weight: f64,
}

/// One forget (random 10 % or a class) next to retraining from scratch.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub title: String,
    pub forgotten: usize,
    pub remaining: usize,
    pub forget_seconds: f64,
    pub canonical_seconds: f64,
    pub retrain_seconds: f64,
    pub lethe: Accuracies,
    /// Lethe's own solver on a fresh head: the bit-identity check.
    pub retrained: Accuracies,
    /// max |W − W_retrained| over W and b (f64, canonical).
    pub max_weight_diff: f64,
    /// The independent retrain.
    pub ridge: RidgeRetrain,
    /// The served logits on every test sample are bit-identical.
    pub logits_identical: bool,
    /// Lethe's receipt after the forget (its digest, hex) and whether the retrained head's
    /// receipt equals it (G8).
    pub receipt: String,
    pub receipt_verified: bool,
    pub attack: Trio<Attack>,
    /// For a class: probes on (head logits only, core features + head logits).
    pub probes: Option<[Trio<Probe>; 2]>,
}

/// One bundle and features output.
#[derive(Debug, Clone)]
pub struct Setup {
    pub bundle: String,
    pub features: String,
    /// Whether `features` is the bundle's default.
    pub is_default: bool,
    /// What the samples are ("digits", "tweets").
    pub samples: &'static str,
    /// The name of the class forgotten as a whole.
    pub forget_class: String,
    pub dim: usize,
    pub train: usize,
    pub test: usize,
    pub core_seconds: f64,
    pub has_core_logits: bool,
    pub head_test: f64,
    pub core_test: f64,
    pub logreg_test: f64,
    /// (forget returns, canonical weights ready) for 1 and 100 samples, medians.
    pub forget_one: (f64, f64),
    pub forget_hundred: (f64, f64),
    /// How much the process's resident memory grew from opening the head to its canonical
    /// weights being ready after it learned every user sample (`None`: not reported).
    pub head_memory: Option<u64>,
    pub scenarios: Vec<Scenario>,
    pub forget_all: ForgetAll,
}

/// Everything `lethe eval` measured.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub quick: bool,
    pub seed: u64,
    pub machine: Machine,
    pub setups: Vec<Setup>,
    pub seconds: f64,
}

/// The largest relative difference between scikit-learn's Ridge and Lethe's weights that still
/// counts as agreement: both solve the same f64 problem (DESIGN.md), so they differ by the
/// rounding of two different solvers, orders of magnitude below this (tests/py/ridge_reference.py
/// uses the same bound).
pub const RIDGE_TOLERANCE: f64 = 1e-9;

/// What the probes see: the head's logits, or the core's features and the head's logits.
pub const PROBE_VIEWS: [&str; 2] = ["logits", "features+logits"];
