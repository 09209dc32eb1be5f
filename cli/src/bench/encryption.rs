//! Encryption (DESIGN.md G9): the same durable calls on a state dir without a key and on one
//! with a key, interleaved in one run, so that the cost of sealing is a ratio.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;

use super::forget::ForgetSweep;
use super::plan::Plan;
use super::results::EncryptionRow;
use crate::digits::digit_inputs;
use crate::global::Global;
use crate::harness::{median, seconds_of, time_forget};
use crate::units::{fmt_secs, fmt_signed_secs};
use lethe::data::Digits;
use lethe::{Core, Error, Head, HeadOptions, Result, StateKey};

/// Samples per learn call when filling the encrypted head.
const FILL_CHUNK: usize = 2500;

fn keyed(key: &StateKey) -> HeadOptions {
    HeadOptions {
        key: Some(key.clone()),
        ..HeadOptions::default()
    }
}

/// Measures on two state dirs filled alike with the same `n` samples of the sweep's bundle,
/// one without a key and one with: opening each, and a durable forget of one sample. (Not the
/// sweep's own dir: its history of forgets and learns, whose records then sit in other places,
/// moves a forget's time by more than a key does.) The row also carries the learn's times,
/// measured by [`learn_both`].
pub fn bench_encryption(
    plan: &Plan,
    work: &Path,
    sweep: &ForgetSweep<'_>,
    n: usize,
    rng: &mut StdRng,
    (learn_plain, learn_encrypted): (f64, f64),
) -> Result<EncryptionRow> {
    let key = StateKey::new(rng.random());
    let (bundle, batch) = plan.encryption_learn;

    let (plain, encrypted) = (work.join("state-plain"), work.join("state-encrypted"));
    for (dir, options) in [(&plain, HeadOptions::default()), (&encrypted, keyed(&key))] {
        eprintln!("  filling {} with {n} samples", dir.display());
        let head = Head::open(sweep.core.clone(), dir, &options)?;
        for from in (0..n).step_by(FILL_CHUNK) {
            let ids: Vec<u64> = (from as u64..(from + FILL_CHUNK).min(n) as u64).collect();
            sweep.learn(&head, &ids)?;
        }
        head.close()?;
    }
    let plain = plain.as_path();
    let (mut open_plain, mut open_encrypted) = (Vec::new(), Vec::new());
    for _ in 0..plan.open_repeats {
        open_plain.push(seconds_of(|| {
            Head::open(sweep.core.clone(), plain, &HeadOptions::default()).map(drop)
        })?);
        open_encrypted.push(seconds_of(|| {
            Head::open(sweep.core.clone(), &encrypted, &keyed(&key)).map(drop)
        })?);
    }

    let ids: Vec<u64> = (0..n as u64).collect();
    let heads = [
        Head::open(sweep.core.clone(), plain, &HeadOptions::default())?,
        Head::open(sweep.core.clone(), &encrypted, &keyed(&key))?,
    ];
    // In pairs, each a forget on either dir back to back, the first of the pair alternating:
    // the difference within a pair is little touched by the machine's slower stretches, which
    // move both of its forgets.
    let mut forgets = [Vec::new(), Vec::new()];
    let mut added = Vec::new();
    for pair in 0..plan.encryption_forget_pairs {
        let mut times = [0.0; 2];
        for which in [pair % 2, 1 - pair % 2] {
            let head = &heads[which];
            (times[which], _) = time_forget(head, &ids, 1, 1, rng, &|ids| sweep.learn(head, ids))?;
            forgets[which].push(times[which]);
        }
        added.push(times[1] - times[0]);
    }
    for head in heads {
        head.close()?;
    }
    for dir in [plain, encrypted.as_path()] {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let [forget_plain, forget_encrypted] = forgets.map(median);
    let row = EncryptionRow {
        bundle: bundle.into(),
        batch,
        learn_plain,
        learn_encrypted,
        n,
        d: sweep.d,
        c: sweep.c,
        open_plain: median(open_plain),
        open_encrypted: median(open_encrypted),
        forget_plain,
        forget_encrypted,
        forget_added: median(added),
        pairs: plan.encryption_forget_pairs,
    };
    eprintln!(
        "  learn {bundle} batch {batch}: {} vs {}; open n {n}: {} vs {}; forget 1: {} vs {} \
         ({} within pairs)",
        fmt_secs(row.learn_plain),
        fmt_secs(row.learn_encrypted),
        fmt_secs(row.open_plain),
        fmt_secs(row.open_encrypted),
        fmt_secs(row.forget_plain),
        fmt_secs(row.forget_encrypted),
        fmt_signed_secs(row.forget_added)
    );
    Ok(row)
}

/// A durable learn of the plan's batch of real digits on a state dir without and with a key,
/// alternating; the medians.
pub fn learn_both(
    g: &Global,
    models: &Path,
    plan: &Plan,
    digits: &Digits,
    work: &Path,
    rng: &mut StdRng,
) -> Result<(f64, f64)> {
    let key = &StateKey::new(rng.random());
    let (bundle, batch) = plan.encryption_learn;
    let core = Arc::new(Core::open(models.join(bundle), &g.core_options())?);
    let dirs = [work.join("learn-plain"), work.join("learn-encrypted")];
    let heads = [
        Head::open(core.clone(), &dirs[0], &HeadOptions::default())?,
        Head::open(core.clone(), &dirs[1], &keyed(key))?,
    ];
    let picked: Vec<usize> = (0..batch).map(|i| i % digits.len()).collect();
    let input = digit_inputs(core.bundle(), digits, &picked)?;
    let labels: Vec<u32> = picked.iter().map(|&r| digits.labels[r]).collect();
    let (phi, z) = heads[0].core_features(&input, batch)?;
    let mut times = [Vec::new(), Vec::new()];
    for rep in 0..=plan.learn_repeats {
        let ids: Vec<u64> = (0..batch as u64)
            .map(|i| (rep * batch) as u64 + i)
            .collect();
        for (head, t) in heads.iter().zip(&mut times) {
            let learn = seconds_of(|| head.learn_features(&ids, &phi, &z, &labels))?;
            head.settle()?;
            if rep > 0 {
                t.push(learn);
            }
        }
    }
    for head in heads {
        head.close()?;
    }
    for dir in &dirs {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let [plain, encrypted] = times.map(median);
    Ok((plain, encrypted))
}
