//! Arbitrary bytes in the files Lethe parses: a state dir's `meta.json`, `samples.bin`,
//! `stats.bin` and `journal` (of a closed state dir and of one left open by a crash), and a
//! bundle's `manifest.json`. Opening must never panic: it succeeds or returns an error.
//!
//! The first byte picks the file and whether the rest replaces it or is XORed onto it (so the
//! fuzzer starts from valid files and explores near them).

#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lethe::FixedPoint;
use lethe::{Bundle, Head, HeadOptions, HeadSpec};
use libfuzzer_sys::fuzz_target;
use ndarray::Array2;

const CORE_SHA256: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const MANIFEST: &str = include_str!("../../models/mnist-core/manifest.json");

fn spec() -> HeadSpec {
    HeadSpec {
        features: "features".into(),
        dim: 4,
        classes: vec!["a".into(), "b".into(), "c".into()],
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

fn open(dir: &Path) -> lethe::Result<Head> {
    let options = HeadOptions {
        synchronous_resolve: true,
        ..Default::default()
    };
    Head::open_detached(spec(), CORE_SHA256, dir, &options)
}

fn learn(head: &Head, ids: &[u64]) {
    let phi = Array2::from_shape_fn((ids.len(), 4), |(i, j)| (ids[i] as f32 + j as f32) * 0.125);
    let z = Array2::zeros((ids.len(), 3));
    let labels: Vec<u32> = ids.iter().map(|&id| (id % 3) as u32).collect();
    head.learn_features(ids, &phi, &z, &labels).unwrap();
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "lock")
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

struct Fixture {
    _root: tempfile::TempDir,
    work: PathBuf,
    bundle: PathBuf,
    closed: BTreeMap<String, Vec<u8>>,
    crashed: BTreeMap<String, Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let head = open(&state).unwrap();
        learn(&head, &[1, 2, 3, 4]);
        head.close().unwrap();
        let closed = files(&state);
        let head = open(&state).unwrap();
        head.forget(&[2]).unwrap();
        learn(&head, &[7, 8]);
        let crashed = files(&state);
        head.close().unwrap();
        let bundle = root.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(bundle.join("core.onnx"), b"not a model").unwrap();
        Fixture {
            work: root.path().join("work"),
            bundle,
            _root: root,
            closed,
            crashed,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, bytes)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let xor = select & 0x80 != 0;
    let patch = |base: &[u8]| -> Vec<u8> {
        if xor {
            let mut out = base.to_vec();
            for (o, b) in out.iter_mut().zip(bytes) {
                *o ^= b;
            }
            out
        } else {
            bytes.to_vec()
        }
    };
    if select & 0x7f == 0 {
        std::fs::write(f.bundle.join("manifest.json"), patch(MANIFEST.as_bytes())).unwrap();
        let _ = Bundle::open(&f.bundle);
        return;
    }
    let template = if select & 0x40 == 0 {
        &f.closed
    } else {
        &f.crashed
    };
    let names: Vec<&String> = template.keys().collect();
    let target = names[(select & 0x3f) as usize % names.len()];
    let _ = std::fs::remove_dir_all(&f.work);
    std::fs::create_dir(&f.work).unwrap();
    for (name, content) in template {
        let content = if name == target {
            patch(content)
        } else {
            content.clone()
        };
        std::fs::write(f.work.join(name), content).unwrap();
    }
    if let Ok(head) = open(&f.work) {
        let _ = head.ids();
        let _ = head.verify();
    }
});
