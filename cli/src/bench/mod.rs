//! `lethe bench`: how fast Lethe is, each figure next to a baseline measured in the same run.
//!
//! Writes the report where `--out` says (docs/BENCHMARKS.md by default) and a log-log plot of
//! forget latency vs n next to it (forget-latency.png); scratch files (state dirs, synthetic
//! bundles) go to a temporary folder, or to `--work`. Every figure is a median of repeats; baselines run in the same process,
//! interleaved with Lethe where that is cheap, so a noisy machine shifts both alike.
//!
//! - **predict**: `Head::predict` (core + head) vs a bare ONNX Runtime session of the same core
//!   file with the same threads, fed the same real digits (image bundles) or the same token
//!   tensors of real tweets, each batch padded to its longest as Lethe pads (the text bundle).
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
//! - **encryption**: a durable learn, open and forget without and with a key (G9).
//! - **close**: closing after one forget, and `lethe forget` on a closed state dir, vs
//!   rewriting every file of the state dir.
//!
//! Modules: `plan` (the sizes a run measures), `measure`, `forget`, `encryption` and `close`
//! (the measurements),
//! `baselines` (the closed-form refit, a bare ONNX Runtime session), `workloads` (synthetic
//! features and bundles), `results` (what was measured), `report` (Markdown), `plot`.

mod baselines;
mod close;
mod encryption;
mod forget;
mod measure;
mod plan;
pub mod plot;
pub mod report;
pub mod results;
mod spans;
mod workloads;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::digits::MOBILENET;
use crate::global::Global;
use crate::harness::{loadavg, machine};
use crate::python::DEFAULT_PYTHON;
use crate::scratch::Scratch;
use crate::units::fmt_secs;
use close::bench_close;
use encryption::{bench_encryption, learn_both};
use forget::{forget_breakdown, ForgetSweep};
use lethe::data::Digits;
use lethe::{Core, Error, Result};
use measure::{bench_learn, bench_open, bench_predict};
use plan::Plan;
use plot::{plot_forget, PLOT_FILE};
use results::BenchReport;
use workloads::synthetic_bundle;

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
    /// Folder with the MNIST digits (test_images.npy) fed to the image cores, and the tweets
    /// (tweets_train.txt, tweets_test.txt and their labels) fed to the text core.
    #[arg(long, default_value = "tests/data")]
    pub data: PathBuf,
    /// Keep the state dirs and synthetic bundles here (a new or empty folder) instead of a
    /// temporary folder.
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// The Python with the `onnx` package (made by scripts/setup.sh), which writes the
    /// synthetic bundles' core.
    #[arg(long, default_value = DEFAULT_PYTHON)]
    pub python: PathBuf,
    /// Seed for the synthetic features and the choice of samples to forget.
    #[arg(long, default_value_t = 20240531)]
    pub seed: u64,
}

/// Runs the benchmarks, writes the report and the plot, and returns what was measured.
pub fn run(g: &Global, args: &BenchArgs) -> Result<BenchReport> {
    let start = Instant::now();
    let load_start = loadavg();
    let plan = Plan::new(args.quick);
    let scratch = Scratch::new(args.work.as_deref(), "lethe-bench-")?;
    let work = scratch.path();
    let digits = Digits::read(&args.data, "test")?;

    eprintln!("bench: predict");
    let predict = bench_predict(g, &args.models, &plan, &digits, &args.data)?;
    let (core_per_sample, core_batch) = predict
        .iter()
        .filter(|r| r.bundle == MOBILENET)
        .max_by_key(|r| r.batch)
        .map(|r| (r.bare / r.batch as f64, r.batch))
        .ok_or_else(|| Error::InvalidInput("no mobilenetv2-imagenet predict row".into()))?;

    eprintln!("bench: learn");
    let learn = bench_learn(g, &args.models, &plan, &digits, work)?;

    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut forget = Vec::new();
    let mut baseline_agreement = 0.0;
    let mut open = None;
    let mut encryption = None;
    let mut close = None;
    let mut breakdown = None;
    let (mut phases, mut back_to_back) = (None, None);
    for (i, (d, c, ns)) in plan.heads.iter().enumerate() {
        eprintln!("bench: forget, d = {d}, C = {c}");
        let bundle = synthetic_bundle(&args.python, work, *d, *c)?;
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
        let result = sweep.run(ns, &plan, &mut rng, core_per_sample)?;
        let max_n = *ns.iter().max().expect("sizes");
        forget.extend(result.rows);
        if i == 0 {
            baseline_agreement = result.agreement;
            (phases, back_to_back) = (result.phases, result.back_to_back);
            // Right after the headline measurements: the disk's sync latency drifts.
            breakdown = Some(forget_breakdown(work, *d, *c)?);
            eprintln!("bench: open");
            open = Some(bench_open(g, &args.models, &core, &state, &plan, max_n)?);
            eprintln!("bench: encryption");
            let learned = learn_both(g, &args.models, &plan, &digits, work, &mut rng)?;
            encryption = Some(bench_encryption(
                &plan, work, &sweep, max_n, &mut rng, learned,
            )?);
            eprintln!("bench: close");
            close = Some(bench_close(
                g, &sweep, &bundle, work, &plan, max_n, &mut rng,
            )?);
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
        encryption: encryption.expect("the plan has a head"),
        close: close.expect("the plan has a head"),
        breakdown: breakdown.expect("the plan has a head"),
        phases: phases.expect("the first head times the phases"),
        back_to_back: back_to_back.expect("the first head times back-to-back forgets"),
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
