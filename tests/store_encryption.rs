//! Encrypted state dirs (G9): the key must match, tampering is detected, rekey and forget-all
//! make the old keys useless, G2 holds for the plaintexts and the layout, and no file holds
//! anything of the user's data in the clear. Fault injection at every step of every call, with
//! a key, is in `src/store/tests.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::store::*;
use lethe::{Core, CoreOptions, Error, Head, HeadOptions, StateKey};
use ndarray::Array1;
use ndarray_npy::ReadNpyExt;

fn key() -> StateKey {
    StateKey::new([0x11; 32])
}

fn other_key() -> StateKey {
    StateKey::new([0x22; 32])
}

/// An encrypted state dir that learned `ids` (in batches of 7) and was closed.
fn closed_encrypted(dir: &Path, ids: &[u64]) {
    let head = open_keyed(dir, Some(key())).unwrap();
    for batch in ids.chunks(7) {
        learn(&head, batch).unwrap();
    }
    head.close().unwrap();
}

fn is_key_error(r: &lethe::Result<Head>) -> bool {
    matches!(r, Err(Error::Key(_)))
}

/// Opening must fail with a state error that names `name`, changing nothing.
fn assert_refused(dir: &Path, key: Option<StateKey>, name: &str, what: &str) {
    let before = files(dir);
    match open_keyed(dir, key) {
        Err(Error::State { message, .. }) => {
            assert!(
                message.contains(name),
                "{what}: does not name {name}: {message}"
            )
        }
        Err(e) => panic!("{what}: not a state error: {e}"),
        Ok(head) => panic!("{what}: opened, holding {:?}", head.ids()),
    }
    assert_eq!(files(dir), before, "{what}: the state dir changed");
}

/// A wrong key, no key for an encrypted dir, a key for a dir without one: each an
/// [`Error::Key`], in a closed dir and in one left open by a crash, and nothing changes.
#[test]
fn a_key_must_be_the_state_dirs_own() {
    let root = tempfile::tempdir().unwrap();
    let encrypted = root.path().join("encrypted");
    closed_encrypted(&encrypted, &[1, 2, 3, 4, 5]);
    let crashed = root.path().join("crashed");
    let live = open_keyed(&encrypted, Some(key())).unwrap();
    live.forget(&[2]).unwrap();
    learn(&live, &[6, 7]).unwrap();
    snapshot(&encrypted, &crashed);
    live.close().unwrap();
    let plain = root.path().join("plain");
    learned_only_plain(&plain, &[1, 2, 3]);

    let cases: [(&Path, Option<StateKey>, &str); 5] = [
        (&encrypted, None, "an encrypted dir without a key"),
        (
            &encrypted,
            Some(other_key()),
            "an encrypted dir with another key",
        ),
        (&crashed, None, "a crashed encrypted dir without a key"),
        (
            &crashed,
            Some(other_key()),
            "a crashed encrypted dir with another key",
        ),
        (&plain, Some(key()), "a dir without a key, with one"),
    ];
    for (dir, key, what) in cases {
        let before = files(dir);
        let r = open_keyed(dir, key);
        assert!(is_key_error(&r), "{what}: {:?}", r.err());
        assert_eq!(files(dir), before, "{what}: the state dir changed");
    }
    assert!(matches!(StateKey::from_slice(&[1; 31]), Err(Error::Key(_))));
    assert!(matches!(StateKey::from_slice(&[1; 33]), Err(Error::Key(_))));
    // The right keys still open each, with what they held.
    assert_eq!(
        open_keyed(&encrypted, Some(key())).unwrap().ids(),
        [1, 3, 4, 5, 6, 7]
    );
    assert_eq!(
        open_keyed(&crashed, Some(key())).unwrap().ids(),
        [1, 3, 4, 5, 6, 7]
    );
    assert_eq!(open_keyed(&plain, None).unwrap().ids(), [1, 2, 3]);
    // A dir without a key has nothing to rekey; a head without a state dir refuses a key.
    let head = open_keyed(&plain, None).unwrap();
    assert!(matches!(head.rekey(&key()), Err(Error::Key(_))));
    let keyed = HeadOptions {
        key: Some(key()),
        ..HeadOptions::default()
    };
    assert!(matches!(Head::detached(spec(), &keyed), Err(Error::Key(_))));
    let memory = Head::detached(spec(), &HeadOptions::default()).unwrap();
    assert!(matches!(memory.rekey(&key()), Err(Error::Key(_))));
}

fn learned_only_plain(dir: &Path, ids: &[u64]) {
    let head = open(dir).unwrap();
    learn(&head, ids).unwrap();
    head.close().unwrap();
}

/// Sealed records: the nonce (24 bytes), the fixed-point row, the tag (16 bytes).
const RECORD: usize = 24 + 4 * (D + C) + 16;

fn swap_last_two_records(bytes: &mut [u8]) {
    let n = bytes.len();
    let (a, b) = bytes[n - 2 * RECORD..].split_at_mut(RECORD);
    a.swap_with_slice(b);
}

/// Records swapped within a file, a file of an earlier version of the same dir put back
/// (replayed), a file of another dir with the same key and samples: each refused, naming
/// the file, and nothing changes.
#[test]
fn swapped_replayed_and_moved_pieces_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let ids: Vec<u64> = (1..=600).collect();
    let dir = root.path().join("state");
    closed_encrypted(&dir, &ids);
    let good = files(&dir);
    let bucket = bucket_files(&dir)
        .into_iter()
        .max_by_key(|n| good[n].len())
        .unwrap();

    // Two records of a bucket file swapped.
    let mut bad = good[&bucket].clone();
    swap_last_two_records(&mut bad);
    std::fs::write(dir.join(&bucket), &bad).unwrap();
    assert_refused(
        &dir,
        Some(key()),
        &bucket,
        "records swapped in a bucket file",
    );
    std::fs::write(dir.join(&bucket), &good[&bucket]).unwrap();

    // The same bucket file from another state dir with the same key and the same samples.
    let twin = root.path().join("twin");
    closed_encrypted(&twin, &ids);
    std::fs::copy(twin.join(&bucket), dir.join(&bucket)).unwrap();
    assert_refused(
        &dir,
        Some(key()),
        &bucket,
        "a bucket file of another state dir",
    );
    std::fs::write(dir.join(&bucket), &good[&bucket]).unwrap();

    // An earlier version of every bucket file, after a forget in each bucket and a close.
    let head = open_keyed(&dir, Some(key())).unwrap();
    head.forget(&ids[..300]).unwrap();
    head.close().unwrap();
    let later = files(&dir);
    for (name, bytes) in &good {
        if name.starts_with("samples-") && later.get(name).is_some_and(|l| l != bytes) {
            std::fs::write(dir.join(name), bytes).unwrap();
            assert_refused(&dir, Some(key()), name, "a bucket file replayed");
            std::fs::write(dir.join(name), &later[name]).unwrap();
        }
    }
    // And the statistics.
    std::fs::write(dir.join("stats.bin"), &good["stats.bin"]).unwrap();
    assert_refused(&dir, Some(key()), "stats.bin", "stats.bin replayed");
    std::fs::write(dir.join("stats.bin"), &later["stats.bin"]).unwrap();
    assert_eq!(open_keyed(&dir, Some(key())).unwrap().ids(), &ids[300..]);

    // The records of a learn swapped in the journal of a dir left open by a crash.
    let live = open_keyed(&dir, Some(key())).unwrap();
    learn(&live, &[5000, 5001]).unwrap();
    let crashed = root.path().join("crashed");
    snapshot(&dir, &crashed);
    live.close().unwrap();
    let mut journal = std::fs::read(crashed.join("journal")).unwrap();
    swap_last_two_records(&mut journal);
    std::fs::write(crashed.join("journal"), &journal).unwrap();
    assert_refused(
        &crashed,
        Some(key()),
        "journal",
        "records swapped in the journal",
    );
}

/// After rekey the old key opens nothing and the new one opens exactly what the dir held;
/// a file sealed under the old data key does not open under the new one.
#[test]
fn rekey_leaves_nothing_the_old_key_opens() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let ids: Vec<u64> = (1..=200).collect();
    closed_encrypted(&dir, &ids);
    let before = files(&dir);
    let old_data_key = data_key(&dir, &[0x11; 32]);
    let head = open_keyed(&dir, Some(key())).unwrap();
    head.forget(&[3, 4]).unwrap();
    learn(&head, &[300]).unwrap();
    head.rekey(&other_key()).unwrap();
    assert_ne!(data_key(&dir, &[0x22; 32]), old_data_key, "a new data key");
    learn(&head, &[301]).unwrap();
    head.forget(&[301]).unwrap();
    head.close().unwrap();
    assert!(is_key_error(&open_keyed(&dir, Some(key()))));
    let reopened = open_keyed(&dir, Some(other_key())).unwrap();
    let expect: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| ![3, 4].contains(id))
        .chain([300])
        .collect();
    assert_eq!(reopened.ids(), expect);
    assert!(reopened.weights().unwrap() == fresh_weights(&expect));
    drop(reopened);
    // Every file was rewritten: none holds a byte string of 32 bytes it held before.
    let after = files(&dir);
    for (name, old) in &before {
        if name == "meta.json" {
            continue;
        }
        for (new_name, new) in &after {
            let shared = old
                .chunks(32)
                .skip(3)
                .filter(|c| c.len() == 32 && c.iter().any(|&b| b != 0))
                .filter(|c| new.windows(32).any(|w| w == *c))
                .count();
            assert_eq!(shared, 0, "{new_name} holds ciphertext of the old {name}");
        }
    }
    // An old bucket file put back is refused.
    let bucket = bucket_files(&dir).swap_remove(0);
    if let Some(old) = before.get(&bucket) {
        std::fs::write(dir.join(&bucket), old).unwrap();
        assert_refused(
            &dir,
            Some(other_key()),
            &bucket,
            "a bucket file from before rekey",
        );
    }
}

/// The data key of an encrypted state dir, unwrapped here from the journal's key block (after
/// the 64-byte header and the 16-byte mark: nonce, sealed key, tag; associated data "WRAP" and
/// the header), independently of Lethe's code.
fn data_key(dir: &Path, key: &[u8; 32]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    let journal = std::fs::read(dir.join("journal")).unwrap();
    let block = &journal[80..152];
    let aad = [&b"WRAP"[..], &journal[..64]].concat();
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(&block[..24]),
            Payload {
                msg: &block[24..],
                aad: &aad,
            },
        )
        .expect("the key unwraps the data key")
}

/// Forget-all on an encrypted head leaves a fresh encrypted state dir: a new data key, the
/// same key opening it, and nothing of before in any file.
#[test]
fn forget_all_on_an_encrypted_head_starts_over() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    closed_encrypted(&dir, &(1..=50).collect::<Vec<_>>());
    let before = data_key(&dir, &[0x11; 32]);
    let head = open_keyed(&dir, Some(key())).unwrap();
    learn(&head, &[100]).unwrap();
    assert_eq!(
        data_key(&dir, &[0x11; 32]),
        before,
        "a learn keeps the data key"
    );
    head.forget_all().unwrap();
    let names: Vec<String> = files(&dir).into_keys().collect();
    assert_eq!(names, ["journal", "meta.json"]);
    assert_ne!(data_key(&dir, &[0x11; 32]), before, "a new data key");
    learn(&head, &[7]).unwrap();
    head.close().unwrap();
    assert!(is_key_error(&open_keyed(&dir, None)));
    assert_eq!(open_keyed(&dir, Some(key())).unwrap().ids(), [7]);
}

/// G2 with a key: two encrypted state dirs with the same samples, whatever their histories
/// (and keys), have the same files, each of the same size and with the same plaintexts;
/// their bytes differ. Without a key their bytes are identical.
#[test]
fn encrypted_closed_dirs_depend_only_on_their_samples_up_to_ciphertext() {
    let root = tempfile::tempdir().unwrap();
    let kept: Vec<u64> = (1..=80).collect();
    let direct = root.path().join("direct");
    closed_encrypted(&direct, &kept);

    let winding = root.path().join("winding");
    let head = open_keyed(&winding, Some(key())).unwrap();
    learn(&head, &(1..=120).rev().collect::<Vec<_>>()).unwrap();
    head.forget(&(81..=100).collect::<Vec<_>>()).unwrap();
    head.close().unwrap();
    let head = open_keyed(&winding, Some(key())).unwrap();
    learn(&head, &[500, 501]).unwrap();
    head.forget(&(101..=120).chain([500, 501]).collect::<Vec<_>>())
        .unwrap();
    head.rekey(&other_key()).unwrap();
    head.close().unwrap();

    let (a, b) = (files(&direct), files(&winding));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same files"
    );
    let sizes =
        |m: &BTreeMap<String, Vec<u8>>| -> Vec<usize> { m.values().map(Vec::len).collect() };
    assert_eq!(sizes(&a), sizes(&b), "the same sizes");
    let pa = lethe::store::plaintexts(&direct, Some(&key())).unwrap();
    let pb = lethe::store::plaintexts(&winding, Some(&other_key())).unwrap();
    assert_eq!(pa.keys().collect::<Vec<_>>(), a.keys().collect::<Vec<_>>());
    assert!(pa == pb, "the plaintexts differ");
    for (name, bytes) in &a {
        if name != "meta.json" {
            assert_ne!(bytes, &b[name], "{name}: ciphertexts are fresh");
        }
    }
    // The plaintexts hold the samples: a dir with one sample fewer differs.
    let fewer = root.path().join("fewer");
    closed_encrypted(&fewer, &kept[1..]);
    let pf = lethe::store::plaintexts(&fewer, Some(&key())).unwrap();
    assert!(pf != pa, "the plaintexts do not depend on the samples");
}

/// The 64 first MNIST test digits and their labels.
fn mnist(n: usize) -> (Vec<f32>, Vec<u32>) {
    let path = common::repo_root().join("tests/data/test_labels.npy");
    let labels = Array1::<u8>::read_npy(std::fs::File::open(path).unwrap()).unwrap();
    let inputs = common::mnist_core_input(n);
    (
        inputs.as_slice().unwrap().to_vec(),
        labels.iter().take(n).map(|&l| u32::from(l)).collect(),
    )
}

/// Byte strings to look for, by what they encode.
#[derive(Default)]
struct Needles(Vec<(&'static str, Vec<u8>)>);

impl Needles {
    /// Every window of `per` consecutive values (each little-endian) with no zero value: zeros
    /// and small values occur everywhere.
    fn windows<const N: usize>(&mut self, what: &'static str, values: &[[u8; N]], per: usize) {
        for w in values.windows(per) {
            if w.iter().all(|v| v.iter().filter(|&&b| b != 0).count() >= 2) {
                self.0.push((what, w.concat()));
            }
        }
    }

    /// Where they occur in `files`: (what, file).
    fn find(&self, files: &BTreeMap<String, Vec<u8>>) -> Vec<(&'static str, String)> {
        let mut hits = Vec::new();
        for (what, needle) in &self.0 {
            for (name, bytes) in files {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    hits.push((*what, name.clone()));
                }
            }
        }
        hits.sort();
        hits.dedup();
        hits
    }
}

fn kinds(hits: &[(&'static str, String)]) -> Vec<&'static str> {
    let mut k: Vec<&str> = hits.iter().map(|h| h.0).collect();
    k.dedup();
    k
}

/// What one run of the scan saw: the files while the head was open (the samples in the
/// journal), once closed (in the bucket files, the statistics in `stats.bin`), and the
/// needles (the weights among them: no file holds them).
fn learn_mnist(
    core: &Arc<Core>,
    dir: &Path,
    key: Option<StateKey>,
) -> (Vec<BTreeMap<String, Vec<u8>>>, Needles) {
    let n = 64;
    let (inputs, labels) = mnist(n);
    let ids: Vec<u64> = (0..n as u64).map(|i| 7000 + i).collect();
    let options = HeadOptions {
        key: key.clone(),
        ..HeadOptions::default()
    };
    let head = Head::open(core.clone(), dir, &options).unwrap();
    let per = core.input_len();
    head.learn(&ids[..40], &inputs[..40 * per], &labels[..40])
        .unwrap();
    head.learn(&ids[40..], &inputs[40 * per..], &labels[40..])
        .unwrap();
    let open_files = files(dir);
    let needles = needles(&head, &inputs, &labels);
    head.close().unwrap();
    let closed_files = files(dir);
    // The canonical weights Θ (p × C, row-major, Θ = [W b]ᵀ), which no file may hold.
    let head = Head::open(core.clone(), dir, &options).unwrap();
    let w = head.weights().unwrap();
    head.close().unwrap();
    let (c, d) = w.w.dim();
    let theta: Vec<[u8; 8]> = (0..=d)
        .flat_map(|i| (0..c).map(move |k| (i, k)))
        .map(|(i, k)| if i < d { w.w[(k, i)] } else { w.b[k] }.to_le_bytes())
        .collect();
    let mut needles = needles;
    needles.windows("f64 weights", &theta, 2);
    (vec![open_files, closed_files], needles)
}

/// Every encoding of the samples Lethe uses, and their exact statistics, computed here from
/// the core's features: f32 features and core logits, fixed-point i32 features and targets,
/// their f64 forms, and A = Σ x xᵀ and B = Σ x rᵀ (i128, x = [q, 1]).
fn needles(head: &Head, inputs: &[f32], labels: &[u32]) -> Needles {
    let spec = head.spec();
    let n = labels.len();
    let (phi, z) = head.core_features(inputs, n).unwrap();
    let one = spec.fixed.one();
    let unit = 1.0 / spec.fixed.scale();
    let mut needles = Needles::default();
    let mut xs = Vec::new();
    let mut rs = Vec::new();
    for (s, &label) in labels.iter().enumerate() {
        let (phi, z) = (phi.row(s).to_vec(), z.row(s).to_vec());
        let (mut q, mut r) = (Vec::new(), Vec::new());
        spec.fixed.quantize_features(&phi, 0, &mut q).unwrap();
        spec.fixed
            .quantize_targets(label as usize, spec.target_scale, &z, 0, &mut r)
            .unwrap();
        let f32s = |v: &[f32]| -> Vec<[u8; 4]> { v.iter().map(|x| x.to_le_bytes()).collect() };
        let i32s = |v: &[i32]| -> Vec<[u8; 4]> { v.iter().map(|x| x.to_le_bytes()).collect() };
        let f64s = |v: &[i32], scale: f64| -> Vec<[u8; 8]> {
            v.iter()
                .map(|&x| (x as f64 * scale).to_le_bytes())
                .collect()
        };
        needles.windows("f32 features", &f32s(&phi), 4);
        needles.windows("f32 core logits", &f32s(&z), 4);
        needles.windows("i32 fixed-point features", &i32s(&q), 4);
        needles.windows("i32 fixed-point targets", &i32s(&r), 2);
        needles.windows("f64 features", &f64s(&q, unit), 2);
        needles.windows("f64 fixed-point features", &f64s(&q, 1.0), 2);
        let mut x: Vec<i128> = q.iter().map(|&v| i128::from(v)).collect();
        x.push(i128::from(one));
        xs.push(x);
        rs.push(r);
    }
    let p = xs[0].len();
    let c = rs[0].len();
    let mut a = Vec::new();
    for i in 0..p {
        for j in i..p {
            a.push(xs.iter().map(|x| x[i] * x[j]).sum::<i128>().to_le_bytes());
        }
    }
    let mut b = Vec::new();
    for i in 0..p {
        for k in 0..c {
            b.push(
                xs.iter()
                    .zip(&rs)
                    .map(|(x, r)| x[i] * i128::from(r[k]))
                    .sum::<i128>()
                    .to_le_bytes(),
            );
        }
    }
    needles.windows("i128 statistics A", &a, 1);
    needles.windows("i128 statistics B", &b, 1);
    needles
}

/// The proof of no plaintext: 64 real MNIST digits learned into an encrypted state dir; no
/// file Lethe wrote, open or closed, holds any window of any sample's features or targets in
/// any encoding Lethe uses, nor of the statistics. The same scan of a state dir without a key
/// finds the rows and the statistics, so the scan can see them; it finds the weights in no
/// state dir (they are solved from the statistics when the dir is opened, G7).
#[test]
fn an_encrypted_state_dir_holds_no_plaintext() {
    let core =
        Arc::new(Core::open(common::bundle_dir("mnist-core"), &CoreOptions::default()).unwrap());
    let root = tempfile::tempdir().unwrap();
    let (plain, needles) = learn_mnist(&core, &root.path().join("plain"), None);
    assert!(needles.0.len() > 10_000, "{} needles", needles.0.len());
    let seen_open = kinds(&needles.find(&plain[0]));
    let seen_closed = kinds(&needles.find(&plain[1]));
    println!("without a key: open {seen_open:?}, closed {seen_closed:?}");
    for kind in ["i32 fixed-point features", "i32 fixed-point targets"] {
        assert!(
            seen_open.contains(&kind),
            "the scan misses {kind} in the journal"
        );
        assert!(
            seen_closed.contains(&kind),
            "the scan misses {kind} in the buckets"
        );
    }
    for kind in ["i128 statistics A", "i128 statistics B"] {
        assert!(
            seen_closed.contains(&kind),
            "the scan misses {kind} in stats.bin"
        );
    }
    // G7: no file holds a value the canonical solve computed, with a key or without.
    for seen in [&seen_open, &seen_closed] {
        assert!(!seen.contains(&"f64 weights"), "a file holds the weights");
    }

    let (sealed, needles) = learn_mnist(&core, &root.path().join("sealed"), Some(key()));
    for (when, files) in ["open", "closed"].iter().zip(&sealed) {
        let hits = needles.find(files);
        assert!(
            hits.is_empty(),
            "{when}: plaintext in the encrypted dir: {hits:?}"
        );
    }
}
