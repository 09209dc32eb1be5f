//! The state dir's files: history independence (G2), scrubbing (G4), one writer, private
//! files and damaged files (G5). Fault injection at every step of every call is in
//! `src/store/tests.rs`; kill -9 is in `tests/store_crash.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use common::store::*;
use lethe::{Error, Head, HeadOptions, StateKey};
use proptest::prelude::*;

/// Ids that stay (S) and ids that are learned and then forgotten (F).
const S: std::ops::Range<u64> = 1..41;
const F: std::ops::Range<u64> = 1000..1015;

fn ids(r: std::ops::Range<u64>) -> Vec<u64> {
    r.collect()
}

/// A state dir that only ever learned `ids` (in the order given, in batches of 7), closed.
fn learned_only(dir: &Path, ids: &[u64]) {
    let head = open(dir).unwrap();
    for batch in ids.chunks(7) {
        learn(&head, batch).unwrap();
    }
    head.close().unwrap();
}

fn assert_same_files(a: &Path, b: &Path, what: &str) {
    let (fa, fb) = (files(a), files(b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "{what}: different files"
    );
    for (name, bytes) in &fa {
        assert_eq!(bytes.len(), fb[name].len(), "{what}: {name} sizes differ");
        assert!(*bytes == fb[name], "{what}: {name} differs");
    }
}

/// G2: learn S ∪ F across sessions, forget F along the way, close; learn only S, shuffled, in
/// a fresh state dir, close: the two state dirs are byte-identical, sizes included.
#[test]
fn a_closed_state_dir_depends_only_on_its_samples() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let (s, f) = (ids(S), ids(F));

    let head = open(&a).unwrap();
    learn(&head, &[&s[..20], &f[..5]].concat()).unwrap();
    head.forget(&f[..2]).unwrap();
    head.close().unwrap();
    let head = open(&a).unwrap();
    learn(&head, &f[5..15]).unwrap();
    head.forget(&f[2..10]).unwrap();
    learn(&head, &s[20..30]).unwrap();
    head.close().unwrap();
    let head = open(&a).unwrap();
    learn(&head, &s[30..]).unwrap();
    head.forget(&f[10..]).unwrap();
    head.close().unwrap();

    let mut shuffled = s.clone();
    shuffled.reverse();
    shuffled.swap(3, 17);
    learned_only(&b, &shuffled);
    assert_same_files(&a, &b, "learn S ∪ F, forget F vs learn S");
    let head = open(&a).unwrap();
    assert_eq!(head.ids(), s);
    assert!(head.weights().unwrap() == fresh_weights(&s));
}

/// forget-all leaves exactly a freshly created state dir, open and after close.
#[test]
fn forget_all_leaves_a_fresh_state_dir() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    learned_only(&a, &ids(S));
    let head = open(&a).unwrap();
    learn(&head, &ids(F)).unwrap();
    head.forget_all().unwrap();
    let fresh = open(&b).unwrap();
    assert_same_files(&a, &b, "after forget-all vs new, both open");
    head.close().unwrap();
    fresh.close().unwrap();
    assert_same_files(&a, &b, "after forget-all vs new, both closed");
}

/// After a crash (a copy of the files of an open state dir), reopening recovers exactly the
/// acknowledged samples, and closing gives the canonical state dir.
#[test]
fn recovery_then_close_gives_the_canonical_state_dir() {
    let root = tempfile::tempdir().unwrap();
    let (a, crashed, b) = (
        root.path().join("a"),
        root.path().join("crashed"),
        root.path().join("b"),
    );
    let (s, f) = (ids(S), ids(F));
    learned_only(&a, &[&s[..25], &f[..]].concat());
    let head = open(&a).unwrap();
    head.forget(&f[..10]).unwrap();
    learn(&head, &s[25..]).unwrap();
    head.forget(&f[10..]).unwrap();
    snapshot(&a, &crashed);
    head.close().unwrap();

    let head = open(&crashed).unwrap();
    assert_eq!(head.ids(), s);
    assert!(head.weights().unwrap() == fresh_weights(&s));
    assert!(head.verify().unwrap().ok());
    head.close().unwrap();
    learned_only(&b, &s);
    assert_same_files(&crashed, &b, "recovered vs learned S only");
}

/// The 16-byte windows of every forgotten sample's stored features and targets that some file
/// still holds.
fn leftovers(dir: &Path, forgotten: &BTreeSet<u64>) -> Vec<String> {
    let files = files(dir);
    let mut found = Vec::new();
    for &id in forgotten {
        let stored = stored_bytes(id);
        for (at, w) in stored.windows(16).enumerate() {
            for (name, bytes) in &files {
                if bytes.windows(16).any(|x| x == w) {
                    found.push(format!(
                        "{name} holds bytes {at}..{} of sample {id}",
                        at + 16
                    ));
                }
            }
        }
    }
    found
}

/// G4: once forget returns, no file of the state dir holds any 16-byte window of a forgotten
/// sample's stored features and targets: before close, after close, after forget-all.
#[test]
fn forgotten_samples_are_scrubbed_from_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (s, f) = (ids(S), ids(F));
    learned_only(dir, &[&s[..], &f[..]].concat());
    let all: BTreeSet<u64> = s.iter().chain(&f).copied().collect();
    // The check can see stored samples: every window of every sample is in a bucket file now.
    let stored = files(dir);
    for &id in &all {
        for w in stored_bytes(id).windows(16) {
            let found = stored.iter().any(|(name, bytes)| {
                name.starts_with("samples-") && bytes.windows(16).any(|x| x == w)
            });
            assert!(found, "sample {id}");
        }
    }
    let mut forgotten = BTreeSet::new();
    let head = open(dir).unwrap();
    head.forget(&f[..4]).unwrap();
    forgotten.extend(&f[..4]);
    assert_eq!(
        leftovers(dir, &forgotten),
        Vec::<String>::new(),
        "first forget"
    );
    learn(&head, &[5000, 5001, 5002]).unwrap();
    head.forget(&[5001, f[4]]).unwrap();
    forgotten.extend([5001, f[4]]);
    assert_eq!(
        leftovers(dir, &forgotten),
        Vec::<String>::new(),
        "later forget"
    );
    head.close().unwrap();
    assert_eq!(
        leftovers(dir, &forgotten),
        Vec::<String>::new(),
        "after close"
    );
    let head = open(dir).unwrap();
    head.forget(&f[5..]).unwrap();
    forgotten.extend(&f[5..]);
    assert_eq!(leftovers(dir, &forgotten), Vec::<String>::new(), "reopened");
    head.forget_all().unwrap();
    forgotten.extend(&s);
    forgotten.extend([5000, 5002]);
    assert_eq!(
        leftovers(dir, &forgotten),
        Vec::<String>::new(),
        "forget-all"
    );
    head.close().unwrap();
    assert_eq!(leftovers(dir, &forgotten), Vec::<String>::new(), "closed");
}

#[test]
fn one_head_at_a_time_and_private_files() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let head = open(&dir).unwrap();
    learn(&head, &[1, 2]).unwrap();
    match open(&dir) {
        Err(Error::State { message, .. }) => assert!(message.contains("another"), "{message}"),
        other => panic!(
            "a second head opened the same state dir: {:?}",
            other.is_ok()
        ),
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for name in ["meta.json", "journal"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    head.close().unwrap();
    assert_eq!(mode(&dir.join("stats.bin")), 0o600);
    for name in bucket_files(&dir) {
        assert_eq!(mode(&dir.join(&name)), 0o600, "{name}");
    }
    let head = open(&dir).unwrap();
    assert_eq!(head.ids(), [1, 2]);
}

#[test]
fn refuses_foreign_dirs_other_cores_and_other_specs() {
    let root = tempfile::tempdir().unwrap();
    let foreign = root.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    assert!(matches!(open(&foreign), Err(Error::State { .. })));
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);

    let dir = root.path().join("state");
    learned_only(&dir, &[1, 2, 3]);
    let other_core = "1".repeat(64);
    let r = Head::open_detached(spec(), &other_core, &dir, &HeadOptions::default());
    assert!(matches!(r, Err(Error::State { .. })));
    let mut other = spec();
    other.lambda = 0.5;
    let r = Head::open_detached(other, CORE_SHA256, &dir, &HeadOptions::default());
    assert!(matches!(r, Err(Error::State { .. })));
    assert_eq!(open(&dir).unwrap().ids(), [1, 2, 3]);
}

/// A state dir to damage: its files, the ids it holds, and the ids it holds if its journal is
/// cut after its first entry (what a crash while appending the second would leave).
struct Template {
    files: BTreeMap<String, Vec<u8>>,
    committed: Vec<u64>,
    journal_cut: Vec<u64>,
    key: Option<StateKey>,
}

/// A closed state dir and a crashed one (with a journal), without and with a key, made once.
fn templates() -> &'static [Template] {
    static TEMPLATES: OnceLock<Vec<Template>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut out = Vec::new();
        for key in [None, Some(StateKey::new([0x3c; 32]))] {
            let root = tempfile::tempdir().unwrap();
            let (closed, open_dir, crashed) = (
                root.path().join("closed"),
                root.path().join("open"),
                root.path().join("crashed"),
            );
            for dir in [&closed, &open_dir] {
                let head = open_keyed(dir, key.clone()).unwrap();
                learn(&head, &[1, 2, 3, 4]).unwrap();
                head.close().unwrap();
            }
            let head = open_keyed(&open_dir, key.clone()).unwrap();
            head.forget(&[2]).unwrap();
            learn(&head, &[7, 8]).unwrap();
            snapshot(&open_dir, &crashed);
            out.push(Template {
                files: files(&closed),
                committed: vec![1, 2, 3, 4],
                journal_cut: vec![],
                key: key.clone(),
            });
            out.push(Template {
                files: files(&crashed),
                committed: vec![1, 3, 4, 7, 8],
                journal_cut: vec![1, 3, 4],
                key,
            });
        }
        out
    })
}

#[derive(Debug, Clone)]
enum Damage {
    Replace(Vec<u8>),
    Xor(usize, Vec<u8>),
    Truncate(usize),
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600).prop_map(Damage::Replace),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(at, x)| Damage::Xor(at, x)),
        any::<usize>().prop_map(Damage::Truncate),
        prop::collection::vec(any::<u8>(), 1..100).prop_map(Damage::Append),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// G5 with random bytes in the parsers, with and without a key: whatever a file of a state
    /// dir holds, opening it never panics; it fails with a state error that names the file
    /// (or, with a key, a key error for the journal, whose damaged key block reads as another
    /// key's), or opens exactly the committed samples (damage that cannot matter: a released
    /// record, a torn journal tail).
    #[test]
    fn random_damage_is_an_error_or_harmless(
        which in 0usize..4,
        file in 0usize..16,
        how in damage(),
    ) {
        let Template { files: template, committed, journal_cut, key } = &templates()[which];
        let names: Vec<&String> = template.keys().collect();
        let name = names[file % names.len()].clone();
        let mut bytes = template[&name].clone();
        match how {
            Damage::Replace(b) => bytes = b,
            Damage::Xor(at, x) => {
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    for (i, v) in x.iter().enumerate() {
                        let k = (at + i) % bytes.len();
                        bytes[k] ^= v;
                    }
                }
            }
            Damage::Truncate(len) => bytes.truncate(len % (bytes.len() + 1)),
            Damage::Append(b) => bytes.extend(b),
        }
        let changed = bytes != template[&name];
        let dir = tempfile::tempdir().unwrap();
        for (n, b) in template {
            std::fs::write(dir.path().join(n), if *n == name { &bytes } else { b }).unwrap();
        }
        match open_keyed(dir.path(), key.clone()) {
            Err(Error::State { message, .. }) => {
                prop_assert!(changed, "an intact state dir failed: {}", message);
                prop_assert!(message.contains(name.as_str()), "{}: {}", name, message);
            }
            Err(Error::Key(m)) if key.is_some() && name == "journal" => {
                prop_assert!(changed, "an intact state dir failed: {}", m);
            }
            Err(e) => prop_assert!(false, "{}: not a state error: {}", name, e),
            Ok(head) => {
                let ids = head.ids();
                // A journal cut at its tail loses the entries a crash could have lost.
                let cut = name == "journal" && ids == *journal_cut;
                prop_assert!(ids == *committed || cut, "{}: opened {:?}", name, ids);
                prop_assert!(head.verify().unwrap().ok());
            }
        }
    }
}
