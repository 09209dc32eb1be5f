//! Fault injection (G3, G5): every step of every call, made to fail, crash, lose power or run
//! out of space.
//!
//! For each call (learn, forget and forget-all, both as the first change after opening a closed
//! state dir and later; a learn that checkpoints the journal; close; recovery; creation of a new
//! dir) and each step N it takes (its own steps and those of the close that dropping the head
//! runs), the N-th step fails ([`Mode::Error`]), or the process dies there ([`Mode::Crash`]), or
//! the machine loses power there ([`Mode::PowerLoss`]: every change not yet synced is undone;
//! [`Mode::PowerLossKeepNames`]: unsynced data is lost but name changes reached the disk;
//! [`Mode::PowerLossTorn`]: a random subset of the unsynced writes survives, the last one torn,
//! and a prefix of the name changes), or the disk is full from there on ([`Mode::NoSpace`]).
//!
//! The commit point decides (see the module docs of `crate::store`): a call that returned an
//! error changed nothing, in memory and on disk, and can simply be retried; a call that
//! returned OK is durable, whatever failed after its commit. So when a step fails (or the disk
//! fills) the head must hold, and reopening must give, exactly the samples before the call if
//! it returned an error and exactly those after if it returned OK; after a crash or power loss,
//! either. The weights must be bit-identical to a fresh head's on those samples, and after
//! closing, the dir byte-identical to one that only ever learned them (G2), which also shows
//! that no forgotten sample and no leftover file survived.

use std::cell::Cell;
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
/// Seeds of [`Mode::PowerLossTorn`] tried at every step.
const TORN_SEEDS: u64 = 3;

thread_local! {
    /// Journal entries after which this thread's stores checkpoint.
    pub(super) static CHECKPOINT_EVERY: Cell<u64> = const { Cell::new(super::CHECKPOINT_ENTRIES) };
}

fn spec() -> HeadSpec {
    let fixed = FixedPoint {
        frac_bits: 16,
        feature_max_abs: 8.0,
        target_max_abs: 16.0,
    };
    HeadSpec::detached(D, C, 0.5, fixed).expect("a valid spec")
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

/// Every file of a state dir: name → bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
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

/// What a freshly created state dir holds while its head is open.
fn fresh_open_files() -> BTreeMap<String, Vec<u8>> {
    quiet(|| {
        let dir = tempfile::tempdir().unwrap();
        let _head = open(dir.path()).unwrap();
        files(dir.path())
    })
}

struct Case {
    name: &'static str,
    /// Brings a new state dir (the path does not exist yet) to the state before the call;
    /// returns the head open on it, if the call needs one.
    setup: fn(&Path) -> Option<Head>,
    /// The call; dropping the head afterwards closes it, which is part of what is tested.
    call: fn(&Path, &mut Option<Head>) -> Result<()>,
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
            call: |_, h| learn(h.as_ref().unwrap(), &[10, 11, 12]),
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
            call: |_, h| learn(h.as_ref().unwrap(), &[10, 11]),
            before: &[1, 2, 4, 5, 6],
            after: &[1, 2, 4, 5, 6, 10, 11],
        },
        Case {
            name: "learn that checkpoints the journal",
            setup: |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[3]).unwrap();
                learn(&head, &[7]).unwrap();
                head.forget(&[5]).unwrap();
                CHECKPOINT_EVERY.with(|c| c.set(4));
                Some(head)
            },
            call: |_, h| learn(h.as_ref().unwrap(), &[10, 11]),
            before: &[1, 2, 4, 6, 7],
            after: &[1, 2, 4, 6, 7, 10, 11],
        },
        Case {
            name: "forget, first change after opening",
            setup: closed_six,
            call: |_, h| h.as_ref().unwrap().forget(&[2, 5]),
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
            call: |_, h| h.as_ref().unwrap().forget(&[7, 2]),
            before: &[1, 2, 3, 4, 5, 6, 7],
            after: &[1, 3, 4, 5, 6],
        },
        Case {
            name: "forget after a checkpoint",
            setup: |dir| {
                let head = closed_six(dir).unwrap();
                CHECKPOINT_EVERY.with(|c| c.set(2));
                head.forget(&[3]).unwrap();
                learn(&head, &[7, 8]).unwrap();
                head.forget(&[8]).unwrap();
                CHECKPOINT_EVERY.with(|c| c.set(super::CHECKPOINT_ENTRIES));
                Some(head)
            },
            call: |_, h| h.as_ref().unwrap().forget(&[7, 1]),
            before: &[1, 2, 4, 5, 6, 7],
            after: &[2, 4, 5, 6],
        },
        Case {
            name: "forget-all, first change after opening",
            setup: closed_six,
            call: |_, h| h.as_ref().unwrap().forget_all(),
            before: SIX,
            after: &[],
        },
        Case {
            name: "forget-all in a new state dir",
            setup: |dir| {
                let head = open(dir).unwrap();
                learn(&head, SIX).unwrap();
                head.forget(&[4]).unwrap();
                Some(head)
            },
            call: |_, h| h.as_ref().unwrap().forget_all(),
            before: &[1, 2, 3, 5, 6],
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
            call: |_, h| h.take().unwrap().close(),
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
            name: "learn into a new state dir",
            setup: |_| None,
            call: |dir, h| {
                let head = h.insert(open(dir)?);
                learn(head, &[1, 2])
            },
            before: &[],
            after: &[1, 2],
        },
    ]
}

/// How one run went.
struct Run {
    /// Whether the call returned OK.
    ok: bool,
    /// The ids the head held right after the call, if it was still open.
    held: Option<Vec<u64>>,
    dir: tempfile::TempDir,
    steps: u64,
}

impl Run {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }
}

/// Runs `case` with step `at` failing as `mode` says (`retry`: calls again when it fails);
/// `then` runs afterwards on the head, still armed (the disk still full, say).
fn run(
    case: &Case,
    mode: Mode,
    at: u64,
    retry: bool,
    then: impl FnOnce(&Path, Option<Head>),
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut head = quiet(|| (case.setup)(&path));
    let had_head = head.is_some();
    failpoint::arm(mode, at);
    let mut ok = (case.call)(&path, &mut head).is_ok();
    if retry && !ok && had_head && head.is_some() {
        ok = (case.call)(&path, &mut head).is_ok();
        assert!(
            ok,
            "{}: retrying after a failure at step {at} failed",
            case.name
        );
    }
    let held = head.as_ref().map(|h| h.ids());
    then(&path, head);
    let (steps, _) = failpoint::disarm();
    CHECKPOINT_EVERY.with(|c| c.set(super::CHECKPOINT_ENTRIES));
    Run {
        ok,
        held,
        dir,
        steps,
    }
}

/// Reopens a state dir and checks that it holds `ids` and is canonical, open and closed.
fn check_reopened(path: &Path, ids: &[u64], reference: &Reference, context: &str) {
    quiet(|| {
        let head = open(path).unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
        assert_eq!(head.ids(), ids, "{context}: reopened");
        assert!(
            head.weights().unwrap() == reference.weights,
            "{context}: weights differ from a fresh head's"
        );
        assert!(head.verify().unwrap().ok(), "{context}: verify failed");
        head.close().unwrap();
        assert!(
            files(path) == reference.files,
            "{context}: closed state dir differs from a fresh one's: {:?}",
            files(path).keys().collect::<Vec<_>>()
        );
    });
}

#[test]
fn every_step_of_every_call_fails_or_crashes_atomically() {
    let mut references = BTreeMap::new();
    for case in cases() {
        for ids in [case.before, case.after] {
            references.entry(ids).or_insert_with(|| reference(ids));
        }
        let clean = run(&case, Mode::Error, 0, false, |_, h| drop(h));
        assert!(clean.ok, "{}: the call fails without faults", case.name);
        assert!(clean.steps > 0, "{}: takes no step", case.name);
        let steps = clean.steps;
        let mut modes = vec![
            (Mode::Error, false),
            (Mode::Error, true),
            (Mode::Crash, false),
            (Mode::PowerLoss, false),
            (Mode::PowerLossKeepNames, false),
            (Mode::NoSpace, false),
        ];
        modes.extend((0..TORN_SEEDS).map(|seed| (Mode::PowerLossTorn(seed), false)));
        for (mode, retry) in modes {
            for at in 1..=steps {
                let r = run(&case, mode, at, retry, |_, h| drop(h));
                let context = format!(
                    "{}, step {at} of {steps}, {mode:?}{}",
                    case.name,
                    if retry { ", retried" } else { "" }
                );
                // An error or a full disk leaves a live process: its answer decides.
                let decided = matches!(mode, Mode::Error | Mode::NoSpace);
                let expect = if r.ok { case.after } else { case.before };
                if let Some(held) = &r.held {
                    if decided {
                        assert_eq!(held, expect, "{context}: ok = {}, in memory", r.ok);
                    }
                }
                let reopened = quiet(|| open(&r.path()).map(|h| h.ids()));
                let ids = reopened.unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
                if decided || r.ok {
                    assert_eq!(ids, expect, "{context}: the call returned ok = {}", r.ok);
                } else {
                    assert!(
                        ids == case.before || ids == case.after,
                        "{context}: neither before nor after: {ids:?}"
                    );
                }
                check_reopened(&r.path(), &ids, &references[&ids[..]], &context);
            }
        }
    }
}

/// G5: a full disk never blocks erasure. The disk fills up at every step of every call; then,
/// with not a byte of free space but what Lethe frees itself, forget-all on the head (or on a reopened head, if the call
/// consumed it) succeeds and leaves exactly a fresh state dir, and so does erasing the dir
/// outright.
#[test]
fn a_full_disk_never_blocks_forget_all_or_erase() {
    let fresh = fresh_open_files();
    for case in cases() {
        // The steps of the call itself (and of the close that follows, for a consumed head).
        let steps = Cell::new(0);
        run(&case, Mode::Error, 0, false, |_, h| {
            steps.set(failpoint::steps());
            drop(h)
        });
        let steps = steps.get().max(1);
        for at in 1..=steps {
            let context = format!("{}, disk full from step {at} of {steps}", case.name);
            // The disk fills before the forget-all under test starts, except when the call is
            // that forget-all and the disk fills in its middle: then what it frees may be taken
            // by others, and only the user's data is sure to be gone.
            let strict = !case.after.is_empty() || at == 1;
            let r = run(&case, Mode::NoSpace, at, false, |path, head| {
                // Only a state dir that was never created cannot be opened on a full disk.
                let head = head.or_else(|| match open(path) {
                    Ok(head) => Some(head),
                    Err(_) if !path.join("meta.json").exists() => None,
                    Err(e) => panic!("opening on a full disk: {e}"),
                });
                if let Some(head) = head {
                    head.forget_all().expect("forget-all on a full disk");
                    assert!(head.ids().is_empty());
                    let left = files(path);
                    if strict {
                        assert!(left == fresh, "not a fresh dir: {:?}", left.keys());
                    }
                    for (name, bytes) in &left {
                        let header_only = bytes.len() <= super::HEADER_LEN;
                        assert!(name == "meta.json" || header_only, "{name} holds data");
                    }
                    // Closing needs space for stats.bin; whether it fits or not, erasing works.
                    drop(head);
                }
                let report = super::erase(path).expect("erase on a full disk");
                assert!(report.unlinked.is_empty(), "{report:?}");
            });
            assert!(!r.path().exists(), "{context}");
            let r = run(&case, Mode::NoSpace, at, false, |path, head| {
                drop(head);
                super::erase(path).expect("erase on a full disk");
            });
            assert!(!r.path().exists(), "{context}: erase alone");
        }
    }
}

/// Writes `files` as the whole content of `dir`.
fn lay_out(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
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
        // the forget of 7 cannot (its slot holds the forget's tombstone).
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

/// An error before the commit changes nothing and leaves the head working: the same call
/// succeeds when retried, and other calls follow, without reopening. A learn that failed
/// leaves no record behind that a later entry (with the seq it would have had) could be
/// mistaken for: a crash afterwards recovers exactly what was acknowledged.
#[test]
fn after_a_failed_call_the_head_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let head = quiet(|| closed_six(dir.path()).unwrap());
    let weights = head.weights().unwrap();
    failpoint::arm(Mode::Error, 1);
    assert!(head.forget(&[2]).is_err());
    failpoint::disarm();
    quiet(|| {
        assert_eq!(head.ids(), SIX);
        assert!(head.weights().unwrap() == weights);
        head.forget(&[2]).unwrap();
        learn(&head, &[20]).unwrap();
    });
    // A learn of two samples past the end fails at its journal write (record, record, sync,
    // entry): its records carry the seq that the forget below then commits under.
    failpoint::arm(Mode::Error, 4);
    assert!(learn(&head, &[30, 31]).is_err());
    failpoint::disarm();
    quiet(|| {
        head.forget(&[20]).unwrap();
        assert_eq!(head.ids(), [1, 3, 4, 5, 6]);
    });
    failpoint::arm(Mode::Crash, 1);
    drop(head);
    failpoint::disarm();
    quiet(|| {
        let head = open(dir.path()).unwrap();
        assert_eq!(head.ids(), [1, 3, 4, 5, 6]);
        learn(&head, &[30, 31]).unwrap();
        head.close().unwrap();
        assert_eq!(open(dir.path()).unwrap().ids(), [1, 3, 4, 5, 6, 30, 31]);
    });
}

/// When the commit's sync fails and so does cutting the entry off, nobody knows whether the
/// call committed: the head refuses changes, except forget-all, which does not depend on it;
/// the next open decides, and the call then either happened or not.
#[test]
fn an_unknown_outcome_refuses_changes_but_forget_all() {
    for then_forget_all in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let head = quiet(|| closed_six(dir.path()).unwrap());
        quiet(|| learn(&head, &[7]).unwrap());
        // The commit's sync is a learn's last step here: it and every later one fail.
        let steps = {
            failpoint::arm(Mode::Error, 0);
            learn(&head, &[8]).unwrap();
            failpoint::disarm().0
        };
        failpoint::arm(Mode::Crash, steps);
        assert!(learn(&head, &[9]).is_err());
        failpoint::disarm();
        quiet(|| {
            for refused in [learn(&head, &[10]), head.forget(&[1])] {
                match refused {
                    Err(crate::Error::State { message, .. }) => {
                        assert!(message.contains("reopen"), "{message}")
                    }
                    other => panic!("a change was accepted after an unknown outcome: {other:?}"),
                }
            }
            if then_forget_all {
                head.forget_all().unwrap();
                learn(&head, &[11]).unwrap();
                head.close().unwrap();
                assert_eq!(open(dir.path()).unwrap().ids(), [11]);
            } else {
                assert!(head.close().is_err());
                let ids = open(dir.path()).unwrap().ids();
                let before = [1, 2, 3, 4, 5, 6, 7, 8];
                let after = [1, 2, 3, 4, 5, 6, 7, 8, 9];
                assert!(ids == before || ids == after, "{ids:?}");
            }
        });
    }
}
