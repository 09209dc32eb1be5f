//! `lethe eval`: does forgetting really forget? Real data, real baselines.
//!
//! For each setup (a bundle and the features output the head is linear in), on the MNIST
//! digits of `tests/data` (user data = the train split, test = the test split):
//! 1. the head's test accuracy next to scikit-learn's logistic regression on the same features
//!    and the core alone;
//! 2. forget a random 10 %, then a whole class, each time next to a head retrained from scratch
//!    on what remains: accuracies, the weight difference, a loss-threshold membership-inference
//!    attack, and (for the class) a linear probe on what the served model exposes;
//! 3. forget-all, compared with the core alone;
//! 4. forget latency at each features output (the linearization point).
//!
//! Writes `docs/EVALUATION.md`. scikit-learn runs in `scripts/eval_sklearn.py`, called with the
//! Python of `scripts/setup.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use ndarray::{Array1, Array2, Axis};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::bench::{fmt_secs, time_forget, TempDir};
use crate::commands::{accuracy, Global};
use lethe::data::Digits;
use lethe::{Bundle, Core, Head, HeadOptions};
use lethe::{Error, Result};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A short run on a few hundred digits, without mnist-core's conv_features (about fifteen
    /// seconds), as CI's smoke test runs it.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "docs/EVALUATION.md")]
    pub out: PathBuf,
    /// The folder holding the bundles.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Folder with train_/test_ images and labels (.npy).
    #[arg(long, default_value = "tests/data")]
    pub data: PathBuf,
    /// The Python with numpy and scikit-learn (made by scripts/setup.sh).
    #[arg(long, default_value = ".lethe/venv/bin/python")]
    pub python: PathBuf,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The class to forget as a whole.
    #[arg(long, default_value_t = 8)]
    pub forget_class: u32,
}

/// Accuracy (%) on the forgotten, retained and test samples.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// Balanced accuracy (%) on held-out test digits.
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
    pub retrained: Accuracies,
    /// max |W − W_retrained| over W and b (f64, canonical).
    pub max_weight_diff: f64,
    /// The served logits on every test digit are bit-identical.
    pub logits_identical: bool,
    pub attack: Trio<Attack>,
    /// For a class: probes on (head logits only, core features + head logits).
    pub probes: Option<[Trio<Probe>; 2]>,
}

/// One bundle and features output.
#[derive(Debug, Clone)]
pub struct Setup {
    pub bundle: String,
    pub features: String,
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
    pub scenarios: Vec<Scenario>,
    /// After forget-all: test accuracy, the core alone's, max |logits − core logits|.
    pub forget_all: (f64, f64, f32),
}

/// Everything `lethe eval` measured.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub quick: bool,
    pub seed: u64,
    pub forget_class: u32,
    pub machine: crate::bench::Machine,
    pub setups: Vec<Setup>,
    pub seconds: f64,
}

/// The scikit-learn side, relative to the source tree (like the other default paths).
const SKLEARN_SCRIPT: &str = "scripts/eval_sklearn.py";
const MNIST: &str = "mnist-core";
const MOBILENET: &str = "mobilenetv2-imagenet";
/// Digits per core run.
const CHUNK: usize = 64;
/// ImageNet normalization (mobilenetv2-imagenet's manifest).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Runs the evaluation, writes the report and returns it.
pub fn run(g: &Global, args: &EvalArgs) -> Result<EvalReport> {
    let start = Instant::now();
    let load_start = crate::bench::loadavg();
    if !args.python.is_file() {
        return Err(Error::InvalidInput(format!(
            "{} not found: `lethe eval` runs scikit-learn there; run scripts/setup.sh first",
            args.python.display()
        )));
    }
    let train = Digits::read(&args.data, "train")?;
    let test = Digits::read(&args.data, "test")?;
    let work = std::env::temp_dir().join(format!("lethe-eval-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let _cleanup = TempDir(work.clone());
    // (bundle, features, user and test digits in a quick run; 0 = not in a quick run).
    let setups = [
        (MNIST, "features", 800, 400),
        (MNIST, "conv_features", 0, 0),
        (MOBILENET, "features", 200, 100),
    ];
    let mut results = Vec::new();
    for (i, &(bundle, features, quick_train, quick_test)) in setups.iter().enumerate() {
        if args.quick && quick_train == 0 {
            continue;
        }
        let (n_train, n_test) = if args.quick {
            (quick_train, quick_test)
        } else {
            (train.len(), test.len())
        };
        eprintln!("eval: {bundle} / {features}: {n_train} user digits, {n_test} test digits");
        let dir = work.join(format!("setup-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let ctx = Context {
            args,
            dir: &dir,
            train: &train,
            test: &test,
            train_rows: (0..n_train).collect(),
            test_rows: (0..n_test).collect(),
        };
        results.push(ctx.setup(g, bundle, features)?);
    }
    let report = EvalReport {
        quick: args.quick,
        seed: args.seed,
        forget_class: args.forget_class,
        machine: crate::bench::machine(g, load_start)?,
        setups: results,
        seconds: start.elapsed().as_secs_f64(),
    };
    if let Some(dir) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::write(&args.out, report.markdown()).map_err(|e| Error::io(&args.out, e))?;
    eprintln!(
        "eval: wrote {} in {}",
        args.out.display(),
        fmt_secs(report.seconds)
    );
    Ok(report)
}

/// The inputs of `bundle` for the given digits, preprocessed as its manifest says.
pub(super) fn digit_inputs(bundle: &Bundle, digits: &Digits, rows: &[usize]) -> Result<Vec<f32>> {
    match bundle.manifest.name.as_str() {
        MNIST => Ok(digits.inputs(rows)),
        MOBILENET => {
            // 8×8 pixel repetition to 224×224, gray into R, G, B, /255, ImageNet mean/std.
            let mut out = Vec::with_capacity(rows.len() * 3 * 224 * 224);
            for &r in rows {
                let image = &digits.images[r * 784..(r + 1) * 784];
                for (mean, std) in IMAGENET_MEAN.iter().zip(&IMAGENET_STD) {
                    for y in 0..224 {
                        for x in 0..224 {
                            let p = image[(y / 8) * 28 + x / 8] as f32 / 255.0;
                            out.push((p - mean) / std);
                        }
                    }
                }
            }
            Ok(out)
        }
        other => Err(Error::InvalidInput(format!(
            "eval knows how to feed digits to {MNIST} and {MOBILENET}, not to {other}"
        ))),
    }
}

/// Runs the head's core over the given digits in chunks: (features, mapped core logits).
pub(super) fn digit_features(
    head: &Head,
    digits: &Digits,
    rows: &[usize],
) -> Result<(Array2<f32>, Array2<f32>)> {
    let core = head
        .core()
        .ok_or_else(|| Error::InvalidInput("head has no core".into()))?;
    let spec = head.spec();
    let mut phi = Array2::<f32>::zeros((rows.len(), spec.dim));
    let mut z = Array2::<f32>::zeros((rows.len(), spec.num_classes()));
    let bar = crate::progress::bar(rows.len() as u64, "running the core");
    for (i, chunk) in rows.chunks(CHUNK).enumerate() {
        let input = digit_inputs(core.bundle(), digits, chunk)?;
        let (p, zz) = head.core_features(&input, chunk.len())?;
        let at = i * CHUNK;
        phi.slice_mut(ndarray::s![at..at + chunk.len(), ..])
            .assign(&p);
        z.slice_mut(ndarray::s![at..at + chunk.len(), ..])
            .assign(&zz);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((phi, z))
}

/// What one setup works on.
struct Context<'a> {
    args: &'a EvalArgs,
    /// Scratch folder for this setup (state dir, arrays for Python).
    dir: &'a Path,
    train: &'a Digits,
    test: &'a Digits,
    train_rows: Vec<usize>,
    test_rows: Vec<usize>,
}

/// Features and labels of the train and test digits, computed once.
struct Data {
    phi: Array2<f32>,
    z: Array2<f32>,
    labels: Vec<u32>,
    test_phi: Array2<f32>,
    test_z: Array2<f32>,
    test_labels: Vec<u32>,
    target_scale: f32,
}

impl Data {
    fn learn(&self, head: &Head, rows: &[usize]) -> Result<()> {
        let ids: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let labels: Vec<u32> = rows.iter().map(|&r| self.labels[r]).collect();
        head.learn_features(
            &ids,
            &self.phi.select(Axis(0), rows),
            &self.z.select(Axis(0), rows),
            &labels,
        )
    }

    /// Logits on (every train digit, every test digit).
    fn logits(&self, head: &Head) -> Result<(Array2<f32>, Array2<f32>)> {
        Ok((
            head.predict_features(&self.phi, &self.z)?,
            head.predict_features(&self.test_phi, &self.test_z)?,
        ))
    }

    /// The head's training loss per sample: ||logits − s·e_y||².
    fn losses(&self, logits: &Array2<f32>, labels: &[u32], rows: &[usize]) -> Vec<f64> {
        rows.iter()
            .map(|&r| {
                logits
                    .row(r)
                    .iter()
                    .enumerate()
                    .map(|(c, &v)| {
                        let y = if c == labels[r] as usize {
                            self.target_scale
                        } else {
                            0.0
                        };
                        ((v - y) as f64).powi(2)
                    })
                    .sum()
            })
            .collect()
    }
}

/// The attack's AUC and best balanced accuracy from member and non-member losses.
fn attack(members: &[f64], non_members: &[f64]) -> Attack {
    // Sort all losses; a threshold τ flags "member" when loss ≤ τ.
    let mut all: Vec<(f64, bool)> = members
        .iter()
        .map(|&l| (l, true))
        .chain(non_members.iter().map(|&l| (l, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (m, n) = (members.len() as f64, non_members.len() as f64);
    let (mut below_non, mut auc, mut best) = (0.0, 0.0, 0.5);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        // A group of equal losses: ties count half.
        let j = (i..all.len())
            .find(|&j| all[j].0 != all[i].0)
            .unwrap_or(all.len());
        let group_m = all[i..j].iter().filter(|e| e.1).count() as f64;
        let group_n = (j - i) as f64 - group_m;
        // Members with a loss below non-members count toward the AUC.
        auc += group_m * ((n - below_non - group_n) + 0.5 * group_n);
        below_non += group_n;
        tp += group_m;
        fp += group_n;
        best = f64::max(best, 0.5 * (tp / m + (1.0 - fp / n)));
        i = j;
    }
    Attack {
        auc: auc / (m * n),
        best_accuracy: 100.0 * best,
    }
}

fn max_weight_diff(a: &lethe::Weights, b: &lethe::Weights) -> f64 {
    a.w.iter()
        .zip(b.w.iter())
        .chain(a.b.iter().zip(b.b.iter()))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn write_npy<A: ndarray_npy::WritableElement>(
    dir: &Path,
    name: &str,
    a: &ndarray::ArrayD<A>,
) -> Result<String> {
    lethe::data::write(&dir.join(name), a)?;
    Ok(name.to_string())
}

/// Python jobs for one setup, run together.
struct Jobs {
    dir: PathBuf,
    jobs: Vec<serde_json::Value>,
}

impl Jobs {
    fn push(&mut self, job: serde_json::Value) {
        self.jobs.push(job);
    }

    fn run(&self, python: &Path) -> Result<serde_json::Value> {
        let path = self.dir.join("jobs.json");
        let text = serde_json::json!({ "jobs": self.jobs }).to_string();
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        let script = Path::new(SKLEARN_SCRIPT);
        let out = Command::new(python)
            .arg(script)
            .arg(&path)
            .output()
            .map_err(|e| Error::io(python, e))?;
        if !out.status.success() {
            return Err(Error::InvalidInput(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::InvalidInput(format!("{}: unreadable output: {e}", script.display()))
        })?;
        Ok(value["results"].clone())
    }
}

fn number(results: &serde_json::Value, id: &str, field: &str) -> Result<f64> {
    results[id][field]
        .as_f64()
        .ok_or_else(|| Error::InvalidInput(format!("scikit-learn gave no {field} for {id}")))
}

impl Context<'_> {
    fn setup(&self, g: &Global, bundle: &str, features: &str) -> Result<Setup> {
        let core = Arc::new(Core::open(
            self.args.models.join(bundle),
            &g.core_options(),
        )?);
        let options = HeadOptions {
            features: Some(features.into()),
            ..Default::default()
        };
        let probe = Head::in_memory(core.clone(), &options)?;
        let t = Instant::now();
        let (phi, z) = digit_features(&probe, self.train, &self.train_rows)?;
        let (test_phi, test_z) = digit_features(&probe, self.test, &self.test_rows)?;
        let core_seconds = t.elapsed().as_secs_f64();
        let spec = probe.spec().clone();
        drop(probe);
        let data = Data {
            phi,
            z,
            labels: self
                .train_rows
                .iter()
                .map(|&r| self.train.labels[r])
                .collect(),
            test_phi,
            test_z,
            test_labels: self
                .test_rows
                .iter()
                .map(|&r| self.test.labels[r])
                .collect(),
            target_scale: spec.target_scale as f32,
        };
        let all_test: Vec<usize> = (0..data.test_labels.len()).collect();
        let core_test = accuracy(&data.test_z, &data.test_labels, &all_test);

        let head = Head::open(core.clone(), self.dir.join("state"), &options)?;
        let user: Vec<usize> = (0..data.labels.len()).collect();
        data.learn(&head, &user)?;
        let (_, test_logits) = data.logits(&head)?;
        let head_test = accuracy(&test_logits, &data.test_labels, &all_test);

        // The timing's random choices come from their own generator, so that the forgotten
        // digits below depend on the seed alone.
        let mut timing_rng = StdRng::seed_from_u64(self.args.seed ^ 0x5EED);
        let repeats = if self.args.quick { 2 } else { 5 };
        let ids: Vec<u64> = user.iter().map(|&r| r as u64).collect();
        let relearn = |ids: &[u64]| {
            let rows: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
            data.learn(&head, &rows)
        };
        let forget_one = time_forget(&head, &ids, 1, repeats, &mut timing_rng, &relearn)?;
        let forget_hundred = time_forget(&head, &ids, 100, repeats, &mut timing_rng, &relearn)?;

        let mut jobs = Jobs {
            dir: self.dir.to_path_buf(),
            jobs: Vec::new(),
        };
        let train_y = Array1::from(data.labels.clone()).into_dyn();
        let test_y = Array1::from(data.test_labels.clone()).into_dyn();
        jobs.push(serde_json::json!({
            "id": "logreg",
            "kind": "logreg",
            "train": [write_npy(self.dir, "phi.npy", &data.phi.clone().into_dyn())?],
            "train_y": write_npy(self.dir, "y.npy", &train_y)?,
            "test": [write_npy(self.dir, "test_phi.npy", &data.test_phi.clone().into_dyn())?],
            "test_y": write_npy(self.dir, "test_y.npy", &test_y)?,
        }));

        // Forget a random 10 %, then a whole class of what remains.
        let mut shuffled = user.clone();
        shuffled.shuffle(&mut StdRng::seed_from_u64(self.args.seed));
        let random: Vec<usize> = shuffled[..user.len() / 10].to_vec();
        let mut remaining: Vec<usize> = {
            let mut gone = vec![false; user.len()];
            random.iter().for_each(|&r| gone[r] = true);
            user.iter().copied().filter(|&r| !gone[r]).collect()
        };
        let mut scenarios = Vec::new();
        let step = Step {
            core: &core,
            options: &options,
            data: &data,
            head: &head,
        };
        scenarios.push(step.forget(
            &format!("random 10 % ({} samples)", random.len()),
            &random,
            &remaining,
            &all_test,
            None,
        )?);
        let class = self.args.forget_class;
        let class_rows: Vec<usize> = remaining
            .iter()
            .copied()
            .filter(|&r| data.labels[r] == class)
            .collect();
        remaining.retain(|&r| data.labels[r] != class);
        let class_test: Vec<usize> = all_test
            .iter()
            .copied()
            .filter(|&r| data.test_labels[r] == class)
            .collect();
        scenarios.push(step.forget(
            &format!("class {class} ({} samples)", class_rows.len()),
            &class_rows,
            &remaining,
            &class_test,
            Some((class, self.dir, &mut jobs)),
        )?);

        // Forget everything: the head is the core alone again.
        head.forget_all()?;
        let (_, after_all) = data.logits(&head)?;
        let max_diff = after_all
            .iter()
            .zip(data.test_z.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let forget_all = (
            accuracy(&after_all, &data.test_labels, &all_test),
            core_test,
            max_diff,
        );
        head.close()?;

        eprintln!("eval: scikit-learn ({} jobs)", jobs.jobs.len());
        let results = jobs.run(&self.args.python)?;
        let logreg_test = number(&results, "logreg", "test_accuracy")?;
        if let Some(probes) = scenarios.last_mut().and_then(|s| s.probes.as_mut()) {
            for (view, trio) in PROBE_VIEWS.iter().zip(probes.iter_mut()) {
                for (model, probe) in [
                    ("before", &mut trio.before),
                    ("lethe", &mut trio.lethe),
                    ("retrained", &mut trio.retrained),
                ] {
                    let id = format!("probe/{view}/{model}");
                    *probe = Probe {
                        held_out: number(&results, &id, "balanced_accuracy")?,
                        forgotten_recall: number(&results, &id, "forgotten_recall")?,
                    };
                }
            }
        }
        Ok(Setup {
            bundle: bundle.into(),
            features: features.into(),
            dim: spec.dim,
            train: data.labels.len(),
            test: data.test_labels.len(),
            core_seconds,
            has_core_logits: spec.core_logits.is_some(),
            head_test,
            core_test,
            logreg_test,
            forget_one,
            forget_hundred,
            scenarios,
            forget_all,
        })
    }
}

/// What the probes see: the head's logits, or the core's features and the head's logits.
const PROBE_VIEWS: [&str; 2] = ["logits", "features+logits"];

/// One forget step of a setup.
struct Step<'a> {
    core: &'a Arc<Core>,
    options: &'a HeadOptions,
    data: &'a Data,
    head: &'a Head,
}

impl Step<'_> {
    /// Forgets `rows` from the head, retrains a fresh head on `remaining`, compares them;
    /// `never_seen` are the test rows the attack uses as non-members. With a class, also
    /// queues the probes.
    fn forget(
        &self,
        title: &str,
        rows: &[usize],
        remaining: &[usize],
        never_seen: &[usize],
        class: Option<(u32, &Path, &mut Jobs)>,
    ) -> Result<Scenario> {
        let data = self.data;
        let before = data.logits(self.head)?;
        let ids: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let t = Instant::now();
        self.head.forget(&ids)?;
        let forget_seconds = t.elapsed().as_secs_f64();
        let lethe_w = self.head.weights()?;
        let canonical_seconds = t.elapsed().as_secs_f64();
        let after = data.logits(self.head)?;

        let t = Instant::now();
        let fresh = Head::in_memory(
            self.core.clone(),
            &HeadOptions {
                synchronous_resolve: true,
                ..self.options.clone()
            },
        )?;
        data.learn(&fresh, remaining)?;
        let fresh_w = fresh.weights()?;
        let retrain_seconds = t.elapsed().as_secs_f64();
        let retrained = data.logits(&fresh)?;

        let all_test: Vec<usize> = (0..data.test_labels.len()).collect();
        let accs = |(train, test): &(Array2<f32>, Array2<f32>)| Accuracies {
            forgotten: accuracy(train, &data.labels, rows),
            retained: accuracy(train, &data.labels, remaining),
            test: accuracy(test, &data.test_labels, &all_test),
        };
        let attack_on = |(train, test): &(Array2<f32>, Array2<f32>)| {
            attack(
                &data.losses(train, &data.labels, rows),
                &data.losses(test, &data.test_labels, never_seen),
            )
        };
        let probes = match class {
            Some((class, dir, jobs)) => {
                let y = Array1::from_iter(
                    data.test_labels
                        .iter()
                        .map(|&l| u8::from(l == class) as i64),
                )
                .into_dyn();
                let test_y = write_npy(dir, "probe_y.npy", &y)?;
                let test_phi = write_npy(dir, "probe_phi.npy", &data.test_phi.clone().into_dyn())?;
                let forgotten_phi = write_npy(
                    dir,
                    "probe_forgotten_phi.npy",
                    &data.phi.select(Axis(0), rows).into_dyn(),
                )?;
                for (model, (train, test)) in [
                    ("before", &before),
                    ("lethe", &after),
                    ("retrained", &retrained),
                ] {
                    let logits = write_npy(
                        dir,
                        &format!("probe_logits_{model}.npy"),
                        &test.clone().into_dyn(),
                    )?;
                    let forgotten = write_npy(
                        dir,
                        &format!("probe_forgotten_logits_{model}.npy"),
                        &train.select(Axis(0), rows).into_dyn(),
                    )?;
                    jobs.push(serde_json::json!({
                        "id": format!("probe/{}/{model}", PROBE_VIEWS[0]),
                        "kind": "probe",
                        "test": [logits],
                        "test_y": test_y,
                        "forgotten": [forgotten],
                    }));
                    jobs.push(serde_json::json!({
                        "id": format!("probe/{}/{model}", PROBE_VIEWS[1]),
                        "kind": "probe",
                        "test": [test_phi, logits],
                        "test_y": test_y,
                        "forgotten": [forgotten_phi, forgotten],
                    }));
                }
                Some([Trio::default(); 2])
            }
            None => None,
        };
        Ok(Scenario {
            title: title.into(),
            forgotten: rows.len(),
            remaining: remaining.len(),
            forget_seconds,
            canonical_seconds,
            retrain_seconds,
            lethe: accs(&after),
            retrained: accs(&retrained),
            max_weight_diff: max_weight_diff(&lethe_w, &fresh_w),
            logits_identical: after.1 == retrained.1 && after.0 == retrained.0,
            attack: Trio {
                before: attack_on(&before),
                lethe: attack_on(&after),
                retrained: attack_on(&retrained),
            },
            probes,
        })
    }
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.2} %")
    }
}

fn attack_cell(a: &Attack) -> String {
    format!("{:.3} ({:.1} %)", a.auc, a.best_accuracy)
}

fn probe_cell(p: &Probe) -> String {
    format!("{:.1} % / {:.1} %", p.held_out, p.forgotten_recall)
}

impl Setup {
    fn name(&self) -> String {
        format!("{} `{}` (d = {})", self.bundle, self.features, self.dim)
    }
}

impl EvalReport {
    /// The report as Markdown (docs/EVALUATION.md).
    pub fn markdown(&self) -> String {
        let command = if self.quick {
            "cargo run --release -p lethe-cli -- eval --quick"
        } else {
            "cargo run --release -p lethe-cli -- eval"
        };
        let m = &self.machine;
        let mut s = String::from("# Evaluation: does forgetting forget?\n\n");
        s += &format!(
            "Written by `{command}` (cli/src/eval.rs, with scikit-learn in \
             scripts/eval_sklearn.py) in {} on {} ({} cores; 1, 5, 15-minute load averages {} at the \
             start, {} at the end), seed {}, forgotten class {}. Accuracies and attack results are \
             deterministic; times are medians on a shared, noisy machine.\n\n",
            fmt_secs(self.seconds),
            m.cpu,
            m.cores,
            m.load_start,
            m.load_end,
            self.seed,
            self.forget_class
        );
        if self.quick {
            s += "**Quick run** (a few hundred digits): a smoke test, not the reported \
                  figures.\n\n";
        }
        s += &self.summary_section();
        s += DATA_TEXT;
        s += &self.accuracy_section();
        s += &self.forget_section();
        s += &self.attack_section();
        s += &self.probe_section();
        s += &self.forget_all_section();
        s += &self.linearization_section();
        s += PAPERS_TEXT;
        s
    }

    /// The conclusions, from the numbers below.
    fn summary_section(&self) -> String {
        let scenarios: Vec<(&Setup, &Scenario)> = self
            .setups
            .iter()
            .flat_map(|u| u.scenarios.iter().map(move |sc| (u, sc)))
            .collect();
        let exact = scenarios.iter().all(|(_, sc)| {
            sc.max_weight_diff == 0.0 && sc.logits_identical && sc.lethe == sc.retrained
        });
        let attack_same = scenarios
            .iter()
            .all(|(_, sc)| sc.attack.lethe == sc.attack.retrained);
        let probes_same = scenarios
            .iter()
            .filter_map(|(_, sc)| sc.probes.as_ref())
            .all(|p| p.iter().all(|t| t.lethe == t.retrained));
        let all_core = self
            .setups
            .iter()
            .all(|u| u.forget_all.0 == u.forget_all.1 && u.forget_all.2 == 0.0);
        let (lo, hi) = scenarios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), (_, sc)| {
                (lo.min(sc.attack.before.auc), hi.max(sc.attack.before.auc))
            });
        let (alo, ahi) = scenarios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), (_, sc)| {
                (lo.min(sc.attack.lethe.auc), hi.max(sc.attack.lethe.auc))
            });
        let yes_no =
            |ok: bool, yes: &str, no: &str| if ok { yes.to_string() } else { no.to_string() };
        format!(
            "## Summary\n\n\
             - Exactness: {}\n\
             - Membership inference: on the forgotten digits the attack's AUC is {:.3}–{:.3} \
             against the head before forgetting and {:.3}–{:.3} after; {}\n\
             - Representation audit: {}\n\
             - Forget-all: {}\n\n",
            yes_no(
                exact,
                &format!(
                    "in all {} forgets ({} setups × random 10 % and a whole class), Lethe's \
                     canonical weights equal those of a head retrained from scratch on the \
                     remaining digits bit for bit (max |ΔW| = 0), and so do the served logits \
                     and every accuracy.",
                    scenarios.len(),
                    self.setups.len()
                ),
                "**Lethe and the retrained head DIFFER** in at least one forget (see below)."
            ),
            lo,
            hi,
            alo,
            ahi,
            yes_no(
                attack_same,
                "after forgetting, Lethe's numbers are identical to the retrained head's in \
                 every case.",
                "**Lethe's numbers differ from the retrained head's** in at least one case."
            ),
            yes_no(
                probes_same,
                "linear probes on what the served model exposes give identical results on \
                 Lethe after forgetting and on the retrained head.",
                "**the probes differ** between Lethe and the retrained head."
            ),
            yes_no(
                all_core,
                "the head's logits equal the core's exactly, so does its accuracy.",
                "**the head differs from the core alone** (see below)."
            ),
        )
    }

    fn accuracy_section(&self) -> String {
        let mut s = String::from(
            "## Accuracy\n\n\
             Test accuracy on the test digits after learning every user digit. Logistic \
             regression: scikit-learn's multinomial `LogisticRegression` on the standardized \
             features the head sees (no core logits). Core alone: the core's own logits \
             (mnist-core knows digits 0–4 only; mobilenetv2-imagenet has no logits for digits, \
             so it always answers class 0).\n\n\
             | setup | user / test digits | core run over them | Lethe head | logistic regression | core alone |\n\
             | --- | --- | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            s += &format!(
                "| {} | {} / {} | {} | {} | {} | {}{} |\n",
                u.name(),
                u.train,
                u.test,
                fmt_secs(u.core_seconds),
                pct(u.head_test),
                pct(u.logreg_test),
                pct(u.core_test),
                if u.has_core_logits {
                    ""
                } else {
                    " (no logits)"
                }
            );
        }
        s + "\n"
    }

    fn forget_section(&self) -> String {
        let mut s = String::from(
            "## Forgetting vs retraining from scratch\n\n\
             Each setup forgets a random 10 % of the user digits, then a whole class of those \
             that remain (sequentially, on one durable head). After each, a fresh head learns \
             only the remaining digits from scratch. Accuracy on the forgotten digits, the \
             retained digits and the test digits; `max |ΔW|` is the largest difference between \
             the two heads' canonical f64 weights (W and b); `logits` says whether the served \
             logits on every train and test digit are bit-identical.\n\n\
             | setup | forgot | head | forgotten | retained | test | max \\|ΔW\\| | logits | time |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            for sc in &u.scenarios {
                s += &format!(
                    "| {} | {}, {} remain | Lethe | {} | {} | {} | {:e} | {} | forget {}, canonical {} |\n",
                    u.name(),
                    sc.title,
                    sc.remaining,
                    pct(sc.lethe.forgotten),
                    pct(sc.lethe.retained),
                    pct(sc.lethe.test),
                    sc.max_weight_diff,
                    if sc.logits_identical {
                        "identical"
                    } else {
                        "**differ**"
                    },
                    fmt_secs(sc.forget_seconds),
                    fmt_secs(sc.canonical_seconds),
                );
                s += &format!(
                    "| | | retrained | {} | {} | {} | | | retrain {} |\n",
                    pct(sc.retrained.forgotten),
                    pct(sc.retrained.retained),
                    pct(sc.retrained.test),
                    fmt_secs(sc.retrain_seconds),
                );
            }
        }
        s + "\n(Retrain time: learning the remaining digits' precomputed features into a new \
             head; re-running the core over them would add to it.)\n\n"
    }

    fn attack_section(&self) -> String {
        let mut s = String::from(
            "## Membership inference\n\n\
             A loss-threshold attack: it guesses \"member\" when the head's training loss \
             ||logits − s·e_y||² of a digit is below a threshold. Members: the forgotten user \
             digits. Non-members: never-seen test digits (all of them for the random 10 %; those \
             of the class for the class). Each cell: AUC (0.5 = chance) and, in parentheses, the \
             best balanced accuracy over all thresholds (chosen on the same digits, so an \
             optimistic bound). The train and test splits are different MNIST splits, so even a \
             head that never saw the digits may score a little off 0.5: the retrained head is \
             the reference.\n\n\
             | setup | forgot | before forgetting | Lethe after | retrained from scratch |\n\
             | --- | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            for sc in &u.scenarios {
                s += &format!(
                    "| {} | {} | {} | {} | {} |\n",
                    u.name(),
                    sc.title,
                    attack_cell(&sc.attack.before),
                    attack_cell(&sc.attack.lethe),
                    attack_cell(&sc.attack.retrained)
                );
            }
        }
        s + "\n"
    }

    fn probe_section(&self) -> String {
        let mut s = format!(
            "## Representation-level audit\n\n\
             After forgetting class {c}: can a linear probe on what the served model exposes \
             recover the class? scikit-learn `LogisticRegression` (balanced, binary \"is it class \
             {c}\") on the standardized head logits, or on the core's features and the head \
             logits side by side, fitted on half of the test digits. Each cell: balanced \
             accuracy on the other half / % of the forgotten training digits of class {c} the \
             probe flags as {c}. Lethe after forgetting must match the head retrained from \
             scratch exactly (same logits, bit for bit). The core is unchanged by construction \
             and was trained without user data, so what it knows about digit shapes stays: \
             forgetting removes what the user's digits taught, not what the core knew.\n\n\
             | setup | probe on | before forgetting | Lethe after | retrained from scratch |\n\
             | --- | --- | --- | --- | --- |\n",
            c = self.forget_class
        );
        for u in &self.setups {
            if let Some(probes) = u.scenarios.iter().find_map(|sc| sc.probes.as_ref()) {
                for (view, trio) in PROBE_VIEWS.iter().zip(probes) {
                    s += &format!(
                        "| {} | {} | {} | {} | {} |\n",
                        u.name(),
                        view,
                        probe_cell(&trio.before),
                        probe_cell(&trio.lethe),
                        probe_cell(&trio.retrained)
                    );
                }
            }
        }
        s + "\n"
    }

    fn forget_all_section(&self) -> String {
        let mut s = String::from(
            "## Forget-all\n\n\
             After `forget_all` the head's weights are zero and it serves exactly the core's \
             logits.\n\n\
             | setup | test accuracy after forget-all | core alone | max \\|logits − core logits\\| |\n\
             | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            let (after, core, diff) = u.forget_all;
            s += &format!(
                "| {} | {} | {} | {:e} |\n",
                u.name(),
                pct(after),
                pct(core),
                diff
            );
        }
        s + "\n"
    }

    fn linearization_section(&self) -> String {
        let mut s = String::from(
            "## The linearization point: accuracy vs forget latency\n\n\
             Which features output the head is linear in is a choice (`--features`): a wider, \
             earlier layer can be more accurate for data the core never saw, and costs more per \
             forget (O(k·d²) on the caller's path, O(d³) for the canonical re-solve). Forget \
             latency on the head holding every user digit, durable state dir, medians of \
             repeats of k random digits forgotten and learned back: the call returning, and in \
             parentheses until the canonical weights are ready.\n\n\
             | setup | features | d | Lethe head test | logistic regression | forget 1 | forget 100 |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            s += &format!(
                "| {} | `{}` | {} | {} | {} | {} ({}) | {} ({}) |\n",
                u.bundle,
                u.features,
                u.dim,
                pct(u.head_test),
                pct(u.logreg_test),
                fmt_secs(u.forget_one.0),
                fmt_secs(u.forget_one.1),
                fmt_secs(u.forget_hundred.0),
                fmt_secs(u.forget_hundred.1),
            );
        }
        s + "\n"
    }
}

const DATA_TEXT: &str = "## Data\n\n\
- User data: `tests/data` train split (MNIST validation digits, all ten classes); test: \
  `tests/data` test split (MNIST test digits). See tests/data/README.md.\n\
- mnist-core: a CNN trained on MNIST train digits 0–4 only; input pixel/256. The head learns \
  all ten digits on top of the core's logits.\n\
- mobilenetv2-imagenet: ImageNet MobileNetV2 features (1280-d), no logits; digits are \
  preprocessed as its manifest says: each pixel repeated 8×8 to 224×224, gray copied into R, G, \
  B, /255, ImageNet mean/std.\n\
- Lethe's head: the bundle's λ and target scale (manifest), durable state dir, background \
  re-solve. The retrained head: a fresh in-memory head that learns only the remaining digits.\n\n";

const PAPERS_TEXT: &str = "## The paper's setting, and what differs\n\n\
Lethe implements the *mixed-privacy* setting of Golatkar, Achille, Ravichandran, Polito and \
Soatto, \"Mixed-Privacy Forgetting in Deep Networks\" (CVPR 2021): the core is trained on data \
that never has to be forgotten, and only the user weights see user data. In that paper \
(ML-Forgetting) the user weights perturb the whole network around the core weights; the \
network is replaced by its linear approximation in them and trained with a quadratic loss, so \
that forgetting is a quadratic problem whose solution is a Newton step. For large models that \
step is computed by optimization, and the paper states its guarantee as a bound on the \
information about the forgotten samples that may remain in the weights, not as equality with \
retraining. Forgetting all user data is exact there too: the user weights are set to zero.\n\n\
The earlier methods of the same group, Fisher forgetting (Golatkar, Achille, Soatto, \"Eternal \
Sunshine of the Spotless Net\", CVPR 2020) and the NTK-based forgetting of \"Forgetting Outside \
the Box\" (ECCV 2020), scrub a trained network with a step derived from a quadratic \
approximation of the loss (the Fisher information matrix; the linearized network's neural \
tangent kernel) and add noise. What they guarantee is an upper bound on the information about \
the forgotten data that remains in the weights (the NTK paper also considers what can be read \
from the network's outputs), relative to a network never trained on it: approximate, and paid \
for in accuracy by the noise.\n\n\
Lethe takes the special case where the user weights are a linear head on fixed core features \
(the linearization point is a features output of the core, not the core's weights) and the \
loss is ridge regression. Then the Newton step is exact and cheap (O(k·d²)), and because the \
statistics are exact integers, the result is not approximately but **bit-identically** the head \
retrained from scratch on the remaining samples (the tables above: max |ΔW| = 0, identical \
logits), whatever the order of learns and forgets (history-independent). No noise is added, so \
no accuracy is traded for the guarantee; the core is unchanged by construction, so nothing \
about user data can be in it. The price is expressiveness: the user's data can only adapt a \
linear head on the core's features, not the features themselves (the accuracy section above \
shows what that costs on each core, and the linearization table what a wider features output \
buys).\n";
