//! The state dir under attack (G5): links planted in it, a second writer, a cut journal, a ridge
//! too small for the statistics. Each test reproduces an attack and checks that Lethe refuses it
//! with a clear error, writes nothing outside the state dir, and loses nothing it acknowledged.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::store::*;
use lethe::{Error, FixedPoint, Head, HeadOptions, HeadSpec};
use ndarray::Array2;

/// What an attacker points links at: a file of someone else's that must survive untouched.
const PRECIOUS: &[u8] = b"someone else's file: Lethe must never write here\n";

/// A state dir holding `ids`, closed, and a scratch folder outside it.
struct Scene {
    _root: tempfile::TempDir,
    dir: PathBuf,
    outside: PathBuf,
}

fn scene(ids: &[u64]) -> Scene {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let head = open(&dir).unwrap();
    learn(&head, ids).unwrap();
    head.close().unwrap();
    Scene {
        _root: root,
        dir,
        outside,
    }
}

/// A state dir left open by a crash: samples 1..=6 learned and closed, then 2 forgotten and 7, 8
/// learned, and the files copied as a kill -9 would leave them.
fn crashed_scene() -> Scene {
    let s = scene(&[1, 2, 3, 4, 5, 6]);
    let live = s.dir.with_extension("live");
    std::fs::rename(&s.dir, &live).unwrap();
    let head = open(&live).unwrap();
    head.forget(&[2]).unwrap();
    learn(&head, &[7, 8]).unwrap();
    snapshot(&live, &s.dir);
    head.close().unwrap();
    s
}

const CRASHED_IDS: &[u64] = &[1, 3, 4, 5, 6, 7, 8];

/// Opening must fail with a state error that names `name`.
fn assert_refused(dir: &Path, name: &str, what: &str) {
    match open(dir) {
        Err(Error::State { message, .. }) => {
            assert!(
                message.contains(name),
                "{what}: the error does not name {name}: {message}"
            )
        }
        Err(e) => panic!("{what}: not a state error: {e}"),
        Ok(head) => panic!("{what}: opened, holding {:?}", head.ids()),
    }
}

fn precious_file(outside: &Path, name: &str) -> PathBuf {
    let path = outside.join(name);
    std::fs::write(&path, PRECIOUS).unwrap();
    path
}

/// Names of files that only an interrupted call leaves behind (`samples.bin.*` and
/// `stats.bin.old`: of earlier versions).
const LEFTOVERS: &[&str] = &[
    "stats.bin.tmp",
    "stats.bin.old",
    "samples.bin.tmp",
    "samples.bin.old",
    "samples-00.bin.tmp",
    "meta.json.tmp",
    "journal.tmp",
];

/// `ln -s /some/file S/stats.bin.tmp; lethe info --state S` zero-filled /some/file. A link in
/// place of any leftover, in a closed or a crashed state dir, is refused; nothing is written
/// through it, and once it is gone the state dir opens with all its samples.
#[test]
fn symlinked_leftovers_are_refused_and_their_targets_untouched() {
    for crashed in [false, true] {
        let names = LEFTOVERS;
        for &name in names {
            let s = if crashed {
                crashed_scene()
            } else {
                scene(&[1, 2, 3])
            };
            let what = format!("{name} -> outside (crashed: {crashed})");
            let target = precious_file(&s.outside, "target");
            symlink(&target, s.dir.join(name)).unwrap();
            assert_refused(&s.dir, name, &what);
            assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS, "{what}");
            std::fs::remove_file(s.dir.join(name)).unwrap();
            let head = open(&s.dir).unwrap();
            let expect: &[u64] = if crashed { CRASHED_IDS } else { &[1, 2, 3] };
            assert_eq!(head.ids(), expect, "{what}");
            assert!(head.verify().unwrap().ok(), "{what}");
        }
    }
}

/// A bucket file, `stats.bin`, `meta.json` or `journal` moved out of the state dir and linked
/// back: the target is valid, but it is not in the state dir, so it is refused rather than
/// written.
#[test]
fn symlinked_state_files_with_valid_targets_are_refused() {
    for (crashed, name) in [
        (false, "bucket"),
        (false, "stats.bin"),
        (false, "meta.json"),
        (false, "journal"),
        (true, "bucket"),
        (true, "journal"),
    ] {
        let s = if crashed {
            crashed_scene()
        } else {
            scene(&[1, 2, 3])
        };
        let bucket = bucket_files(&s.dir).swap_remove(0);
        let name = if name == "bucket" { &bucket } else { name };
        let what = format!("{name} moved out and linked back (crashed: {crashed})");
        let moved = s.outside.join(name);
        std::fs::rename(s.dir.join(name), &moved).unwrap();
        symlink(&moved, s.dir.join(name)).unwrap();
        let before = std::fs::read(&moved).unwrap();
        assert_refused(&s.dir, name, &what);
        assert_eq!(std::fs::read(&moved).unwrap(), before, "{what}");
    }
}

/// A second name for a state file (a hard link made by a backup tool, or by an attacker to a
/// file of theirs) is refused: scrubbing or rewriting it would change the other name too.
#[test]
fn hard_links_are_refused_and_the_other_name_untouched() {
    // A state file with a second name outside.
    for name in ["bucket", "stats.bin", "journal"] {
        let s = scene(&[1, 2, 3]);
        let bucket = bucket_files(&s.dir).swap_remove(0);
        let name = if name == "bucket" { &bucket } else { name };
        let other = s.outside.join("copy");
        std::fs::hard_link(s.dir.join(name), &other).unwrap();
        let before = std::fs::read(&other).unwrap();
        assert_refused(&s.dir, name, &format!("{name} hard-linked"));
        assert_eq!(std::fs::read(&other).unwrap(), before, "{name}");
    }
    // A file from outside given a leftover's name.
    for &name in LEFTOVERS {
        let s = scene(&[1, 2, 3]);
        let target = precious_file(&s.outside, "target");
        std::fs::hard_link(&target, s.dir.join(name)).unwrap();
        assert_refused(&s.dir, name, &format!("{name} hard-linked to outside"));
        assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS, "{name}");
    }
}

/// A state dir path that is a dangling link, or a link to a file, gets an error that says so
/// (not "File exists"); a link to a real state dir opens it, and still only once at a time.
#[test]
fn a_link_as_the_state_dir_gets_a_clear_message() {
    let root = tempfile::tempdir().unwrap();
    let dangling = root.path().join("dangling");
    symlink(root.path().join("nowhere"), &dangling).unwrap();
    match open(&dangling) {
        Err(e) => {
            let m = e.to_string();
            assert!(!m.contains("File exists") && m.contains("link"), "{m}");
        }
        Ok(_) => panic!("opened a dangling link"),
    }
    assert!(!root.path().join("nowhere").exists());
    let file = root.path().join("file");
    std::fs::write(&file, PRECIOUS).unwrap();
    let to_file = root.path().join("to-file");
    symlink(&file, &to_file).unwrap();
    match open(&to_file) {
        Err(e) => assert!(e.to_string().contains("not a directory"), "{e}"),
        Ok(_) => panic!("opened a link to a file"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), PRECIOUS);

    let s = scene(&[1, 2]);
    let alias = s.outside.join("alias");
    symlink(&s.dir, &alias).unwrap();
    let head = open(&alias).unwrap();
    assert_eq!(head.ids(), [1, 2]);
    match open(&s.dir) {
        Err(Error::State { message, .. }) => assert!(message.contains("another"), "{message}"),
        other => panic!("opened twice through a link: {}", other.is_ok()),
    }
}

/// `rm S/lock` while a head has S open used to let a second writer in, which then lost the
/// first head's acknowledged learns. The lock cannot be swapped: the second open is refused.
#[test]
fn deleting_the_lock_file_does_not_admit_a_second_writer() {
    let s = scene(&[1, 2, 3]);
    let head = open(&s.dir).unwrap();
    learn(&head, &[4]).unwrap();
    let lock = s.dir.join("lock");
    if lock.exists() {
        std::fs::remove_file(&lock).unwrap();
    }
    let dir = s.dir.clone();
    let second = std::thread::spawn(move || match open(&dir) {
        Err(Error::State { message, .. }) => message,
        Err(e) => panic!("not a state error: {e}"),
        Ok(_) => panic!("a second head opened the state dir after its lock file was deleted"),
    })
    .join()
    .unwrap();
    assert!(second.contains("another"), "{second}");
    learn(&head, &[5]).unwrap();
    head.close().unwrap();
    assert_eq!(open(&s.dir).unwrap().ids(), [1, 2, 3, 4, 5]);
}

/// The journal of a state dir left open by a crash (no key), and the entry boundaries in it.
fn journal_entries(journal: &[u8]) -> Vec<usize> {
    // The header (64 bytes, the sealed base's length at byte 40), the mark (16), the base; then
    // entries: word ×4 (count | kind << 30, kind 1 = learn), two frames of 16 + 12·count
    // (learn) or 16 + 8·count (forget) bytes, and a learn's records of 4·(D + C) + 8 bytes.
    let base = u64::from_le_bytes(journal[40..48].try_into().unwrap()) as usize;
    let mut at = 64 + 16 + base;
    let mut ends = vec![at];
    while at + 16 <= journal.len() {
        let word = u32::from_le_bytes(journal[at..at + 4].try_into().unwrap()) as usize;
        let (count, learn) = (word & ((1 << 30) - 1), word >> 30 == 1);
        let (item, record) = if learn { (12, 4 * (D + C) + 8) } else { (8, 0) };
        at += 16 + 2 * (16 + item * count) + record * count;
        ends.push(at);
    }
    assert_eq!(at, journal.len(), "the journal parses into whole entries");
    ends
}

/// Cuts the journal of a crashed copy of `live` at every entry boundary and opens each: the
/// outcome for a cut keeping k entries is `expect(k)` (`None`: refused, naming the journal).
fn cut_at_every_entry(
    root: &Path,
    live: &Path,
    entries: usize,
    expect: &dyn Fn(usize) -> Option<Vec<u64>>,
) {
    let crashed = root.join("crashed");
    snapshot(live, &crashed);
    let journal = files(&crashed)["journal"].clone();
    let ends = journal_entries(&journal);
    assert_eq!(ends.len(), entries + 1, "{entries} entries");
    for (kept, &end) in ends.iter().enumerate() {
        let dir = root.join(format!("cut-{end}"));
        snapshot(&crashed, &dir);
        std::fs::write(dir.join("journal"), &journal[..end]).unwrap();
        let what = format!("journal cut to {end} bytes ({kept} of {entries} entries)");
        match expect(kept) {
            Some(ids) => assert_eq!(open(&dir).unwrap().ids(), ids, "{what}"),
            None => assert_refused(&dir, "journal", &what),
        }
    }
}

/// After a learn and a forget in one session and a kill, `truncate -s 64 journal` used to
/// open as an empty head and scrub every acknowledged sample. Any cut of the journal at an entry
/// boundary is now an error naming the journal: its mark, rewritten after each commit, says
/// how many entries were committed (a cut of the last entry goes undetected only when the
/// mark's rewrite was lost too, in a power loss).
#[test]
fn a_journal_cut_after_several_entries_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let forty: Vec<u64> = (1..=40).collect();
    let kept: Vec<u64> = forty
        .iter()
        .copied()
        .filter(|id| ![3, 9, 27].contains(id))
        .collect();

    // The reproduction: one learn, one forget.
    let live = root.path().join("live");
    let head = open(&live).unwrap();
    learn(&head, &forty).unwrap();
    head.forget(&[3, 9, 27]).unwrap();
    let after = kept.clone();
    cut_at_every_entry(&root.path().join("a"), &live, 2, &|k| {
        (k == 2).then(|| after.clone())
    });
    head.close().unwrap();

    // Then a learn: dropping it alone is a crash before it committed.
    let head = open(&live).unwrap();
    head.forget(&[1]).unwrap();
    learn(&head, &[100, 101]).unwrap();
    let after: Vec<u64> = kept[1..].iter().copied().chain([100, 101]).collect();
    cut_at_every_entry(&root.path().join("b"), &live, 2, &|k| {
        (k == 2).then(|| after.clone())
    });
    head.close().unwrap();
}

/// A head whose features are huge next to its ridge: one sample makes A's diagonal so large
/// that λ is lost in rounding and the Cholesky factorization would fail.
fn tiny_lambda_spec() -> HeadSpec {
    HeadSpec {
        lambda: 1e-6,
        fixed: FixedPoint {
            frac_bits: 4,
            feature_max_abs: 1e6,
            target_max_abs: 16.0,
        },
        ..spec()
    }
}

fn learn_value(head: &Head, id: u64, value: f32) -> lethe::Result<()> {
    let phi = Array2::from_elem((1, D), value);
    let z = Array2::zeros((1, C));
    head.learn_features(&[id], &phi, &z, &[0])
}

/// A learn that would leave A unsolvable at the head's λ used to be journaled before the solve
/// failed, so every later open failed and the samples could never be forgotten. It is refused
/// before anything is written; the head keeps working and the state dir keeps opening.
#[test]
fn a_learn_that_would_make_the_head_unsolvable_is_refused_before_it_commits() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let open = || {
        Head::open_detached(
            tiny_lambda_spec(),
            CORE_SHA256,
            &dir,
            &HeadOptions::default(),
        )
    };
    let head = open().unwrap();
    learn_value(&head, 1, 1.0).unwrap();
    match learn_value(&head, 2, 1e5) {
        Err(Error::Limit(m)) => assert!(m.contains("lambda"), "{m}"),
        other => panic!("an unsolvable learn was not refused as a limit: {other:?}"),
    }
    assert_eq!(head.ids(), [1]);
    learn_value(&head, 3, 2.0).unwrap();
    drop(head);
    let head = open().unwrap();
    assert_eq!(head.ids(), [1, 3]);
    assert!(head.verify().unwrap().ok());
    // The same learn in a dir left open by a crash: recovery must not meet it either.
    let err = learn_value(&head, 4, 1e5);
    assert!(matches!(err, Err(Error::Limit(_))), "{err:?}");
    snapshot(&dir, &root.path().join("crashed"));
    head.forget_all().unwrap();
    head.close().unwrap();
    let crashed = Head::open_detached(
        tiny_lambda_spec(),
        CORE_SHA256,
        root.path().join("crashed"),
        &HeadOptions::default(),
    )
    .unwrap();
    assert_eq!(crashed.ids(), [1, 3]);
    assert_eq!(open().unwrap().ids(), Vec::<u64>::new());
}
