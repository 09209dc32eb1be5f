//! The journal of a head that is never closed stays bounded (it is checkpointed), and a crash
//! at any point still recovers exactly the acknowledged samples (G3).

mod common;

use common::store::*;
use lethe::store::CHECKPOINT_BYTES;

/// Samples per call: entries of 16 + 2·(24 + 8·k) bytes, so that the journal passes
/// [`CHECKPOINT_BYTES`] within a few dozen calls.
const K: u64 = 4096;

#[test]
fn the_journal_of_a_head_never_closed_stays_bounded() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let head = open(&dir).unwrap();
    let entry = 16 + 2 * (24 + 8 * K);
    let mut live = Vec::new();
    let mut largest = 0;
    let mut shrank = 0;
    for round in 0..40u64 {
        let ids: Vec<u64> = (round * K..(round + 1) * K).collect();
        learn(&head, &ids).unwrap();
        live.extend(&ids);
        if round >= 2 {
            let gone: Vec<u64> = live.drain(..K as usize).collect();
            head.forget(&gone).unwrap();
        }
        let len = std::fs::metadata(dir.join("journal")).unwrap().len();
        if len < largest {
            shrank += 1;
        }
        largest = largest.max(len);
        // At most the threshold, the entry that passed it, and a checkpoint's list of free
        // slots (at most K here).
        assert!(
            len <= CHECKPOINT_BYTES + 2 * entry,
            "round {round}: {len} bytes"
        );
        // The bucket files hold the live samples (at most 3K), not the history (40K): 256
        // headers and version blocks, and at most an index entry and a record per sample for
        // each of a bucket's two versions.
        let samples: u64 = bucket_files(&dir)
            .iter()
            .map(|name| std::fs::metadata(dir.join(name)).unwrap().len())
            .sum();
        assert!(
            samples <= 256 * 128 + 2 * 3 * K * (12 + 4 * (D + C) as u64 + 8),
            "round {round}: the bucket files have {samples} bytes"
        );
    }
    assert!(shrank >= 2, "the journal was checkpointed {shrank} times");
    // A crash now recovers exactly the acknowledged samples.
    let crashed = root.path().join("crashed");
    snapshot(&dir, &crashed);
    live.sort_unstable();
    let recovered = open(&crashed).unwrap();
    assert_eq!(recovered.ids(), live);
    assert!(recovered.verify().unwrap().ok());
    assert!(recovered.weights().unwrap() == head.weights().unwrap());
}
