//! What `lethe bench` measured.

use crate::harness::Machine;

/// Closing after one forget and `lethe forget` on a closed state dir, next to rewriting every
/// file of the state dir, in seconds.
#[derive(Debug, Clone)]
pub struct CloseRow {
    pub n: usize,
    pub d: usize,
    pub c: usize,
    /// `Head::close` right after one forget.
    pub close: f64,
    /// What `lethe forget --ids ID` does, in process: the core and head opened, the forget,
    /// the close.
    pub cli_forget: f64,
    /// Reading every file of the state dir and writing it anew, synced.
    pub rewrite: f64,
}

/// The same durable calls without and with a key (DESIGN.md G9), in seconds.
#[derive(Debug, Clone)]
pub struct EncryptionRow {
    /// The real bundle and batch of the learn.
    pub bundle: String,
    pub batch: usize,
    pub learn_plain: f64,
    pub learn_encrypted: f64,
    /// The synthetic head's size for open and forget.
    pub n: usize,
    pub d: usize,
    pub c: usize,
    /// `Head::open` of the closed state dir, with the core already open.
    pub open_plain: f64,
    pub open_encrypted: f64,
    /// A durable forget of one sample: the medians on either dir, and the median of the
    /// differences (with a key − without) within pairs of forgets run back to back.
    pub forget_plain: f64,
    pub forget_encrypted: f64,
    pub forget_added: f64,
    pub pairs: usize,
}

/// Predict on one bundle at one batch size: medians in seconds.
#[derive(Debug, Clone)]
pub struct PredictRow {
    pub bundle: String,
    pub batch: usize,
    pub bare: f64,
    pub lethe: f64,
    pub repeats: usize,
    /// The head's own part alone (`Head::predict_features` on the core's outputs).
    pub head: f64,
    /// For a text bundle: (the mean padded length of the batches in tokens, the median time
    /// to tokenize a batch with `Core::encode_text`, which neither column includes).
    pub text: Option<(f64, f64)>,
}

/// Forgetting k of n samples at dimension d with C classes: medians in seconds.
#[derive(Debug, Clone)]
pub struct ForgetRow {
    pub n: usize,
    pub d: usize,
    pub c: usize,
    pub k: usize,
    /// `Head::forget` returning (durable: the state dir is synced).
    pub forget: f64,
    /// `Head::forget` returning on an in-memory head with the same samples (measured for the
    /// first (d, C) of a run only).
    pub memory: Option<f64>,
    /// From the forget call until `Head::weights` returns the canonical weights.
    pub canonical: f64,
    /// Closed-form refit of the head from the n − k remaining stored features.
    pub refit: f64,
    /// The f64 sufficient statistics downdated by the k samples, then Cholesky and solve.
    pub stats_resolve: f64,
    /// Core re-run over the n − k remaining inputs (extrapolated) plus the refit; only where d
    /// is the measured core's.
    pub retrain: Option<f64>,
}

/// Where the time of a one-sample forget call goes, timed in situ (trace spans of real
/// calls on the durable head, the background idle before each).
#[derive(Debug, Clone)]
pub struct ForgetPhases {
    pub n: usize,
    pub d: usize,
    pub c: usize,
    /// The whole call.
    pub call: f64,
    /// Each phase's median, in the order the call runs them.
    pub phases: Vec<(&'static str, f64)>,
}

/// One-sample forgets issued one after another on the durable head, each durable.
#[derive(Debug, Clone)]
pub struct BackToBack {
    pub n: usize,
    pub d: usize,
    pub c: usize,
    pub count: usize,
    /// From the first call to the last one's return.
    pub seconds: f64,
    /// From the last call's return until `Head::weights` returned the canonical weights.
    pub canonical: f64,
}

/// The disk's sync latency at one size.
#[derive(Debug, Clone)]
pub struct ForgetBreakdown {
    pub d: usize,
    pub c: usize,
    /// One `sync_data` after overwriting a record in place in an existing file.
    pub fsync: f64,
    /// One `sync_data` after appending a record to a file (its size changes, so the file
    /// system commits metadata too).
    pub fsync_append: f64,
    /// The fastest and the slowest of those syncs (both kinds).
    pub fsync_range: (f64, f64),
}

/// The head's part of a learn on one bundle, in seconds.
#[derive(Debug, Clone)]
pub struct LearnRow {
    pub bundle: String,
    pub batch: usize,
    /// The core's inference on the batch (features and core logits).
    pub core: f64,
    /// `learn_features` on a durable state dir (the caller's path).
    pub durable: f64,
    /// `learn_features` on an in-memory head.
    pub memory: f64,
    /// `Head::weights` right after the durable learn returned: the wait until the canonical
    /// weights are ready (the re-solve runs off the caller's path, on another thread).
    pub resolve: f64,
}

/// Opening a closed state dir.
#[derive(Debug, Clone)]
pub struct OpenRow {
    pub n: usize,
    pub d: usize,
    pub c: usize,
    pub bytes: u64,
    /// `Head::open` with the core already open: the time beyond creating the ORT session.
    pub open: f64,
    /// Reading every file of the state dir into memory, for comparison.
    pub read: f64,
    /// Creating mobilenetv2-imagenet's ONNX Runtime session (`Core::open`), for scale.
    pub session: f64,
}

/// Everything `lethe bench` measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub machine: Machine,
    pub quick: bool,
    pub predict: Vec<PredictRow>,
    /// mobilenetv2-imagenet's per-sample core time (bare ORT) at the largest batch measured,
    /// for the retrain extrapolation.
    pub core_per_sample: f64,
    pub core_batch: usize,
    pub forget: Vec<ForgetRow>,
    pub breakdown: ForgetBreakdown,
    pub phases: ForgetPhases,
    pub back_to_back: BackToBack,
    /// max |Θ_refit − Θ_Lethe| / max |Θ_Lethe| at the smallest size: the baseline solves the
    /// same problem (up to Lethe's fixed-point quantization of the features).
    pub baseline_agreement: f64,
    pub learn: Vec<LearnRow>,
    pub open: OpenRow,
    pub encryption: EncryptionRow,
    pub close: CloseRow,
    pub seconds: f64,
}

impl BenchReport {
    /// The row of the forget target: (n, d, C, k) = (50k, 1280, 100, 1), or the largest k = 1
    /// row of a quick run.
    pub fn headline(&self) -> Option<&ForgetRow> {
        self.forget
            .iter()
            .filter(|r| r.k == 1)
            .max_by_key(|r| (r.d == 1280 && r.c == 100, r.n, r.d))
    }

    /// The row of the sweep where the forget is slowest relative to the f64 re-solve.
    pub fn worst_against_resolve(&self) -> Option<&ForgetRow> {
        self.forget
            .iter()
            .max_by(|a, b| (a.forget / a.stats_resolve).total_cmp(&(b.forget / b.stats_resolve)))
    }
}
