//! A state dir closed by an earlier build, whose `stats.bin` also held the canonical factor L
//! and weights Θ (`tests/data/state-v5-solution/`, see tests/data/README.md), opens with this
//! build, serves the weights a fresh head solves from the same samples, and its next close
//! leaves it byte-identical to a fresh head's closed state dir (G2): its `stats.bin` then holds
//! only the exact statistics.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lethe::{Head, HeadOptions};

mod common;
use common::store::files;
use common::synthetic::{self, learn, CORE_SHA256};

const D: usize = 6;
const C: usize = 3;
/// What the earlier build learned (1 to 12) less what it forgot (4 and 9).
const REMAINING: [u64; 10] = [1, 2, 3, 5, 6, 7, 8, 10, 11, 12];

fn open(dir: &Path) -> Head {
    Head::open_detached(
        synthetic::spec(D, C),
        CORE_SHA256,
        dir,
        &HeadOptions::default(),
    )
    .unwrap()
}

#[test]
fn a_state_dir_of_an_earlier_build_opens_and_closes_canonically() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("earlier");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/state-v5-solution");
    for (name, bytes) in files(&fixture) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let earlier = files(&dir);
    // The fixture is one of the earlier layout: its stats.bin names the algorithm version of
    // the L and Θ it holds (the header's word at bytes 12..16).
    let word = u32::from_le_bytes(earlier["stats.bin"][12..16].try_into().unwrap());
    assert_ne!(word, 0, "the fixture's stats.bin holds no solution");

    let fresh_dir = root.path().join("fresh");
    let fresh = open(&fresh_dir);
    learn(&fresh, &REMAINING);
    let expect = fresh.weights().unwrap();
    fresh.close().unwrap();
    let canonical = files(&fresh_dir);
    assert!(
        canonical["stats.bin"].len() < earlier["stats.bin"].len(),
        "stats.bin holds less than the earlier layout"
    );

    let head = open(&dir);
    assert_eq!(head.ids(), REMAINING);
    assert!(
        head.weights().unwrap() == expect,
        "weights differ from a fresh head's"
    );
    assert!(head.verify().unwrap().ok());
    head.close().unwrap();
    assert!(
        files(&dir) == canonical,
        "closed without a change, the dir differs from a fresh head's"
    );
    let head = open(&dir);
    assert!(head.weights().unwrap() == expect);
    head.close().unwrap();
}
