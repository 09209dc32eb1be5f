//! Arbitrary bytes in the files Lethe parses: a state dir's `meta.json`, bucket files,
//! `stats.bin` and `journal` (of a closed state dir and of one left open by a crash, each
//! without and with a key, DESIGN.md G9), and a bundle's `manifest.json`. Opening must never
//! panic: it succeeds or returns an error.
//!
//! The first byte picks the file and whether the rest replaces it or is XORed onto it (so the
//! fuzzer starts from valid files and explores near them); the second picks the key: none,
//! the state dir's own, or another (which must be refused whatever the files hold).

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use lethe::Bundle;
use libfuzzer_sys::fuzz_target;

// The integration tests' support module: a small detached head in a state dir.
#[path = "../../tests/common/mod.rs"]
mod common;

use common::store::{learn, open_keyed};
use lethe::StateKey;

const MANIFEST: &str = include_str!("../../models/mnist-core/manifest.json");

/// The files of a state dir but its lock.
fn files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = common::store::files(dir);
    files.remove("lock");
    files
}

/// The key of the encrypted templates.
fn key() -> StateKey {
    StateKey::new([0x5a; 32])
}

/// A closed state dir and one left open by a crash, as files.
struct Templates {
    closed: BTreeMap<String, Vec<u8>>,
    crashed: BTreeMap<String, Vec<u8>>,
}

impl Templates {
    fn new(state: &std::path::Path, key: Option<StateKey>) -> Templates {
        let head = open_keyed(state, key.clone()).unwrap();
        learn(&head, &[1, 2, 3, 4]).unwrap();
        head.close().unwrap();
        let closed = files(state);
        let head = open_keyed(state, key).unwrap();
        head.forget(&[2]).unwrap();
        learn(&head, &[7, 8]).unwrap();
        let crashed = files(state);
        head.close().unwrap();
        Templates { closed, crashed }
    }
}

struct Fixture {
    _root: tempfile::TempDir,
    work: PathBuf,
    bundle: PathBuf,
    plain: Templates,
    encrypted: Templates,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let plain = Templates::new(&root.path().join("plain"), None);
        let encrypted = Templates::new(&root.path().join("encrypted"), Some(key()));
        let bundle = root.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(bundle.join("core.onnx"), b"not a model").unwrap();
        Fixture {
            work: root.path().join("work"),
            bundle,
            _root: root,
            plain,
            encrypted,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [select, keying, bytes @ ..] = data else {
        return;
    };
    let (select, keying) = (*select, *keying);
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
    let (templates, key) = match keying % 4 {
        0 => (&f.plain, None),
        1 => (&f.encrypted, Some(key())),
        2 => (&f.encrypted, None),
        _ => (&f.encrypted, Some(StateKey::new([0xa5; 32]))),
    };
    let wrong_key = keying % 4 >= 2;
    let template = if select & 0x40 == 0 {
        &templates.closed
    } else {
        &templates.crashed
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
    if let Ok(head) = open_keyed(&f.work, key) {
        assert!(!wrong_key, "an encrypted state dir opened without its key");
        let _ = head.ids();
        let _ = head.verify();
    }
});
