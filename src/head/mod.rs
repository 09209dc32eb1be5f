//! The head: one user's linear layer W, b over a core's features, with everything needed to
//! learn and forget samples exactly.
//!
//! Prediction: `logits(x) = z(x) + W φ(x) + b` (z = the core's logits mapped onto the head's
//! classes, or 0). Training minimizes Σ ||z + Wφ + b − s·y||² + λ(||W||² + ||b||²) over the
//! current samples; see DESIGN.md for the math.
//!
//! # The fast path and the canonical re-solve
//! `learn` and `forget` update the integer statistics exactly, then bring the weights up to
//! date by whichever path is cheaper, and serve the result at once:
//! - the **Woodbury correction** ([`crate::math::woodbury`]): once the background thread has
//!   inverted some version's A, a change of k samples updates the weights from that inverse
//!   and the changes since, in one pass over the inverse (half of A's bytes) and O(k·p·C),
//!   without touching the factor. The changed rows themselves are not kept, only their images
//!   under the inverse (G4);
//! - the **rank-k update** of the Cholesky factor and the weights in O(k·p² + k·p·C), until
//!   the background has an inverse (after opening, after forget-all, after a re-solve on the
//!   caller's thread), while the head holds fewer than 2p samples (forgetting one is then
//!   ill-conditioned, and the rank-k update keeps more digits), or when the correction
//!   refuses a change (one that would cost it digits, or too many changes pending);
//! - the **blocked re-solve** from the integer statistics ([`solver::blocked`]), on the
//!   caller's thread and every core, when the cost model ([`solver::resolve_is_cheaper`])
//!   expects it to be faster than the update the call would otherwise take (the correction, or
//!   the rank-k update, which costs about five times as much per sample), so that a call never
//!   takes much longer than a re-solve. It is the canonical solve's math in an order whose
//!   bulk runs as matrix products, about 1.6 times as fast at d = 1280, and not portable bit
//!   for bit. A head without a background thread re-solves canonically instead.
//!
//! A background thread (one per head) then recomputes the canonical solution from the integer
//! statistics (sequential Cholesky, O(p³)) and swaps it in if no other call came in meanwhile,
//! and inverts that version's A for the fast path (O(p³)), folding the changes up to it into
//! the correction's base and keeping the later ones: back-to-back calls never queue re-solves,
//! the background always jumps to the newest version. Calls that must return canonical
//! weights — [`Head::weights`], [`Head::receipt`] — finish a pending re-solve themselves first.
//! A close stops the background's re-solve and inversion and solves nothing: the state dir
//! keeps only the exact statistics, from which the next open solves.
//! Served weights before the re-solve differ from canonical by rounding only.
//!
//! # Concurrency
//! `predict` reads an immutable snapshot of the f32 weights (an `Arc` swapped under a short
//! lock): it never waits for learn/forget and sees either the old or the new weights. Calls that
//! change the head are serialized.
//!
//! # Panics
//! A panic (a bug) while the state lock is held may leave the statistics, the solution and the
//! sample set half-updated. From then on the head refuses every call that changes the state or
//! derives weights from it ([`Error::State`], "panicked"), its re-solve thread stops, and
//! closing it releases the state dir without persisting: the journal holds every committed
//! change, and the next open recovers from it. Counts and ids stay readable, and predictions
//! keep the last weights published (each publish swaps one complete snapshot). The other locks
//! guard a single assignment (the served weights, the backend's failure note), which a panic
//! cannot leave half-done, so they ignore poisoning.

mod backend;
mod samples;

use std::cell::OnceCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use ndarray::{Array2, ArrayViewD};

use crate::bundle::tensor::Tensor;
use crate::bundle::FEATURES_JOIN;
use crate::core::{Core, CoreOutputs};
use crate::error::{Error, Result};
use crate::math::receipt::Receipt;
use crate::math::samples::{SampleRef, SampleSet};
use crate::math::secret::{Rows, SecretArray, SecretMat, Zeroizing};
use crate::math::solver::{self, CanonicalKernel, Solution, Update};
use crate::math::spec::HeadSpec;
use crate::math::stats::ExactStats;
use crate::math::threads;
use crate::math::weights::{to_served, to_weights, ServedWeights, Weights};
use crate::math::woodbury::Woodbury;
use crate::placement::{BackendOptions, BackendReport};
use crate::store::{ErasedReport, Loaded, StateKey, Store};
use backend::HeadBackend;
use samples::Samples;

/// The fewest samples per dimension (of p = d + 1) for which the background builds the fast
/// path: below, nearly every sample has a leverage close to 1, and the Woodbury correction
/// would refuse most forgets (see [`Inner::wants_fast_path`]).
const FAST_PATH_SAMPLES_PER_DIM: u64 = 2;

/// The size of a change (k·p² multiply-adds for the statistics) from which its commit runs
/// beside the update of the statistics and the weights, on a thread of its own (see
/// [`Head::change`]). Measured on a 2-core Xeon at d = 1280, C = 100, durable, interleaved:
/// k = 1 000 forgets took 80 ms beside vs 84 ms in turn, k = 100 23–25 vs 24–27 ms, a learn of
/// 64 the same; but k = 1 took 3.3 vs 3.05 ms (starting the thread and sharing two cores).
const BESIDE_FROM: usize = 1 << 22;

/// Whether a change of `work` multiply-adds commits beside its update.
#[cfg(not(test))]
fn commits_beside(work: usize) -> bool {
    work >= BESIDE_FROM
}

#[cfg(test)]
fn commits_beside(work: usize) -> bool {
    work >= BESIDE_FROM || tests::ALWAYS_BESIDE.with(std::cell::Cell::get)
}

/// Choices made when a head is created. `None` takes the bundle's default.
#[derive(Debug, Clone, Default)]
pub struct HeadOptions {
    /// Which features output of the core the head is linear in, or several joined by `+`
    /// (their columns concatenated, see [`Bundle::features`](crate::bundle::Bundle::features)).
    pub features: Option<String>,
    /// Ridge strength λ > 0.
    pub lambda: Option<f64>,
    /// Target scale s > 0.
    pub target_scale: Option<f64>,
    /// Re-solve canonically inside each learn/forget call instead of in the background: slower
    /// calls, but the weights served are canonical as soon as a call returns.
    pub synchronous_resolve: bool,
    /// Where the head's forward pass runs; `None` follows its core (the CPU without a core).
    pub backend: Option<BackendOptions>,
    /// Opening a state dir: refuse a path that is not a state dir yet instead of creating one
    /// there.
    pub must_exist: bool,
    /// The application's key of an encrypted state dir (DESIGN.md G9): a new state dir is
    /// created encrypted with it; an existing one must be opened with exactly the key it was
    /// created (or last rekeyed) with, and one without a key without one.
    pub key: Option<StateKey>,
}

/// Counts and settings of a head.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadInfo {
    pub samples: u64,
    pub class_counts: Vec<u64>,
    pub spec: HeadSpec,
    /// Where the head (and its core) run, and why.
    pub backend: BackendReport,
}

struct State {
    samples: Samples,
    stats: ExactStats,
    /// Θ is the weights served (canonical when `canonical == version`). L is the current
    /// version's factor when `fast` is `None`, as the rank-k update needs; otherwise it is not
    /// used until the canonical solution replaces it.
    solution: Solution,
    /// The fast path's correction (see "The fast path" above), once the background has
    /// inverted a version's A; it covers every change since its base.
    fast: Option<Woodbury>,
    /// Bumped by every change; the canonical solution is current when `canonical == version`.
    version: u64,
    canonical: u64,
    path: UpdatePath,
    /// The version the background re-solve is solving for, while it is.
    solving: Option<u64>,
}

/// How learn and forget bring the weights up to date (see "The canonical re-solve" above); a
/// test hook ([`Head::set_update_path`]) forces one path, to test each.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatePath {
    /// The Woodbury correction once the background has inverted A (the rank-k update until
    /// then), or the re-solve when the cost model expects it to be faster (the default).
    ByCost,
    /// The incremental rank-k update, the canonical re-solve in the background (which then
    /// inverts nothing).
    RankK,
    /// The re-solve, in the call (blocked; canonical on a head without a background thread).
    Resolve,
}

struct Inner {
    spec: HeadSpec,
    /// The state dir (`None` for a head that keeps nothing on disk).
    dir: Option<PathBuf>,
    core: Option<Arc<Core>>,
    served: RwLock<Arc<ServedWeights>>,
    /// [`Head::record_published`]: every weights version published since, when recording.
    published: Mutex<Option<Vec<Arc<ServedWeights>>>>,
    backend: HeadBackend,
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
    /// [`Head::hold_resolve`]: the background re-solve installs nothing while set.
    held: AtomicBool,
}

/// A head. `Send + Sync`: share it across threads (e.g. in an `Arc`).
pub struct Head {
    inner: Arc<Inner>,
    worker: Option<JoinHandle<()>>,
}

impl Head {
    /// A head over `core` that keeps nothing on disk.
    pub fn in_memory(core: Arc<Core>, options: &HeadOptions) -> Result<Head> {
        refuse_key(options)?;
        let spec = HeadSpec::from_bundle(
            core.bundle(),
            options.features.as_deref(),
            options.lambda,
            options.target_scale,
        )?;
        let samples = Samples::Memory(SampleSet::new(spec.dim, spec.num_classes()));
        Head::build(spec, Some(core), None, samples, None, options)
    }

    /// A head with no core: the caller supplies features (and core logits) directly.
    pub fn detached(spec: HeadSpec, options: &HeadOptions) -> Result<Head> {
        refuse_key(options)?;
        let samples = Samples::Memory(SampleSet::new(spec.dim, spec.num_classes()));
        Head::build(spec, None, None, samples, None, options)
    }

    /// Opens the head persisted in `state_dir`, creating it if absent. An existing state dir
    /// must belong to the same bundle (name, core, classes, features); its recorded settings
    /// win over `options`.
    pub fn open(
        core: Arc<Core>,
        state_dir: impl AsRef<Path>,
        options: &HeadOptions,
    ) -> Result<Head> {
        let dir = state_dir.as_ref();
        let bundle = core.bundle();
        let requested = HeadSpec::from_bundle(
            bundle,
            options.features.as_deref(),
            options.lambda,
            options.target_scale,
        )?;
        let (store, loaded) = Store::open(
            dir,
            &bundle.manifest.name,
            bundle.core_sha256(),
            &requested,
            !options.must_exist,
            options.key.as_ref(),
        )?;
        let spec = store.spec().clone();
        check_recorded(&spec, options, dir)?;
        let described = HeadSpec::from_bundle(bundle, Some(&spec.features), None, None)?;
        check_bundle(&spec, &described, dir)?;
        Head::build(
            spec,
            Some(core),
            Some(dir),
            Samples::Stored(Box::new(store)),
            loaded,
            options,
        )
    }

    /// Opens (or creates) a state dir for a head with no core (see [`Head::detached`]), e.g.
    /// to persist features computed elsewhere. `core_sha256` names the core those features
    /// come from: an existing state dir must have been created for the same core sha256 and
    /// with the same `spec`.
    pub fn open_detached(
        spec: HeadSpec,
        core_sha256: &str,
        state_dir: impl AsRef<Path>,
        options: &HeadOptions,
    ) -> Result<Head> {
        let dir = state_dir.as_ref();
        let (store, loaded) = Store::open(
            dir,
            "(detached)",
            core_sha256,
            &spec,
            !options.must_exist,
            options.key.as_ref(),
        )?;
        if *store.spec() != spec {
            return Err(Error::state(
                dir,
                format!(
                    "was created with another head spec ({:?}), not {spec:?}",
                    store.spec()
                ),
            ));
        }
        Head::build(
            spec,
            None,
            Some(dir),
            Samples::Stored(Box::new(store)),
            loaded,
            options,
        )
    }

    /// `loaded`: the statistics and canonical solution of `samples` (`None`: it is empty).
    fn build(
        spec: HeadSpec,
        core: Option<Arc<Core>>,
        dir: Option<&Path>,
        samples: Samples,
        loaded: Option<Loaded>,
        options: &HeadOptions,
    ) -> Result<Head> {
        let Loaded { stats, solution } = match loaded {
            Some(loaded) => loaded,
            None => {
                let stats = ExactStats::new(spec.dim, spec.num_classes());
                let solution = solver::canonical(&stats, spec.lambda, spec.fixed.frac_bits)
                    .map_err(|_| Error::InvalidInput("lambda too small to factor".into()))?;
                Loaded { stats, solution }
            }
        };
        let served = Arc::new(to_served(&solution.theta, spec.dim));
        let backend = HeadBackend::choose(
            &spec,
            options.backend.as_ref(),
            core.as_ref().map(|c| &c.options().backend),
        )?;
        backend.publish(&served);
        let inner = Arc::new(Inner {
            served: RwLock::new(served),
            published: Mutex::new(None),
            backend,
            state: Mutex::new(State {
                samples,
                stats,
                solution,
                fast: None,
                version: 0,
                canonical: 0,
                path: UpdatePath::ByCost,
                solving: None,
            }),
            spec,
            dir: dir.map(Path::to_path_buf),
            core,
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            held: AtomicBool::new(false),
        });
        let worker = if options.synchronous_resolve {
            None
        } else {
            let inner = inner.clone();
            Some(
                std::thread::Builder::new()
                    .name("lethe-resolve".into())
                    .spawn(move || resolve_loop(&inner))
                    .map_err(|e| {
                        Error::Backend(format!("cannot start the re-solve thread: {e}"))
                    })?,
            )
        };
        Ok(Head { inner, worker })
    }

    pub fn spec(&self) -> &HeadSpec {
        &self.inner.spec
    }

    /// The core this head runs on, if any.
    pub fn core(&self) -> Option<&Arc<Core>> {
        self.inner.core.as_ref()
    }

    fn core_or_err(&self) -> Result<&Arc<Core>> {
        self.inner.core.as_ref().ok_or_else(|| {
            Error::InvalidInput("this head has no core: use the *_features calls".into())
        })
    }

    /// Runs the core: (features `[n, d]`, core logits on the head's classes `[n, C]`), both
    /// zeroized when dropped.
    pub fn core_features(&self, inputs: &[f32], n: usize) -> Result<(SecretArray, SecretArray)> {
        let out = self.core_or_err()?.run(inputs, n, &self.core_outputs())?;
        self.features_of(out, n)
    }

    /// [`Head::core_features`] for named tensors, one per core input (see
    /// [`Core::run_tensors`]); the first axis of each is the batch axis.
    pub fn core_features_tensors(
        &self,
        inputs: &[Tensor<'_>],
    ) -> Result<(SecretArray, SecretArray)> {
        let core = self.core_or_err()?;
        let n = core.bundle().check_inputs(inputs)?;
        let out = core.run_tensors(inputs, &self.core_outputs())?;
        self.features_of(out, n)
    }

    /// The core outputs the head reads: its features, then its core logits if any.
    fn core_outputs(&self) -> Vec<&str> {
        let spec = &self.inner.spec;
        let mut names: Vec<&str> = spec.features.split(FEATURES_JOIN).collect();
        if let Some((logits, _)) = &spec.core_logits {
            names.push(logits.as_str());
        }
        names
    }

    fn features_of(&self, mut out: CoreOutputs, n: usize) -> Result<(SecretArray, SecretArray)> {
        let spec = &self.inner.spec;
        let phi = out
            .take_features(&spec.features)
            .ok_or_else(|| Error::Ort("missing features output".into()))?;
        let z = spec
            .core_logits
            .as_ref()
            .and_then(|(name, _)| out.take(name));
        Ok((phi, spec.map_core_logits(z.as_deref(), n)))
    }

    /// Learns `ids.len()` samples from raw inputs (n × the core's input length).
    pub fn learn(&self, ids: &[u64], inputs: &[f32], labels: &[u32]) -> Result<()> {
        self.check_new_ids(ids, labels)?;
        let (phi, z) = self.core_features(inputs, ids.len())?;
        self.learn_features(ids, &phi, &z, labels)
    }

    /// Learns `ids.len()` samples from named tensors, one per core input, each with `ids.len()`
    /// rows on its batch axis (see [`Core::run_tensors`]). All or nothing, like every learn.
    pub fn learn_tensors(&self, ids: &[u64], inputs: &[Tensor<'_>], labels: &[u32]) -> Result<()> {
        self.check_new_ids(ids, labels)?;
        let n = self.core_or_err()?.bundle().check_inputs(inputs)?;
        if n != ids.len() {
            return Err(Error::InvalidInput(format!(
                "the inputs hold {n} samples but there are {} ids",
                ids.len()
            )));
        }
        let (phi, z) = self.core_features_tensors(inputs)?;
        self.learn_features(ids, &phi, &z, labels)
    }

    /// Learns one sample per UTF-8 text, for a bundle that takes text (see
    /// [`Core::encode_text`]).
    pub fn learn_text(&self, ids: &[u64], texts: &[&str], labels: &[u32]) -> Result<()> {
        self.learn_encoded(ids, labels, texts.len(), "texts", |core| {
            core.encode_text(texts)
        })
    }

    /// [`Head::learn_tensors`] for `count` raw samples (`what`: texts, images) that `encode`
    /// turns into the core's inputs, one id and label each.
    fn learn_encoded(
        &self,
        ids: &[u64],
        labels: &[u32],
        count: usize,
        what: &str,
        encode: impl FnOnce(&Core) -> Result<Vec<Tensor<'static>>>,
    ) -> Result<()> {
        self.check_new_ids(ids, labels)?;
        if count != ids.len() {
            return Err(Error::InvalidInput(format!(
                "{count} {what} but {} ids",
                ids.len()
            )));
        }
        let inputs = encode(self.core_or_err()?)?;
        self.learn_tensors(ids, &inputs, labels)
    }

    /// [`Head::learn_tensors`] for PNG or JPEG files, for a bundle that declares its image
    /// preprocessing: each file is decoded and preprocessed as the manifest says
    /// ([`Core::encode_images`]).
    pub fn learn_images(&self, ids: &[u64], files: &[&[u8]], labels: &[u32]) -> Result<()> {
        self.learn_encoded(ids, labels, files.len(), "images", |core| {
            core.encode_images(files)
        })
    }

    /// [`Head::learn`] for an input array in the core's input shape `[n, …]` or its flat form
    /// `[n, input_len]` (see [`Core::input_rows`]); any other shape is refused.
    pub fn learn_array(
        &self,
        ids: &[u64],
        inputs: ArrayViewD<'_, f32>,
        labels: &[u32],
    ) -> Result<()> {
        let (n, rows) = self.core_or_err()?.input_rows(inputs)?;
        if n != ids.len() {
            return Err(Error::InvalidInput(format!(
                "{n} inputs but {} ids",
                ids.len()
            )));
        }
        self.learn(ids, &rows, labels)
    }

    fn check_new_ids(&self, ids: &[u64], labels: &[u32]) -> Result<()> {
        if ids.len() != labels.len() {
            return Err(Error::InvalidInput(format!(
                "{} ids but {} labels",
                ids.len(),
                labels.len()
            )));
        }
        let c = self.inner.spec.num_classes();
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= c) {
            return Err(Error::InvalidInput(format!(
                "label {l} (sample {i}) is not a class: the head has {c} classes"
            )));
        }
        distinct(ids)?;
        let st = self.inner.lock();
        if let Some(id) = ids.iter().find(|&&id| st.samples.contains(id)) {
            return Err(Error::Id(format!("id {id} is already learned")));
        }
        Ok(())
    }

    /// Learns samples from their features `phi` `[k, d]` and core logits `z` `[k, C]` (mapped
    /// onto the head's classes; zeros where the core has none).
    pub fn learn_features(
        &self,
        ids: &[u64],
        phi: &Array2<f32>,
        z: &Array2<f32>,
        labels: &[u32],
    ) -> Result<()> {
        let spec = &self.inner.spec;
        let k = ids.len();
        if phi.dim() != (k, spec.dim) || z.dim() != (k, spec.num_classes()) {
            return Err(Error::InvalidInput(format!(
                "expected features [{k}, {}] and core logits [{k}, {}], got {:?} and {:?}",
                spec.dim,
                spec.num_classes(),
                phi.dim(),
                z.dim()
            )));
        }
        self.check_new_ids(ids, labels)?;
        let (d, c) = (spec.dim, spec.num_classes());
        // Exact capacities: the rows never reallocate, and they are zeroized whatever happens,
        // like a copy of an input that is not in standard layout (G4).
        let mut q = Zeroizing::new(Vec::with_capacity(k * d));
        let mut r = Zeroizing::new(Vec::with_capacity(k * c));
        let (phi_rows, z_rows) = (Rows::of(phi.view()), Rows::of(z.view()));
        let quantized = labels.iter().enumerate().try_for_each(|(s, &label)| {
            spec.fixed
                .quantize_features(&phi_rows[s * d..(s + 1) * d], s, &mut q)?;
            spec.fixed.quantize_targets(
                label as usize,
                spec.target_scale,
                &z_rows[s * c..(s + 1) * c],
                s,
                &mut r,
            )
        });
        let result = quantized.and_then(|()| {
            self.change(
                ids,
                |st| {
                    if let Some(id) = ids.iter().find(|&&id| st.samples.contains(id)) {
                        return Err(Error::Id(format!("id {id} is already learned")));
                    }
                    check_solvable(spec, &st.stats, &q)?;
                    Ok((q.as_slice(), r.as_slice(), 1))
                },
                &|samples: &mut Samples| {
                    let rows: Vec<SampleRef<'_>> = (0..k)
                        .map(|s| SampleRef {
                            id: ids[s],
                            label: labels[s],
                            q: &q[s * d..(s + 1) * d],
                            r: &r[s * c..(s + 1) * c],
                        })
                        .collect();
                    samples.learn(&rows)
                },
            )
        });
        result
    }

    /// Forgets the samples with these ids (all present, distinct), exactly.
    pub fn forget(&self, ids: &[u64]) -> Result<()> {
        distinct(ids)?;
        let spec = &self.inner.spec;
        let (d, c) = (spec.dim, spec.num_classes());
        let mut q = Zeroizing::new(Vec::with_capacity(ids.len() * d));
        let mut r = Zeroizing::new(Vec::with_capacity(ids.len() * c));
        let forgetting = OnceCell::new();
        self.change(
            ids,
            |st| {
                if let Some(id) = ids.iter().find(|&&id| !st.samples.contains(id)) {
                    return Err(Error::Id(format!("id {id} is not learned")));
                }
                let read = st.samples.forget_rows(ids, &mut q, &mut r)?;
                let _ = forgetting.set(read);
                Ok((q.as_slice(), r.as_slice(), -1))
            },
            &|samples: &mut Samples| {
                let read = forgetting.get().expect("the rows were read");
                samples.forget_commit(ids, read)
            },
        )
    }

    /// Applies one change under the state lock. `prepare` checks the change (and reads the
    /// rows a forget removes) and returns the rows to add (+1) or subtract (−1) from the
    /// statistics; `commit` then changes the sample set, and the statistics and the weights
    /// are updated (even if the commit failed, when they are then put back as they were). For
    /// a state dir and a change of at least [`BESIDE_FROM`] multiply-adds, the commit makes the
    /// change durable on this thread while the update runs on another.
    fn change<'q>(
        &self,
        ids: &[u64],
        prepare: impl FnOnce(&mut State) -> Result<(&'q [i32], &'q [i32], i8)>,
        commit: &dyn Fn(&mut Samples) -> Result<()>,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let spec = &self.inner.spec;
        let mut st = self.inner.lock_sound()?;
        // The phases of the call, as trace spans (how `lethe bench` times them in situ).
        let (q, r, sign) = tracing::trace_span!("store").in_scope(|| prepare(&mut st))?;
        let one = spec.fixed.one();
        st.version += 1;
        let st = &mut *st;
        let (p, k, c) = (
            spec.dim + 1,
            r.len() / spec.num_classes(),
            spec.num_classes(),
        );
        // With no inverse, a correction applied through the current factor spares updating the
        // factor: for a learn, or any change once the head holds enough samples that a
        // forget's correction keeps its digits (see `wants_fast_path`), where the model
        // expects it to be cheaper than the rank-k update. The factor is then the
        // correction's base until the background re-solves.
        let on_factor = self.worker.is_some()
            && st.path == UpdatePath::ByCost
            && st.fast.is_none()
            && (sign > 0 || self.inner.wants_fast_path(&st.stats))
            && solver::update_cost(Update::OnFactor, k, p, c)
                < solver::update_cost(Update::RankK, k, p, c);
        let resolve = self.worker.is_none()
            || match st.path {
                UpdatePath::ByCost => {
                    let update = match &st.fast {
                        Some(fast) => Update::Correction {
                            pending: fast.pending(),
                        },
                        None if on_factor => Update::OnFactor,
                        None => Update::RankK,
                    };
                    solver::resolve_is_cheaper(update, k, p, c)
                }
                UpdatePath::RankK => false,
                UpdatePath::Resolve => true,
            };
        if on_factor && !resolve {
            // Without an inverse the factor is current: that of the version before this one.
            let l = std::mem::replace(&mut st.solution.l, SecretMat::zeros(0, 0));
            st.fast = Some(Woodbury::on_factor(l, st.version - 1));
        }
        let State {
            samples,
            stats,
            solution,
            fast,
            version,
            canonical,
            ..
        } = st;
        let version = *version;
        // The solves cannot fail: a learn was checked by `check_solvable` before it was
        // stored, and a forget only lowers A's diagonal.
        let mut update = || -> Result<()> {
            tracing::trace_span!("stats").in_scope(|| stats.accumulate(q, r, one, sign));
            let _solve = tracing::trace_span!("solve", resolve).entered();
            let updated = !resolve && {
                let (x, t) = spec.real_rows(q, r);
                match fast {
                    Some(fast) => fast
                        .apply(&mut solution.theta, &x, &t, sign as f64, version)
                        .is_ok(),
                    None => solver::apply(solution, &x, &t, sign as f64).is_ok(),
                }
            };
            if !updated {
                if !resolve {
                    tracing::debug!(
                        "the incremental update refused the change (positive definiteness, \
                         digits or too many pending); re-solving"
                    );
                }
                // The re-solve does not go through the correction, which then no longer covers
                // every change since its base.
                *fast = None;
                // Served while the background restores the canonical solution; re-solved
                // canonically where there is no background, or should rounding stop the
                // blocked solve (A meets the condition of both, which does not depend on the
                // order).
                let blocked = match self.worker {
                    Some(_) => {
                        let old = std::mem::replace(&mut solution.l, SecretMat::zeros(0, 0));
                        self.inner.blocked_of(stats, old)
                    }
                    None => None,
                };
                match blocked {
                    Some(solved) => *solution = solved,
                    None => {
                        *solution = self.inner.canonical_of(stats)?;
                        *canonical = version;
                    }
                }
            }
            Ok(())
        };
        let (committed, updated) = if samples.is_stored() && commits_beside(k * p * p) {
            // The other thread's spans go where this thread's go.
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            threads::beside(
                || tracing::trace_span!("commit").in_scope(|| commit(samples)),
                || tracing::dispatcher::with_default(&dispatch, update),
            )
        } else {
            let committed = tracing::trace_span!("commit").in_scope(|| commit(samples));
            (committed, update())
        };
        if let Err(e) = committed {
            // Nothing changed: the statistics, exactly as they were, and their canonical
            // weights (those served were never replaced).
            stats.accumulate(q, r, one, -sign);
            *fast = None;
            *solution = self.inner.canonical_of(stats)?;
            *canonical = version;
            return Err(e);
        }
        updated?;
        tracing::trace_span!("publish").in_scope(|| self.inner.publish(solution));
        self.inner.wake.notify_all();
        Ok(())
    }

    /// Forgets everything: W = 0, b = 0, every stored sample erased. The head then predicts
    /// exactly the core's logits.
    pub fn forget_all(&self) -> Result<()> {
        let spec = &self.inner.spec;
        let mut st = self.inner.lock_sound()?;
        st.samples.forget_all()?;
        st.stats.clear();
        st.fast = None;
        let p = spec.dim + 1;
        let diag = spec.lambda.sqrt();
        st.solution = Solution {
            l: SecretMat::from_fn(p, p, |i, j| if i == j { diag } else { 0.0 }),
            theta: SecretMat::zeros(p, spec.num_classes()),
        };
        st.version += 1;
        if self.worker.is_none() {
            self.inner.make_canonical(&mut st)?;
        }
        self.inner.publish(&st.solution);
        self.inner.wake.notify_all();
        Ok(())
    }

    /// Replaces the key of an encrypted state dir: everything it holds is sealed again under
    /// a new data key, wrapped by `new_key` (see `crate::store`). Once this returns, the old
    /// key opens nothing in the state dir; once the application destroys the old key, nothing
    /// ever written under it is readable, whatever the storage kept. Open the state dir with
    /// `new_key` from then on. On error nothing changed and the old key stays in effect,
    /// unless the error left the outcome unknown (later changes are then refused until the
    /// state dir is reopened, with whichever of the two keys opens it).
    pub fn rekey(&self, new_key: &StateKey) -> Result<()> {
        let mut st = self.inner.lock_sound()?;
        st.samples.rekey(new_key)
    }

    /// Logits `[n, C]` for raw inputs.
    pub fn predict(&self, inputs: &[f32], n: usize) -> Result<Array2<f32>> {
        let backend = &self.inner.backend;
        if let Some(logits) = backend.predict_on_device(self.core_or_err()?, inputs, n)? {
            // The features stayed on the GPU; what was not finite there shows in the logits.
            let c = self.inner.spec.num_classes();
            if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
                return Err(Error::InvalidInput(format!(
                    "sample {}: the logit for class {} is {}: the core's outputs are not finite",
                    i / c,
                    i % c,
                    logits[(i / c, i % c)]
                )));
            }
            return Ok(logits);
        }
        let (phi, z) = self.core_features(inputs, n)?;
        self.predict_features(&phi, &z)
    }

    /// Logits `[n, C]` for named tensors, one per core input (see [`Core::run_tensors`]).
    pub fn predict_tensors(&self, inputs: &[Tensor<'_>]) -> Result<Array2<f32>> {
        let (phi, z) = self.core_features_tensors(inputs)?;
        self.predict_features(&phi, &z)
    }

    /// Logits `[n, C]` for UTF-8 texts, for a bundle that takes text (see
    /// [`Core::encode_text`]).
    pub fn predict_text(&self, texts: &[&str]) -> Result<Array2<f32>> {
        self.predict_tensors(&self.core_or_err()?.encode_text(texts)?)
    }

    /// [`Head::predict_tensors`] for PNG or JPEG files (see [`Head::learn_images`]).
    pub fn predict_images(&self, files: &[&[u8]]) -> Result<Array2<f32>> {
        self.predict_tensors(&self.core_or_err()?.encode_images(files)?)
    }

    /// [`Head::predict`] for an input array in the core's input shape `[n, …]` or its flat
    /// form `[n, input_len]` (see [`Core::input_rows`]); any other shape is refused.
    pub fn predict_array(&self, inputs: ArrayViewD<'_, f32>) -> Result<Array2<f32>> {
        let (n, rows) = self.core_or_err()?.input_rows(inputs)?;
        self.predict(&rows, n)
    }

    /// Logits `[n, C]` = z + φ Wᵀ + b from features and mapped core logits. Features outside
    /// the head's range (see [`crate::math::fixed::FixedPoint::check_features`]) and core
    /// logits that are not finite are refused, as learning refuses them.
    pub fn predict_features(&self, phi: &Array2<f32>, z: &Array2<f32>) -> Result<Array2<f32>> {
        let spec = &self.inner.spec;
        let (n, d, c) = (phi.nrows(), spec.dim, spec.num_classes());
        if phi.ncols() != d || z.dim() != (n, c) {
            return Err(Error::InvalidInput(format!(
                "expected features [n, {d}] and core logits [n, {c}], got {:?} and {:?}",
                phi.dim(),
                z.dim()
            )));
        }
        for (s, row) in Rows::of(phi.view()).chunks_exact(d).enumerate() {
            spec.fixed.check_features(row, s)?;
        }
        if let Some(i) = Rows::of(z.view()).iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "sample {}: the core's logit for class {} is {}",
                i / c,
                i % c,
                z[(i / c, i % c)]
            )));
        }
        self.inner.backend.logits(phi, z, || self.served())
    }

    /// The weights predictions use right now (f32).
    pub fn served(&self) -> Arc<ServedWeights> {
        self.inner
            .served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A test hook (G1 before the re-solve): the f64 weights that [`Head::served`] rounds,
    /// without finishing a pending re-solve, i.e. those of the incremental update until the
    /// re-solve replaces them.
    #[doc(hidden)]
    pub fn served_f64(&self) -> Weights {
        to_weights(&self.inner.lock().solution.theta, self.inner.spec.dim)
    }

    /// A test hook (G1 before the re-solve, G6): while `held`, the background re-solve installs
    /// nothing, so the weights a learn or forget served stay served until the hold is released
    /// or a call that returns canonical weights ([`Head::weights`], `verify`, `close`) re-solves
    /// itself. No effect with `synchronous_resolve`.
    #[doc(hidden)]
    pub fn hold_resolve(&self, held: bool) {
        let _st = self.inner.lock();
        self.inner.held.store(held, Ordering::SeqCst);
        self.inner.wake.notify_all();
    }

    /// A test hook: how the following learn and forget calls bring the weights up to date
    /// ([`UpdatePath::ByCost`] unless set). No effect with `synchronous_resolve`.
    #[doc(hidden)]
    pub fn set_update_path(&self, path: UpdatePath) {
        let mut st = self.inner.lock();
        st.path = path;
        // The rank-k update needs the current version's factor.
        if path == UpdatePath::RankK && st.fast.take().is_some() {
            if let Err(e) = self.inner.make_canonical(&mut st) {
                tracing::error!("re-solve for the rank-k path failed: {e}");
            }
        }
    }

    /// A test hook (G6): from now on, every weights version the head publishes is kept, for
    /// [`Head::published`] to return; the list starts with the version served now.
    #[doc(hidden)]
    pub fn record_published(&self) {
        let _st = self.inner.lock();
        *self
            .inner
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(vec![self.served()]);
    }

    /// A test hook (G6): the weights versions published since [`Head::record_published`], in
    /// order.
    #[doc(hidden)]
    pub fn published(&self) -> Vec<Arc<ServedWeights>> {
        let _st = self.inner.lock();
        self.inner
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// A test hook: how many changed rows the fast path's Woodbury correction holds, or
    /// `None` when the head has no correction (the rank-k update serves changes then).
    #[doc(hidden)]
    pub fn pending_corrections(&self) -> Option<usize> {
        self.inner.lock().fast.as_ref().map(Woodbury::pending)
    }

    /// A test and benchmark hook: waits until the background has nothing left to do (the
    /// canonical solution current and, unless the rank-k path is forced, the fast path's
    /// inverse up to date), so that the next call is timed with the background idle. Returns
    /// at once with `synchronous_resolve`, while held, or once the re-solve thread has ended.
    #[doc(hidden)]
    pub fn settle(&self) -> Result<()> {
        let Some(worker) = &self.worker else {
            return Ok(());
        };
        let mut st = self.inner.lock_sound()?;
        while self.inner.background_work(&st) && !worker.is_finished() {
            st = self
                .inner
                .wake
                .wait_timeout(st, std::time::Duration::from_millis(50))
                .map_err(|_| self.inner.poisoned())?
                .0;
        }
        Ok(())
    }

    /// The receipt of the head's state (G8), finishing a pending re-solve first: a digest of
    /// the spec, the algorithm version, the canonical weights and the remaining ids that a
    /// fresh head which learns only the remaining samples reproduces on any machine. Taken
    /// right after a learn or forget, it is that call's receipt (unless another thread changed
    /// the head in between).
    pub fn receipt(&self) -> Result<Receipt> {
        let st = self.inner.canonical_state()?;
        let theta = &st.solution.theta;
        Ok(Receipt::of(
            &self.inner.spec,
            solver::ALGORITHM_VERSION,
            |i, j| theta[(i, j)],
            &st.samples.index().sorted_ids(),
        ))
    }

    /// The canonical weights in f64 (finishing a pending re-solve first).
    pub fn weights(&self) -> Result<Weights> {
        let st = self.inner.canonical_state()?;
        Ok(to_weights(&st.solution.theta, self.inner.spec.dim))
    }

    /// The stored samples' ids, sorted.
    pub fn ids(&self) -> Vec<u64> {
        self.inner.lock().samples.index().sorted_ids()
    }

    pub fn info(&self) -> HeadInfo {
        let st = self.inner.lock();
        HeadInfo {
            samples: st.samples.len() as u64,
            class_counts: st.samples.index().class_counts().to_vec(),
            spec: self.inner.spec.clone(),
            backend: BackendReport {
                head: self.inner.backend.placement(),
                core: self.inner.core.as_ref().map(|c| c.placement().clone()),
            },
        }
    }

    /// Recomputes the statistics and weights from the stored samples from scratch and returns
    /// the largest relative difference from what is served (0 when they agree bit for bit).
    pub fn verify(&self) -> Result<VerifyReport> {
        let spec = &self.inner.spec;
        let st = self.inner.canonical_state()?;
        let mut fresh = ExactStats::new(spec.dim, spec.num_classes());
        let one = spec.fixed.one();
        st.samples
            .for_each_batch(&mut |q, r| fresh.accumulate(q, r, one, 1))?;
        let stats_equal = fresh == st.stats;
        let solution = self.inner.canonical_of(&fresh)?;
        let weights_identical = solution == st.solution;
        let served = self.served();
        let expect = to_served(&solution.theta, spec.dim);
        let served_identical = *served == expect;
        Ok(VerifyReport {
            samples: st.samples.len() as u64,
            stats_equal,
            weights_identical,
            served_identical,
        })
    }

    /// Finishes pending work, persists the canonical state and releases the state dir. After a
    /// panic while the state was locked it releases the state dir without persisting (see
    /// "Panics" above) and returns that refusal.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Erases the head's state dir (as [`crate::store::erase`] does) instead of closing it,
    /// while the head still holds the dir's lock: no other head or process can open the dir
    /// between the head's release and the erasure. For an application that created a state
    /// dir and wants nothing left of it after a failure. An in-memory head has nothing to
    /// erase.
    pub fn erase(mut self) -> Result<ErasedReport> {
        match self.take_samples()? {
            Samples::Stored(store) => store.erase(),
            Samples::Memory(_) => Ok(ErasedReport::default()),
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        match self.take_samples()? {
            Samples::Stored(store) => {
                let st = self.inner.lock();
                store.close(&st.stats)
            }
            Samples::Memory(_) => Ok(()),
        }
    }

    /// Stops the background thread and takes the samples (the state dir's store) out of the
    /// head, leaving an empty in-memory set. A poisoned head's store is dropped, which releases
    /// the state dir as a crash would.
    fn take_samples(&mut self) -> Result<Samples> {
        {
            // Under the lock, so the re-solve cannot miss the wake-up between its check of
            // `stop` and its wait.
            let _st = self.inner.lock();
            self.inner.stop.store(true, Ordering::SeqCst);
            self.inner.wake.notify_all();
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let spec = &self.inner.spec;
        let released = Samples::Memory(SampleSet::new(spec.dim, spec.num_classes()));
        let mut st = match self.inner.state.lock() {
            Ok(st) => st,
            Err(poisoned) => {
                let mut st = poisoned.into_inner();
                return match std::mem::replace(&mut st.samples, released) {
                    Samples::Stored(_) => Err(self.inner.poisoned()),
                    memory => Ok(memory),
                };
            }
        };
        Ok(std::mem::replace(&mut st.samples, released))
    }
}

/// The outcome of [`Head::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub samples: u64,
    /// The integer statistics equal a recomputation from the stored samples.
    pub stats_equal: bool,
    /// The canonical factor and weights are bit-identical to a recomputation.
    pub weights_identical: bool,
    /// The served f32 weights are exactly the recomputed ones rounded to f32.
    pub served_identical: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.stats_equal && self.weights_identical && self.served_identical
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("closing the head failed: {e}");
        }
    }
}

impl Inner {
    /// The state for reads that a half-finished change cannot make unsound (counts, ids).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state for calls that change it or derive weights from it: refused after a panic
    /// while it was locked (see "Panics" above).
    fn lock_sound(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| self.poisoned())
    }

    fn poisoned(&self) -> Error {
        let (dir, recover) = match &self.dir {
            Some(dir) => (
                dir.clone(),
                "reopen the state dir: its journal holds every committed change",
            ),
            None => (PathBuf::from("(none, in memory)"), "use a new head"),
        };
        Error::state(
            dir,
            format!(
                "not usable: an earlier call panicked while changing the head, which may have left \
                 it half-updated, so it refuses changes and is not persisted; {recover}"
            ),
        )
    }

    /// Whether the background has work: a re-solve, or (unless the rank-k path is forced) an
    /// inverse for the fast path where it has none or has changes pending. Nothing while held.
    fn background_work(&self, st: &State) -> bool {
        let invert = match &st.fast {
            Some(fast) => fast.pending() > 0,
            None => st.path != UpdatePath::RankK && self.wants_fast_path(&st.stats),
        };
        (st.canonical != st.version || invert) && !self.held.load(Ordering::SeqCst)
    }

    /// Whether an inverse of version `version`'s A can serve the fast path now: as the new base
    /// of the correction, which covers every change since its own base; or, with no
    /// correction, as the first base, but only while `version` is current (the changes since
    /// went through the rank-k update), the fast path is wanted, and the rank-k path is not
    /// forced. Never while held, nor once the head is closing (the close would wait for it).
    fn inverse_usable(&self, st: &State, version: u64) -> bool {
        !self.held.load(Ordering::SeqCst)
            && !self.stop.load(Ordering::SeqCst)
            && match &st.fast {
                // Not older than the base (a call's factor can be newer than this inverse).
                Some(fast) => fast.base() <= version,
                None => {
                    st.version == version
                        && st.path != UpdatePath::RankK
                        && self.wants_fast_path(&st.stats)
                }
            }
    }

    /// Whether the fast path is worth building for these statistics: with fewer than
    /// [`FAST_PATH_SAMPLES_PER_DIM`] samples per dimension, forgetting a sample is too
    /// ill-conditioned for the correction's accuracy (see [`crate::math::woodbury`]), and the
    /// rank-k update serves instead.
    fn wants_fast_path(&self, stats: &ExactStats) -> bool {
        stats.n() >= FAST_PATH_SAMPLES_PER_DIM * (self.spec.dim as u64 + 1)
    }

    /// The canonical solution for `stats`, on every core (a caller waits for it).
    fn canonical_of(&self, stats: &ExactStats) -> Result<Solution> {
        let (lambda, frac_bits) = (self.spec.lambda, self.spec.fixed.frac_bits);
        let threads = solver::threads_for(stats.dim() + 1);
        solver::canonical_with(
            stats,
            lambda,
            frac_bits,
            CanonicalKernel::selected(),
            threads,
        )
        .map_err(|_| self.not_positive_definite())
    }

    /// The blocked re-solve's solution for `stats`, on every core (a caller waits for it),
    /// factored in `buffer` (see [`solver::blocked::solve`]); `None` if a pivot was not
    /// positive.
    fn blocked_of(&self, stats: &ExactStats, buffer: SecretMat) -> Option<Solution> {
        let (lambda, frac_bits) = (self.spec.lambda, self.spec.fixed.frac_bits);
        solver::blocked::solve(stats, lambda, frac_bits, buffer).ok()
    }

    /// The canonical solution for `stats` in the background: on its one thread (leaving the
    /// other cores to the callers), given up (`None`) once the head is closing, so that the
    /// close solves on every core rather than wait for it.
    fn canonical_in_background(&self, stats: &ExactStats) -> Result<Option<Solution>> {
        let (lambda, frac_bits) = (self.spec.lambda, self.spec.fixed.frac_bits);
        let kernel = CanonicalKernel::selected();
        solver::canonical_until(stats, lambda, frac_bits, kernel, 1, &self.stop)
            .map_err(|_| self.not_positive_definite())
    }

    fn not_positive_definite(&self) -> Error {
        Error::Limit(format!(
            "A is not numerically positive definite at λ = {}; increase lambda",
            self.spec.lambda
        ))
    }

    /// The state, with the canonical solution current: waits for the background re-solve when
    /// it is solving for the current version (rather than solving the same again beside it),
    /// else re-solves on this thread.
    fn canonical_state(&self) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock_sound()?;
        while st.canonical != st.version && st.solving == Some(st.version) {
            st = self.wake.wait(st).map_err(|_| self.poisoned())?;
        }
        self.make_canonical(&mut st)?;
        Ok(st)
    }

    fn make_canonical(&self, st: &mut State) -> Result<()> {
        if st.canonical != st.version {
            st.solution = self.canonical_of(&st.stats)?;
            st.canonical = st.version;
            self.publish(&st.solution);
        }
        Ok(())
    }

    fn publish(&self, solution: &Solution) {
        let served = Arc::new(to_served(&solution.theta, self.spec.dim));
        self.backend.publish(&served);
        if let Some(log) = self
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            log.push(served.clone());
        }
        // One assignment: a panic cannot leave it half-done (see "Panics" above).
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = served;
    }
}

/// The background: waits for work, then (1) re-solves canonically for the newest version off
/// the lock and installs the result if no change came in meanwhile, and (2) inverts that
/// version's A for the fast path and takes it as the correction's base (folding in the changes
/// up to it, keeping the later ones), or inverts the current factor when the canonical
/// solution is current but the fast path has no inverse or pending changes.
fn resolve_loop(inner: &Inner) {
    threads::batch_this_thread();
    let _done = SolvingCleared(inner);
    loop {
        let job = {
            let Ok(mut st) = inner.lock_sound() else {
                return;
            };
            while !inner.background_work(&st) && !inner.stop.load(Ordering::SeqCst) {
                let Ok(woken) = inner.wake.wait(st) else {
                    return;
                };
                st = woken;
            }
            if inner.stop.load(Ordering::SeqCst) {
                return;
            }
            if st.canonical != st.version {
                st.solving = Some(st.version);
                Job::Solve(st.stats.clone(), st.version)
            } else {
                Job::Invert(st.solution.l.clone(), st.version)
            }
        };
        let (l, version) = match job {
            Job::Solve(stats, version) => {
                let solved = inner.canonical_in_background(&stats);
                drop(stats);
                let Ok(mut st) = inner.lock_sound() else {
                    return;
                };
                st.solving = None;
                inner.wake.notify_all();
                let solution = match solved {
                    Ok(Some(solution)) => solution,
                    // Stopped: the close solves on every core.
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!("canonical re-solve failed: {e}");
                        return;
                    }
                };
                if inner.held.load(Ordering::SeqCst) {
                    continue;
                }
                // A correction on a call's factor is done once the canonical solution covers
                // every change it holds: the head updates its (current) factor again, unless
                // the fast path is wanted, whose inverse then replaces that factor below.
                let on_factor = st.fast.as_ref().is_some_and(Woodbury::on_a_factor);
                if on_factor && st.version == version && !inner.wants_fast_path(&st.stats) {
                    st.fast = None;
                }
                // The factor is kept (a copy of it when the solution is installed) only where
                // its inverse will be of use.
                let invert = inner.inverse_usable(&st, version);
                let l = if st.version == version {
                    let l = invert.then(|| solution.l.clone());
                    st.solution = solution;
                    st.canonical = version;
                    inner.publish(&st.solution);
                    l
                } else {
                    invert.then_some(solution.l)
                };
                let Some(l) = l else {
                    continue;
                };
                (l, version)
            }
            Job::Invert(l, version) => (l, version),
        };
        // A close stops the inversion rather than wait for it.
        let inverse = Woodbury::from_factor(&l, version, &inner.stop);
        drop(l);
        let Some(inverse) = inverse else {
            return;
        };
        let Ok(mut st) = inner.lock_sound() else {
            return;
        };
        if !inner.inverse_usable(&st, version) {
            continue;
        }
        match &mut st.fast {
            Some(fast) => fast.rebase(inverse),
            None => st.fast = Some(inverse),
        }
        inner.wake.notify_all();
    }
}

/// What the background does next (see [`resolve_loop`]).
enum Job {
    Solve(ExactStats, u64),
    Invert(SecretMat, u64),
}

/// Whenever the re-solve thread ends (stopped, failed or panicked), nobody waits for its
/// solve any more: [`Inner::canonical_state`] then solves itself.
struct SolvingCleared<'a>(&'a Inner);

impl Drop for SolvingCleared<'_> {
    fn drop(&mut self) {
        self.0.lock().solving = None;
        self.0.wake.notify_all();
    }
}

/// A key belongs to a state dir: a head without one refuses it rather than ignore it.
fn refuse_key(options: &HeadOptions) -> Result<()> {
    match options.key {
        Some(_) => Err(Error::Key(
            "a head without a state dir has nothing to encrypt: open a state dir to use a key"
                .into(),
        )),
        None => Ok(()),
    }
}

/// An existing state dir keeps its settings; asking explicitly for others is an error.
fn check_recorded(spec: &HeadSpec, options: &HeadOptions, dir: &Path) -> Result<()> {
    let conflict = |what: &str, recorded: String, asked: String| {
        Err(Error::state(
            dir,
            format!("was created with {what} {recorded}, but {asked} was requested"),
        ))
    };
    if let Some(f) = options.features.as_ref().filter(|f| **f != spec.features) {
        return conflict("features", format!("{:?}", spec.features), format!("{f:?}"));
    }
    if let Some(l) = options.lambda.filter(|l| *l != spec.lambda) {
        return conflict("lambda", spec.lambda.to_string(), l.to_string());
    }
    if let Some(s) = options.target_scale.filter(|s| *s != spec.target_scale) {
        return conflict("target scale", spec.target_scale.to_string(), s.to_string());
    }
    Ok(())
}

/// A state dir's recorded head must be one the bundle still describes: the same classes, core
/// logits and features dimension (`bundle`: the bundle's spec for the recorded features).
fn check_bundle(recorded: &HeadSpec, bundle: &HeadSpec, dir: &Path) -> Result<()> {
    let differ = |what: &str, recorded: String, bundle: String| {
        Err(Error::state(
            dir,
            format!("records {what} {recorded}, but the bundle has {bundle}"),
        ))
    };
    let (rc, bc) = (&recorded.classes, &bundle.classes);
    if rc.len() != bc.len() {
        return differ("classes:", rc.len().to_string(), bc.len().to_string());
    }
    if let Some(i) = (0..rc.len()).find(|&i| rc[i] != bc[i]) {
        return differ(
            &format!("class {i} as"),
            format!("{:?}", rc[i]),
            format!("{:?}", bc[i]),
        );
    }
    if recorded.core_logits != bundle.core_logits {
        let show = |cl: &Option<(String, Vec<usize>)>| match cl {
            Some((output, map)) => format!("{output:?} onto classes {map:?}"),
            None => "none".into(),
        };
        return differ(
            "core logits",
            show(&recorded.core_logits),
            show(&bundle.core_logits),
        );
    }
    if recorded.dim != bundle.dim {
        return differ(
            &format!("features {:?} of dimension", recorded.features),
            recorded.dim.to_string(),
            bundle.dim.to_string(),
        );
    }
    Ok(())
}

/// Refuses a learn after which the canonical solve could fail: the largest diagonal entry of
/// A must stay within [`solver::max_solvable_diagonal`] (forgetting only lowers it). Checked
/// before anything is stored, so a head can never hold samples it cannot solve for.
fn check_solvable(spec: &HeadSpec, stats: &ExactStats, q: &[i32]) -> Result<()> {
    let unit = (-2.0 * spec.fixed.frac_bits as f64).exp2();
    let largest = stats.max_diagonal_with(q, spec.fixed.one()) as f64 * unit + spec.lambda;
    let bound = solver::max_solvable_diagonal(spec.lambda, spec.dim + 1);
    if largest > bound {
        return Err(Error::Limit(format!(
            "learning these samples would make the largest diagonal entry of A {largest:e},              beyond {bound:e}, the most for which the solve is certain to succeed at lambda = {}:              use a larger lambda, or smaller features",
            spec.lambda
        )));
    }
    Ok(())
}

fn distinct(ids: &[u64]) -> Result<()> {
    let mut seen = HashSet::with_capacity(ids.len());
    if let Some(id) = ids.iter().find(|&&id| !seen.insert(id)) {
        return Err(Error::Id(format!("id {id} appears twice in one call")));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;
    use crate::math::fixed::FixedPoint;

    thread_local! {
        /// A test hook: changes made on this thread commit beside their update whatever
        /// their size (the crash matrix's heads are small).
        pub(crate) static ALWAYS_BESIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    const CORE_SHA256: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    fn spec() -> HeadSpec {
        HeadSpec {
            features: "features".into(),
            dim: 4,
            classes: (0..3).map(|i| i.to_string()).collect(),
            core_logits: None,
            lambda: 0.5,
            target_scale: 1.0,
            fixed: FixedPoint {
                frac_bits: 16,
                feature_max_abs: 8.0,
                target_max_abs: 16.0,
            },
        }
    }

    fn learn(head: &Head, ids: &[u64]) -> Result<()> {
        let phi = Array2::from_shape_fn((ids.len(), 4), |(i, j)| {
            ((ids[i] * 5 + j as u64 * 3) % 11) as f32 * 0.25 - 1.0
        });
        let z = Array2::zeros((ids.len(), 3));
        let labels: Vec<u32> = ids.iter().map(|&id| (id % 3) as u32).collect();
        head.learn_features(ids, &phi, &z, &labels)
    }

    /// A panic in the middle of a change (simulated: the statistics cleared, the sample set
    /// not) must not be built on or persisted: the head refuses changes and weights, and its
    /// close leaves the state dir to recovery, which rebuilds the statistics from the samples.
    #[test]
    fn a_panic_while_changing_is_refused_and_not_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Head::open_detached(spec(), CORE_SHA256, dir.path(), &HeadOptions::default());
        let head = open().unwrap();
        learn(&head, &[1, 2, 3, 4, 5, 6]).unwrap();
        let expected = head.weights().unwrap();
        let served = head.served();
        let half_done = catch_unwind(AssertUnwindSafe(|| {
            let mut st = head.inner.lock();
            st.stats.clear();
            panic!("a bug in the middle of a change");
        }));
        assert!(half_done.is_err());

        let refusals = [
            learn(&head, &[7]),
            head.forget(&[1]),
            head.forget_all(),
            head.weights().map(drop),
            head.verify().map(drop),
        ];
        for refusal in refusals {
            let message = refusal.unwrap_err().to_string();
            assert!(message.contains("panicked"), "{message}");
        }
        assert_eq!(head.ids(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(*head.served(), *served);
        let message = head.close().unwrap_err().to_string();
        assert!(message.contains("not persisted"), "{message}");

        let reopened = open().unwrap();
        assert_eq!(reopened.ids(), [1, 2, 3, 4, 5, 6]);
        assert!(reopened.verify().unwrap().ok());
        assert_eq!(reopened.weights().unwrap(), expected);
        reopened.close().unwrap();
    }

    /// A learn with no inverse takes the factor as the correction's base; the background's
    /// re-solve ends that correction while the head holds fewer than 2p samples (the factor is
    /// current again) and replaces it by the inverse from then on (the fast path).
    #[test]
    fn a_correction_on_the_factor_ends_with_the_re_solve() {
        let head = Head::detached(spec(), &HeadOptions::default()).unwrap();
        head.hold_resolve(true);
        learn(&head, &[1]).unwrap();
        assert_eq!(head.pending_corrections(), Some(1), "a learn on the factor");
        let served = head.served_f64();
        head.hold_resolve(false);
        head.settle().unwrap();
        assert_eq!(head.pending_corrections(), None, "ended below 2p samples");
        let canonical = head.weights().unwrap();
        let scale = canonical.w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let largest = served
            .w
            .iter()
            .zip(&canonical.w)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(largest <= 1e-12 * scale, "{largest:e} of {scale:e}");
        for id in 2..=12 {
            learn(&head, &[id]).unwrap();
        }
        head.settle().unwrap();
        assert_eq!(
            head.pending_corrections(),
            Some(0),
            "the inverse from 2p samples on"
        );
        head.close().unwrap();
    }

    /// The background is batch work (`SCHED_BATCH`), so that waking it at the end of a call
    /// does not take the caller's core before the call returns.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_background_does_not_preempt_callers() {
        // The scheduling policy of every thread of this process named `lethe-resolve` (field
        // 41 of its stat line, counted from the pid; the name, field 2, is in parentheses).
        let background_policies = || -> Vec<i32> {
            let tasks = std::fs::read_dir("/proc/self/task").unwrap();
            tasks
                .filter_map(|task| {
                    let path = task.ok()?.path();
                    let name = std::fs::read_to_string(path.join("comm")).ok()?;
                    let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                    let after_name = &stat[stat.rfind(')')? + 2..];
                    let policy = after_name.split(' ').nth(38)?.parse().ok()?;
                    (name.trim_end() == "lethe-resolve").then_some(policy)
                })
                .collect()
        };
        let head = Head::detached(spec(), &HeadOptions::default()).unwrap();
        learn(&head, &[1, 2, 3]).unwrap();
        // A thread takes its name once it runs, and other tests start backgrounds too: wait
        // until there is one and every one has marked itself (each does so first thing).
        let start = std::time::Instant::now();
        let mut policies = background_policies();
        while (policies.is_empty() || policies.iter().any(|&p| p != libc::SCHED_BATCH))
            && start.elapsed().as_secs() < 10
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            policies = background_policies();
        }
        assert!(!policies.is_empty(), "no background thread found");
        assert!(
            policies.iter().all(|&p| p == libc::SCHED_BATCH),
            "policies {policies:?}"
        );
        head.close().unwrap();
    }
}
