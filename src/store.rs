//! The state dir: where one head persists, atomically, durably, scrubbed, history-independently
//! and, with a key, encrypted (DESIGN.md G2–G5, G9).
//!
//! # Files
//! All integers are little-endian; every binary file starts with a 64-byte header (magic,
//! format version, d, C, the xxh3-64 of `meta.json`, two file-specific words, and an xxh3-64 of
//! the header), so a file from another head or a damaged header is detected at once.
//! - `meta.json`: format, version, the bundle's name and core sha256, the head's spec, and
//!   whether the dir is encrypted. Written once, when the state dir is created; its checksum
//!   is in every other header. It derives from the bundle and the options, never from user
//!   data, and is plaintext in every state dir.
//! - `samples-XX.bin`, one per non-empty bucket (XX = 00…ff; a sample's bucket is a fixed hash
//!   of its id, `format::bucket_of`): the header (count, bucket), a version block (the file's
//!   salt and the xxh3-128 of its body), then the body: the sealed index (id:u64 label:u32 per
//!   sample, sorted by id) and one sealed record per sample, in the same order, each holding
//!   the sample's fixed-point features and targets (`q:[i32; d] r:[i32; C]`). A record is
//!   sealed for (the file's salt, its position, the sample's id and label). A forget
//!   overwrites a record with zeros in place; a close rewrites each bucket that changed.
//! - `journal`: the authority on the state dir's content (format in `src/store/journal.rs`):
//!   its base names each bucket file by its salt and digest and `stats.bin` by its checksum,
//!   lists the bucket records released since their files were written, and holds, in the
//!   encrypted case, the data key wrapped by the application's key; its entries hold every
//!   change since: the records learned, and the places of the samples forgotten.
//! - `stats.bin`: the exact statistics A and B (i128), sealed, and an xxh3-128 of the file. It
//!   makes opening cheap: no O(n·d²) recomputation (the open solves the canonical weights from
//!   it, O(p³)). It holds nothing computed from the statistics, so a close solves nothing. It
//!   is current only when the journal's base names it and the journal has no entries and no
//!   released records. One written by an earlier build also holds L and Θ (its header's
//!   algorithm word says so); they are not used, and the next close rewrites the file.
//!
//! Sealing (`src/store/seal.rs`) is an xxh3-64 checksum in a state dir without a key, and
//! XChaCha20-Poly1305 under the dir's data key with one: then everything derived from user
//! data (records, ids, labels, statistics, the journal's entries and base)
//! is ciphertext; plaintext are the headers (sizes, counts, checksums), each bucket's sample
//! count, `meta.json`, and which bucket, position or entry is which.
//!
//! The dir is created 0700 (its parent synced, so that it survives a power loss) and its files
//! 0600. A closed state dir is a pure function of its sample set (G2): `meta.json`, the
//! journal (no entries, its base naming the files), `stats.bin` (the exact sums) and one bucket
//! file per non-empty bucket (its live samples in id order); no file's size depends on how
//! many samples there once were. With a key, the same
//! holds for the plaintexts, names and sizes; what differs is random: nonces, salts, the
//! wrapped data key and the checksums and digests over ciphertext.
//!
//! # Links, owners and locks
//! Every file is opened relative to the dir's descriptor, by name, without following links,
//! and must be a regular file with one name owned by this process's user; anything else under
//! one of Lethe's names is refused with an error that names it, and nothing is read through it,
//! written or scrubbed (see `src/store/io.rs`). A head locks the dir itself (`flock` on its
//! descriptor), which, unlike a lock file, cannot be deleted or swapped while held; earlier
//! versions' `lock` file is removed when found.
//!
//! # Commit points
//! Each call has one commit point. An error before it means nothing changed, in memory or on
//! disk (what the call had written is undone first); from it on the call returns OK, and the
//! work that follows is maintenance: when it fails it is logged with `tracing` and retried
//! before the next call, at close, or at the next open, never reported as the call's failure.
//! - learn: append an entry holding the sealed records to the journal and sync it (one
//!   `fdatasync`): **commit**. A crash before the sync ends leaves the entry whole (committed:
//!   the call may be reported either way, it had not returned) or torn (its frames or a record
//!   do not open: not committed, cut off at the next open). On an error the tail is zeroed and
//!   cut off, synced.
//! - forget: read and check the records; append the entry and sync it (one `fdatasync`):
//!   **commit**. Then overwrite the records with zeros in place (in a bucket file or the
//!   journal) and, on the first forget after opening, `stats.bin` (whose sums include the
//!   samples), without a sync: G4 holds in the files when forget returns, and the next sync of
//!   each file makes it durable (the next commit for the journal; close, a checkpoint or the
//!   next open for the others: recovery overwrites every released record again, and every
//!   file a compaction replaces is synced or scrubbed first).
//! - after each commit: rewrite the journal's mark (the entry count, not synced; see
//!   `journal.rs`), so that a journal cut later is detected.
//! - close (compaction, when anything changed): write a new version (`.tmp`) of each bucket
//!   that changed, `stats.bin.tmp` and `journal.tmp` (no entries, its base naming them), sync
//!   each; rename `journal.tmp` to `journal`, sync the dir: **commit**. Then rename the new
//!   files into place (scrubbing each replaced bucket file first), sync the dir, and scrub the
//!   old journal through its descriptor. A failure before the commit scrubs the new files.
//! - checkpoint (after a call, when the journal holds more than [`CHECKPOINT_BYTES`] and a
//!   quarter of the bucket files' bytes): the same, for the buckets that have records in the
//!   journal, with no `stats.bin` (the base names none) and the other released records listed
//!   in the new base; so the journal's size and the time to replay it stay bounded.
//! - rekey: the same, for every bucket, sealed under a new data key that the new journal wraps
//!   by the new key; then `stats.bin` (sealed under the old data key) is scrubbed. Once the
//!   application destroys the old key, nothing written under the old data key can be read.
//! - forget-all: rename `journal` to `journal.forgotten` and sync the dir: **commit**. Then
//!   overwrite the forgotten journal with zeros and sync it, scrub every other file but
//!   `meta.json`, write a fresh journal (a new data key in an encrypted dir) over the
//!   forgotten one, cut it to its length and sync it, rename it to `journal` and sync the
//!   dir. The state dir is then a freshly created one. Forget-all depends on nothing it
//!   erases, so it runs even after an earlier failure, and it needs no free space: the one
//!   file it writes reuses the blocks of a longer one.
//! - creation: write the journal and `meta.json.tmp`, sync them, rename `meta.json.tmp` to
//!   `meta.json`, sync the dir: **commit**.
//!
//! When an error leaves the outcome unknown (the commit's sync failed, and so did undoing it),
//! the store refuses changes but forget-all until it is reopened, and the next open decides:
//! the call then either fully happened or not at all, as after a crash.
//!
//! # Opening and recovery
//! Before anything is written, every one of Lethe's names in the dir is checked (above),
//! `meta.json` against the bundle and the key (a key for a dir without one, or none for an
//! encrypted dir, is an [`Error::Key`]), and the journal: its data key must unwrap with the
//! key ([`Error::Key`] otherwise), its base and entries must authenticate (a torn last entry is
//! not committed; fewer entries than its mark, or damage before the last entry, is
//! corruption). Each bucket file the base names must exist in that version (a `.tmp` of it is
//! moved into place: a compaction that crashed after its commit).
//! - A closed state dir (no entries, no released records, `stats.bin` current): every bucket
//!   file is checked completely (its digest, its sealed index: ids strictly increasing, in
//!   their bucket), and `stats.bin` is read. Cost: one pass over the bucket files (xxh3 runs at
//!   memory speed) and a read of `stats.bin`; rows stay on disk, only an index id → (place,
//!   label) is kept in memory.
//! - Otherwise, a crash while open: replay the journal over its base; every live record must
//!   open (a live record overwritten with zeros means the journal lost the forget that did it:
//!   cut or damaged), released records are overwritten with zeros again, the statistics are
//!   recomputed (reporting progress as `tracing` events) and the dir compacted as by close; if
//!   compacting fails (a full disk), the head opens on the journal and compacts at close.
//!
//! Leftovers (files no base names, temporary files) are scrubbed only after the checks, and
//! before anything new is written, so that a full disk does not stop recovery. Every
//! inconsistency is an [`Error::State`] that names the file; nothing is ever repaired by
//! dropping samples. A state dir that cannot be opened for any reason can still be erased
//! ([`erase`]), without its key.
//!
//! `src/store/tests.rs` makes every step of every call fail, crash, lose power (with partial
//! and torn writes) or run out of space (see `src/store/io.rs`), with and without a key, and
//! checks that reopening gives exactly the state before or after, before exactly when the
//! call returned an error.
//!
//! # Not covered
//! Without a key, checksums detect corruption and accidental modification; they are not a
//! MAC: whoever can write the state dir can also rewrite it consistently. With a key, pieces
//! cannot be forged, swapped, moved or replayed one by one, but the whole state dir can be
//! rolled back to an earlier copy of itself, and its journal cut to what it was before its
//! last commit (the mark lags one commit; see `journal.rs`). A forget whose overwriting had
//! not reached the disk when its journal entry was lost (a cut plus a power loss) cannot be
//! detected. Zeroing overwrites the file's blocks as the file system sees them; on
//! copy-on-write file systems (btrfs, ZFS, APFS) and behind a flash translation layer the old
//! physical copy may survive until reused: with a key, [`Store::rekey`] (and destroying the
//! old key) makes such copies unreadable.
//!
//! # Modules
//! `open` (opening and recovery), `compact` (close, checkpoints, rekey), `erase`, `format`
//! (file layouts), `journal`, `seal` (checksums or encryption), `io` (link-safe file access
//! and fault injection).
//!
//! The store reads with `pread` rather than a memory map: a map would save a few ms at
//! n = 50 000, d = 1280, but another process truncating a file would then kill the host with
//! SIGBUS, which G5 rules out.

mod compact;
mod erase;
mod format;
mod io;
mod journal;
mod open;
mod seal;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;

use zeroize::{DefaultIsZeroes, Zeroize};

use crate::error::{Error, Result};
use crate::math::samples::{Entry, SampleIndex, SampleRef};
use crate::math::solver::{self, Solution};
use crate::math::spec::HeadSpec;
use crate::math::stats::ExactStats;
pub use erase::{erase, ErasedReport};
use format::{
    bucket_index_ad, bucket_name, bucket_of, bucket_record_at, decode_ids, decode_payload,
    encode_payload, is_lethe_name, parse_bucket_head, parse_bucket_name, payload_len, record_ad,
    BucketRef, Header, Meta, Version, BUCKET_BODY, HEADER_LEN, JOURNAL, JOURNAL_FORGOTTEN,
    LEFTOVERS, META, STATS, STATS_TMP,
};
use io::{Dir, StoreFile};
use journal::{Base, Journal, Keys};
pub use seal::StateKey;
use seal::{Sealer, Unsealed};

/// Records per batch handed to a caller of [`Store::for_each_batch`].
const ROW_BATCH: usize = 1024;
/// Bytes a closed bucket file's records are read in while their digest is checked at open.
const CHECK_CHUNK: usize = 1 << 20;
/// Journal bytes below which it is never checkpointed (above, it is once it also holds a
/// quarter of the bucket files' bytes, so that rewriting buckets costs O(1) per byte learned).
pub const CHECKPOINT_BYTES: u64 = 1 << 20;
/// A location's bit that says it is in the journal (its byte offset); without it, a bucket
/// record: bucket << 32 | position.
const IN_JOURNAL: u64 = 1 << 63;

fn bucket_loc(bucket: usize, pos: u64) -> u64 {
    (bucket as u64) << 32 | pos
}

fn split_loc(loc: u64) -> (usize, u64) {
    ((loc >> 32) as usize, loc & 0xffff_ffff)
}

#[cfg(test)]
fn checkpoint_every() -> u64 {
    tests::CHECKPOINT_EVERY.with(std::cell::Cell::get)
}

#[cfg(not(test))]
fn checkpoint_every() -> u64 {
    u64::MAX
}

/// What an existing state dir held besides its samples.
pub struct Loaded {
    pub stats: ExactStats,
    /// The canonical solution for `stats`.
    pub solution: Solution,
}

/// Work left by a call that committed but whose maintenance failed (see the module docs).
#[derive(Default)]
struct Pending {
    /// Released records not overwritten yet (locations).
    scrub: Vec<u64>,
    /// `stats.bin` still to be overwritten (a forget committed since it was current).
    retire_stats: bool,
    /// A committed forget-all whose fresh journal is not in place: changes wait for it.
    forget_all: bool,
    /// A committed compaction whose files are not all in place: changes wait for it.
    compaction: bool,
    /// Leftover files to scrub.
    leftovers: bool,
}

/// An open state dir: the index of its samples in memory, their rows in the bucket files and
/// the journal.
pub struct Store {
    /// Holds the lock while the store lives.
    dir: Dir,
    spec: HeadSpec,
    /// What every header of this state dir says (`extra` and `seq` = 0).
    header: Header,
    sealer: Sealer,
    /// The keys of an encrypted state dir.
    keys: Option<Keys>,
    /// The bucket files the journal's base names, by bucket.
    buckets: BTreeMap<usize, BucketRef>,
    journal: Journal,
    /// The base's `parent`: the checksum of the `stats.bin` it names (0: none).
    parent: u128,
    /// Whether `stats.bin` holds the statistics of the current samples.
    stats_current: bool,
    /// `stats.bin` was overwritten with zeros (not synced yet).
    stats_zeroed: bool,
    /// id → (location, label) of every live sample.
    index: SampleIndex,
    /// Bucket records released since their files were written (locations).
    released: BTreeSet<u64>,
    pending: Pending,
    /// Why changes (but forget-all) are refused: an error left the outcome of a call unknown.
    poisoned: Option<String>,
}

/// How a failed commit ended.
enum Failed {
    /// The entry is not committed, on disk or in memory.
    Undone(Error),
    /// Whether it is committed is unknown until the next open (the store is poisoned).
    Unknown(Error),
}

impl Store {
    /// A store with no sample over a fresh journal.
    fn new(
        dir: Dir,
        spec: HeadSpec,
        header: Header,
        sealer: Sealer,
        keys: Option<Keys>,
        journal: Journal,
    ) -> Store {
        Store {
            dir,
            index: SampleIndex::new(spec.num_classes()),
            spec,
            header,
            sealer,
            keys,
            buckets: BTreeMap::new(),
            journal,
            parent: 0,
            stats_current: false,
            stats_zeroed: false,
            released: BTreeSet::new(),
            pending: Pending::default(),
            poisoned: None,
        }
    }

    /// The statistics and solution of no sample.
    fn empty_loaded(&self) -> Result<Loaded> {
        let stats = ExactStats::new(self.header.dim, self.header.classes);
        let solution = self.solve(&stats)?;
        Ok(Loaded { stats, solution })
    }

    fn solve(&self, stats: &ExactStats) -> Result<Solution> {
        self.solve_on(stats, solver::threads_for(stats.dim() + 1))
    }

    /// [`Store::solve`] on up to `threads` threads.
    fn solve_on(&self, stats: &ExactStats, threads: usize) -> Result<Solution> {
        let (lambda, frac_bits) = (self.spec.lambda, self.spec.fixed.frac_bits);
        let kernel = solver::CanonicalKernel::selected();
        solver::canonical_with(stats, lambda, frac_bits, kernel, threads).map_err(|_| {
            Error::Limit(format!(
                "A is not numerically positive definite at lambda = {}: the state dir was \
                 written by a version that did not check this; erase it",
                self.spec.lambda
            ))
        })
    }

    /// Overwrites records with zeros (not synced).
    fn zero_records(&mut self, locs: &[u64]) -> Result<()> {
        let rec = self.record_len() as usize;
        let zeros = vec![0u8; rec];
        let mut sorted = locs.to_vec();
        sorted.sort_unstable();
        let mut part = OpenPart::default();
        for &loc in &sorted {
            if loc & IN_JOURNAL != 0 {
                self.journal.zero(loc & !IN_JOURNAL, rec)?;
            } else {
                let (file, at) = self.place_of(loc, &BTreeMap::new())?;
                part.get(&self.dir, &file)?.write_at(&zeros, at)?;
            }
        }
        Ok(())
    }

    /// Syncs the bucket files that hold these locations.
    fn sync_buckets(&self, locs: &[u64]) -> Result<()> {
        let buckets: BTreeSet<usize> = locs
            .iter()
            .filter(|&&l| l & IN_JOURNAL == 0)
            .map(|&l| split_loc(l).0)
            .collect();
        for b in buckets {
            open_part(&self.dir, &bucket_name(b, Version::Current))?.sync()?;
        }
        Ok(())
    }

    /// The spec recorded in the state dir.
    pub fn spec(&self) -> &HeadSpec {
        &self.spec
    }

    /// The live samples: id → (location, label).
    pub fn index(&self) -> &SampleIndex {
        &self.index
    }

    /// Whether the state dir is encrypted.
    pub fn encrypted(&self) -> bool {
        self.keys.is_some()
    }

    fn record_len(&self) -> u64 {
        self.sealer
            .sealed_len(payload_len(self.header.dim, self.header.classes)) as u64
    }

    fn poison(&mut self, reason: String) {
        tracing::error!(
            "state dir {}: {reason}; changes are refused until it is reopened",
            self.dir.path().display()
        );
        self.poisoned = Some(reason);
    }

    /// Before a change: refuses one after an unknown outcome, and finishes maintenance that a
    /// change must not start without (an error there means the change did not happen).
    fn ready(&mut self) -> Result<()> {
        if let Some(reason) = &self.poisoned {
            return Err(Error::state(
                self.dir.path(),
                format!(
                    "refusing changes after an error left an earlier call's outcome unknown \
                     ({reason}); close and reopen the head to recover the state dir (forget-all \
                     still works)"
                ),
            ));
        }
        self.maintain()
    }

    /// Retries maintenance that failed after an earlier commit (see the module docs). Only
    /// what later changes depend on is an error here; the rest is logged.
    fn maintain(&mut self) -> Result<()> {
        if self.pending.forget_all {
            self.journal =
                finish_forget_all(&self.dir, &self.header, &self.sealer, self.keys.as_ref())?;
            self.pending = Pending::default();
        }
        if self.pending.compaction {
            let versions = self.buckets.keys().map(|&b| (b, Version::New)).collect();
            let names = self.dir.list()?;
            let versions = choose_among(&self.dir, &names, &self.buckets, &self.header, versions)?;
            self.settle(&versions, &names)?;
            if self.dir.has(STATS_TMP)? {
                self.dir.rename(STATS_TMP, STATS)?;
                self.dir.sync()?;
            }
            self.pending.compaction = false;
        }
        if !self.pending.scrub.is_empty() {
            let scrub = std::mem::take(&mut self.pending.scrub);
            if let Err(e) = self.zero_records(&scrub) {
                tracing::warn!("overwriting released samples failed again (retried later): {e}");
                self.pending.scrub = scrub;
            }
        }
        if self.pending.retire_stats {
            match self.retire_stats() {
                Ok(()) => self.pending.retire_stats = false,
                Err(e) => tracing::warn!("overwriting {STATS} failed again (retried later): {e}"),
            }
        }
        if self.pending.leftovers {
            match tidy(&self.dir) {
                Ok(()) => self.pending.leftovers = false,
                Err(e) => tracing::warn!("removing leftover files failed (retried later): {e}"),
            }
        }
        Ok(())
    }

    /// Overwrites `stats.bin` with zeros, not synced (its sums include forgotten samples).
    fn retire_stats(&mut self) -> Result<()> {
        self.stats_current = false;
        if self.stats_zeroed {
            return Ok(());
        }
        if let Some(f) = self.dir.open_file(STATS)? {
            f.zero_from(0)?;
            self.stats_zeroed = true;
        }
        Ok(())
    }

    /// Appends an entry: the commit point of learn and forget. On failure the partly written
    /// entry is scrubbed and cut off; if that fails too, the outcome is unknown.
    fn commit(&mut self, entry: &[u8]) -> std::result::Result<(), Failed> {
        let Err(e) = self.journal.commit(entry) else {
            return Ok(());
        };
        match self.journal.cut_tail() {
            Ok(()) => Err(Failed::Undone(e)),
            Err(cut) => {
                self.poison(format!(
                    "{e}; cutting the failed journal entry off failed: {cut}"
                ));
                Err(Failed::Unknown(e))
            }
        }
    }

    /// Stores new samples (ids checked absent by the caller) durably, with one sync. On error
    /// nothing changed.
    pub fn learn(&mut self, samples: &[SampleRef<'_>]) -> Result<()> {
        self.ready()?;
        if samples.len() > journal::MAX_COUNT {
            return Err(Error::Limit(format!(
                "{} samples in one call; at most {}",
                samples.len(),
                journal::MAX_COUNT
            )));
        }
        let len = payload_len(self.header.dim, self.header.classes);
        let mut payloads = Scratch::new(samples.len() * len);
        for (s, out) in samples.iter().zip(payloads.chunks_exact_mut(len)) {
            encode_payload(s.q, s.r, out);
        }
        let items: Vec<(u64, u32, &[u8])> = samples
            .iter()
            .zip(payloads.chunks_exact(len))
            .map(|(s, p)| (s.id, s.label, p))
            .collect();
        let (entry, offsets) =
            self.journal
                .learn_entry(&self.sealer, &items, self.record_len() as usize);
        if let Err(Failed::Undone(e) | Failed::Unknown(e)) = self.commit(&entry) {
            return Err(e);
        }
        for (s, at) in samples.iter().zip(offsets) {
            self.index.insert(
                s.id,
                Entry {
                    pos: IN_JOURNAL | at,
                    label: s.label,
                },
            );
        }
        self.after_commit();
        Ok(())
    }

    /// The first half of a forget, which changes nothing: checks the call, and appends the
    /// features of present, distinct ids to `q` and their targets to `r`, read from their
    /// records. Returns the records' locations, for [`Store::forget_commit`]. On error nothing
    /// was appended.
    pub fn forget_rows(
        &mut self,
        ids: &[u64],
        q: &mut Vec<i32>,
        r: &mut Vec<i32>,
    ) -> Result<Vec<u64>> {
        self.ready()?;
        if ids.len() > journal::MAX_COUNT {
            return Err(Error::Limit(format!(
                "{} samples in one call; at most {}",
                ids.len(),
                journal::MAX_COUNT
            )));
        }
        let (d, c) = (self.header.dim, self.header.classes);
        let entries: Vec<Entry> = ids
            .iter()
            .map(|&id| self.index.get(id).expect("present: checked by the caller"))
            .collect();
        let locs: Vec<u64> = entries.iter().map(|e| e.pos).collect();
        let (qn, rn) = (q.len(), r.len());
        q.resize(qn + ids.len() * d, 0);
        r.resize(rn + ids.len() * c, 0);
        // In location order, each into its sample's place.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_unstable_by_key(|&k| locs[k]);
        let mut part = OpenPart::default();
        let mut buf = self.record_buf();
        for k in order {
            let (qk, rk) = (
                &mut q[qn + k * d..qn + (k + 1) * d],
                &mut r[rn + k * c..rn + (k + 1) * c],
            );
            if let Err(e) = self.read_record(&mut part, &mut buf, ids[k], entries[k], qk, rk) {
                q[qn..].zeroize();
                r[rn..].zeroize();
                q.truncate(qn);
                r.truncate(rn);
                return Err(e);
            }
        }
        Ok(locs)
    }

    /// The second half of a forget: commits the forget of `ids`, whose records are at `locs`
    /// (from [`Store::forget_rows`], with no other call between), and overwrites their records
    /// before returning (see the module docs), with one sync. On error nothing changed.
    pub fn forget_commit(&mut self, ids: &[u64], locs: &[u64]) -> Result<()> {
        let entry = self.journal.forget_entry(&self.sealer, locs);
        if let Err(Failed::Undone(e) | Failed::Unknown(e)) = self.commit(&entry) {
            return Err(e);
        }
        for &id in ids {
            self.index.remove(id);
        }
        self.released
            .extend(locs.iter().copied().filter(|l| l & IN_JOURNAL == 0));
        if let Err(e) = self.zero_records(locs) {
            tracing::warn!(
                "forget committed, but overwriting the forgotten records failed (retried before \
                 the next call; close and recovery overwrite them anyway): {e}"
            );
            self.pending.scrub.extend(locs);
        }
        if let Err(e) = self.retire_stats() {
            tracing::warn!("forget committed, but overwriting {STATS} failed (retried): {e}");
            self.pending.retire_stats = true;
        }
        self.after_commit();
        Ok(())
    }

    /// Forgets every sample: afterwards the state dir is exactly a freshly created one (with a
    /// new data key when it is encrypted). Runs whatever state the store is in and needs no
    /// free space (see the module docs).
    pub fn forget_all(&mut self) -> Result<()> {
        if !self.pending.forget_all {
            self.dir.rename(JOURNAL, JOURNAL_FORGOTTEN)?;
            if let Err(e) = self.dir.sync() {
                let undone = self
                    .dir
                    .rename(JOURNAL_FORGOTTEN, JOURNAL)
                    .and_then(|()| self.dir.sync());
                if let Err(u) = undone {
                    self.poison(format!("{e}; undoing the forget-all's rename failed: {u}"));
                }
                return Err(e);
            }
        }
        // Committed.
        self.index.clear();
        self.buckets.clear();
        self.released.clear();
        self.parent = 0;
        self.stats_current = false;
        self.stats_zeroed = false;
        self.poisoned = None;
        if let Some(app) = self.keys.as_ref().map(|k| k.app.clone()) {
            let (sealer, fresh) = fresh_keys(Some(&app));
            self.sealer = sealer;
            self.keys = fresh;
        }
        self.pending = Pending {
            forget_all: true,
            ..Pending::default()
        };
        if let Err(e) = self.maintain() {
            tracing::warn!(
                "forget-all committed, but finishing it failed (retried before the next call, at \
                 close or at the next open): {e}"
            );
        }
        Ok(())
    }

    /// Seals everything under a new data key wrapped by `new_key` (see the module docs). Once
    /// this returns, the old key opens nothing this state dir holds; once the application
    /// destroys it, nothing ever written under it can be read. On error nothing changed.
    pub fn rekey(&mut self, new_key: &StateKey) -> Result<()> {
        if self.keys.is_none() {
            return Err(Error::Key(format!(
                "state dir {} is not encrypted: there is no key to replace",
                self.dir.path().display()
            )));
        }
        self.ready()?;
        let (sealer, keys) = fresh_keys(Some(new_key));
        let mut all: BTreeSet<usize> = self.buckets.keys().copied().collect();
        all.extend(self.index.iter().map(|(id, _)| bucket_of(id)));
        self.rewrite(&all, sealer, keys, None)
    }

    /// After a commit: records the entry count, and checkpoints the journal when it is due
    /// (maintenance).
    fn after_commit(&mut self) {
        if let Err(e) = self.journal.write_mark() {
            tracing::warn!("writing the journal's mark failed (written after the next call): {e}");
        }
        let bucket_bytes: u64 = self
            .buckets
            .values()
            .map(|r| r.count * self.record_len())
            .sum();
        let len = self.journal.len();
        let due = len >= CHECKPOINT_BYTES.max(bucket_bytes / 4)
            || self.journal.entries() >= checkpoint_every();
        if !due {
            return;
        }
        let touched: BTreeSet<usize> = self
            .index
            .iter()
            .filter(|(_, e)| e.pos & IN_JOURNAL != 0)
            .map(|(id, _)| bucket_of(id))
            .collect();
        let sealer = self.same_sealer();
        let keys = self.same_keys();
        if let Err(e) = self.rewrite(&touched, sealer, keys, None) {
            tracing::warn!("checkpointing the journal failed (retried after the next call): {e}");
        }
    }

    fn same_sealer(&self) -> Sealer {
        match &self.keys {
            Some(keys) => seal::sealer_of(&keys.data),
            None => Sealer::Checksum,
        }
    }

    fn same_keys(&self) -> Option<Keys> {
        self.keys.as_ref().map(|k| Keys {
            app: k.app.clone(),
            data: k.data.clone(),
        })
    }

    /// Reads the record of a live sample into its features `q` and targets `r`, checking it.
    fn read_record(
        &self,
        part: &mut OpenPart,
        buf: &mut RecordBuf,
        id: u64,
        entry: Entry,
        q: &mut [i32],
        r: &mut [i32],
    ) -> Result<()> {
        let (file, at) = self.place_of(entry.pos, &BTreeMap::new())?;
        let f = self.file_at(part, &file, entry.pos)?;
        f.read_at(&mut buf.sealed, at)?;
        self.open_record(&file, id, entry, &buf.sealed, &mut buf.payload, q, r)
    }

    /// The file `name` that holds location `loc`: the journal's own descriptor for a record in
    /// the journal (a rewrite reads from it for every bucket, between their old files), else
    /// `part`'s.
    fn file_at<'a>(
        &'a self,
        part: &'a mut OpenPart,
        name: &str,
        loc: u64,
    ) -> Result<&'a StoreFile> {
        match loc & IN_JOURNAL {
            0 => part.get(&self.dir, name),
            _ => Ok(self.journal.file()),
        }
    }

    /// Scratch space for [`Store::read_record`], sized for this state dir's records.
    fn record_buf(&self) -> RecordBuf {
        RecordBuf {
            sealed: Scratch::new(self.record_len() as usize),
            payload: Scratch::new(payload_len(self.header.dim, self.header.classes)),
        }
    }

    /// Opens a record read from `file`, through `payload` (a payload's length).
    #[allow(clippy::too_many_arguments)]
    fn open_record(
        &self,
        file: &str,
        id: u64,
        entry: Entry,
        rec: &[u8],
        payload: &mut [u8],
        q: &mut [i32],
        r: &mut [i32],
    ) -> Result<()> {
        let (salt, pos) = match entry.pos & IN_JOURNAL {
            0 => {
                let (b, i) = split_loc(entry.pos);
                (self.buckets[&b].salt, i)
            }
            _ => (self.journal.salt(), entry.pos & !IN_JOURNAL),
        };
        match self
            .sealer
            .open_into(&record_ad(salt, pos, id, entry.label), rec, payload)
        {
            Ok(()) => {
                decode_payload(payload, q, r);
                Ok(())
            }
            Err(why) => Err(corrupt(
                self.dir.path(),
                file,
                format!(
                    "the record of id {id} {}",
                    match why {
                        Unsealed::Zero => "was overwritten with zeros",
                        Unsealed::Bad => "does not open: it is damaged, was modified or moved",
                    }
                ),
            )),
        }
    }

    /// Calls `f` with batches of rows (features k × d, targets k × C) of every live sample,
    /// checking each record.
    pub fn for_each_batch(&self, f: &mut dyn FnMut(&[i32], &[i32])) -> Result<()> {
        self.for_each_batch_in(&BTreeMap::new(), f)
    }

    fn for_each_batch_in(
        &self,
        versions: &BTreeMap<usize, Version>,
        f: &mut dyn FnMut(&[i32], &[i32]),
    ) -> Result<()> {
        let (d, c) = (self.header.dim, self.header.classes);
        let mut live: Vec<(u64, Entry)> = self.index.iter().collect();
        live.sort_unstable_by_key(|(_, e)| e.pos);
        let rec = self.record_len() as usize;
        let mut q = Scratch::new(ROW_BATCH * d);
        let mut r = Scratch::new(ROW_BATCH * c);
        let mut payload = Scratch::new(payload_len(d, c));
        let mut k = 0;
        // One read per bucket file's records; one per record in the journal.
        let mut group = Scratch::new(0);
        let mut group_of: Option<(String, u64)> = None;
        let mut part = OpenPart::default();
        for (id, entry) in live {
            let (file, at) = self.place_of(entry.pos, versions)?;
            let handle = self.file_at(&mut part, &file, entry.pos)?;
            let bytes: &[u8] = if entry.pos & IN_JOURNAL == 0 {
                let (b, _) = split_loc(entry.pos);
                let first = bucket_record_at(&self.sealer, self.buckets[&b].count, rec as u64, 0);
                if group_of.as_ref().is_none_or(|(name, _)| *name != file) {
                    group.0.zeroize();
                    group = Scratch::new((handle.len()?.saturating_sub(first)) as usize);
                    handle.read_at(&mut group, first)?;
                    group_of = Some((file.clone(), first));
                }
                let off = (at - first) as usize;
                group.get(off..off + rec).ok_or_else(|| {
                    corrupt(
                        self.dir.path(),
                        &file,
                        format!("it is too short for the record of id {id}"),
                    )
                })?
            } else {
                group_of = None;
                group.0.zeroize();
                group = Scratch::new(rec);
                handle.read_at(&mut group, at)?;
                &group
            };
            self.open_record(
                &file,
                id,
                entry,
                bytes,
                &mut payload,
                &mut q[k * d..(k + 1) * d],
                &mut r[k * c..(k + 1) * c],
            )?;
            k += 1;
            if k == ROW_BATCH {
                f(&q, &r);
                k = 0;
            }
        }
        if k > 0 {
            f(&q[..k * d], &r[..k * c]);
        }
        Ok(())
    }
}

/// A sealer and keys for a new data key (`key`: the application's), or checksums.
fn fresh_keys(key: Option<&StateKey>) -> (Sealer, Option<Keys>) {
    match key {
        Some(app) => {
            let (sealer, data) = Sealer::fresh();
            (
                sealer,
                Some(Keys {
                    app: app.clone(),
                    data,
                }),
            )
        }
        None => (Sealer::Checksum, None),
    }
}

/// Creates the journal of an empty state dir (synced, not the dir).
fn fresh_journal(
    dir: &Dir,
    header: &Header,
    sealer: &Sealer,
    keys: Option<&Keys>,
) -> Result<Journal> {
    let base = Base {
        salt: new_salt(sealer),
        ..Base::default()
    };
    Journal::create(dir, JOURNAL, sealer, keys, header, 1, &base)
}

/// A salt for a new file: random with a key, 0 without (the files of a state dir without a
/// key are a function of its samples, G2).
fn new_salt(sealer: &Sealer) -> u128 {
    if sealer.encrypted() {
        seal::random_u128()
    } else {
        0
    }
}

/// The part file an operation reads or writes records in, kept open while the records it
/// visits stay in that file: an open (with its checks of what the name is) costs more than
/// reading or overwriting one record. Visited in location order, each file is opened once and
/// at most one is open at a time.
#[derive(Default)]
struct OpenPart(Option<(String, StoreFile)>);

impl OpenPart {
    /// The file `name` in `dir`, opened unless it is the one open already.
    fn get(&mut self, dir: &Dir, name: &str) -> Result<&StoreFile> {
        if self.0.as_ref().is_none_or(|(open, _)| open != name) {
            self.0 = Some((name.to_string(), open_part(dir, name)?));
        }
        Ok(&self.0.as_ref().expect("opened above").1)
    }
}

/// Opens a file the state dir cannot be without.
fn open_part(dir: &Dir, name: &str) -> Result<StoreFile> {
    dir.open_file(name)?
        .ok_or_else(|| Error::state(dir.path(), format!("{name} is missing")))
}

fn corrupt(dir: &Path, file: &str, message: impl std::fmt::Display) -> Error {
    Error::state(dir, format!("{file} is corrupt: {message}"))
}

/// [`choose_versions`], trying `prefer`'s version of a bucket first.
fn choose_among(
    dir: &Dir,
    names: &[OsString],
    buckets: &BTreeMap<usize, BucketRef>,
    header: &Header,
    prefer: BTreeMap<usize, Version>,
) -> Result<BTreeMap<usize, Version>> {
    let present: BTreeSet<(usize, Version)> =
        names.iter().filter_map(|n| parse_bucket_name(n)).collect();
    let mut out = BTreeMap::new();
    for (&b, r) in buckets {
        let mut order = vec![Version::Current, Version::New];
        if prefer.get(&b) == Some(&Version::New) {
            order.reverse();
        }
        let mut why = format!("{} is missing", bucket_name(b, Version::Current));
        let found = order
            .into_iter()
            .filter(|v| present.contains(&(b, *v)))
            .find(|&v| {
                let name = bucket_name(b, v);
                let mut head = [0u8; BUCKET_BODY];
                let read = open_part(dir, &name).and_then(|f| f.read_at(&mut head, 0));
                match read
                    .map_err(|e| e.to_string())
                    .and_then(|()| parse_bucket_head(&head, header))
                {
                    Ok(found) if found == *r => true,
                    Ok(_) => {
                        why = format!(
                        "{name} is not the version the {JOURNAL} names (another salt, digest or \
                         count): it was replaced, or the {JOURNAL} is stale"
                    );
                        false
                    }
                    Err(m) => {
                        why = format!("{name} is corrupt: {m}");
                        false
                    }
                }
            });
        match found {
            Some(v) => {
                out.insert(b, v);
            }
            None => return Err(Error::state(dir.path(), why)),
        }
    }
    Ok(out)
}

/// Scrubs the fixed names that only an interrupted call leaves behind, and syncs the dir if
/// there was any.
fn tidy(dir: &Dir) -> Result<()> {
    let mut any = false;
    for name in LEFTOVERS {
        any |= dir.scrub(name)?;
    }
    if any {
        dir.sync()?;
    }
    Ok(())
}

/// Finishes a forget-all that committed (idempotent, by name): overwrites the forgotten
/// journal with zeros, scrubs every other file but `meta.json`, writes a fresh journal over
/// the forgotten one and renames it to `journal`, which removes the commit's evidence.
fn finish_forget_all(
    dir: &Dir,
    header: &Header,
    sealer: &Sealer,
    keys: Option<&Keys>,
) -> Result<Journal> {
    let forgotten = dir.open_file(JOURNAL_FORGOTTEN)?;
    if let Some(f) = &forgotten {
        f.zero_from(0)?;
        f.sync()?;
    }
    for name in dir.list()? {
        let keep = name == META || name == JOURNAL_FORGOTTEN;
        if is_lethe_name(&name) && !keep {
            dir.scrub(&name.to_string_lossy())?;
        }
    }
    // The fresh journal is written over the forgotten one, whose blocks are already allocated
    // (it is at least as long), so that finishing needs no free space even when others took
    // what the scrubbing freed.
    let fresh = match forgotten {
        Some(f) => {
            let base = Base {
                salt: new_salt(sealer),
                ..Base::default()
            };
            let mut fresh = Journal::create_in(f, sealer, keys, header, 1, &base)?;
            dir.rename(JOURNAL_FORGOTTEN, JOURNAL)?;
            fresh.renamed(dir.path().join(JOURNAL));
            fresh
        }
        None => fresh_journal(dir, header, sealer, keys)?,
    };
    dir.sync()?;
    Ok(fresh)
}

/// A sealed record and its opened payload, read one after another into the same buffers.
struct RecordBuf {
    sealed: Scratch<u8>,
    payload: Scratch<u8>,
}

/// A buffer that held sample bytes: zeroized when dropped.
struct Scratch<T: DefaultIsZeroes>(Vec<T>);

impl<T: DefaultIsZeroes> Scratch<T> {
    fn new(len: usize) -> Scratch<T> {
        Scratch(vec![T::default(); len])
    }
}

impl<T: DefaultIsZeroes> std::ops::Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: DefaultIsZeroes> std::ops::DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T: DefaultIsZeroes> Drop for Scratch<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A test hook (G2 for encrypted state dirs): every file of a closed state dir, with its
/// sealed parts opened and its random parts left out (nonces, tags, salts, the wrapped data
/// key, and the checksums and digests over ciphertext), so that two closed state dirs with
/// the same samples give the same map whatever their keys. Takes no lock; refuses a state dir
/// whose journal has entries.
#[doc(hidden)]
pub fn plaintexts(path: &Path, key: Option<&StateKey>) -> Result<BTreeMap<String, Vec<u8>>> {
    let dir = Dir::open(path, false)?.ok_or_else(|| Error::state(path, "does not exist"))?;
    let meta_bytes = open_part(&dir, META)?.read_all()?;
    let meta = Meta::parse(&meta_bytes).map_err(|m| corrupt(path, META, m))?;
    let header = Header::of_dir(&meta.head, &meta_bytes);
    let jbytes = open_part(&dir, JOURNAL)?.read_all()?;
    let head = journal::parse_head(&jbytes, &header, key)
        .map_err(|e| journal::key_error(e, path, JOURNAL))?;
    if jbytes.len() as u64 != head.start {
        return Err(Error::state(path, "is not closed: its journal has entries"));
    }
    let sealer = &head.sealer;
    let bad = |name: &str| corrupt(path, name, "a sealed part does not open");
    let mut out = BTreeMap::new();
    out.insert(META.to_string(), meta_bytes);
    let mut base = head.base.clone();
    base.salt = 0;
    base.parent = 0;
    for b in &mut base.buckets {
        (b.salt, b.digest) = (0, 0);
    }
    let mut j = jbytes[..HEADER_LEN + journal::MARK_LEN].to_vec();
    j.extend_from_slice(&base.encode());
    out.insert(JOURNAL.to_string(), j);
    if let Some(f) = dir.open_file(STATS)? {
        let bytes = f.read_all()?;
        let end = bytes.len().saturating_sub(16).max(HEADER_LEN);
        let mut s = bytes[..HEADER_LEN].to_vec();
        let plain = sealer
            .open(
                &format::stats_ad(&bytes[..HEADER_LEN]),
                &bytes[HEADER_LEN..end],
            )
            .map_err(|_| bad(STATS))?;
        s.extend_from_slice(&plain);
        out.insert(STATS.to_string(), s);
    }
    let rec = sealer.sealed_len(payload_len(header.dim, header.classes));
    for r in &head.base.buckets {
        let name = bucket_name(r.bucket, Version::Current);
        let bytes = open_part(&dir, &name)?.read_all()?;
        let mut v = bytes[..HEADER_LEN].to_vec();
        let index_end = bucket_record_at(sealer, r.count, rec as u64, 0) as usize;
        let ids = sealer
            .open(
                &bucket_index_ad(r.salt, r.bucket, r.count),
                bytes
                    .get(BUCKET_BODY..index_end)
                    .ok_or_else(|| bad(&name))?,
            )
            .map_err(|_| bad(&name))?;
        v.extend_from_slice(&ids);
        for (i, (id, label)) in decode_ids(&ids).into_iter().enumerate() {
            let at = index_end + i * rec;
            let sealed = bytes.get(at..at + rec).ok_or_else(|| bad(&name))?;
            let plain = sealer
                .open(&record_ad(r.salt, i as u64, id, label), sealed)
                .map_err(|_| bad(&name))?;
            v.extend_from_slice(&plain);
        }
        out.insert(name, v);
    }
    Ok(out)
}

/// The bundle name and core sha256 that the state dir `dir` records, read from its `meta.json`
/// without following a symlink there, and without opening the state dir (no lock, nothing
/// created). `None` when `dir` has no `meta.json` (it is not a state dir, or does not exist).
pub fn recorded_bundle(dir: &Path) -> Result<Option<(String, String)>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(META);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::state(dir, format!("{META} is a symlink")))
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(&path, e))?;
    let meta = Meta::parse(&bytes).map_err(|m| corrupt(dir, META, m))?;
    Ok(Some((meta.bundle_name, meta.core_sha256)))
}
