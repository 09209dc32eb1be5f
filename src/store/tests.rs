//! Fault injection (G3): every step of every call, made to fail, crash or lose power.
//!
//! For each call (learn, forget and forget-all, both as the first change after opening a closed
//! state dir and later; close; recovery; creation) and each step N it takes (its own steps and
//! those of the close that dropping the head runs), the N-th step fails ([`Mode::Error`]), or
//! the process dies there ([`Mode::Crash`]), or the machine loses power there
//! ([`Mode::PowerLoss`]: every change not yet synced is undone; [`Mode::PowerLossKeepNames`]:
//! unsynced data is lost but renames, links and removals reached the disk). Then the state dir is
//! reopened: it must hold exactly the samples before or after the call (after, whenever the
//! call returned OK), with weights bit-identical to a fresh head's on those samples, and after
//! closing it must be byte-identical to a state dir that only ever learned them (G2), which also
//! shows that no forgotten sample and no leftover file survived recovery.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::Array2;

use super::io::failpoint::{self, Mode};
use crate::error::Result;
use crate::head::{Head, HeadOptions};
use crate::math::fixed::FixedPoint;
use crate::math::spec::HeadSpec;
use crate::math::weights::Weights;

const D: usize = 5;
const C: usize = 3;
const CORE_SHA256: &str = "5e7f0c0e5f1b0d8f6d1b8a3c9e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f";

fn spec() -> HeadSpec {
    HeadSpec {
        features: "features".into(),
        dim: D,
        classes: (0..C).map(|i| i.to_string()).collect(),
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

fn options() -> HeadOptions {
    HeadOptions {
        synchronous_resolve: true,
        ..Default::default()
    }
}

fn open(dir: &Path) -> Result<Head> {
    Head::open_detached(spec(), CORE_SHA256, dir, &options())
}

fn learn(head: &Head, ids: &[u64]) -> Result<()> {
    let value = |id: u64, j: usize| ((id * 7 + j as u64 * 3) % 13) as f32 * 0.25 - 1.5;
    let phi = Array2::from_shape_fn((ids.len(), D), |(i, j)| value(ids[i], j));
    let z = Array2::zeros((ids.len(), C));
    let labels: Vec<u32> = ids.iter().map(|&id| (id % C as u64) as u32).collect();
    head.learn_features(ids, &phi, &z, &labels)
}

/// Runs `f` with this thread's steps counted but never failed, and syncs modelled rather than
/// issued (nothing here needs real durability, and real syncs would make the tests slow).
fn quiet<T>(f: impl FnOnce() -> T) -> T {
    if failpoint::is_armed() {
        return f();
    }
    failpoint::arm(Mode::Error, 0);
    let out = f();
    failpoint::disarm();
    out
}

/// Every file of a state dir but the lock: name → bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "lock")
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// What a state dir that only ever learned `ids` holds after close, and its weights.
struct Reference {
    files: BTreeMap<String, Vec<u8>>,
    weights: Weights,
}

fn reference(ids: &[u64]) -> Reference {
    quiet(|| {
        let dir = tempfile::tempdir().unwrap();
        let head = open(dir.path()).unwrap();
        learn(&head, ids).unwrap();
        let weights = head.weights().unwrap();
        head.close().unwrap();
        Reference {
            files: files(dir.path()),
            weights,
        }
    })
}

struct Case {
    name: &'static str,
    /// Brings a new state dir to the state before the call; returns the head open on it, if
    /// the call needs one.
    setup: fn(&Path) -> Option<Head>,
    /// The call; dropping the head closes it, which is part of what is tested.
    call: fn(&Path, Option<Head>) -> Result<()>,
    before: &'static [u64],
    after: &'static [u64],
}

/// A closed state dir holding samples 1..=6, reopened.
fn closed_six(dir: &Path) -> Option<Head> {
    let head = open(dir).unwrap();
    learn(&head, &[1, 2, 3, 4, 5, 6]).unwrap();
    head.close().unwrap();
    Some(open(dir).unwrap())
}

const SIX: &[u64] = &[1, 2, 3, 4, 5, 6];

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "learn, first change after opening",
            setup: closed_six,
            call: |_, h| learn(&h.unwrap(), &[10, 11, 12]),
            before: SIX,
            after: &[1, 2, 3, 4, 5, 6, 10, 11, 12],
        },
        Case {
            name: "learn into a freed slot and past the end",
            setup: |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[3]).unwrap();
                Some(head)
            },
            call: |_, h| learn(&h.unwrap(), &[10, 11]),
            before: &[1, 2, 4, 5, 6],
            after: &[1, 2, 4, 5, 6, 10, 11],
        },
        Case {
            name: "forget, first change after opening",
            setup: closed_six,
            call: |_, h| h.unwrap().forget(&[2, 5]),
            before: SIX,
            after: &[1, 3, 4, 6],
        },
        Case {
            name: "forget a sample learned in this session",
            setup: |dir| {
                let head = closed_six(dir).unwrap();
                learn(&head, &[7]).unwrap();
                Some(head)
            },
            call: |_, h| h.unwrap().forget(&[7, 2]),
            before: &[1, 2, 3, 4, 5, 6, 7],
            after: &[1, 3, 4, 5, 6],
        },
        Case {
            name: "forget-all, first change after opening",
            setup: closed_six,
            call: |_, h| h.unwrap().forget_all(),
            before: SIX,
            after: &[],
        },
        Case {
            name: "forget-all in a new state dir",
            setup: |dir| {
                let head = open(dir).unwrap();
                learn(&head, SIX).unwrap();
                Some(head)
            },
            call: |_, h| h.unwrap().forget_all(),
            before: SIX,
            after: &[],
        },
        Case {
            name: "close after changes",
            setup: |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[4]).unwrap();
                learn(&head, &[8]).unwrap();
                Some(head)
            },
            call: |_, h| h.unwrap().close(),
            before: &[1, 2, 3, 5, 6, 8],
            after: &[1, 2, 3, 5, 6, 8],
        },
        Case {
            name: "recovery after a crash",
            setup: |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[1]).unwrap();
                learn(&head, &[9]).unwrap();
                failpoint::arm(Mode::Crash, 1);
                drop(head);
                failpoint::disarm();
                failpoint::arm(Mode::Error, 0);
                None
            },
            call: |dir, _| open(dir).map(drop),
            before: &[2, 3, 4, 5, 6, 9],
            after: &[2, 3, 4, 5, 6, 9],
        },
        Case {
            name: "creation",
            setup: |_| None,
            call: |dir, _| open(dir).map(drop),
            before: &[],
            after: &[],
        },
    ]
}

/// Runs `case` with step `at` failing as `mode` says; returns whether the call returned OK,
/// and the state dir.
fn run(case: &Case, mode: Mode, at: u64) -> (bool, tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let head = quiet(|| (case.setup)(dir.path()));
    failpoint::arm(mode, at);
    let ok = (case.call)(dir.path(), head).is_ok();
    let (steps, _) = failpoint::disarm();
    (ok, dir, steps)
}

#[test]
fn every_step_of_every_call_fails_or_crashes_atomically() {
    let mut references = BTreeMap::new();
    for case in cases() {
        for ids in [case.before, case.after] {
            references.entry(ids).or_insert_with(|| reference(ids));
        }
        let (ok, _, steps) = run(&case, Mode::Error, 0);
        assert!(ok, "{}: the call fails without faults", case.name);
        assert!(steps > 0, "{}: takes no step", case.name);
        for mode in [
            Mode::Error,
            Mode::Crash,
            Mode::PowerLoss,
            Mode::PowerLossKeepNames,
        ] {
            for at in 1..=steps {
                let (ok, dir, _) = run(&case, mode, at);
                let context = format!("{}, step {at} of {steps}, {mode:?}", case.name);
                quiet(|| {
                    let head = open(dir.path())
                        .unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
                    let ids = head.ids();
                    let outcome = if ids == case.after {
                        case.after
                    } else if ids == case.before && !ok {
                        case.before
                    } else {
                        panic!(
                            "{context}: the call returned ok = {ok}, the state dir holds {ids:?}"
                        )
                    };
                    let reference = &references[outcome];
                    assert!(
                        head.weights().unwrap() == reference.weights,
                        "{context}: weights differ from a fresh head's"
                    );
                    assert!(head.verify().unwrap().ok(), "{context}: verify failed");
                    head.close().unwrap();
                    assert!(
                        files(dir.path()) == reference.files,
                        "{context}: closed state dir differs from a fresh one's: {:?}",
                        files(dir.path()).keys().collect::<Vec<_>>()
                    );
                });
            }
        }
    }
}

/// Writes `files` as the whole content of `dir` (the lock aside).
fn lay_out(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "lock" {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The ways a file is damaged: one flipped bit per byte (a different bit each time),
/// truncations and extensions.
fn damaged(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = (0..bytes.len())
        .map(|pos| {
            let mut b = bytes.to_vec();
            b[pos] ^= 1 << (pos % 8);
            (format!("bit {} of byte {pos} flipped", pos % 8), b)
        })
        .collect();
    for len in [0, 1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
        out.push((format!("truncated to {len} bytes"), bytes[..len].to_vec()));
    }
    for extra in [&[0u8][..], &[0u8; 64][..], b" "] {
        let mut b = bytes.to_vec();
        b.extend_from_slice(extra);
        out.push((format!("extended by {} bytes", extra.len()), b));
    }
    out
}

/// G5: any damage to any file of a closed state dir is an error on open that names the file.
#[test]
fn damage_to_a_closed_state_dir_is_detected_and_named() {
    quiet(|| {
        let dir = tempfile::tempdir().unwrap();
        let head = open(dir.path()).unwrap();
        learn(&head, &[1, 2, 3, 4, 5]).unwrap();
        head.close().unwrap();
        let good = files(dir.path());
        assert_eq!(
            good.keys().collect::<Vec<_>>(),
            ["meta.json", "samples.bin", "stats.bin"]
        );
        for (name, bytes) in &good {
            for (how, bad) in damaged(bytes) {
                let mut files = good.clone();
                files.insert(name.clone(), bad);
                lay_out(dir.path(), &files);
                match open(dir.path()) {
                    Err(crate::Error::State { message, .. }) => assert!(
                        message.contains(name.as_str()),
                        "{name} {how}: the error does not name it: {message}"
                    ),
                    Err(e) => panic!("{name} {how}: not a state error: {e}"),
                    Ok(_) => panic!("{name} {how}: opened without an error"),
                }
            }
        }
    })
}

/// G5 for a state dir left open by a crash (with a journal): damage is an error that names the
/// file, or harmless (a flipped bit in a free slot, in one copy of the journal's last entry,
/// or a journal cut at its tail, which is what a crash while appending leaves): the state
/// opened is then exactly the committed one. Nothing else is ever opened.
#[test]
fn damage_to_a_crashed_state_dir_is_detected_or_harmless() {
    quiet(|| {
        let dir = tempfile::tempdir().unwrap();
        let head = closed_six(dir.path()).unwrap();
        head.forget(&[2]).unwrap();
        learn(&head, &[7, 8]).unwrap();
        head.forget(&[7]).unwrap();
        learn(&head, &[9]).unwrap();
        let crashed = files(dir.path());
        head.close().unwrap();
        assert_eq!(
            crashed.keys().collect::<Vec<_>>(),
            ["journal", "meta.json", "samples.bin"]
        );
        let committed: &[u64] = &[1, 3, 4, 5, 6, 8, 9];
        let reference = reference(committed);
        // Cutting the journal at its tail drops the last entries, as a crash while appending
        // them would have: the learn of 9 can go unnoticed (its record then looks uncommitted),
        // the forget of 7 cannot (its record is already zero).
        let earlier: &[u64] = &[1, 3, 4, 5, 6, 8];
        for (name, bytes) in &crashed {
            for (how, bad) in damaged(bytes) {
                let mut files = crashed.clone();
                files.insert(name.clone(), bad);
                lay_out(dir.path(), &files);
                match open(dir.path()) {
                    Err(crate::Error::State { message, .. }) => assert!(
                        message.contains(name.as_str()),
                        "{name} {how}: the error does not name it: {message}"
                    ),
                    Err(e) => panic!("{name} {how}: not a state error: {e}"),
                    Ok(head) => {
                        let ids = head.ids();
                        let cut = name == "journal" && how.starts_with("truncated");
                        if ids == earlier && cut {
                            continue;
                        }
                        assert_eq!(ids, committed, "{name} {how}: opened another state");
                        assert!(head.weights().unwrap() == reference.weights, "{name} {how}");
                    }
                }
            }
        }
    })
}

/// After an I/O error the head keeps serving what it had, refuses changes, and the next open
/// recovers the state dir.
#[test]
fn after_a_failed_write_changes_are_refused_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let head = quiet(|| closed_six(dir.path()).unwrap());
    let weights = head.weights().unwrap();
    failpoint::arm(Mode::Error, 1);
    assert!(head.forget(&[2]).is_err());
    failpoint::disarm();
    quiet(|| {
        assert_eq!(head.ids(), SIX);
        assert!(head.weights().unwrap() == weights);
        for result in [learn(&head, &[20]), head.forget(&[3]), head.forget_all()] {
            match result {
                Err(crate::Error::State { message, .. }) => {
                    assert!(message.contains("reopen"), "{message}")
                }
                other => panic!("a change was accepted after a failed write: {other:?}"),
            }
        }
        assert!(head.close().is_err());
        assert_eq!(open(dir.path()).unwrap().ids(), SIX);
    });
}
