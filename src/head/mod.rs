//! The head: one user's linear layer W, b over a core's features, with everything needed to
//! learn and forget samples exactly.
//!
//! Prediction: `logits(x) = z(x) + W φ(x) + b` (z = the core's logits mapped onto the head's
//! classes, or 0). Training minimizes Σ ||z + Wφ + b − s·y||² + λ(||W||² + ||b||²) over the
//! current samples; see DESIGN.md for the math.
//!
//! # The canonical re-solve
//! `learn` and `forget` update the integer statistics exactly, then update the Cholesky factor
//! and the weights incrementally in O(k·p² + k·p·C) and serve the result at once. A background
//! thread (one per head) then recomputes the canonical solution from the integer statistics
//! (sequential Cholesky, O(p³)) and swaps it in if no other call came in meanwhile. Calls that
//! must return canonical weights — [`Head::weights`], [`Head::close`] — finish a pending
//! re-solve themselves first. Served weights before the re-solve differ from canonical by
//! rounding only.
//!
//! # Concurrency
//! `predict` reads an immutable snapshot of the f32 weights (an `Arc` swapped under a short
//! lock): it never waits for learn/forget and sees either the old or the new weights. Calls that
//! change the head are serialized.

mod backend;
mod samples;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use faer::Mat;
use ndarray::Array2;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::math::samples::{SampleRef, SampleSet};
use crate::math::solver::{self, Solution};
use crate::math::spec::HeadSpec;
use crate::math::stats::{self, ExactStats};
use crate::math::weights::{to_served, to_weights, ServedWeights, Weights};
use crate::placement::{BackendOptions, BackendReport};
use crate::store::{Loaded, Store};
use backend::HeadBackend;
use samples::Samples;

/// Choices made when a head is created. `None` takes the bundle's default.
#[derive(Debug, Clone, Default)]
pub struct HeadOptions {
    /// Which features output of the core the head is linear in.
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
    solution: Solution,
    /// Bumped by every change; the canonical solution is current when `canonical == version`.
    version: u64,
    canonical: u64,
}

struct Inner {
    spec: HeadSpec,
    core: Option<Arc<Core>>,
    served: RwLock<Arc<ServedWeights>>,
    backend: HeadBackend,
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
}

/// A head. `Send + Sync`: share it across threads (e.g. in an `Arc`).
pub struct Head {
    inner: Arc<Inner>,
    worker: Option<JoinHandle<()>>,
}

impl Head {
    /// A head over `core` that keeps nothing on disk.
    pub fn in_memory(core: Arc<Core>, options: &HeadOptions) -> Result<Head> {
        let spec = HeadSpec::from_bundle(
            core.bundle(),
            options.features.as_deref(),
            options.lambda,
            options.target_scale,
        )?;
        let samples = Samples::Memory(SampleSet::new(spec.dim, spec.num_classes()));
        Head::build(spec, Some(core), samples, None, options)
    }

    /// A head with no core: the caller supplies features (and core logits) directly.
    pub fn detached(spec: HeadSpec, options: &HeadOptions) -> Result<Head> {
        let samples = Samples::Memory(SampleSet::new(spec.dim, spec.num_classes()));
        Head::build(spec, None, samples, None, options)
    }

    /// Opens the head persisted in `state_dir`, creating it if absent. An existing state dir
    /// must belong to the same bundle; its recorded settings win over `options`.
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
        )?;
        let spec = store.spec().clone();
        check_recorded(&spec, options, dir)?;
        if bundle.features(Some(&spec.features))?.dim != spec.dim {
            return Err(Error::state(
                dir,
                format!(
                    "records features {:?} of dimension {}, which the bundle does not have",
                    spec.features, spec.dim
                ),
            ));
        }
        Head::build(
            spec,
            Some(core),
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
        let (store, loaded) =
            Store::open(dir, "(detached)", core_sha256, &spec, !options.must_exist)?;
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
            Samples::Stored(Box::new(store)),
            loaded,
            options,
        )
    }

    /// `loaded`: the statistics and canonical solution of `samples` (`None`: it is empty).
    fn build(
        spec: HeadSpec,
        core: Option<Arc<Core>>,
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
            backend,
            state: Mutex::new(State {
                samples,
                stats,
                solution,
                version: 0,
                canonical: 0,
            }),
            spec,
            core,
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
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

    /// Runs the core: (features `[n, d]`, core logits on the head's classes `[n, C]`).
    pub fn core_features(&self, inputs: &[f32], n: usize) -> Result<(Array2<f32>, Array2<f32>)> {
        let core = self.core_or_err()?;
        let spec = &self.inner.spec;
        let mut names = vec![spec.features.as_str()];
        if let Some((logits, _)) = &spec.core_logits {
            names.push(logits.as_str());
        }
        let mut out = core.run(inputs, n, &names)?;
        let phi = out
            .take(&spec.features)
            .ok_or_else(|| Error::Ort("missing features output".into()))?;
        let z = spec
            .core_logits
            .as_ref()
            .and_then(|(name, _)| out.take(name));
        Ok((phi, spec.map_core_logits(z.as_ref(), n)))
    }

    /// Learns `ids.len()` samples from raw inputs (n × the core's input length).
    pub fn learn(&self, ids: &[u64], inputs: &[f32], labels: &[u32]) -> Result<()> {
        self.check_new_ids(ids, labels)?;
        let (phi, z) = self.core_features(inputs, ids.len())?;
        self.learn_features(ids, &phi, &z, labels)
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
        let mut q = Vec::with_capacity(k * d);
        let mut r = Vec::with_capacity(k * c);
        // Rows are read in place; only an input not in standard layout is copied, and the copy,
        // like every buffer that held the samples, is zeroed whatever happens (G4).
        let (phi, z) = (phi.as_standard_layout(), z.as_standard_layout());
        let (phi_rows, z_rows) = (
            phi.as_slice().expect("standard layout"),
            z.as_slice().expect("standard layout"),
        );
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
        for copy in [phi, z] {
            if !copy.is_view() {
                let mut copy = copy.into_owned();
                copy.fill(0.0);
                std::hint::black_box(&mut copy);
            }
        }
        let result = quantized.and_then(|()| {
            self.change(ids, |st| {
                if let Some(id) = ids.iter().find(|&&id| st.samples.contains(id)) {
                    return Err(Error::Id(format!("id {id} is already learned")));
                }
                check_solvable(spec, &st.stats, &q)?;
                let samples: Vec<SampleRef<'_>> = (0..k)
                    .map(|s| SampleRef {
                        id: ids[s],
                        label: labels[s],
                        q: &q[s * d..(s + 1) * d],
                        r: &r[s * c..(s + 1) * c],
                    })
                    .collect();
                st.samples.learn(&samples)?;
                Ok((q.as_slice(), r.as_slice(), 1))
            })
        });
        q.fill(0);
        r.fill(0);
        result
    }

    /// Forgets the samples with these ids (all present, distinct), exactly.
    pub fn forget(&self, ids: &[u64]) -> Result<()> {
        distinct(ids)?;
        let spec = &self.inner.spec;
        let (d, c) = (spec.dim, spec.num_classes());
        let mut q = Vec::with_capacity(ids.len() * d);
        let mut r = Vec::with_capacity(ids.len() * c);
        let result = self.change(ids, |st| {
            if let Some(id) = ids.iter().find(|&&id| !st.samples.contains(id)) {
                return Err(Error::Id(format!("id {id} is not learned")));
            }
            st.samples.forget(ids, &mut q, &mut r)?;
            Ok((q.as_slice(), r.as_slice(), -1))
        });
        q.fill(0);
        r.fill(0);
        result
    }

    /// Applies one change under the state lock: `prepare` checks, persists and updates the
    /// sample set, and returns the rows to add (+1) or subtract (−1) from the statistics.
    fn change<'q>(
        &self,
        ids: &[u64],
        prepare: impl FnOnce(&mut State) -> Result<(&'q [i32], &'q [i32], i8)>,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let spec = &self.inner.spec;
        let mut st = self.inner.lock();
        let (q, r, sign) = prepare(&mut st)?;
        let one = spec.fixed.one();
        st.stats.accumulate(q, r, one, sign);
        st.version += 1;
        let st = &mut *st;
        // The change is committed: the solves below cannot fail, since a learn was checked
        // by `check_solvable` before it was stored and a forget only lowers A's diagonal.
        if self.worker.is_none() {
            st.solution = self.inner.canonical_of(&st.stats)?;
            st.canonical = st.version;
        } else {
            let (mut x, mut t) = spec.real_rows(q, r);
            let updated = solver::apply(&mut st.solution, &x, &t, sign as f64);
            stats::scrub(&mut x);
            stats::scrub(&mut t);
            if updated.is_err() {
                tracing::debug!("incremental update lost positive definiteness; re-solving");
                st.solution = self.inner.canonical_of(&st.stats)?;
                st.canonical = st.version;
            }
        }
        self.inner.publish(&st.solution);
        self.inner.wake.notify_all();
        Ok(())
    }

    /// Forgets everything: W = 0, b = 0, every stored sample erased. The head then predicts
    /// exactly the core's logits.
    pub fn forget_all(&self) -> Result<()> {
        let spec = &self.inner.spec;
        let mut st = self.inner.lock();
        st.samples.forget_all()?;
        st.stats.clear();
        let p = spec.dim + 1;
        let diag = spec.lambda.sqrt();
        st.solution = Solution {
            l: Mat::from_fn(p, p, |i, j| if i == j { diag } else { 0.0 }),
            theta: Mat::zeros(p, spec.num_classes()),
        };
        st.version += 1;
        if self.worker.is_none() {
            self.inner.make_canonical(&mut st)?;
        }
        self.inner.publish(&st.solution);
        self.inner.wake.notify_all();
        Ok(())
    }

    /// Logits `[n, C]` for raw inputs.
    pub fn predict(&self, inputs: &[f32], n: usize) -> Result<Array2<f32>> {
        let backend = &self.inner.backend;
        if let Some(logits) = backend.predict_on_device(self.core_or_err()?, inputs, n)? {
            return Ok(logits);
        }
        let (phi, z) = self.core_features(inputs, n)?;
        self.predict_features(&phi, &z)
    }

    /// Logits `[n, C]` = z + φ Wᵀ + b from features and mapped core logits.
    pub fn predict_features(&self, phi: &Array2<f32>, z: &Array2<f32>) -> Result<Array2<f32>> {
        let spec = &self.inner.spec;
        let n = phi.nrows();
        if phi.ncols() != spec.dim || z.dim() != (n, spec.num_classes()) {
            return Err(Error::InvalidInput(format!(
                "expected features [n, {}] and core logits [n, {}], got {:?} and {:?}",
                spec.dim,
                spec.num_classes(),
                phi.dim(),
                z.dim()
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

    /// The canonical weights in f64 (finishing a pending re-solve first).
    pub fn weights(&self) -> Result<Weights> {
        let mut st = self.inner.lock();
        self.inner.make_canonical(&mut st)?;
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
        let mut st = self.inner.lock();
        self.inner.make_canonical(&mut st)?;
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

    /// Finishes pending work, persists the canonical state and releases the state dir.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let mut st = self.inner.lock();
        if !matches!(st.samples, Samples::Stored(_)) {
            return Ok(());
        }
        self.inner.make_canonical(&mut st)?;
        let spec = &self.inner.spec;
        let released = Samples::Memory(SampleSet::new(spec.dim, spec.num_classes()));
        match std::mem::replace(&mut st.samples, released) {
            Samples::Stored(store) => store.close(&st.stats, &st.solution),
            Samples::Memory(_) => Ok(()),
        }
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
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn canonical_of(&self, stats: &ExactStats) -> Result<Solution> {
        solver::canonical(stats, self.spec.lambda, self.spec.fixed.frac_bits).map_err(|_| {
            Error::Limit(format!(
                "A is not numerically positive definite at λ = {}; increase lambda",
                self.spec.lambda
            ))
        })
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
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = served;
    }
}

/// The background re-solve: waits for a change, factors A off the lock, installs the result
/// if nothing changed meanwhile.
fn resolve_loop(inner: &Inner) {
    loop {
        let (stats, version) = {
            let mut st = inner.lock();
            while st.canonical == st.version && !inner.stop.load(Ordering::SeqCst) {
                st = inner.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if inner.stop.load(Ordering::SeqCst) {
                return;
            }
            (st.stats.clone(), st.version)
        };
        let solved = inner.canonical_of(&stats);
        drop(stats);
        let mut st = inner.lock();
        match solved {
            Ok(solution) if st.version == version => {
                st.solution = solution;
                st.canonical = version;
                inner.publish(&st.solution);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("canonical re-solve failed: {e}");
                return;
            }
        }
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
