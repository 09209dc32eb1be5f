//! Predict, learn and open: Lethe next to a bare ONNX Runtime session and the core.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::baselines::{bare_inputs, bare_run, bare_run_inputs, bare_session};
use super::plan::Plan;
use super::results::{LearnRow, OpenRow, PredictRow};
use crate::digits::{digit_features, digit_inputs, MOBILENET};
use crate::global::Global;
use crate::harness::{median, seconds_of, time_pair};
use crate::tweets::Tweets;
use crate::units::fmt_secs;
use lethe::data::Digits;
use lethe::{Core, Error, Head, HeadOptions, Result};

/// Samples the head learns before its predictions are timed (its weights are then not zero;
/// the time of a prediction does not depend on them).
const PREDICT_HEAD_SAMPLES: usize = 100;
/// A text row's batches: consecutive test tweets, each batch padded to its longest, taken in
/// turn so that the timings cover real sentence lengths.
pub const TEXT_BATCHES: usize = 16;

/// `Head::predict` vs a bare ONNX Runtime session, at each bundle and batch of the plan: real
/// digits for the image bundles, real tweets from `data` for a text bundle.
pub fn bench_predict(
    g: &Global,
    models: &Path,
    plan: &Plan,
    digits: &Digits,
    data: &Path,
) -> Result<Vec<PredictRow>> {
    let mut rows = Vec::new();
    for &(name, batch) in &plan.predict_batches {
        let core = Arc::new(Core::open(models.join(name), &g.core_options())?);
        let head = Head::in_memory(core.clone(), &HeadOptions::default())?;
        let mut session = bare_session(core.bundle(), g.threads)?;
        let (bare, lethe, repeats, (phi, z), text) = if core.text().is_some() {
            let classes = core.bundle().manifest.classes.len();
            let train = Tweets::read(data, "train", classes)?;
            let taught: Vec<usize> = (0..train.labels.len().min(PREDICT_HEAD_SAMPLES)).collect();
            let ids: Vec<u64> = taught.iter().map(|&r| r as u64).collect();
            let labels: Vec<u32> = taught.iter().map(|&r| train.labels[r]).collect();
            head.learn_text(&ids, &train.texts(&taught), &labels)?;
            let test = Tweets::read(data, "test", classes)?;
            let texts: Vec<Vec<&str>> = (0..TEXT_BATCHES)
                .map(|b| {
                    let rows: Vec<usize> = (b * batch..(b + 1) * batch)
                        .map(|i| i % test.labels.len())
                        .collect();
                    test.texts(&rows)
                })
                .collect();
            let mut tokenize = Vec::new();
            let mut batches = Vec::new();
            for t in &texts {
                let start = Instant::now();
                batches.push(core.encode_text(t)?);
                tokenize.push(start.elapsed().as_secs_f64());
            }
            let bare_inputs = batches
                .iter()
                .map(|b| bare_inputs(b))
                .collect::<Result<Vec<_>>>()?;
            let tokens =
                batches.iter().map(|b| b[0].shape()[1] as f64).sum::<f64>() / batches.len() as f64;
            // Both sides take the batches in the same turn: they are called equally often.
            let (mut next_bare, mut next_lethe) = (0, 0);
            let (bare, lethe, repeats) = time_pair(
                7,
                plan.predict_budget,
                || {
                    next_bare += 1;
                    bare_run_inputs(&mut session, &bare_inputs[next_bare % TEXT_BATCHES])
                },
                || {
                    next_lethe += 1;
                    head.predict_tensors(&batches[next_lethe % TEXT_BATCHES])
                        .map(|l| drop(std::hint::black_box(l)))
                },
            )?;
            let (phi, z) = head.core_features_tensors(&batches[0])?;
            (
                bare,
                lethe,
                repeats,
                (phi, z),
                Some((tokens, median(tokenize))),
            )
        } else {
            let taught: Vec<usize> = (0..digits.len().min(PREDICT_HEAD_SAMPLES)).collect();
            learn_digits(&head, digits, &taught)?;
            let rows_in: Vec<usize> = (0..batch).map(|i| i % digits.len()).collect();
            let input = digit_inputs(core.bundle(), digits, &rows_in)?;
            let (bare, lethe, repeats) = time_pair(
                7,
                plan.predict_budget,
                || bare_run(&mut session, core.bundle(), &input, batch),
                || {
                    head.predict(&input, batch)
                        .map(|l| drop(std::hint::black_box(l)))
                },
            )?;
            let features = head.core_features(&input, batch)?;
            (bare, lethe, repeats, features, None)
        };
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
            text,
        });
    }
    Ok(rows)
}

/// Learns the given digits (ids = row numbers) through the head's core.
fn learn_digits(head: &Head, digits: &Digits, rows: &[usize]) -> Result<()> {
    let (phi, z) = digit_features(head, digits, rows)?;
    let ids: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
    let labels: Vec<u32> = rows.iter().map(|&r| digits.labels[r]).collect();
    head.learn_features(&ids, &phi, &z, &labels)
}

/// The head's part of a learn (durable and in memory) vs the core's inference.
pub fn bench_learn(
    g: &Global,
    models: &Path,
    plan: &Plan,
    digits: &Digits,
    work: &Path,
) -> Result<Vec<LearnRow>> {
    let mut rows = Vec::new();
    for &(name, batch) in &plan.learn {
        let core = Arc::new(Core::open(models.join(name), &g.core_options())?);
        let dir = work.join(format!("learn-{name}-{batch}"));
        let durable = Head::open(core.clone(), &dir, &HeadOptions::default())?;
        let memory = Head::in_memory(core.clone(), &HeadOptions::default())?;
        let picked: Vec<usize> = (0..batch).map(|i| i % digits.len()).collect();
        let input = digit_inputs(core.bundle(), digits, &picked)?;
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
        for rep in 0..=plan.learn_repeats {
            let tc = seconds_of(|| durable.core_features(&input, batch).map(drop))?;
            let td = seconds_of(|| durable.learn_features(&fresh_ids(), &phi, &z, &labels))?;
            let tr = seconds_of(|| durable.weights().map(drop))?;
            durable.settle()?;
            // Right after a run of the core too, so that both learns meet its spinning threads.
            memory.core_features(&input, batch)?;
            let tm = seconds_of(|| memory.learn_features(&fresh_ids(), &phi, &z, &labels))?;
            memory.settle()?;
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

/// Opening the closed state dir `state` of a head over `core` that holds `n` samples.
pub fn bench_open(
    g: &Global,
    models: &Path,
    core: &Arc<Core>,
    state: &Path,
    plan: &Plan,
    n: usize,
) -> Result<OpenRow> {
    let (mut d, mut c) = (0, 0);
    let bytes = dir_size(state)?;
    let mut opens = Vec::new();
    for _ in 0..plan.open_repeats {
        let t = Instant::now();
        let head = Head::open(core.clone(), state, &HeadOptions::default())?;
        opens.push(t.elapsed().as_secs_f64());
        (d, c) = (head.spec().dim, head.spec().num_classes());
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
            Core::open(models.join(MOBILENET), &g.core_options()).map(drop)
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
