//! `lethe demo`: the main job on the bundled mnist-core and real MNIST digits.
//!
//! The core was trained on digits 0–4 only. The user's head learns digits 5–9 (and some 0–4)
//! on the device; then it forgets a random 10 % of the samples, then a whole class, each time
//! next to a head retrained from scratch on what remains; finally it forgets everything and is
//! exactly the core again.

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
use lethe::data::Digits;
use lethe::{Core, Head, HeadOptions};
use lethe::{Error, Result};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The bundle (the demo expects mnist-core's classes 0–9).
    #[arg(long, default_value = "models/mnist-core")]
    pub bundle: PathBuf,
    /// Folder with train_/test_ images and labels (.npy).
    #[arg(long, default_value = "tests/data")]
    pub data: PathBuf,
    /// Keep the state dir here instead of a temporary folder.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The class to forget as a whole.
    #[arg(long, default_value_t = 8)]
    pub forget_class: u32,
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
    if m.classes.len() != 10 {
        return Err(Error::InvalidInput(format!(
            "the demo needs a bundle with the 10 digit classes; {} has {}",
            m.name,
            m.classes.len()
        )));
    }
    println!(
        "Lethe demo: bundle {} ({}), opened in {}",
        m.name,
        m.description,
        secs(t)
    );
    let train = Digits::read(&args.data, "train")?;
    let test = Digits::read(&args.data, "test")?;
    println!(
        "data: {} user digits (MNIST validation split) and {} test digits (MNIST test split)\n",
        train.len(),
        test.len()
    );

    // Run the core once over every image; all heads below reuse these features.
    let t = Instant::now();
    let probe = Head::in_memory(core.clone(), &HeadOptions::default())?;
    let all_train: Vec<usize> = (0..train.len()).collect();
    let all_test: Vec<usize> = (0..test.len()).collect();
    let ev = Eval {
        train: core_features(
            &probe,
            &Samples::Floats(train.len(), train.inputs(&all_train)),
        )?,
        test: core_features(&probe, &Samples::Floats(test.len(), test.inputs(&all_test)))?,
        train_labels: train.labels.clone(),
        test_labels: test.labels.clone(),
    };
    drop(probe);
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let user: Vec<usize> = (0..train.len())
        .filter(|&r| ev.train_labels[r] >= 5 || r % 5 == 0)
        .collect();
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
    learn_rows(&head, &ev, &user)?;
    println!(
        "learn: {} user samples in {} (durable)",
        user.len(),
        secs(t)
    );
    let logits = head.predict_features(&ev.test.0, &ev.test.1)?;
    println!(
        "head on test digits:       0–4 {}  5–9 {}  all {}\n",
        pct(accuracy(&logits, &ev.test_labels, &test04)),
        pct(accuracy(&logits, &ev.test_labels, &test59)),
        pct(accuracy(&logits, &ev.test_labels, &all_test)),
    );

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
        &core,
        &ev,
        &format!("forget a random 10 % ({} samples)", forgotten.len()),
        &forgotten,
        &remaining,
    )?;

    // Forget a whole class.
    let class = args.forget_class;
    let class_rows: Vec<usize> = remaining
        .iter()
        .copied()
        .filter(|&r| ev.train_labels[r] == class)
        .collect();
    remaining.retain(|&r| ev.train_labels[r] != class);
    forget_step(
        &head,
        &core,
        &ev,
        &format!("forget class {class} ({} samples)", class_rows.len()),
        &class_rows,
        &remaining,
    )?;
    let class_test = rows_where(&ev.test_labels, |l| l == class);
    let logits = head.predict_features(&ev.test.0, &ev.test.1)?;
    println!(
        "  test digits {class}: {} recognised ({} samples of class {class} left in the head)\n",
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
    println!(
        "  head on test digits:     0–4 {}  5–9 {}",
        pct(accuracy(&logits, &ev.test_labels, &test04)),
        pct(accuracy(&logits, &ev.test_labels, &test59)),
    );
    println!(
        "  max |head logits − core logits| = {max_diff:e} on the test digits: {}",
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
