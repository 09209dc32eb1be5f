//! Unconditional erasure (G5): `lethe::store::erase` removes a state dir's data whatever state
//! the dir is in (closed, crashed, corrupt, of another format version, holding a stale lock
//! file), never writes through a link, never erases what does not look like a state dir, and
//! never erases under a head that has the dir open.

mod common;

use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::store::*;
use lethe::store::{erase, ErasedReport};
use lethe::Error;

const PRECIOUS: &[u8] = b"someone else's file: Lethe must never write here\n";

/// A closed state dir holding samples 1..=5 under `root`.
fn closed(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let head = open(&dir).unwrap();
    learn(&head, &[1, 2, 3, 4, 5]).unwrap();
    head.close().unwrap();
    dir
}

/// The state dir after a kill -9: 1..=5 closed, then 2 forgotten and 6, 7 learned.
fn crashed(root: &Path, name: &str) -> PathBuf {
    let live = closed(root, &format!("{name}-live"));
    let head = open(&live).unwrap();
    head.forget(&[2]).unwrap();
    learn(&head, &[6, 7]).unwrap();
    let dir = root.join(name);
    snapshot(&live, &dir);
    head.close().unwrap();
    dir
}

fn assert_erased(dir: &Path, report: &ErasedReport, what: &str) {
    assert!(report.dir_removed, "{what}: {report:?}");
    assert!(!dir.exists(), "{what}");
    assert!(
        report.unlinked.is_empty() && report.kept.is_empty(),
        "{what}: {report:?}"
    );
    assert!(
        report.scrubbed.contains(&"meta.json".to_string()),
        "{what}: {report:?}"
    );
}

/// Whatever state the dir is in, erase removes every file and the dir. The data is gone from
/// the files themselves, not only their names: a descriptor opened before sees nothing.
#[test]
fn erase_removes_a_state_dir_in_any_state() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut dirs: Vec<(&str, PathBuf)> = vec![
        ("closed", closed(root, "closed")),
        ("crashed", crashed(root, "crashed")),
    ];
    let corrupt = closed(root, "corrupt");
    let mut stats = std::fs::read(corrupt.join("stats.bin")).unwrap();
    stats[100] ^= 0x10;
    std::fs::write(corrupt.join("stats.bin"), stats).unwrap();
    dirs.push(("corrupt", corrupt));
    let other_version = closed(root, "other-version");
    let meta = std::fs::read_to_string(other_version.join("meta.json")).unwrap();
    let meta = meta.replacen("\"version\": ", "\"version\": 9", 1);
    std::fs::write(other_version.join("meta.json"), meta).unwrap();
    dirs.push(("another format version", other_version));
    let stale_lock = crashed(root, "stale-lock");
    std::fs::write(stale_lock.join("lock"), "").unwrap();
    dirs.push(("a lock file nobody holds", stale_lock));
    for (what, dir) in &dirs {
        if ["corrupt", "another format version"].contains(what) {
            assert!(
                open(dir).is_err(),
                "{what}: the test needs a dir that cannot be opened"
            );
        }
        let mut before: Vec<(String, std::fs::File)> = files(dir)
            .into_keys()
            .map(|name| (name.clone(), std::fs::File::open(dir.join(&name)).unwrap()))
            .collect();
        let report = erase(dir).unwrap();
        assert_erased(dir, &report, what);
        for (name, file) in &mut before {
            let mut left = Vec::new();
            file.read_to_end(&mut left).unwrap();
            assert!(
                left.iter().all(|&b| b == 0),
                "{what}: {name} still holds data"
            );
        }
        // The path is free for a new head.
        assert!(open(dir).unwrap().ids().is_empty(), "{what}");
    }
    // Nothing to erase.
    let report = erase(&root.join("never-made")).unwrap();
    assert_eq!(report, ErasedReport::default());
}

/// Links in a state dir are removed, never written through: what they point to is untouched
/// (and reported, since it may hold data Lethe could not scrub).
#[test]
fn erase_never_writes_through_links() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let outside = root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = outside.join("target");
    std::fs::write(&target, PRECIOUS).unwrap();

    let dir = crashed(root, "symlinked");
    symlink(&target, dir.join("stats.bin.tmp")).unwrap();
    let moved = outside.join("journal");
    std::fs::rename(dir.join("journal"), &moved).unwrap();
    symlink(&moved, dir.join("journal")).unwrap();
    let journal = std::fs::read(&moved).unwrap();
    let report = erase(&dir).unwrap();
    assert!(report.dir_removed && !dir.exists(), "{report:?}");
    assert_eq!(report.unlinked.len(), 2, "{report:?}");
    assert!(
        report.unlinked.iter().all(|u| u.contains("symbolic link")),
        "{report:?}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), PRECIOUS);
    assert_eq!(std::fs::read(&moved).unwrap(), journal);

    let dir = closed(root, "hard-linked");
    let copy = outside.join("copy");
    let bucket = bucket_files(&dir).swap_remove(0);
    std::fs::hard_link(dir.join(&bucket), &copy).unwrap();
    let samples = std::fs::read(&copy).unwrap();
    let report = erase(&dir).unwrap();
    assert!(report.dir_removed, "{report:?}");
    assert!(
        report.unlinked[0].starts_with(&format!("{bucket} (has 2 names")),
        "{report:?}"
    );
    assert_eq!(std::fs::read(&copy).unwrap(), samples);
}

/// Files that are not Lethe's stay; a dir that does not look like a state dir is refused; a
/// dir that a head has open is refused. Nothing changes in any of these.
#[test]
fn erase_leaves_what_is_not_lethes() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let dir = closed(root, "with-notes");
    std::fs::write(dir.join("notes.txt"), PRECIOUS).unwrap();
    let report = erase(&dir).unwrap();
    assert!(!report.dir_removed, "{report:?}");
    assert_eq!(report.kept, ["notes.txt"]);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);

    let diary = root.join("diary");
    std::fs::create_dir(&diary).unwrap();
    std::fs::write(diary.join("journal"), PRECIOUS).unwrap();
    std::fs::write(diary.join("notes.txt"), PRECIOUS).unwrap();
    match erase(&diary) {
        Err(Error::State { message, .. }) => {
            assert!(message.contains("does not look like"), "{message}")
        }
        other => panic!("erased a dir that is not a state dir: {other:?}"),
    }
    assert_eq!(std::fs::read(diary.join("journal")).unwrap(), PRECIOUS);
    // A meta.json of the user's own does not make it a state dir either.
    let own_meta = br#"{"name": "my-app", "format": "mine"}"#;
    std::fs::write(diary.join("meta.json"), own_meta).unwrap();
    match erase(&diary) {
        Err(Error::State { message, .. }) => {
            assert!(message.contains("does not look like"), "{message}")
        }
        other => panic!("erased a dir with a foreign meta.json: {other:?}"),
    }
    assert_eq!(std::fs::read(diary.join("meta.json")).unwrap(), own_meta);
    assert_eq!(std::fs::read(diary.join("journal")).unwrap(), PRECIOUS);

    let dir = closed(root, "open");
    let head = open(&dir).unwrap();
    learn(&head, &[9]).unwrap();
    match erase(&dir) {
        Err(Error::State { message, .. }) => assert!(message.contains("forget-all"), "{message}"),
        other => panic!("erased a state dir under an open head: {other:?}"),
    }
    head.close().unwrap();
    assert_eq!(open(&dir).unwrap().ids(), [1, 2, 3, 4, 5, 9]);
}

/// `Head::erase` erases the state dir the head holds (its lock held until the dir is gone),
/// with the files' data overwritten as `erase` does; the path is then free.
#[test]
fn an_open_head_erases_its_own_state_dir() {
    let root = tempfile::tempdir().unwrap();
    let dir = closed(root.path(), "held");
    let head = open(&dir).unwrap();
    learn(&head, &[6]).unwrap();
    let mut before: Vec<std::fs::File> = files(&dir)
        .into_keys()
        .map(|name| std::fs::File::open(dir.join(name)).unwrap())
        .collect();
    let report = head.erase().unwrap();
    assert_erased(&dir, &report, "erased through its head");
    for file in &mut before {
        let mut left = Vec::new();
        file.read_to_end(&mut left).unwrap();
        assert!(left.iter().all(|&b| b == 0), "data left after Head::erase");
    }
    assert!(open(&dir).unwrap().ids().is_empty());
}
