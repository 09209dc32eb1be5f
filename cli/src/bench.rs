//! `lethe bench`: how fast Lethe is, each figure next to a baseline measured in the same run.
//!
//! Writes `docs/BENCHMARKS.md` (tables) and `docs/forget-latency.png` (a log-log plot of forget
//! latency vs n). Every figure is a median of repeats; baselines run in the same process,
//! interleaved with Lethe where that is cheap, so a noisy machine shifts both alike.
//!
//! - **predict**: `Head::predict` (core + head) vs a bare ONNX Runtime session of the same core
//!   file with the same threads, fed the same real digits.
//! - **forget**: `Head::forget` on a durable state dir (the caller's path), and the time until
//!   `Head::weights` returns the canonical weights, vs refitting the head in closed form from
//!   the n stored features (faer GEMM + Cholesky, all cores), and vs the full retrain pipeline
//!   (the core re-run over the remaining samples, extrapolated from its measured per-sample
//!   time, plus the refit). The scaling sweeps use synthetic features (timing does not depend
//!   on their values) and a synthetic bundle whose core is an ONNX `Identity` graph, so that d
//!   and C can be chosen freely while the head and its state dir are exactly those of a real
//!   bundle.
//! - **learn**: the head's part of a learn vs the core's inference time on the same batch.
//! - **open**: opening a closed state dir, beyond creating the ONNX Runtime session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat, MatRef, Par};
use ndarray::Array2;
use ort::session::Session;
use ort::value::TensorRef;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

use crate::commands::Global;
use lethe::bundle::{
    hex, CoreFile, FeaturesSpec, HeadDefaults, InputSpec, Manifest, MANIFEST_FORMAT,
    MANIFEST_VERSION,
};
use lethe::data::Digits;
use lethe::math::solver;
use lethe::math::stats::ExactStats;
use lethe::{runtime, Bundle, Core, Head, HeadOptions};
use lethe::{Error, Result};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run at small sizes (about ten seconds), as CI's smoke test runs it.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the report; the plot goes next to it as forget-latency.png.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    pub out: PathBuf,
    /// The folder holding the bundles.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Folder with the MNIST digits (test_images.npy) fed to the real cores.
    #[arg(long, default_value = "tests/data")]
    pub data: PathBuf,
    /// Keep the state dirs and synthetic bundles here instead of a temporary folder.
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Seed for the synthetic features and the choice of samples to forget.
    #[arg(long, default_value_t = 20240531)]
    pub seed: u64,
}

/// The machine a report was measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ort_library: String,
    /// ONNX Runtime intra-op threads (0 = ONNX Runtime's default).
    pub threads: usize,
    /// /proc/loadavg's 1, 5, 15-minute load averages when the run started and ended: how busy
    /// the machine was with other work.
    pub load_start: String,
    pub load_end: String,
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
    /// Core re-run over the n − k remaining inputs (extrapolated) plus the refit; only where d
    /// is the measured core's.
    pub retrain: Option<f64>,
}

/// Where the time of one forget call goes, measured piece by piece at one size.
#[derive(Debug, Clone)]
pub struct ForgetBreakdown {
    pub d: usize,
    pub c: usize,
    /// Subtracting k samples from the exact integer statistics.
    pub stats: f64,
    /// The rank-k Cholesky downdate and Newton step.
    pub update: f64,
    /// One `sync_data` after overwriting a record in place in an existing file.
    pub fsync: f64,
    /// One `sync_data` after appending a record to a file (its size changes, so the file
    /// system commits metadata too).
    pub fsync_append: f64,
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
    /// max |Θ_refit − Θ_Lethe| / max |Θ_Lethe| at the smallest size: the baseline solves the
    /// same problem (up to Lethe's fixed-point quantization of the features).
    pub baseline_agreement: f64,
    pub learn: Vec<LearnRow>,
    pub open: OpenRow,
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
}

/// The sizes one run measures.
struct Plan {
    /// (d, C, the n values to measure at); each (d, C) is one head grown through its n values.
    heads: Vec<(usize, usize, Vec<usize>)>,
    ks: Vec<usize>,
    forget_repeats: usize,
    refit_repeats: usize,
    predict_batches: Vec<(&'static str, usize)>,
    predict_budget: Duration,
    learn: Vec<(&'static str, usize)>,
    open_repeats: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                heads: vec![(256, 10, vec![1000, 4000])],
                ks: vec![1, 100],
                forget_repeats: 3,
                refit_repeats: 3,
                predict_batches: vec![("mnist-core", 1), ("mnist-core", 64), (MOBILENET, 1)],
                predict_budget: Duration::from_millis(300),
                learn: vec![("mnist-core", 64)],
                open_repeats: 3,
            }
        } else {
            Plan {
                heads: vec![
                    (1280, 100, vec![1000, 2000, 5000, 10_000, 20_000, 50_000]),
                    (128, 100, vec![1000, 10_000, 50_000]),
                    (2048, 100, vec![1000, 10_000, 50_000]),
                    (1280, 10, vec![1000, 10_000, 50_000]),
                    (1280, 1000, vec![1000, 10_000, 50_000]),
                ],
                ks: vec![1, 100],
                forget_repeats: 9,
                refit_repeats: 3,
                predict_batches: vec![
                    ("mnist-core", 1),
                    ("mnist-core", 64),
                    (MOBILENET, 1),
                    (MOBILENET, 64),
                ],
                predict_budget: Duration::from_secs(4),
                learn: vec![
                    ("mnist-core", 1),
                    ("mnist-core", 64),
                    (MOBILENET, 1),
                    (MOBILENET, 64),
                ],
                open_repeats: 5,
            }
        }
    }
}

const MOBILENET: &str = "mobilenetv2-imagenet";
/// The synthetic bundle's head: features in [0, 4), as post-ReLU6 features are.
const SYNTHETIC_FEATURE_MAX: f32 = 4.0;
const SYNTHETIC_LAMBDA: f64 = 1.0;
/// Digits the head learns before its predictions are timed (its weights are then not zero;
/// the time of a prediction does not depend on them).
const PREDICT_HEAD_DIGITS: usize = 100;
/// Samples per learn call when filling a head.
const FILL_CHUNK: usize = 2500;

/// Runs the benchmarks, writes the report and the plot, and returns what was measured.
pub fn run(g: &Global, args: &BenchArgs) -> Result<BenchReport> {
    let start = Instant::now();
    let load_start = loadavg();
    let plan = Plan::new(args.quick);
    let work = match &args.work {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("lethe-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let _cleanup = args.work.is_none().then(|| TempDir(work.clone()));
    let digits = Digits::read(&args.data, "test")?;

    eprintln!("bench: predict");
    let predict = bench_predict(g, args, &plan, &digits)?;
    let (core_per_sample, core_batch) = predict
        .iter()
        .filter(|r| r.bundle == MOBILENET)
        .max_by_key(|r| r.batch)
        .map(|r| (r.bare / r.batch as f64, r.batch))
        .ok_or_else(|| Error::InvalidInput("no mobilenetv2-imagenet predict row".into()))?;

    eprintln!("bench: learn");
    let learn = bench_learn(g, args, &plan, &digits, &work)?;

    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut forget = Vec::new();
    let mut baseline_agreement = 0.0;
    let mut open = None;
    let mut breakdown = None;
    for (i, (d, c, ns)) in plan.heads.iter().enumerate() {
        eprintln!("bench: forget, d = {d}, C = {c}");
        let bundle = synthetic_bundle(&work, *d, *c)?;
        let core = Arc::new(Core::open(&bundle, &g.core_options())?);
        let state = work.join(format!("state-d{d}-c{c}"));
        let sweep = ForgetSweep {
            core: &core,
            state: &state,
            d: *d,
            c: *c,
            seed: args.seed,
            compare_memory: i == 0,
        };
        let (rows, agreement) = sweep.run(ns, &plan, &mut rng, core_per_sample)?;
        forget.extend(rows);
        if i == 0 {
            baseline_agreement = agreement;
            // Right after the headline measurements: the disk's sync latency drifts.
            breakdown = Some(forget_breakdown(&work, *d, *c, args.seed)?);
            eprintln!("bench: open");
            open = Some(bench_open(g, args, &core, &state, &plan, *d, *c, ns)?);
        }
        std::fs::remove_dir_all(&state).map_err(|e| Error::io(&state, e))?;
    }
    let report = BenchReport {
        machine: machine(g, load_start)?,
        quick: args.quick,
        predict,
        core_per_sample,
        core_batch,
        forget,
        baseline_agreement,
        learn,
        open: open.expect("the plan has a head"),
        breakdown: breakdown.expect("the plan has a head"),
        seconds: start.elapsed().as_secs_f64(),
    };
    if let Some(dir) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let plot = args.out.with_file_name(PLOT_FILE);
    plot_forget(&report, &plot)?;
    let md = report.markdown();
    std::fs::write(&args.out, md).map_err(|e| Error::io(&args.out, e))?;
    eprintln!(
        "bench: wrote {} and {} in {}",
        args.out.display(),
        plot.display(),
        fmt_secs(report.seconds)
    );
    Ok(report)
}

const PLOT_FILE: &str = "forget-latency.png";

/// A scratch folder, removed when dropped.
pub(super) struct TempDir(pub(super) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Timing

/// Median of samples (seconds).
fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn seconds_of(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Times `a` and `b` in alternating blocks, at least `min` times each and until `budget` has
/// passed; returns their medians and the number of timings of each. ONNX Runtime's thread
/// pools spin for a while after a run, so a run of one session right after another session's
/// is slowed by the other pool: fast calls (under [`BLOCK_BELOW`]) are timed in blocks of
/// [`BLOCK`] whose first call is discarded; slow ones, for which that is noise, one by one.
/// Which of the two goes first alternates from block to block.
fn time_pair(
    min: usize,
    budget: Duration,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, usize)> {
    let warm = seconds_of(&mut a)?;
    b()?;
    let (block, skip) = if warm < BLOCK_BELOW.as_secs_f64() {
        (BLOCK, 1)
    } else {
        (1, 0)
    };
    let start = Instant::now();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let mut round = 0;
    while ta.len() < min || start.elapsed() < budget {
        for first in [round % 2 == 0, round % 2 == 1] {
            let (f, times): (&mut dyn FnMut() -> Result<()>, &mut Vec<f64>) = if first {
                (&mut a, &mut ta)
            } else {
                (&mut b, &mut tb)
            };
            for i in 0..block {
                let t = seconds_of(&mut *f)?;
                if i >= skip {
                    times.push(t);
                }
            }
        }
        round += 1;
    }
    let n = ta.len();
    Ok((median(ta), median(tb), n))
}

/// Calls faster than this are timed in blocks (see [`time_pair`]).
const BLOCK_BELOW: Duration = Duration::from_millis(50);
const BLOCK: usize = 4;

/// Lets the head's background re-solve (started by the last change) finish before the next
/// measurement, so that it does not compete for the CPU. `solve` is how long one takes.
fn settle(solve: f64) {
    std::thread::sleep(Duration::from_secs_f64(solve * 0.5 + 0.002));
}

/// Forgets `k` random samples among `ids` `repeats` times, each time learning them back with
/// `relearn`. Returns the medians of (the forget call, the forget call until `Head::weights`
/// returned the canonical weights).
pub(super) fn time_forget(
    head: &Head,
    ids: &[u64],
    k: usize,
    repeats: usize,
    rng: &mut StdRng,
    relearn: &dyn Fn(&[u64]) -> Result<()>,
) -> Result<(f64, f64)> {
    let (mut call, mut ready) = (Vec::new(), Vec::new());
    let mut solve = seconds_of(|| head.weights().map(drop))?;
    settle(solve);
    for _ in 0..repeats {
        let picked: Vec<u64> = rand::seq::index::sample(rng, ids.len(), k)
            .into_iter()
            .map(|i| ids[i])
            .collect();
        let t = Instant::now();
        head.forget(&picked)?;
        call.push(t.elapsed().as_secs_f64());
        head.weights()?;
        ready.push(t.elapsed().as_secs_f64());
        relearn(&picked)?;
        solve = seconds_of(|| head.weights().map(drop))?;
        settle(solve);
    }
    Ok((median(call), median(ready)))
}

// ---------------------------------------------------------------------------------------------
// Predict

/// A bare ONNX Runtime session of a bundle's core, as an application without Lethe would run.
fn bare_session(bundle: &Bundle, threads: usize) -> Result<Session> {
    let rt = runtime::ensure_loaded(None)?;
    let mut builder = Session::builder(&rt.env)?;
    if threads > 0 {
        builder = builder
            .with_intra_threads(threads)
            .map_err(ort::Error::from)?;
    }
    Ok(builder.commit_from_file(bundle.core_path())?)
}

/// One bare run: feed the batch, read every output (as views, no copies).
fn bare_run(session: &mut Session, bundle: &Bundle, input: &[f32], n: usize) -> Result<()> {
    let m = &bundle.manifest;
    let mut shape = vec![n];
    shape.extend(
        m.inputs[0]
            .shape
            .iter()
            .skip(1)
            .map(|d| d.unwrap_or(1) as usize),
    );
    let view = ndarray::ArrayViewD::from_shape(shape, input)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![m.inputs[0].name.as_str() => TensorRef::from_array_view(view)?])?;
    for (_, value) in outputs.iter() {
        std::hint::black_box(value.try_extract_array::<f32>()?);
    }
    Ok(())
}

fn bench_predict(
    g: &Global,
    args: &BenchArgs,
    plan: &Plan,
    digits: &Digits,
) -> Result<Vec<PredictRow>> {
    let mut rows = Vec::new();
    for &(name, batch) in &plan.predict_batches {
        let core = Arc::new(Core::open(args.models.join(name), &g.core_options())?);
        let head = Head::in_memory(core.clone(), &HeadOptions::default())?;
        let taught: Vec<usize> = (0..digits.len().min(PREDICT_HEAD_DIGITS)).collect();
        learn_digits(&head, digits, &taught)?;
        let rows_in: Vec<usize> = (0..batch).map(|i| i % digits.len()).collect();
        let input = crate::eval::digit_inputs(core.bundle(), digits, &rows_in)?;
        let mut session = bare_session(core.bundle(), g.threads)?;
        let (bare, lethe, repeats) = time_pair(
            7,
            plan.predict_budget,
            || bare_run(&mut session, core.bundle(), &input, batch),
            || {
                head.predict(&input, batch)
                    .map(|l| drop(std::hint::black_box(l)))
            },
        )?;
        let (phi, z) = head.core_features(&input, batch)?;
        let mut times = Vec::new();
        for _ in 0..repeats.max(20) {
            times.push(seconds_of(|| {
                head.predict_features(&phi, &z)
                    .map(|l| drop(std::hint::black_box(l)))
            })?);
        }
        eprintln!(
            "  {name} batch {batch}: bare {} Lethe {} ({:.3}×)",
            fmt_secs(bare),
            fmt_secs(lethe),
            lethe / bare
        );
        rows.push(PredictRow {
            bundle: name.into(),
            batch,
            bare,
            lethe,
            repeats,
            head: median(times),
        });
    }
    Ok(rows)
}

/// Learns the given digits (ids = row numbers) through the head's core.
fn learn_digits(head: &Head, digits: &Digits, rows: &[usize]) -> Result<()> {
    let (phi, z) = crate::eval::digit_features(head, digits, rows)?;
    let ids: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
    let labels: Vec<u32> = rows.iter().map(|&r| digits.labels[r]).collect();
    head.learn_features(&ids, &phi, &z, &labels)
}

// ---------------------------------------------------------------------------------------------
// Learn

fn bench_learn(
    g: &Global,
    args: &BenchArgs,
    plan: &Plan,
    digits: &Digits,
    work: &Path,
) -> Result<Vec<LearnRow>> {
    let mut rows = Vec::new();
    let repeats = if args.quick { 5 } else { 15 };
    for &(name, batch) in &plan.learn {
        let core = Arc::new(Core::open(args.models.join(name), &g.core_options())?);
        let dir = work.join(format!("learn-{name}-{batch}"));
        let durable = Head::open(core.clone(), &dir, &HeadOptions::default())?;
        let memory = Head::in_memory(core.clone(), &HeadOptions::default())?;
        let picked: Vec<usize> = (0..batch).map(|i| i % digits.len()).collect();
        let input = crate::eval::digit_inputs(core.bundle(), digits, &picked)?;
        let labels: Vec<u32> = picked.iter().map(|&r| digits.labels[r]).collect();
        let (phi, z) = durable.core_features(&input, batch)?;
        let mut next_id = 0u64;
        let mut fresh_ids = || {
            let ids: Vec<u64> = (next_id..next_id + batch as u64).collect();
            next_id += batch as u64;
            ids
        };
        let (mut t_core, mut t_durable, mut t_memory, mut t_resolve) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for rep in 0..=repeats {
            let tc = seconds_of(|| durable.core_features(&input, batch).map(drop))?;
            let td = seconds_of(|| durable.learn_features(&fresh_ids(), &phi, &z, &labels))?;
            let tr = seconds_of(|| durable.weights().map(drop))?;
            settle(tr);
            let tm = seconds_of(|| memory.learn_features(&fresh_ids(), &phi, &z, &labels))?;
            let tr2 = seconds_of(|| memory.weights().map(drop))?;
            settle(tr2);
            if rep > 0 {
                t_core.push(tc);
                t_durable.push(td);
                t_memory.push(tm);
                t_resolve.push(tr);
            }
        }
        let row = LearnRow {
            bundle: name.into(),
            batch,
            core: median(t_core),
            durable: median(t_durable),
            memory: median(t_memory),
            resolve: median(t_resolve),
        };
        eprintln!(
            "  {name} batch {batch}: core {} head {} ({:.1} %)",
            fmt_secs(row.core),
            fmt_secs(row.durable),
            100.0 * row.durable / row.core
        );
        rows.push(row);
        durable.close()?;
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Forget

/// Synthetic sample `id`'s feature `j`, uniform in [0, SYNTHETIC_FEATURE_MAX).
fn synthetic_feature(seed: u64, id: u64, j: usize) -> f32 {
    let h = splitmix(seed ^ splitmix(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j as u64));
    (h >> 40) as f32 / (1u64 << 24) as f32 * SYNTHETIC_FEATURE_MAX
}

fn synthetic_label(seed: u64, id: u64, classes: usize) -> u32 {
    (splitmix(seed.wrapping_add(id) ^ 0xA5A5_A5A5) % classes as u64) as u32
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One (d, C) head on a synthetic bundle, grown through a list of n.
struct ForgetSweep<'a> {
    core: &'a Arc<Core>,
    state: &'a Path,
    d: usize,
    c: usize,
    seed: u64,
    /// Also time forget on an in-memory head holding the same samples.
    compare_memory: bool,
}

impl ForgetSweep<'_> {
    fn learn(&self, head: &Head, ids: &[u64]) -> Result<()> {
        let phi = Array2::from_shape_fn((ids.len(), self.d), |(i, j)| {
            synthetic_feature(self.seed, ids[i], j)
        });
        let z = Array2::zeros((ids.len(), self.c));
        let labels: Vec<u32> = ids
            .iter()
            .map(|&id| synthetic_label(self.seed, id, self.c))
            .collect();
        head.learn_features(ids, &phi, &z, &labels)
    }

    /// The stored features as the refit baseline holds them: X = [φ, 1] (n × p) and the
    /// targets T (n × C), in f64.
    fn design(&self, n: usize) -> (Mat<f64>, Mat<f64>) {
        let d = self.d;
        let x = Mat::from_fn(n, d + 1, |i, j| {
            if j < d {
                synthetic_feature(self.seed, i as u64, j) as f64
            } else {
                1.0
            }
        });
        let t = Mat::from_fn(n, self.c, |i, k| {
            f64::from(u8::from(
                synthetic_label(self.seed, i as u64, self.c) as usize == k,
            ))
        });
        (x, t)
    }

    /// Measures every n of `ns` and k of the plan; returns the rows and the baseline's
    /// agreement with Lethe's weights at the first n.
    fn run(
        &self,
        ns: &[usize],
        plan: &Plan,
        rng: &mut StdRng,
        core_per_sample: f64,
    ) -> Result<(Vec<ForgetRow>, f64)> {
        let head = Head::open(self.core.clone(), self.state, &HeadOptions::default())?;
        let memory = self
            .compare_memory
            .then(|| Head::in_memory(self.core.clone(), &HeadOptions::default()))
            .transpose()?;
        let max_n = *ns.iter().max().expect("sizes");
        let (x, t) = self.design(max_n);
        let mut rows = Vec::new();
        let mut agreement = 0.0;
        let mut have = 0usize;
        for &n in ns {
            while have < n {
                let to = (have + FILL_CHUNK).min(n);
                let ids: Vec<u64> = (have as u64..to as u64).collect();
                self.learn(&head, &ids)?;
                if let Some(memory) = &memory {
                    self.learn(memory, &ids)?;
                }
                have = to;
            }
            let ids: Vec<u64> = (0..n as u64).collect();
            if rows.is_empty() {
                let theta = refit(x.subrows(0, n), t.subrows(0, n), SYNTHETIC_LAMBDA)?;
                agreement = agreement_with(&head.weights()?, &theta, self.d);
            }
            for &k in &plan.ks {
                let (forget, canonical) =
                    time_forget(&head, &ids, k, plan.forget_repeats, rng, &|ids| {
                        self.learn(&head, ids)
                    })?;
                let memory = match &memory {
                    Some(m) => Some(
                        time_forget(m, &ids, k, plan.forget_repeats, rng, &|ids| {
                            self.learn(m, ids)
                        })?
                        .0,
                    ),
                    None => None,
                };
                let m = n - k;
                let mut times = Vec::new();
                for _ in 0..plan.refit_repeats {
                    times.push(seconds_of(|| {
                        refit(x.subrows(0, m), t.subrows(0, m), SYNTHETIC_LAMBDA).map(drop)
                    })?);
                }
                let refit = median(times);
                let retrain = (self.d == 1280).then_some(m as f64 * core_per_sample + refit);
                eprintln!(
                    "  n {n} d {} C {} k {k}: forget {} (canonical {}), refit {} ({:.0}×)",
                    self.d,
                    self.c,
                    fmt_secs(forget),
                    fmt_secs(canonical),
                    fmt_secs(refit),
                    refit / forget
                );
                rows.push(ForgetRow {
                    n,
                    d: self.d,
                    c: self.c,
                    k,
                    forget,
                    memory,
                    canonical,
                    refit,
                    retrain,
                });
            }
        }
        head.close()?;
        Ok((rows, agreement))
    }
}

/// The strongest baseline: the head refitted in closed form from the stored features, in f64.
/// The two products A = XᵀX (lower triangle) and B = XᵀT take almost all the time; they run on
/// every core, each thread one contiguous block of rows with faer's sequential GEMM, and the
/// blocks' sums are added. (faer's own rayon-parallel GEMM was several times slower than this
/// for tall, thin X on this 2-core machine, and slower than one thread when the machine was
/// busy.) The Cholesky factorization and solve, O(p³) with p ≤ 2049, take a few percent and run
/// sequentially.
fn refit(x: MatRef<'_, f64>, t: MatRef<'_, f64>, lambda: f64) -> Result<Mat<f64>> {
    let (n, p) = (x.nrows(), x.ncols());
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).max(1);
    let parts: Vec<(Mat<f64>, Mat<f64>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..n.div_ceil(per))
            .map(|i| {
                let rows = per.min(n - i * per);
                let (xs, ts) = (x.subrows(i * per, rows), t.subrows(i * per, rows));
                scope.spawn(move || {
                    let mut a = Mat::<f64>::zeros(p, p);
                    faer::linalg::matmul::triangular::matmul(
                        a.as_mut(),
                        BlockStructure::TriangularLower,
                        Accum::Replace,
                        xs.transpose(),
                        BlockStructure::Rectangular,
                        xs,
                        BlockStructure::Rectangular,
                        1.0,
                        Par::Seq,
                    );
                    let mut b = Mat::<f64>::zeros(p, ts.ncols());
                    faer::linalg::matmul::matmul(
                        b.as_mut(),
                        Accum::Replace,
                        xs.transpose(),
                        ts,
                        1.0,
                        Par::Seq,
                    );
                    (a, b)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("refit worker"))
            .collect()
    });
    let mut a = Mat::<f64>::zeros(p, p);
    let mut theta = Mat::<f64>::zeros(p, t.ncols());
    for (pa, pb) in &parts {
        a += pa;
        theta += pb;
    }
    for j in 0..p {
        a[(j, j)] += lambda;
    }
    solver::cholesky_in_place(&mut a)
        .map_err(|_| Error::Limit("the refit's XᵀX + λI is not positive definite".into()))?;
    solver::solve_in_place(&a, &mut theta);
    Ok(theta)
}

/// max |Θ_refit − Θ_Lethe| / max |Θ_Lethe|.
fn agreement_with(w: &lethe::Weights, theta: &Mat<f64>, d: usize) -> f64 {
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for (k, row) in w.w.rows().into_iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            diff = diff.max((v - theta[(j, k)]).abs());
            scale = scale.max(v.abs());
        }
        diff = diff.max((w.b[k] - theta[(d, k)]).abs());
        scale = scale.max(w.b[k].abs());
    }
    diff / scale
}

/// Times the parts of one forget call at (d, C) with k = 1, outside the head.
fn forget_breakdown(work: &Path, d: usize, c: usize, seed: u64) -> Result<ForgetBreakdown> {
    let n = 4 * (d + 1);
    let q: Vec<i32> = (0..n * d)
        .map(|i| (synthetic_feature(seed, (i / d) as u64, i % d) * 2f32.powi(21)) as i32)
        .collect();
    let r: Vec<i32> = (0..n * c)
        .map(|i| if i % c == (i / c) % c { 1 << 21 } else { 0 })
        .collect();
    let mut stats = ExactStats::new(d, c);
    stats.accumulate(&q, &r, 1 << 21, 1);
    let mut sol = solver::canonical(&stats, SYNTHETIC_LAMBDA, 21)
        .map_err(|_| Error::Limit("not positive definite".into()))?;
    let (mut t_stats, mut t_update) = (Vec::new(), Vec::new());
    let (mut t_sync, mut t_append) = (Vec::new(), Vec::new());
    let record = vec![0u8; 16 + 4 * (d + c)];
    let (in_place, appended) = (work.join("fsync-in-place"), work.join("fsync-append"));
    std::fs::write(&in_place, record.repeat(16)).map_err(io(&in_place))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&in_place)
        .map_err(io(&in_place))?;
    file.sync_all().map_err(io(&in_place))?;
    let mut log = std::fs::File::create(&appended).map_err(io(&appended))?;
    for s in 0..9 {
        let (qs, rs) = (&q[s * d..(s + 1) * d], &r[s * c..(s + 1) * c]);
        t_stats.push(seconds_of(|| {
            stats.accumulate(qs, rs, 1 << 21, -1);
            Ok(())
        })?);
        stats.accumulate(qs, rs, 1 << 21, 1);
        let unit = 2f64.powi(-21);
        let x = Mat::from_fn(
            1,
            d + 1,
            |_, j| {
                if j < d {
                    qs[j] as f64 * unit
                } else {
                    1.0
                }
            },
        );
        let t = Mat::from_fn(1, c, |_, k| rs[k] as f64 * unit);
        t_update.push(seconds_of(|| {
            solver::apply(&mut sol, &x, &t, -1.0)
                .map_err(|_| Error::Limit("not positive definite".into()))
        })?);
        solver::apply(&mut sol, &x, &t, 1.0)
            .map_err(|_| Error::Limit("not positive definite".into()))?;
        t_sync.push(seconds_of(|| {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&record, (s * record.len()) as u64)
                .and_then(|_| file.sync_data())
                .map_err(io(&in_place))
        })?);
        t_append.push(seconds_of(|| {
            use std::io::Write;
            log.write_all(&record)
                .and_then(|_| log.sync_data())
                .map_err(io(&appended))
        })?);
    }
    for path in [&in_place, &appended] {
        std::fs::remove_file(path).map_err(io(path))?;
    }
    Ok(ForgetBreakdown {
        d,
        c,
        stats: median(t_stats),
        update: median(t_update),
        fsync: median(t_sync),
        fsync_append: median(t_append),
    })
}

/// An I/O error on `path`, for `map_err`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// A bundle whose core is an ONNX `Identity` graph: input `image` [batch, d] is the features.
/// Written under `work`; the head over it is the head of any real bundle with this d and C.
fn synthetic_bundle(work: &Path, d: usize, c: usize) -> Result<PathBuf> {
    let dir = work.join(format!("identity-d{d}-c{c}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let onnx = onnx::identity_model(d as u64);
    let core_path = dir.join("core.onnx");
    std::fs::write(&core_path, &onnx).map_err(|e| Error::io(&core_path, e))?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        name: format!("bench-identity-d{d}-c{c}"),
        description: "lethe bench: an Identity core, so that the features are the input".into(),
        core: CoreFile {
            file: "core.onnx".into(),
            sha256: hex(&Sha256::digest(&onnx)),
            opset: onnx::OPSET as u32,
        },
        inputs: vec![InputSpec {
            name: "image".into(),
            dtype: "float32".into(),
            shape: vec![None, Some(d as u64)],
        }],
        preprocessing: "none: the input is the features".into(),
        features: vec![FeaturesSpec {
            output: "features".into(),
            dim: d,
            max_abs: 8.0,
        }],
        default_features: "features".into(),
        core_logits: None,
        classes: (0..c).map(|k| k.to_string()).collect(),
        head: HeadDefaults {
            lambda: SYNTHETIC_LAMBDA,
            target_scale: 1.0,
            frac_bits: 21,
            target_max_abs: 4.0,
        },
    };
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(dir)
}

/// The protocol-buffer encoding of the few ONNX messages an `Identity` model needs
/// (onnx.proto3: ModelProto, GraphProto, NodeProto, ValueInfoProto, TypeProto).
mod onnx {
    pub const OPSET: u64 = 17;
    const IR_VERSION: u64 = 8;
    const FLOAT: u64 = 1;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn int_field(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }

    fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint((field << 3) | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// ValueInfoProto of a float tensor [batch, d].
    fn tensor_info(name: &str, d: u64) -> Vec<u8> {
        let mut batch = Vec::new();
        bytes_field(2, b"batch", &mut batch); // Dimension.dim_param
        let mut width = Vec::new();
        int_field(1, d, &mut width); // Dimension.dim_value
        let mut shape = Vec::new();
        bytes_field(1, &batch, &mut shape); // TensorShapeProto.dim
        bytes_field(1, &width, &mut shape);
        let mut tensor = Vec::new();
        int_field(1, FLOAT, &mut tensor); // TypeProto.Tensor.elem_type
        bytes_field(2, &shape, &mut tensor); // TypeProto.Tensor.shape
        let mut ty = Vec::new();
        bytes_field(1, &tensor, &mut ty); // TypeProto.tensor_type
        let mut info = Vec::new();
        bytes_field(1, name.as_bytes(), &mut info); // ValueInfoProto.name
        bytes_field(2, &ty, &mut info); // ValueInfoProto.type
        info
    }

    /// A model computing `features = Identity(image)` for float tensors [batch, d].
    pub fn identity_model(d: u64) -> Vec<u8> {
        let mut node = Vec::new();
        bytes_field(1, b"image", &mut node); // NodeProto.input
        bytes_field(2, b"features", &mut node); // NodeProto.output
        bytes_field(3, b"identity", &mut node); // NodeProto.name
        bytes_field(4, b"Identity", &mut node); // NodeProto.op_type
        let mut graph = Vec::new();
        bytes_field(1, &node, &mut graph); // GraphProto.node
        bytes_field(2, b"identity", &mut graph); // GraphProto.name
        bytes_field(11, &tensor_info("image", d), &mut graph); // GraphProto.input
        bytes_field(12, &tensor_info("features", d), &mut graph); // GraphProto.output
        let mut opset = Vec::new();
        int_field(2, OPSET, &mut opset); // OperatorSetIdProto.version (domain "" = ONNX)
        let mut model = Vec::new();
        int_field(1, IR_VERSION, &mut model); // ModelProto.ir_version
        bytes_field(2, b"lethe bench", &mut model); // ModelProto.producer_name
        bytes_field(7, &graph, &mut model); // ModelProto.graph
        bytes_field(8, &opset, &mut model); // ModelProto.opset_import
        model
    }
}

// ---------------------------------------------------------------------------------------------
// Open

#[allow(clippy::too_many_arguments)]
fn bench_open(
    g: &Global,
    args: &BenchArgs,
    core: &Arc<Core>,
    state: &Path,
    plan: &Plan,
    d: usize,
    c: usize,
    ns: &[usize],
) -> Result<OpenRow> {
    let n = *ns.iter().max().expect("sizes");
    let bytes = dir_size(state)?;
    let mut opens = Vec::new();
    for _ in 0..plan.open_repeats {
        let t = Instant::now();
        let head = Head::open(core.clone(), state, &HeadOptions::default())?;
        opens.push(t.elapsed().as_secs_f64());
        if head.info().samples != n as u64 {
            return Err(Error::state(
                state,
                "reopened with a different sample count",
            ));
        }
        head.close()?;
    }
    let mut reads = Vec::new();
    for _ in 0..plan.open_repeats {
        reads.push(seconds_of(|| read_all(state))?);
    }
    let mut sessions = Vec::new();
    for _ in 0..plan.open_repeats {
        sessions.push(seconds_of(|| {
            Core::open(args.models.join(MOBILENET), &g.core_options()).map(drop)
        })?);
    }
    Ok(OpenRow {
        n,
        d,
        c,
        bytes,
        open: median(opens),
        read: median(reads),
        session: median(sessions),
    })
}

/// Reads every file of a folder into memory (and drops it).
fn read_all(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_file() {
            std::hint::black_box(std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        total += entry
            .metadata()
            .map_err(|e| Error::io(entry.path(), e))?
            .len();
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Report

/// The 1, 5 and 15-minute load averages.
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(super) fn machine(g: &Global, load_start: String) -> Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lib = &runtime::ensure_loaded(None)?.library;
    let ort_library = std::fs::canonicalize(lib)
        .unwrap_or_else(|_| lib.clone())
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Machine {
        cpu,
        cores,
        ort_library,
        threads: g.threads,
        load_start,
        load_end: loadavg(),
    })
}

/// Seconds as µs, ms, s or min, three significant digits.
pub(super) fn fmt_secs(s: f64) -> String {
    let sig = |v: f64, unit: &str| {
        if v >= 100.0 {
            format!("{v:.0} {unit}")
        } else if v >= 10.0 {
            format!("{v:.1} {unit}")
        } else {
            format!("{v:.2} {unit}")
        }
    };
    if s < 1e-3 {
        sig(s * 1e6, "µs")
    } else if s < 1.0 {
        sig(s * 1e3, "ms")
    } else if s < 120.0 {
        sig(s, "s")
    } else if s < 7200.0 {
        sig(s / 60.0, "min")
    } else {
        sig(s / 3600.0, "h")
    }
}

/// A ratio like 1234× or 1.02×.
fn fmt_ratio(r: f64) -> String {
    if r >= 1e5 {
        let e = r.log10().floor();
        format!("{:.1}·10^{}×", r / 10f64.powf(e), e as i32)
    } else if r >= 100.0 {
        format!("{r:.0}×")
    } else if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.3}×")
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn fmt_n(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

impl BenchReport {
    /// The report as Markdown (docs/BENCHMARKS.md).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let command = if self.quick {
            "cargo run --release -p lethe-cli -- bench --quick"
        } else {
            "cargo run --release -p lethe-cli -- bench"
        };
        s += "# Benchmarks\n\n";
        s += &format!(
            "Written by `{command}` (cli/src/bench/) in {} on {} ({} cores), ONNX Runtime \
             `{}` on the CPU, intra-op threads {}. Every figure is the median of repeats; each \
             ratio compares two numbers measured in the same run. The machine is shared and \
             noisy (1, 5, 15-minute load averages {} at the start, {} at the end): expect a few percent of \
             run-to-run variation in the ratios, more at the smallest times.\n\n",
            fmt_secs(self.seconds),
            m.cpu,
            m.cores,
            m.ort_library,
            if m.threads == 0 {
                "ONNX Runtime's default".to_string()
            } else {
                m.threads.to_string()
            },
            m.load_start,
            m.load_end
        );
        if self.quick {
            s += "**Quick run** (small sizes, few repeats): a smoke test, not the targets' \
                  sizes.\n\n";
        }
        s += &self.targets_section();
        s += &self.predict_section();
        s += &self.forget_section();
        s += &self.learn_section();
        s += &self.open_section();
        s += &self.findings_section();
        s
    }

    /// For each missed target: the measured cause and what would fix it.
    fn findings_section(&self) -> String {
        let mut s = String::from("## Missed targets: why, and what would fix them\n\n");
        let mut any = false;
        if let Some(p) = self
            .predict
            .iter()
            .filter(|r| r.lethe > 1.03 * r.bare)
            .max_by(|a, b| (a.lethe / a.bare).total_cmp(&(b.lethe / b.bare)))
        {
            any = true;
            s += &format!(
                "- **Predict overhead** ({}, batch {}: {}): {} per call on top of {}, of \
                 which the head's forward pass is {}. The rest is Lethe's handling of the core \
                 run (it checks every input value for NaN/Inf, copies the outputs out of ONNX \
                 Runtime into owned arrays and maps the core logits onto the head's classes) \
                 and this machine's noise: where the difference is far above the head's part \
                 and other rows of the same bundle show none, it is noise. Reading the outputs \
                 in place (views, or ONNX Runtime I/O binding into preallocated buffers) would \
                 remove the copies.\n",
                p.bundle,
                p.batch,
                fmt_ratio(p.lethe / p.bare),
                fmt_secs(p.lethe - p.bare),
                fmt_secs(p.bare),
                fmt_secs(p.head)
            );
        }
        if let Some(h) = self.headline().filter(|h| h.refit < 1000.0 * h.forget) {
            any = true;
            let b = &self.breakdown;
            let memory = h.memory.unwrap_or(f64::NAN);
            let sync = h.forget - memory;
            s += &format!(
                "- **Forget vs refit** (n = {}, d = {}, C = {}: {}). Of the durable forget's \
                 {}, {} is the head's own work (the same forget on an in-memory head: {} vs \
                 the refit) and {} the state dir's: writing and syncing before the call returns \
                 (G3, G4); on this machine's shared disk `fdatasync` took {} after an in-place \
                 overwrite and {} after an append when probed (it drifts from about 0.1 ms to \
                 several ms during a run). The head's own work for one sample at d = {}: {} to subtract \
                 it from the exact integer statistics (one memory-bound pass over A's packed \
                 i128 triangle, {:.0} MB) and {} for the rank-1 Cholesky downdate and Newton \
                 step (three memory-bound passes over the {:.0} MB factor L: the downdate, then \
                 the forward and backward solves). The two touch different memory and do not \
                 depend on each other, so they could run on two cores at once; fusing the \
                 downdate with the forward solve would save a pass. Reaching 1000× at this n \
                 needs the whole durable forget under {}, {:.1}× less than now: more than \
                 those changes and a disk that syncs in well under a millisecond can give, \
                 since the head's part alone is several memory-bound passes over those \
                 matrices. The \
                 ratio grows linearly with n (the refit is O(n·d²), a forget O(d²)): at \
                 today's forget time it reaches 1000× at about n = {}.\n",
                fmt_n(h.n),
                h.d,
                h.c,
                fmt_ratio(h.refit / h.forget),
                fmt_secs(h.forget),
                fmt_secs(memory),
                fmt_ratio(h.refit / memory),
                fmt_secs(sync.max(0.0)),
                fmt_secs(b.fsync),
                fmt_secs(b.fsync_append),
                b.d,
                fmt_secs(b.stats),
                ((b.d + 1) * (b.d + 2) / 2 * 16) as f64 / 1e6,
                fmt_secs(b.update),
                ((b.d + 1) * (b.d + 1) * 8) as f64 / 1e6,
                fmt_secs(h.refit / 1000.0),
                1000.0 * h.forget / h.refit,
                fmt_n((h.n as f64 * 1000.0 * h.forget / h.refit / 1000.0).ceil() as usize * 1000)
            );
        }
        if let Some(h) = self
            .headline()
            .filter(|h| h.retrain.is_some_and(|t| t < 1e5 * h.forget))
        {
            any = true;
            s += &format!(
                "- **Forget vs full retrain**: {} at n = {}; the same causes as above, and the \
                 ratio grows with n.\n",
                fmt_ratio(h.retrain.unwrap_or(0.0) / h.forget),
                fmt_n(h.n)
            );
        }
        for l in self
            .learn
            .iter()
            .filter(|l| l.batch > 1 && l.durable > 0.1 * l.core)
        {
            any = true;
            s += &format!(
                "- **Learn share** ({}, batch {}: {:.0} % durable, {:.0} % in memory). The \
                 core takes {} per batch; the state dir adds {} per learn call (writing the \
                 records and syncing before the call returns), the head's O(k·d²) update of \
                 its statistics and factor the rest. Committing several learn calls with one \
                 sync (group commit), or larger batches, amortizes the first; the second is \
                 what the in-memory share shows.\n",
                l.bundle,
                l.batch,
                100.0 * l.durable / l.core,
                100.0 * l.memory / l.core,
                fmt_secs(l.core),
                fmt_secs((l.durable - l.memory).max(0.0))
            );
        }
        let o = &self.open;
        if o.open > 0.1 {
            any = true;
            s += &format!(
                "- **Open** ({} at n = {}, d = {}, state dir {:.0} MB; reading its files alone \
                 takes {}): what `Head::open` reads and checks grows with n·d. Only the \
                 statistics, the factor and an id → slot index are needed to serve and to \
                 forget; reading a sample's record only when it is forgotten (or verified) \
                 keeps open at O(d² + n).\n",
                fmt_secs(o.open),
                fmt_n(o.n),
                o.d,
                o.bytes as f64 / 1e6,
                fmt_secs(o.read)
            );
        }
        if !any {
            s += "None.\n";
        }
        s
    }

    fn targets_section(&self) -> String {
        let mut s = String::from(
            "## Targets (DESIGN.md)\n\n| target | goal | measured | |\n| --- | --- | --- | --- |\n",
        );
        let worst = self
            .predict
            .iter()
            .map(|r| r.lethe / r.bare)
            .fold(0.0, f64::max);
        s += &format!(
            "| predict, core + head vs bare ONNX Runtime (worst row) | ≤ 1.03× | {} | {} |\n",
            fmt_ratio(worst),
            met(worst <= 1.03)
        );
        if let Some(h) = self.headline() {
            let at = format!("n = {}, d = {}, C = {}, one sample", fmt_n(h.n), h.d, h.c);
            let r = h.refit / h.forget;
            s += &format!(
                "| forget vs closed-form refit ({at}) | ≥ 1000× | {} ({} vs {}) | {} |\n",
                fmt_ratio(r),
                fmt_secs(h.forget),
                fmt_secs(h.refit),
                met(r >= 1000.0)
            );
            if let Some(retrain) = h.retrain {
                let r = retrain / h.forget;
                s += &format!(
                    "| forget vs full retrain pipeline ({at}; extrapolated) | ≥ 10^5× | {} ({} vs {}) | {} |\n",
                    fmt_ratio(r),
                    fmt_secs(h.forget),
                    fmt_secs(retrain),
                    met(r >= 1e5)
                );
            }
        }
        for l in self.learn.iter().filter(|l| l.batch > 1) {
            let share = l.durable / l.core;
            s += &format!(
                "| learn: head's share of the core's time ({}, batch {}, durable) | ≤ 10 % | {:.1} % | {} |\n",
                l.bundle,
                l.batch,
                100.0 * share,
                met(share <= 0.10)
            );
        }
        let o = &self.open;
        s += &format!(
            "| open a closed state dir (n = {}, d = {}), beyond the ORT session | ≤ 100 ms | {} | {} |\n\n",
            fmt_n(o.n),
            o.d,
            fmt_secs(o.open),
            met(o.open <= 0.1)
        );
        s
    }

    fn predict_section(&self) -> String {
        let mut s = String::from(
            "## Predict: head overhead\n\n\
             `Head::predict` (Lethe's core run, the head's f32 forward pass, core logits mapped \
             onto the head's classes) vs a bare ONNX Runtime session of the same `core.onnx` with \
             the same threads, reading every output. Inputs are real MNIST test digits, \
             preprocessed per each manifest. The two are timed in alternating blocks (the \
             first call of a block discarded: ONNX Runtime's thread pools spin after a run and \
             slow down another session's run right after). The last column times the head's \
             forward pass alone (`Head::predict_features`: z + φ Wᵀ + b on the core's outputs), \
             which is what the head adds beyond Lethe's handling of the core run.\n\n\
             | bundle | batch | bare ORT | Lethe predict | ratio | timings each | the head's part alone |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for r in &self.predict {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} ({:.2} %) |\n",
                r.bundle,
                r.batch,
                fmt_secs(r.bare),
                fmt_secs(r.lethe),
                fmt_ratio(r.lethe / r.bare),
                r.repeats,
                fmt_secs(r.head),
                100.0 * r.head / r.bare
            );
        }
        s + "\n"
    }

    fn forget_section(&self) -> String {
        let mut s = String::from(
            "## Forget\n\n\
             - **Lethe forget**: `Head::forget` returning on a durable state dir (the forgotten \
             records overwritten and synced), the weights served from then on.\n\
             - **in memory**: the same on an in-memory head holding the same samples (no \
             state dir, so no `fsync`), for the first (d, C) only.\n\
             - **canonical**: from the forget call until `Head::weights` returns the canonical \
             weights (bit-identical to retraining; the background re-solve, finished on the \
             caller's thread).\n\
             - **refit**: the strongest baseline: the n − k remaining features already in \
             memory as f64; A = XᵀX + λI (lower triangle) and B = XᵀT with faer's GEMM on every \
             core (one block of rows per core), then Cholesky and solve.\n\
             - **full retrain**: the core re-run over the n − k remaining inputs plus the refit. \
             The core time is **extrapolated**: mobilenetv2-imagenet's measured per-sample time \
             (bare ONNX Runtime, largest batch measured) × (n − k); nothing is re-run. Only for \
             d = 1280, that core's width.\n\n\
             Features are **synthetic** (uniform in [0, 4), like post-ReLU6 features; one-hot \
             targets, λ = 1): timing does not depend on their values. The bundle is synthetic \
             too: its core is an ONNX `Identity` graph written by the benchmark, so that d and C \
             can be chosen freely, while the head and its state dir are exactly those of a real \
             bundle. Each (d, C) head is grown through its n values; at each, k random samples \
             are forgotten and learned back, repeatedly.\n\n",
        );
        let mut pairs: Vec<(usize, usize)> = self.forget.iter().map(|r| (r.d, r.c)).collect();
        pairs.dedup();
        let pairs: Vec<String> = pairs
            .iter()
            .map(|(d, c)| {
                let ns: Vec<String> = self
                    .forget
                    .iter()
                    .filter(|r| (r.d, r.c) == (*d, *c) && r.k == 1)
                    .map(|r| fmt_n(r.n))
                    .collect();
                format!("d = {d}, C = {c} at n ∈ {{{}}}", ns.join(", "))
            })
            .collect();
        s += &if self.quick {
            format!("Sizes measured: {}.\n\n", pairs.join("; "))
        } else {
            format!(
                "The grid is a cross through d ∈ {{128, 1280, 2048}} × C ∈ {{10, 100, 1000}} × \
                 n ∈ {{1k, 10k, 50k}} rather than its full product (which would take about \
                 twice as long): {}; k ∈ {{1, 100}} everywhere.\n\n",
                pairs.join("; ")
            )
        };
        s += &format!(
            "mobilenetv2-imagenet's core: {} per sample (batch {}). The refit baseline's weights \
             agree with Lethe's to {:.1e} (max relative difference; Lethe quantizes features \
             to 2^-21).\n\n",
            fmt_secs(self.core_per_sample),
            self.core_batch,
            self.baseline_agreement
        );
        s += "| n | d | C | k | Lethe forget | in memory | canonical | refit | full retrain | refit / forget | refit / canonical | retrain / forget |\n\
              | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
        for r in &self.forget {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt_n(r.n),
                r.d,
                r.c,
                r.k,
                fmt_secs(r.forget),
                r.memory.map_or("–".into(), fmt_secs),
                fmt_secs(r.canonical),
                fmt_secs(r.refit),
                r.retrain.map_or("–".into(), fmt_secs),
                fmt_ratio(r.refit / r.forget),
                fmt_ratio(r.refit / r.canonical),
                r.retrain.map_or("–".into(), |t| fmt_ratio(t / r.forget)),
            );
        }
        let (d, c) = (self.breakdown.d, self.breakdown.c);
        s += &format!(
            "\n![Forget latency vs n, log-log: d = {d}, C = {c}]({PLOT_FILE})\n\n\
             Where a one-sample forget's time goes at d = {d}, C = {c}, each part timed alone: \
             subtracting the sample from the exact integer statistics {}, the rank-1 Cholesky \
             downdate and Newton step {}; on this machine's disk, `fdatasync` after \
             overwriting one record in place takes {}, after appending one to a file {} (the \
             file's size changes, so the file system commits metadata too). How many of each \
             a durable forget makes is the store's protocol (src/store.rs). These parts were \
             timed right after the forgets above; the disk is shared, and its sync latency \
             drifts during a run (from about 0.1 ms to several ms).\n\n",
            fmt_secs(self.breakdown.stats),
            fmt_secs(self.breakdown.update),
            fmt_secs(self.breakdown.fsync),
            fmt_secs(self.breakdown.fsync_append),
        );
        s
    }

    fn learn_section(&self) -> String {
        let mut s = String::from(
            "## Learn: the head's share\n\n\
             For one batch of real digits: the core's inference (`Head::core_features`), then \
             the head's `learn_features` on those features, durable (state dir, synced) and in \
             memory. The last column is `Head::weights` called right after the durable learn \
             returned: the wait until the canonical weights are ready (their re-solve starts on \
             another thread when the learn returns; at small d it is done before the call).\n\n\
             | bundle | batch | core | head, durable | share | head, in memory | share | canonical weights ready after |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for l in &self.learn {
            s += &format!(
                "| {} | {} | {} | {} | {:.1} % | {} | {:.1} % | {} |\n",
                l.bundle,
                l.batch,
                fmt_secs(l.core),
                fmt_secs(l.durable),
                100.0 * l.durable / l.core,
                fmt_secs(l.memory),
                100.0 * l.memory / l.core,
                fmt_secs(l.resolve)
            );
        }
        s + "\n"
    }

    fn open_section(&self) -> String {
        let o = &self.open;
        format!(
            "## Open\n\n\
             `Head::open` of a closed state dir with n = {} samples, d = {}, C = {} ({:.0} MB on \
             disk, warm page cache), with the core already open: the time beyond creating the \
             ONNX Runtime session. For scale: reading every file of the state dir into memory \
             (`std::fs::read`), and creating mobilenetv2-imagenet's session (`Core::open`, which \
             also checks the core's sha256 and graph).\n\n\
             | n | d | C | state dir | Head::open | read the files | Core::open (mobilenetv2-imagenet) |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n\
             | {} | {} | {} | {:.0} MB | {} | {} | {} |\n\n",
            fmt_n(o.n),
            o.d,
            o.c,
            o.bytes as f64 / 1e6,
            fmt_n(o.n),
            o.d,
            o.c,
            o.bytes as f64 / 1e6,
            fmt_secs(o.open),
            fmt_secs(o.read),
            fmt_secs(o.session)
        )
    }
}

/// One series of the plot: its legend, its colour, its points.
type Line = (String, plotters::style::RGBColor, Vec<(f64, f64)>);

/// The log-log plot of forget latency vs n at the first (d, C) of the plan.
fn plot_forget(report: &BenchReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let (d, c) = (report.breakdown.d, report.breakdown.c);
    let rows: Vec<&ForgetRow> = report
        .forget
        .iter()
        .filter(|r| r.d == d && r.c == c)
        .collect();
    let series = |k: usize, f: &dyn Fn(&ForgetRow) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.k == k)
            .filter_map(|r| f(r).map(|v| (r.n as f64, v)))
            .collect()
    };
    let lines: Vec<Line> = vec![
        (
            "full retrain (extrapolated), k = 1".into(),
            RGBColor(120, 120, 120),
            series(1, &|r| r.retrain),
        ),
        (
            "refit baseline, k = 1".into(),
            RGBColor(200, 40, 40),
            series(1, &|r| Some(r.refit)),
        ),
        (
            "Lethe: canonical weights ready, k = 1".into(),
            RGBColor(40, 110, 200),
            series(1, &|r| Some(r.canonical)),
        ),
        (
            "Lethe: forget returns, k = 100".into(),
            RGBColor(60, 170, 90),
            series(100, &|r| Some(r.forget)),
        ),
        (
            "Lethe: forget returns, in memory, k = 1".into(),
            RGBColor(150, 90, 200),
            series(1, &|r| r.memory),
        ),
        (
            "Lethe: forget returns, k = 1".into(),
            RGBColor(20, 20, 20),
            series(1, &|r| Some(r.forget)),
        ),
    ];
    let points: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    if points.is_empty() {
        return Err(Error::InvalidInput("nothing to plot".into()));
    }
    let (x0, x1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let decade = |v: f64, up: bool| {
        let e = v.log10();
        10f64.powf(if up { e.ceil() } else { e.floor() })
    };
    let plot_err =
        |e: &dyn std::fmt::Display| Error::io(path, std::io::Error::other(e.to_string()));
    register_font()?;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Forget latency vs n (d = {d}, C = {c}, log-log)"),
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (x0 / 1.3..x1 * 1.3).log_scale(),
            // Two decades of room below the lowest line for the legend.
            (decade(y0, false) / 100.0..decade(y1, true)).log_scale(),
        )
        .map_err(|e| plot_err(&e))?;
    chart
        .configure_mesh()
        .x_desc("n (samples held)")
        .y_desc("time")
        .x_label_formatter(&|v| {
            nice(*v, &[1.0, 2.0, 5.0]).map_or(String::new(), |v| fmt_n(v as usize))
        })
        .y_label_formatter(&|v| nice(*v, &[1.0]).map_or(String::new(), fmt_secs))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| plot_err(&e))?;
    for (name, color, data) in lines.into_iter().filter(|l| !l.2.is_empty()) {
        let style = ShapeStyle::from(color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(data.clone(), style))
            .map_err(|e| plot_err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        chart
            .draw_series(data.into_iter().map(|p| Circle::new(p, 4, style.filled())))
            .map_err(|e| plot_err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(&e))?;
    root.present().map_err(|e| plot_err(&e))?;
    Ok(())
}

/// `v` rounded to the nearest m·10^e with m in `mantissas`, if it is within 1 % of it: the
/// values a log axis labels.
fn nice(v: f64, mantissas: &[f64]) -> Option<f64> {
    let e = v.log10().floor();
    mantissas
        .iter()
        .chain([&10.0])
        .map(|m| m * 10f64.powf(e))
        .find(|&c| (v / c - 1.0).abs() < 0.01)
}

/// Plot text uses DejaVu Sans compiled into the binary: no system fonts needed.
fn register_font() -> Result<()> {
    use std::sync::OnceLock;
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(
            "the embedded plot font failed to load".into(),
        ))
    }
}
