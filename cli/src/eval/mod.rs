//! `lethe eval`: does forgetting really forget? Real data, real baselines.
//!
//! For each setup (a bundle and the features output the head is linear in), on the MNIST
//! digits of `tests/data` for the image bundles and on its labelled tweets for the text bundle
//! (user data = the train split, test = the test split):
//! 1. the head's test accuracy next to scikit-learn's logistic regression on the same features
//!    and the core alone;
//! 2. forget a random 10 %, then a whole class (`--forget-class` of the digits, the last
//!    class of the tweets), each time next to heads retrained from scratch
//!    on what remains, by Lethe's solver (the bit-identity check) and by scikit-learn's Ridge
//!    (independent): accuracies, the weight difference, a loss-threshold membership-inference
//!    attack, and (for the class) a linear probe on what the served model exposes;
//! 3. forget-all, compared with the core alone;
//! 4. forget latency at each features output (the linearization point).
//!
//! Writes the report where `--out` says (docs/EVALUATION.md by default); scratch files (state
//! dirs, the arrays handed to Python) go to a temporary folder, or to `--work`. scikit-learn
//! runs in `scripts/eval_sklearn.py`, called with the Python of `scripts/setup.sh`.
//!
//! Modules: `results` (what was measured), `attack` (membership inference), `sklearn` (the
//! jobs for scripts/eval_sklearn.py), `report` (Markdown).

mod attack;
pub mod report;
pub mod results;
mod sklearn;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use ndarray::{Array1, Array2, Axis};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::batches::core_features;
use crate::digits::{digit_features, MNIST, MOBILENET};
use crate::global::Global;
use crate::harness::{loadavg, machine, resident_bytes, time_forget};
use crate::logits::{accuracy, max_abs_diff};
use crate::python::DEFAULT_PYTHON;
use crate::scratch::Scratch;
use crate::tweets::{Tweets, MINILM};
use crate::units::fmt_secs;
use attack::attack;
use lethe::data::Digits;
use lethe::math::receipt::hex;
use lethe::{Core, Head, HeadOptions, HeadSpec, Weights};
use lethe::{Error, Result};
use results::{
    Accuracies, EvalReport, ForgetAll, Probe, RidgeRetrain, Scenario, Setup, Trio, PROBE_VIEWS,
};
use sklearn::{number, Jobs};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A short run on a few hundred samples per setup, without mnist-core's conv_features
    /// (about half a minute), as CI's smoke test runs it.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "docs/EVALUATION.md")]
    pub out: PathBuf,
    /// The folder holding the bundles.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Folder with train_/test_ images and labels (.npy), and tweets_train.txt and
    /// tweets_test.txt (one tweet per line) with their _labels.npy.
    #[arg(long, default_value = "tests/data")]
    pub data: PathBuf,
    /// The Python with numpy and scikit-learn (made by scripts/setup.sh).
    #[arg(long, default_value = DEFAULT_PYTHON)]
    pub python: PathBuf,
    /// Keep the state dirs and the arrays handed to scikit-learn here (a new or empty folder)
    /// instead of a temporary folder.
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The digit to forget as a whole (the text setup forgets its bundle's last class).
    #[arg(long, default_value_t = 8)]
    pub forget_class: u32,
}

/// Runs the evaluation, writes the report and returns it.
pub fn run(g: &Global, args: &EvalArgs) -> Result<EvalReport> {
    let start = Instant::now();
    let load_start = loadavg();
    if !args.python.is_file() {
        return Err(Error::InvalidInput(format!(
            "{} not found: `lethe eval` runs scikit-learn there; run scripts/setup.sh first",
            args.python.display()
        )));
    }
    let train = Digits::read(&args.data, "train")?;
    let test = Digits::read(&args.data, "test")?;
    let scratch = Scratch::new(args.work.as_deref(), "lethe-eval-")?;
    // (bundle, features, user and test samples in a quick run; 0 = not in a quick run).
    let setups = [
        (MNIST, "features", 800, 400),
        (MNIST, "conv_features", 0, 0),
        (MNIST, "features+conv_features", 0, 0),
        (MOBILENET, "features", 200, 100),
        (MINILM, "features", 300, 150),
    ];
    let mut results = Vec::new();
    for (i, &(bundle, features, quick_train, quick_test)) in setups.iter().enumerate() {
        if args.quick && quick_train == 0 {
            continue;
        }
        let core = Arc::new(Core::open(args.models.join(bundle), &g.core_options())?);
        let classes = &core.bundle().manifest.classes;
        let (corpus, forget_class) = if core.text().is_some() {
            let corpus = Corpus::Tweets {
                train: Tweets::read(&args.data, "train", classes.len())?,
                test: Tweets::read(&args.data, "test", classes.len())?,
            };
            (corpus, classes.len().saturating_sub(1) as u32)
        } else {
            let corpus = Corpus::Digits {
                train: &train,
                test: &test,
            };
            (corpus, args.forget_class)
        };
        let class_name = classes
            .get(forget_class as usize)
            .ok_or_else(|| {
                Error::InvalidInput(format!("{bundle} has no class {forget_class} to forget"))
            })?
            .clone();
        let (all_train, all_test) = (corpus.labels(false).len(), corpus.labels(true).len());
        let (n_train, n_test) = if args.quick {
            (quick_train.min(all_train), quick_test.min(all_test))
        } else {
            (all_train, all_test)
        };
        let noun = corpus.noun();
        eprintln!("eval: {bundle} / {features}: {n_train} user {noun}, {n_test} test {noun}");
        let dir = scratch.path().join(format!("setup-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let ctx = Context {
            args,
            dir: &dir,
            corpus: &corpus,
            train_rows: (0..n_train).collect(),
            test_rows: (0..n_test).collect(),
            forget_class: (forget_class, class_name),
        };
        results.push(ctx.setup(core, features)?);
    }
    let report = EvalReport {
        quick: args.quick,
        seed: args.seed,
        machine: machine(g, load_start)?,
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

/// The samples of a setup: the user's (the train split) and the test split.
enum Corpus<'a> {
    Digits { train: &'a Digits, test: &'a Digits },
    Tweets { train: Tweets, test: Tweets },
}

impl Corpus<'_> {
    /// What the samples are, in the report's words.
    fn noun(&self) -> &'static str {
        match self {
            Corpus::Digits { .. } => "digits",
            Corpus::Tweets { .. } => "tweets",
        }
    }

    /// The labels of every train (or test) sample.
    fn labels(&self, test: bool) -> &[u32] {
        match (self, test) {
            (Corpus::Digits { train, .. }, false) => &train.labels,
            (Corpus::Digits { test, .. }, true) => &test.labels,
            (Corpus::Tweets { train, .. }, false) => &train.labels,
            (Corpus::Tweets { test, .. }, true) => &test.labels,
        }
    }

    /// The head's core over the given train (or test) samples: (features, mapped core logits).
    fn features(
        &self,
        head: &Head,
        test: bool,
        rows: &[usize],
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        match (self, test) {
            (Corpus::Digits { train, .. }, false) => digit_features(head, train, rows),
            (Corpus::Digits { test, .. }, true) => digit_features(head, test, rows),
            (Corpus::Tweets { train, .. }, false) => core_features(head, &train.samples(rows)),
            (Corpus::Tweets { test, .. }, true) => core_features(head, &test.samples(rows)),
        }
    }
}

/// What one setup works on.
struct Context<'a> {
    args: &'a EvalArgs,
    /// Scratch folder for this setup (state dir, arrays for Python).
    dir: &'a Path,
    corpus: &'a Corpus<'a>,
    train_rows: Vec<usize>,
    test_rows: Vec<usize>,
    /// The class forgotten as a whole: its number and name.
    forget_class: (u32, String),
}

/// Features and labels of the train and test samples, computed once.
struct Data {
    phi: Array2<f32>,
    z: Array2<f32>,
    labels: Vec<u32>,
    test_phi: Array2<f32>,
    test_z: Array2<f32>,
    test_labels: Vec<u32>,
    spec: HeadSpec,
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

    /// Logits on (every train sample, every test sample).
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
                            self.spec.target_scale as f32
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

fn max_weight_diff(a: &Weights, b: &Weights) -> f64 {
    a.w.iter()
        .zip(b.w.iter())
        .chain(a.b.iter().zip(b.b.iter()))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

impl Context<'_> {
    fn setup(&self, core: Arc<Core>, features: &str) -> Result<Setup> {
        let bundle = core.bundle().manifest.name.clone();
        let options = HeadOptions {
            features: Some(features.into()),
            ..Default::default()
        };
        let probe = Head::in_memory(core.clone(), &options)?;
        let probe_spec = probe.spec().clone();
        let t = Instant::now();
        let (phi, z) = self.corpus.features(&probe, false, &self.train_rows)?;
        let (test_phi, test_z) = self.corpus.features(&probe, true, &self.test_rows)?;
        let core_seconds = t.elapsed().as_secs_f64();
        drop(probe);
        let data = Data {
            phi,
            z,
            labels: self
                .train_rows
                .iter()
                .map(|&r| self.corpus.labels(false)[r])
                .collect(),
            test_phi,
            test_z,
            test_labels: self
                .test_rows
                .iter()
                .map(|&r| self.corpus.labels(true)[r])
                .collect(),
            spec: probe_spec,
        };
        let spec = &data.spec;
        let all_test: Vec<usize> = (0..data.test_labels.len()).collect();
        let core_test = accuracy(&data.test_z, &data.test_labels, &all_test);

        let before = resident_bytes();
        let head = Head::open(core.clone(), self.dir.join("state"), &options)?;
        let user: Vec<usize> = (0..data.labels.len()).collect();
        data.learn(&head, &user)?;
        head.weights()?;
        let head_memory = resident_bytes()
            .zip(before)
            .map(|(after, before)| after.saturating_sub(before));
        let (_, test_logits) = data.logits(&head)?;
        let head_test = accuracy(&test_logits, &data.test_labels, &all_test);

        // The timing's random choices come from their own generator, so that the forgotten
        // samples below depend on the seed alone.
        let mut timing_rng = StdRng::seed_from_u64(self.args.seed ^ 0x5EED);
        let repeats = if self.args.quick { 2 } else { 5 };
        let ids: Vec<u64> = user.iter().map(|&r| r as u64).collect();
        let relearn = |ids: &[u64]| {
            let rows: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
            data.learn(&head, &rows)
        };
        let forget_one = time_forget(&head, &ids, 1, repeats, &mut timing_rng, &relearn)?;
        let forget_hundred = time_forget(&head, &ids, 100, repeats, &mut timing_rng, &relearn)?;

        let mut jobs = Jobs::new(self.dir);
        let train_y = Array1::from(data.labels.clone()).into_dyn();
        let test_y = Array1::from(data.test_labels.clone()).into_dyn();
        jobs.push(serde_json::json!({
            "id": "logreg",
            "kind": "logreg",
            "train": [jobs.write(PHI, &data.phi.clone().into_dyn())?],
            "train_y": jobs.write(Y, &train_y)?,
            "test": [jobs.write(TEST_PHI, &data.test_phi.clone().into_dyn())?],
            "test_y": jobs.write(TEST_Y, &test_y)?,
        }));
        jobs.write(Z, &data.z.clone().into_dyn())?;
        jobs.write(TEST_Z, &data.test_z.clone().into_dyn())?;

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
            &mut jobs,
            None,
        )?);
        let (class, class_name) = &self.forget_class;
        let class = *class;
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
            &format!("class {class_name} ({} samples)", class_rows.len()),
            &class_rows,
            &remaining,
            &class_test,
            &mut jobs,
            Some(class),
        )?);

        // Forget everything: the head is the core alone again.
        head.forget_all()?;
        let (_, after_all) = data.logits(&head)?;
        let zero = head.weights()?;
        let forget_all = ForgetAll {
            test: accuracy(&after_all, &data.test_labels, &all_test),
            core_test,
            max_logit_diff: max_abs_diff(&after_all, &data.test_z),
            max_weight: zero
                .w
                .iter()
                .chain(&zero.b)
                .fold(0.0, |m, v| m.max(v.abs())),
        };
        head.close()?;

        eprintln!("eval: scikit-learn ({} jobs)", jobs.len());
        let results = jobs.run(&self.args.python)?;
        let logreg_test = number(&results, "logreg", "test_accuracy")?;
        for (i, sc) in scenarios.iter_mut().enumerate() {
            let id = format!("ridge/{i}");
            sc.ridge = RidgeRetrain {
                accuracies: Accuracies {
                    forgotten: number(&results, &id, "forgotten_accuracy")?,
                    retained: number(&results, &id, "retained_accuracy")?,
                    test: number(&results, &id, "test_accuracy")?,
                },
                weight_rel_diff: number(&results, &id, "relative_difference")?,
            };
        }
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
            bundle,
            features: features.into(),
            is_default: core.bundle().manifest.default_features == features,
            samples: self.corpus.noun(),
            forget_class: class_name.clone(),
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
            head_memory,
            scenarios,
            forget_all,
        })
    }
}

/// The arrays every job of a setup shares.
const PHI: &str = "phi.npy";
const Z: &str = "z.npy";
const Y: &str = "y.npy";
const TEST_PHI: &str = "test_phi.npy";
const TEST_Z: &str = "test_z.npy";
const TEST_Y: &str = "test_y.npy";

/// The job for scikit-learn's Ridge on the `remaining` rows (the `k`-th such job of a setup is
/// `ridge/k`), next to Lethe's canonical weights `lethe` after forgetting `forgotten`.
fn ridge_job(
    jobs: &Jobs,
    data: &Data,
    forgotten: &[usize],
    remaining: &[usize],
    lethe: &Weights,
) -> Result<serde_json::Value> {
    let k = jobs.count_of("ridge");
    let rows = |r: &[usize]| Array1::from_iter(r.iter().map(|&r| r as i64)).into_dyn();
    Ok(serde_json::json!({
        "id": format!("ridge/{k}"),
        "kind": "ridge",
        "phi": PHI,
        "z": Z,
        "y": Y,
        "test_phi": TEST_PHI,
        "test_z": TEST_Z,
        "test_y": TEST_Y,
        "remaining": jobs.write(&format!("ridge_{k}_remaining.npy"), &rows(remaining))?,
        "forgotten": jobs.write(&format!("ridge_{k}_forgotten.npy"), &rows(forgotten))?,
        "W": jobs.write(&format!("ridge_{k}_W.npy"), &lethe.w.clone().into_dyn())?,
        "b": jobs.write(&format!("ridge_{k}_b.npy"), &Array1::from(lethe.b.clone()).into_dyn())?,
        "lambda": data.spec.lambda,
        "target_scale": data.spec.target_scale,
        "frac_bits": data.spec.fixed.frac_bits,
    }))
}

/// One forget step of a setup.
struct Step<'a> {
    core: &'a Arc<Core>,
    options: &'a HeadOptions,
    data: &'a Data,
    head: &'a Head,
}

impl Step<'_> {
    /// Forgets `rows` from the head, retrains a fresh head on `remaining`, compares them, and
    /// queues scikit-learn's Ridge on `remaining` as an independent retrain; `never_seen` are
    /// the test rows the attack uses as non-members. With a class, also queues the probes.
    fn forget(
        &self,
        title: &str,
        rows: &[usize],
        remaining: &[usize],
        never_seen: &[usize],
        jobs: &mut Jobs,
        class: Option<u32>,
    ) -> Result<Scenario> {
        let data = self.data;
        let before = data.logits(self.head)?;
        let ids: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
        let t = Instant::now();
        self.head.forget(&ids)?;
        let forget_seconds = t.elapsed().as_secs_f64();
        let lethe_w = self.head.weights()?;
        let canonical_seconds = t.elapsed().as_secs_f64();
        let receipt = self.head.receipt()?;
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
        let receipt_verified = fresh.receipt()? == receipt;
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
        let ridge = ridge_job(jobs, self.data, rows, remaining, &lethe_w)?;
        jobs.push(ridge);
        let probes = match class {
            Some(class) => {
                let y = Array1::from_iter(
                    data.test_labels
                        .iter()
                        .map(|&l| u8::from(l == class) as i64),
                )
                .into_dyn();
                let test_y = jobs.write("probe_y.npy", &y)?;
                let test_phi = jobs.write("probe_phi.npy", &data.test_phi.clone().into_dyn())?;
                let forgotten_phi = jobs.write(
                    "probe_forgotten_phi.npy",
                    &data.phi.select(Axis(0), rows).into_dyn(),
                )?;
                for (model, (train, test)) in [
                    ("before", &before),
                    ("lethe", &after),
                    ("retrained", &retrained),
                ] {
                    let logits = jobs.write(
                        &format!("probe_logits_{model}.npy"),
                        &test.clone().into_dyn(),
                    )?;
                    let forgotten = jobs.write(
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
            ridge: RidgeRetrain::default(),
            logits_identical: after.1 == retrained.1 && after.0 == retrained.0,
            receipt: hex(&receipt.digest),
            receipt_verified,
            attack: Trio {
                before: attack_on(&before),
                lethe: attack_on(&after),
                retrained: attack_on(&retrained),
            },
            probes,
        })
    }
}
