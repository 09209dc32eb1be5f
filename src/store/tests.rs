//! Fault injection (G3, G5, G9): every step of every call, made to fail, crash, lose power or
//! run out of space, in state dirs with and without a key.
//!
//! For each call (learn, forget and forget-all, both as the first change after opening a closed
//! state dir and later; a learn that checkpoints the journal; rekey; close; recovery; creation
//! of a new dir) and each step N it takes (its own steps and those of the close that dropping
//! the head runs), the N-th step fails ([`Mode::Error`]), or the process dies there
//! ([`Mode::Crash`]), or the machine loses power there ([`Mode::PowerLoss`]: every change not
//! yet synced is undone; [`Mode::PowerLossKeepNames`]: unsynced data is lost but name changes
//! reached the disk; [`Mode::PowerLossTorn`]: a random subset of the unsynced writes survives,
//! the last one torn, and a prefix of the name changes), or the disk is full from there on
//! ([`Mode::NoSpace`]).
//!
//! The commit point decides (see the module docs of `crate::store`): a call that returned an
//! error changed nothing, in memory and on disk, and can simply be retried; a call that
//! returned OK is durable, whatever failed after its commit. So when a step fails (or the disk
//! fills) the head must hold, and reopening must give, exactly the samples before the call if
//! it returned an error and exactly those after if it returned OK; after a crash or power loss,
//! either. The weights must be bit-identical to a fresh head's on those samples, and after
//! closing, the dir identical to one that only ever learned them (G2: byte for byte without a
//! key; with one, the same names, sizes and plaintexts), which also shows that no forgotten
//! sample and no leftover file survived. A rekey that returned OK must have made the new key
//! the only one that opens the dir; one that returned an error must have left the old key in
//! effect; after a crash, exactly one of the two opens it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use ndarray::Array2;

use super::io::failpoint::{self, Mode};
use super::StateKey;
use crate::error::{Error, Result};
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
    pub(super) static CHECKPOINT_EVERY: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Whether this thread's heads are opened with [`KEY`] (an encrypted state dir).
    static KEYED: Cell<bool> = const { Cell::new(false) };
    /// Whether a rekey to [`NEW_KEY`] committed in this thread's state dir.
    static REKEYED: Cell<bool> = const { Cell::new(false) };
}

fn key() -> StateKey {
    StateKey::new([0x4b; 32])
}

fn new_key() -> StateKey {
    StateKey::new([0x6e; 32])
}

fn spec() -> HeadSpec {
    let fixed = FixedPoint {
        frac_bits: 16,
        feature_max_abs: 8.0,
        target_max_abs: 16.0,
    };
    HeadSpec::detached(D, C, 0.5, fixed).expect("a valid spec")
}

fn options(key: Option<StateKey>) -> HeadOptions {
    HeadOptions {
        synchronous_resolve: true,
        key,
        ..Default::default()
    }
}

/// The key this thread's state dir is opened with now.
fn current_key() -> Option<StateKey> {
    KEYED.with(Cell::get).then(|| {
        if REKEYED.with(Cell::get) {
            new_key()
        } else {
            key()
        }
    })
}

fn open(dir: &Path) -> Result<Head> {
    open_with(dir, current_key())
}

fn open_with(dir: &Path, key: Option<StateKey>) -> Result<Head> {
    Head::open_detached(spec(), CORE_SHA256, dir, &options(key))
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

/// What G2 compares of a closed state dir: without a key its files' bytes; with one, each
/// file's size and its plaintexts (random parts left out, see [`super::plaintexts`]).
fn canonical(dir: &Path, key: Option<&StateKey>) -> BTreeMap<String, Vec<u8>> {
    let raw = files(dir);
    let Some(key) = key else {
        return raw;
    };
    let plain = super::plaintexts(dir, Some(key)).expect("a closed state dir opens");
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        raw.keys().collect::<Vec<_>>(),
        "every file is accounted for"
    );
    raw.into_iter()
        .map(|(name, bytes)| {
            let mut v = (bytes.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(&plain[&name]);
            (name, v)
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
        let key = KEYED.with(Cell::get).then(key);
        let head = open_with(dir.path(), key.clone()).unwrap();
        learn(&head, ids).unwrap();
        let weights = head.weights().unwrap();
        head.close().unwrap();
        Reference {
            files: canonical(dir.path(), key.as_ref()),
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
    /// The call replaces the key (with a key only).
    rekeys: bool,
}

/// A closed state dir holding samples 1..=6, reopened.
fn closed_six(dir: &Path) -> Option<Head> {
    let head = open(dir).unwrap();
    learn(&head, &[1, 2, 3, 4, 5, 6]).unwrap();
    head.close().unwrap();
    Some(open(dir).unwrap())
}

const SIX: &[u64] = &[1, 2, 3, 4, 5, 6];

fn case(
    name: &'static str,
    setup: fn(&Path) -> Option<Head>,
    call: fn(&Path, &mut Option<Head>) -> Result<()>,
    before: &'static [u64],
    after: &'static [u64],
) -> Case {
    Case {
        name,
        setup,
        call,
        before,
        after,
        rekeys: false,
    }
}

fn rekey(head: &Head) -> Result<()> {
    let done = head.rekey(&new_key());
    if done.is_ok() {
        REKEYED.with(|r| r.set(true));
    }
    done
}

fn cases(keyed: bool) -> Vec<Case> {
    let mut cases = vec![
        case(
            "learn, first change after opening",
            closed_six,
            |_, h| learn(h.as_ref().unwrap(), &[10, 11, 12]),
            SIX,
            &[1, 2, 3, 4, 5, 6, 10, 11, 12],
        ),
        case(
            "learn after a forget",
            |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[3]).unwrap();
                Some(head)
            },
            |_, h| learn(h.as_ref().unwrap(), &[10, 11]),
            &[1, 2, 4, 5, 6],
            &[1, 2, 4, 5, 6, 10, 11],
        ),
        case(
            "learn that checkpoints the journal",
            |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[3]).unwrap();
                learn(&head, &[7]).unwrap();
                head.forget(&[5]).unwrap();
                CHECKPOINT_EVERY.with(|c| c.set(4));
                Some(head)
            },
            |_, h| learn(h.as_ref().unwrap(), &[10, 11]),
            &[1, 2, 4, 6, 7],
            &[1, 2, 4, 6, 7, 10, 11],
        ),
        case(
            "forget, first change after opening",
            closed_six,
            |_, h| h.as_ref().unwrap().forget(&[2, 5]),
            SIX,
            &[1, 3, 4, 6],
        ),
        case(
            "forget a sample learned in this session",
            |dir| {
                let head = closed_six(dir).unwrap();
                learn(&head, &[7]).unwrap();
                Some(head)
            },
            |_, h| h.as_ref().unwrap().forget(&[7, 2]),
            &[1, 2, 3, 4, 5, 6, 7],
            &[1, 3, 4, 5, 6],
        ),
        case(
            "forget after a checkpoint",
            |dir| {
                let head = closed_six(dir).unwrap();
                CHECKPOINT_EVERY.with(|c| c.set(2));
                head.forget(&[3]).unwrap();
                learn(&head, &[7, 8]).unwrap();
                head.forget(&[8]).unwrap();
                CHECKPOINT_EVERY.with(|c| c.set(u64::MAX));
                Some(head)
            },
            |_, h| h.as_ref().unwrap().forget(&[7, 1]),
            &[1, 2, 4, 5, 6, 7],
            &[2, 4, 5, 6],
        ),
        case(
            "forget-all, first change after opening",
            closed_six,
            |_, h| h.as_ref().unwrap().forget_all(),
            SIX,
            &[],
        ),
        case(
            "forget-all in a new state dir",
            |dir| {
                let head = open(dir).unwrap();
                learn(&head, SIX).unwrap();
                head.forget(&[4]).unwrap();
                Some(head)
            },
            |_, h| h.as_ref().unwrap().forget_all(),
            &[1, 2, 3, 5, 6],
            &[],
        ),
        case(
            "close after changes",
            |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[4]).unwrap();
                learn(&head, &[8]).unwrap();
                Some(head)
            },
            |_, h| h.take().unwrap().close(),
            &[1, 2, 3, 5, 6, 8],
            &[1, 2, 3, 5, 6, 8],
        ),
        case(
            "close after forgets only",
            |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[4, 1]).unwrap();
                Some(head)
            },
            |_, h| h.take().unwrap().close(),
            &[2, 3, 5, 6],
            &[2, 3, 5, 6],
        ),
        case(
            "recovery after a crash",
            |dir| {
                let head = closed_six(dir).unwrap();
                head.forget(&[1]).unwrap();
                learn(&head, &[9]).unwrap();
                failpoint::arm(Mode::Crash, 1);
                drop(head);
                failpoint::disarm();
                failpoint::arm(Mode::Error, 0);
                None
            },
            |dir, _| open(dir).map(drop),
            &[2, 3, 4, 5, 6, 9],
            &[2, 3, 4, 5, 6, 9],
        ),
        case(
            "learn into a new state dir",
            |_| None,
            |dir, h| {
                let head = h.insert(open(dir)?);
                learn(head, &[1, 2])
            },
            &[],
            &[1, 2],
        ),
    ];
    if keyed {
        cases.push(Case {
            rekeys: true,
            ..case(
                "rekey with changes not compacted",
                |dir| {
                    let head = closed_six(dir).unwrap();
                    head.forget(&[2]).unwrap();
                    learn(&head, &[7]).unwrap();
                    Some(head)
                },
                |_, h| rekey(h.as_ref().unwrap()),
                &[1, 3, 4, 5, 6, 7],
                &[1, 3, 4, 5, 6, 7],
            )
        });
        cases.push(Case {
            rekeys: true,
            ..case(
                "rekey a closed state dir",
                closed_six,
                |_, h| rekey(h.as_ref().unwrap()),
                SIX,
                SIX,
            )
        });
    }
    cases
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
    REKEYED.with(|r| r.set(false));
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
    CHECKPOINT_EVERY.with(|c| c.set(u64::MAX));
    Run {
        ok,
        held,
        dir,
        steps,
    }
}

/// Reopens a state dir and checks that it holds `ids` and is canonical, open and closed.
fn check_reopened(
    path: &Path,
    key: Option<StateKey>,
    ids: &[u64],
    reference: &Reference,
    context: &str,
) {
    quiet(|| {
        let head = open_with(path, key.clone())
            .unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
        assert_eq!(head.ids(), ids, "{context}: reopened");
        assert!(
            head.weights().unwrap() == reference.weights,
            "{context}: weights differ from a fresh head's"
        );
        assert!(head.verify().unwrap().ok(), "{context}: verify failed");
        head.close().unwrap();
        assert!(
            canonical(path, key.as_ref()) == reference.files,
            "{context}: closed state dir differs from a fresh one's: {:?}",
            files(path).keys().collect::<Vec<_>>()
        );
    });
}

/// Which key opens the state dir after a run of a case: the old one, the new one, or (with
/// `either`) whichever does, checking that exactly one does.
fn key_after(case: &Case, path: &Path, ok: bool, either: bool, context: &str) -> Option<StateKey> {
    if !KEYED.with(Cell::get) {
        return None;
    }
    if !case.rekeys {
        return Some(key());
    }
    let opens = |k: StateKey| quiet(|| open_with(path, Some(k)).map(drop));
    let (old, new) = (opens(key()), opens(new_key()));
    let wrong = |r: &Result<()>| matches!(r, Err(Error::Key(_)));
    if either {
        assert!(
            old.is_ok() != new.is_ok() && (wrong(&old) || wrong(&new)),
            "{context}: exactly one key must open the dir: old {:?}, new {:?}",
            old.as_ref().err(),
            new.as_ref().err()
        );
        return Some(if old.is_ok() { key() } else { new_key() });
    }
    let (good, bad) = if ok { (new, old) } else { (old, new) };
    assert!(
        good.is_ok(),
        "{context}: the right key fails: {:?}",
        good.err()
    );
    assert!(
        wrong(&bad),
        "{context}: the other key does not fail as wrong: {:?}",
        bad.err()
    );
    Some(if ok { new_key() } else { key() })
}

fn every_step(keyed: bool) {
    KEYED.with(|k| k.set(keyed));
    // The head commits beside its update of the statistics and weights (on another thread)
    // with a key, in turn without: both orders meet every fault.
    crate::head::tests::ALWAYS_BESIDE.with(|b| b.set(keyed));
    let mut references = BTreeMap::new();
    for case in cases(keyed) {
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
                    "{}{}, step {at} of {steps}, {mode:?}{}",
                    case.name,
                    if keyed { " (with a key)" } else { "" },
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
                let key = key_after(&case, &r.path(), r.ok, !decided && !r.ok, &context);
                let reopened = quiet(|| open_with(&r.path(), key.clone()).map(|h| h.ids()));
                let ids = reopened.unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
                if decided || r.ok {
                    assert_eq!(ids, expect, "{context}: the call returned ok = {}", r.ok);
                } else {
                    assert!(
                        ids == case.before || ids == case.after,
                        "{context}: neither before nor after: {ids:?}"
                    );
                }
                check_reopened(&r.path(), key, &ids, &references[&ids[..]], &context);
            }
        }
    }
}

#[test]
fn every_step_of_every_call_fails_or_crashes_atomically() {
    every_step(false);
}

#[test]
fn every_step_of_every_call_fails_or_crashes_atomically_with_a_key() {
    every_step(true);
}

/// G5: a full disk never blocks erasure. The disk fills up at every step of every call; then,
/// with not a byte of free space but what Lethe frees itself, forget-all on the head (or on a
/// reopened head, if the call consumed it) succeeds and leaves exactly a fresh state dir, and
/// so does erasing the dir outright.
fn full_disk(keyed: bool) {
    KEYED.with(|k| k.set(keyed));
    let fresh = fresh_open_files();
    for case in cases(keyed) {
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
                    Err(e) => panic!("{context}: opening on a full disk: {e}"),
                });
                if let Some(head) = head {
                    head.forget_all().expect("forget-all on a full disk");
                    assert!(head.ids().is_empty());
                    let left = files(path);
                    if strict && !keyed {
                        assert!(
                            left == fresh,
                            "{context}: not a fresh dir: {:?}",
                            left.keys()
                        );
                    }
                    let sizes = |m: &BTreeMap<String, Vec<u8>>| -> Vec<(String, usize)> {
                        m.iter().map(|(n, b)| (n.clone(), b.len())).collect()
                    };
                    if strict {
                        assert_eq!(sizes(&left), sizes(&fresh), "{context}: not a fresh dir");
                    }
                    for (name, bytes) in &left {
                        let small = name == "meta.json" || name == "journal" && bytes.len() < 300;
                        assert!(small, "{context}: {name} holds data");
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

#[test]
fn a_full_disk_never_blocks_forget_all_or_erase() {
    full_disk(false);
}

#[test]
fn a_full_disk_never_blocks_forget_all_or_erase_with_a_key() {
    full_disk(true);
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

/// G5: any damage to any file of a closed state dir is an error on open that names the file
/// (a wrong key aside, which is [`Error::Key`]), with and without a key. Bytes after the
/// journal's end are what a crash while appending an entry leaves (not committed): the state
/// dir then opens with exactly what it held.
#[test]
fn damage_to_a_closed_state_dir_is_detected_and_named() {
    for keyed in [false, true] {
        KEYED.with(|k| k.set(keyed));
        quiet(|| {
            let dir = tempfile::tempdir().unwrap();
            let head = open(dir.path()).unwrap();
            learn(&head, &[1, 2, 3, 4, 5]).unwrap();
            let weights = head.weights().unwrap();
            head.close().unwrap();
            let good = files(dir.path());
            let names: Vec<&String> = good.keys().collect();
            let buckets = names.iter().filter(|n| n.starts_with("samples-")).count();
            assert_eq!(
                names.len(),
                3 + buckets,
                "meta.json, journal, stats.bin: {names:?}"
            );
            assert!(buckets >= 3, "{names:?}");
            for (name, bytes) in &good {
                for (how, bad) in damaged(bytes) {
                    let mut files = good.clone();
                    files.insert(name.clone(), bad);
                    lay_out(dir.path(), &files);
                    match open(dir.path()) {
                        Err(Error::State { message, .. }) => assert!(
                            message.contains(name.as_str()),
                            "{name} {how}: the error does not name it: {message}"
                        ),
                        // Damage to the wrapped data key reads as a wrong key.
                        Err(Error::Key(_)) if keyed && name == "journal" => {}
                        Err(e) => panic!("{name} {how}: not a state error: {e}"),
                        Ok(head) if name == "journal" && how.starts_with("extended") => {
                            assert_eq!(head.ids(), [1, 2, 3, 4, 5], "{name} {how}");
                            assert!(head.weights().unwrap() == weights, "{name} {how}");
                            continue;
                        }
                        Ok(_) => panic!("{name} {how}: opened without an error"),
                    }
                    assert_eq!(self::files(dir.path()), files, "{name} {how}: changed");
                }
            }
        })
    }
}

/// G5 for a state dir left open by a crash (with a journal): damage is an error that names the
/// file, or harmless (a flipped bit in one copy of the journal's last entry, in its mark, or in
/// a released record): the state opened is then exactly the committed one. Nothing else is
/// ever opened.
#[test]
fn damage_to_a_crashed_state_dir_is_detected_or_harmless() {
    for keyed in [false, true] {
        KEYED.with(|k| k.set(keyed));
        quiet(|| {
            let dir = tempfile::tempdir().unwrap();
            let head = closed_six(dir.path()).unwrap();
            head.forget(&[2]).unwrap();
            learn(&head, &[7, 8]).unwrap();
            head.forget(&[7]).unwrap();
            learn(&head, &[9]).unwrap();
            let crashed = files(dir.path());
            head.close().unwrap();
            let committed: &[u64] = &[1, 3, 4, 5, 6, 8, 9];
            let reference = reference(committed);
            for (name, bytes) in &crashed {
                for (how, bad) in damaged(bytes) {
                    let mut files = crashed.clone();
                    files.insert(name.clone(), bad);
                    lay_out(dir.path(), &files);
                    match open(dir.path()) {
                        Err(Error::State { message, .. }) => assert!(
                            message.contains(name.as_str()),
                            "{name} {how}: the error does not name it: {message}"
                        ),
                        Err(Error::Key(_)) if keyed && name == "journal" => {}
                        Err(e) => panic!("{name} {how}: not a state error: {e}"),
                        Ok(head) => {
                            assert_eq!(head.ids(), committed, "{name} {how}: opened another state");
                            assert!(head.weights().unwrap() == reference.weights, "{name} {how}");
                        }
                    }
                }
            }
        })
    }
}

/// An error before the commit changes nothing and leaves the head working: the same call
/// succeeds when retried, and other calls follow, without reopening. A learn that failed
/// leaves nothing behind that a later entry could be mistaken for: a crash afterwards recovers
/// exactly what was acknowledged.
#[test]
fn after_a_failed_call_the_head_keeps_working() {
    KEYED.with(|k| k.set(false));
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
    // A learn fails at its sync (write the entry, sync): the entry's bytes, where the forget
    // below then commits, are cut off.
    failpoint::arm(Mode::Error, 2);
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

/// Learn and forget each issue exactly one sync (issue: one `fdatasync` per call on the
/// caller's path), counted at the failpoint layer, with and without a key.
#[test]
fn learn_and_forget_sync_once() {
    for keyed in [false, true] {
        KEYED.with(|k| k.set(keyed));
        let dir = tempfile::tempdir().unwrap();
        let head = quiet(|| closed_six(dir.path()).unwrap());
        for call in 0..4 {
            failpoint::arm(Mode::Error, 0);
            let done = match call {
                0 => head.forget(&[2]),
                1 => learn(&head, &[7, 8]),
                2 => head.forget(&[7, 1]),
                _ => learn(&head, &[9]),
            };
            let syncs = failpoint::syncs();
            failpoint::disarm();
            done.unwrap();
            assert_eq!(syncs, 1, "call {call} (keyed: {keyed})");
        }
    }
}

/// When the commit's sync fails and so does cutting the entry off, nobody knows whether the
/// call committed: the head refuses changes, except forget-all, which does not depend on it;
/// the next open decides, and the call then either happened or not.
#[test]
fn an_unknown_outcome_refuses_changes_but_forget_all() {
    KEYED.with(|k| k.set(false));
    for then_forget_all in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let head = quiet(|| closed_six(dir.path()).unwrap());
        quiet(|| learn(&head, &[7]).unwrap());
        // A learn writes its entry (step 1) and syncs it (step 2): that step and every later
        // one fail.
        failpoint::arm(Mode::Crash, 2);
        assert!(learn(&head, &[9]).is_err());
        failpoint::disarm();
        quiet(|| {
            for refused in [learn(&head, &[10]), head.forget(&[1])] {
                match refused {
                    Err(Error::State { message, .. }) => {
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
                let before = [1, 2, 3, 4, 5, 6, 7];
                let after = [1, 2, 3, 4, 5, 6, 7, 9];
                assert!(ids == before || ids == after, "{ids:?}");
            }
        });
    }
}
