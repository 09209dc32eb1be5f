//! A state dir closed by an earlier build, whose `stats.bin` also held the canonical factor L
//! and weights Θ (`tests/data/state-v5-solution/`, see tests/data/README.md), opens with this
//! build, serves the weights a fresh head solves from the same samples, and its next close
//! leaves it byte-identical to a fresh head's closed state dir (G2): its `stats.bin` then holds
//! only the exact statistics.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lethe::FixedPoint;
use lethe::{Head, HeadOptions, HeadSpec};
use ndarray::Array2;

const D: usize = 6;
const C: usize = 3;
const CORE_SHA256: &str = "7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de";
/// What the earlier build learned (1 to 12) less what it forgot (4 and 9).
const REMAINING: [u64; 10] = [1, 2, 3, 5, 6, 7, 8, 10, 11, 12];

fn spec() -> HeadSpec {
    HeadSpec {
        features: "features".into(),
        dim: D,
        classes: (0..C).map(|i| format!("class {i}")).collect(),
        core_logits: None,
        lambda: 0.01,
        target_scale: 1.0,
        fixed: FixedPoint {
            frac_bits: 16,
            feature_max_abs: 8.0,
            target_max_abs: 16.0,
        },
    }
}

/// The features the earlier build learned (tests/data/make_state_v5_solution.rs).
fn feature(id: u64, j: usize) -> f32 {
    let mix = |mut x: u64| {
        x = x.wrapping_add(0x9e3779b97f4a7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
        x ^ (x >> 31)
    };
    let u = |x: u64| (mix(x) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    3.0 * u(id) + 0.25 * u(id * 1000 + j as u64 + 1)
}

fn open(dir: &Path) -> Head {
    Head::open_detached(spec(), CORE_SHA256, dir, &HeadOptions::default()).unwrap()
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
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
    let phi = Array2::from_shape_fn((REMAINING.len(), D), |(i, j)| feature(REMAINING[i], j));
    let z = Array2::zeros((REMAINING.len(), C));
    let labels: Vec<u32> = REMAINING.iter().map(|&id| (id % C as u64) as u32).collect();
    fresh.learn_features(&REMAINING, &phi, &z, &labels).unwrap();
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
