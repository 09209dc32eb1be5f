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
//! - `stats.bin`: the exact statistics A and B (i128), the canonical Cholesky factor L and
//!   weights Θ (f64), sealed, and an xxh3-128 of the file. It makes opening cheap: no
//!   O(n·d²) recomputation and no O(p³) factorization. It is current only when the journal's
//!   base names it and the journal has no entries and no released records.
//!
//! Sealing (`src/store/seal.rs`) is an xxh3-64 checksum in a state dir without a key, and
//! XChaCha20-Poly1305 under the dir's data key with one: then everything derived from user
//! data (records, ids, labels, statistics, factor, weights, the journal's entries and base)
//! is ciphertext; plaintext are the headers (sizes, counts, checksums), each bucket's sample
//! count, `meta.json`, and which bucket, position or entry is which.
//!
//! The dir is created 0700 (its parent synced, so that it survives a power loss) and its files
//! 0600. A closed state dir is a pure function of its sample set (G2): `meta.json`, the
//! journal (no entries, its base naming the files), `stats.bin` (the exact sums and the
//! canonical solution) and one bucket file per non-empty bucket (its live samples in id
//! order); no file's size depends on how many samples there once were. With a key, the same
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
//! The store reads with `pread` rather than a memory map: a map would save a few ms at
//! n = 50 000, d = 1280, but another process truncating a file would then kill the host with
//! SIGBUS, which G5 rules out.

mod format;
mod io;
mod journal;
mod seal;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};
use zeroize::{DefaultIsZeroes, Zeroize};

use crate::error::{Error, Result};
use crate::math::samples::{Entry, SampleIndex, SampleRef};
use crate::math::solver::{self, Solution};
use crate::math::spec::HeadSpec;
use crate::math::stats::ExactStats;
use format::{
    bucket_index_ad, bucket_name, bucket_of, bucket_record_at, decode_ids, decode_payload,
    encode_bucket_head, encode_ids, encode_payload, encode_stats, is_lethe_name, parse_bucket_head,
    parse_bucket_name, parse_stats, payload_len, record_ad, stats_checksum, BucketRef, Header,
    Meta, Version, BUCKET_BODY, BUCKET_MAGIC, HEADER_LEN, ID_LEN, JOURNAL, JOURNAL_FORGOTTEN,
    JOURNAL_MAGIC, JOURNAL_TMP, LEFTOVERS, LEGACY_SAMPLES_MAGIC, LOCK, META, META_TMP, NAMES,
    STATS, STATS_MAGIC, STATS_TMP,
};
use io::{Dir, Foreign, Kind, StoreFile};
use journal::{Base, Journal, Keys, Op};
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

/// A bucket file rewritten by a compaction (`.tmp`, synced), or `None`: the bucket is empty.
struct Rewritten {
    bucket: usize,
    file: Option<BucketRef>,
    /// id → position in the new file.
    moved: Vec<(u64, u64)>,
}

impl Store {
    /// Opens the state dir for a head over the bundle with this core sha256, creating it with
    /// the `requested` spec (and encrypted, when `key` is given) when `create` allows and
    /// `dir` is not a state dir yet. An existing dir keeps the spec it was created with, and
    /// must be opened with its key exactly when it has one. Returns what it held, or `None`
    /// when it was created.
    pub fn open(
        path: &Path,
        bundle_name: &str,
        core_sha256: &str,
        requested: &HeadSpec,
        create: bool,
        key: Option<&StateKey>,
    ) -> Result<(Store, Option<Loaded>)> {
        let not_yet = |why: &str| {
            Error::state(
                path,
                format!("is not a state dir ({why}); only a learn creates one"),
            )
        };
        let dir = Dir::open(path, create)?.ok_or_else(|| not_yet("it does not exist"))?;
        if !dir.try_lock()? {
            return Err(Error::state(
                path,
                "is open in another process or head (the state dir is locked)",
            ));
        }
        let names = dir.list()?;
        inspect(&dir, &names)?;
        if !dir.has(META)? {
            if !create {
                return Err(not_yet(&format!("it has no {META}")));
            }
            check_creatable(&dir, &names)?;
            let store = Store::create(dir, bundle_name, core_sha256, requested, key)?;
            return Ok((store, None));
        }
        let meta_bytes = open_part(&dir, META)?.read_all()?;
        let meta = Meta::parse(&meta_bytes).map_err(|m| corrupt(path, META, m))?;
        match (meta.encrypted(), key) {
            (true, None) => {
                return Err(Error::Key(format!(
                    "state dir {} is encrypted: open it with its key",
                    path.display()
                )))
            }
            (false, Some(_)) => {
                return Err(Error::Key(format!(
                    "state dir {} is not encrypted, but a key was given: open it without one \
                     (a key applies only to a state dir created with it)",
                    path.display()
                )))
            }
            _ => {}
        }
        let spec = meta.head.clone();
        let header = Header {
            dim: spec.dim,
            classes: spec.num_classes(),
            meta: xxh3_64(&meta_bytes),
            extra: 0,
            seq: 0,
        };
        let forgotten = dir.has(JOURNAL_FORGOTTEN)?;
        if !forgotten {
            check_tied(&dir, &names, &header)?;
        }
        if meta.core_sha256 != core_sha256 || meta.bundle_name != bundle_name {
            return Err(Error::state(
                path,
                format!(
                    "belongs to bundle {:?} (core sha256 {}), not to {bundle_name:?} (core sha256 \
                     {core_sha256})",
                    meta.bundle_name, meta.core_sha256
                ),
            ));
        }
        if forgotten {
            check_forgotten_key(&dir, &header, key)?;
            tracing::info!("state dir {}: finishing a forget-all", path.display());
            let (sealer, keys) = fresh_keys(key);
            let journal = finish_forget_all(&dir, &header, &sealer, keys.as_ref())?;
            let store = Store::new(dir, spec, header, sealer, keys, journal);
            let loaded = store.empty_loaded()?;
            return Ok((store, Some(loaded)));
        }
        let (store, loaded) = Store::load(dir, spec, header, &names, key)?;
        Ok((store, Some(loaded)))
    }

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
        solver::canonical(stats, self.spec.lambda, self.spec.fixed.frac_bits).map_err(|_| {
            Error::Limit(format!(
                "A is not numerically positive definite at lambda = {}: the state dir was \
                 written by a version that did not check this; erase it",
                self.spec.lambda
            ))
        })
    }

    fn create(
        dir: Dir,
        bundle_name: &str,
        core_sha256: &str,
        spec: &HeadSpec,
        key: Option<&StateKey>,
    ) -> Result<Store> {
        let meta_bytes = Meta::new(bundle_name, core_sha256, spec, key.is_some()).encode();
        Meta::parse(&meta_bytes).map_err(|m| {
            Error::InvalidInput(format!("cannot create a state dir for this head: {m}"))
        })?;
        dir.make_private()?;
        let header = Header {
            dim: spec.dim,
            classes: spec.num_classes(),
            meta: xxh3_64(&meta_bytes),
            extra: 0,
            seq: 0,
        };
        let (sealer, keys) = fresh_keys(key);
        // Leftovers of an interrupted creation hold no samples: they are overwritten.
        let journal = fresh_journal(&dir, &header, &sealer, keys.as_ref())?;
        dir.write_new(META_TMP, &meta_bytes)?;
        dir.rename(META_TMP, META)?;
        dir.sync()?;
        Ok(Store::new(dir, spec.clone(), header, sealer, keys, journal))
    }

    /// Opens an existing state dir: closed, or left open by a crash (see the module docs).
    fn load(
        dir: Dir,
        spec: HeadSpec,
        header: Header,
        names: &[OsString],
        key: Option<&StateKey>,
    ) -> Result<(Store, Loaded)> {
        let path = dir.path().to_path_buf();
        let journal_file = dir.open_file(JOURNAL)?.ok_or_else(|| {
            Error::state(
                &path,
                format!("has no {JOURNAL}: it is incomplete or was damaged; erase it"),
            )
        })?;
        let bytes = Scratch(journal_file.read_all()?);
        let head = journal::parse_head(&bytes, &header, key)
            .map_err(|e| journal::key_error(e, &path, JOURNAL))?;
        let sealer = &head.sealer;
        let rec = sealer.sealed_len(payload_len(header.dim, header.classes));
        let parsed = journal::parse_entries(&bytes, &head, rec, header.classes)
            .map_err(|m| corrupt(&path, JOURNAL, m))?;
        drop(bytes);
        if let Some(note) = &parsed.tail_note {
            tracing::warn!("state dir {}: {JOURNAL}: {note}", path.display());
        }
        let versions = choose_versions(&dir, names, &head.base, &header)?;
        let stats_source = match head.base.parent {
            0 => None,
            parent => [STATS, STATS_TMP]
                .into_iter()
                .find(|name| stats_matches(&dir, name, parent)),
        };
        let quiet = parsed.ops.is_empty() && head.base.holes.is_empty();
        if quiet && head.base.parent != 0 && stats_source.is_none() {
            // Only a forget retires the statistics the base names, and its entry precedes that.
            let why = match dir.open_file(STATS)? {
                None => "it is missing".to_string(),
                Some(f) => {
                    let bytes = Scratch(f.read_all()?);
                    match parse_stats(&head.sealer, &bytes, &header, spec.fixed.one()) {
                        Err(m) => m,
                        Ok(_) => "it is not the one the journal names".to_string(),
                    }
                }
            };
            return Err(corrupt(&path, STATS, why));
        }
        let closed = quiet && stats_source.is_some();
        let keys = match (key, &head.data_key) {
            (Some(app), Some(data)) => Some(Keys {
                app: app.clone(),
                data: data.clone(),
            }),
            _ => None,
        };
        let mut store = Store {
            dir,
            index: SampleIndex::new(spec.num_classes()),
            spec,
            header,
            sealer: head.sealer,
            keys,
            buckets: head.base.buckets.iter().map(|b| (b.bucket, *b)).collect(),
            journal: Journal::detached(journal_file, head.first, head.base.salt, &parsed),
            parent: head.base.parent,
            stats_current: false,
            stats_zeroed: false,
            released: head.base.holes.iter().copied().collect(),
            pending: Pending::default(),
            poisoned: None,
        };
        if closed {
            let source = stats_source.expect("closed");
            store.index_closed(&versions)?;
            let stats_file = open_part(&store.dir, source)?;
            let bytes = Scratch(stats_file.read_all()?);
            let (stats, solution) =
                parse_stats(&store.sealer, &bytes, &header, store.spec.fixed.one())
                    .map_err(|m| corrupt(&path, source, m))?;
            // Checked: from here on, leftovers first, then files moved into place.
            store.settle(&versions, names)?;
            if source == STATS_TMP {
                store.dir.rename(STATS_TMP, STATS)?;
                store.dir.sync()?;
            }
            store.journal.resume(&parsed, head.mark)?;
            store.stats_current = true;
            return Ok((store, Loaded { stats, solution }));
        }
        tracing::info!(
            "state dir {} was not closed cleanly: recovering its samples",
            path.display()
        );
        let (stats, stale) = store.replay(&versions, &parsed)?;
        // Checked: leftovers first (what no base names, the old statistics), then what is not
        // committed: released records not overwritten yet, a torn tail of the journal.
        store.settle(&versions, names)?;
        if store.dir.scrub(STATS)? | store.dir.scrub(STATS_TMP)? {
            store.dir.sync()?;
        }
        store.zero_records(&stale)?;
        store.sync_buckets(&stale)?;
        store.journal.resume(&parsed, head.mark)?;
        let solution = store.solve(&stats)?;
        if let Err(e) = store.compact(Some((&stats, &solution))) {
            tracing::warn!(
                "state dir {}: compacting after recovery failed, the head runs on the journal \
                 and compacts at close: {e}",
                path.display()
            );
        }
        Ok((store, Loaded { stats, solution }))
    }

    /// Indexes a closed state dir, checking every bucket file completely. The records are
    /// hashed as they stream through one reused buffer: holding the files' bytes at once (n·d
    /// values) would cost more in allocating, faulting in and zeroizing than in reading.
    fn index_closed(&mut self, versions: &BTreeMap<usize, Version>) -> Result<()> {
        let rec = self.record_len();
        let mut chunk = Scratch::<u8>::new(CHECK_CHUNK);
        for (&b, r) in &self.buckets {
            let name = bucket_name(b, versions[&b]);
            let f = open_part(&self.dir, &name)?;
            let fail = |m: String| corrupt(self.dir.path(), &name, m);
            let expected = bucket_record_at(&self.sealer, r.count, rec, r.count);
            let len = f.len()?;
            if len != expected {
                return Err(fail(format!(
                    "{len} bytes, but it should hold {} samples ({expected} bytes)",
                    r.count
                )));
            }
            let records = bucket_record_at(&self.sealer, r.count, rec, 0);
            let mut head = Scratch::<u8>::new(records as usize);
            f.read_at(&mut head, 0)?;
            let mut digest = Xxh3::new();
            digest.update(&head[BUCKET_BODY..]);
            let mut at = records;
            while at < len {
                let part = &mut chunk[..(len - at).min(CHECK_CHUNK as u64) as usize];
                f.read_at(part, at)?;
                digest.update(part);
                at += part.len() as u64;
            }
            if digest.digest128() != r.digest {
                return Err(fail(
                    "its content does not match its digest: the file is corrupt or was modified"
                        .into(),
                ));
            }
            for (i, (id, label)) in self.bucket_ids(&name, r, &head)?.into_iter().enumerate() {
                self.index.insert(
                    id,
                    Entry {
                        pos: bucket_loc(b, i as u64),
                        label,
                    },
                );
            }
        }
        Ok(())
    }

    /// Opens a bucket file's index (the file's bytes from its start, at least through the
    /// index) and checks it: ids strictly increasing and in the bucket, labels classes.
    fn bucket_ids(&self, name: &str, r: &BucketRef, bytes: &[u8]) -> Result<Vec<(u64, u32)>> {
        let sealed = self.sealer.sealed_len(r.count as usize * ID_LEN);
        let fail = |m: String| corrupt(self.dir.path(), name, m);
        let part = bytes
            .get(BUCKET_BODY..BUCKET_BODY + sealed)
            .ok_or_else(|| fail("shorter than its index".into()))?;
        let plain = self
            .sealer
            .open(&bucket_index_ad(r.salt, r.bucket, r.count), part)
            .map_err(|_| fail("its index does not authenticate".into()))?;
        let ids = decode_ids(&plain);
        for (i, &(id, label)) in ids.iter().enumerate() {
            if bucket_of(id) != r.bucket || label as usize >= self.header.classes {
                return Err(fail(format!(
                    "position {i}: id {id}, label {label} does not belong"
                )));
            }
            if i > 0 && ids[i - 1].0 >= id {
                return Err(fail(format!(
                    "position {i}: ids are not strictly increasing"
                )));
            }
        }
        Ok(ids)
    }

    /// Replays the journal over its base and checks every live record, computing the
    /// statistics. Returns them and the released records that still hold bytes. Writes
    /// nothing.
    fn replay(
        &mut self,
        versions: &BTreeMap<usize, Version>,
        parsed: &journal::Parsed,
    ) -> Result<(ExactStats, Vec<u64>)> {
        let path = self.dir.path().to_path_buf();
        let mut live: HashMap<u64, (u64, u32)> = HashMap::new();
        for (&b, r) in &self.buckets {
            let name = bucket_name(b, versions[&b]);
            let f = open_part(&self.dir, &name)?;
            let expected = bucket_record_at(&self.sealer, r.count, self.record_len(), r.count);
            if f.len()? != expected {
                return Err(corrupt(
                    &path,
                    &name,
                    format!("it should hold {} samples ({expected} bytes)", r.count),
                ));
            }
            let mut head = Scratch::new(bucket_record_at(&self.sealer, r.count, 0, 0) as usize);
            f.read_at(&mut head, 0)?;
            for (i, pair) in self.bucket_ids(&name, r, &head)?.into_iter().enumerate() {
                live.insert(bucket_loc(b, i as u64), pair);
            }
        }
        let mut released: Vec<u64> = Vec::new();
        for &hole in &self.released {
            if live.remove(&hole).is_none() {
                return Err(corrupt(
                    &path,
                    JOURNAL,
                    format!("its base releases location {hole:#x}, which holds no sample"),
                ));
            }
            released.push(hole);
        }
        let mut by_id: HashMap<u64, u64> = live.iter().map(|(&loc, &(id, _))| (id, loc)).collect();
        if by_id.len() != live.len() {
            return Err(corrupt(&path, JOURNAL, "an id is stored twice"));
        }
        for (k, (_, op)) in parsed.ops.iter().enumerate() {
            let seq = self.journal.first() + k as u64;
            match op {
                Op::Learn(learned) => {
                    for &(id, label, at) in learned {
                        let loc = IN_JOURNAL | at;
                        if by_id.insert(id, loc).is_some() {
                            return Err(corrupt(
                                &path,
                                JOURNAL,
                                format!("entry {seq} learns id {id}, which is already stored"),
                            ));
                        }
                        live.insert(loc, (id, label));
                    }
                }
                Op::Forget(locs) => {
                    for &loc in locs {
                        let Some((id, _)) = live.remove(&loc) else {
                            return Err(corrupt(
                                &path,
                                JOURNAL,
                                format!(
                                    "entry {seq} forgets location {loc:#x}, which holds no sample"
                                ),
                            ));
                        };
                        by_id.remove(&id);
                        released.push(loc);
                    }
                }
            }
        }
        for (&loc, &(id, label)) in &live {
            self.index.insert(id, Entry { pos: loc, label });
        }
        self.released = released
            .iter()
            .copied()
            .filter(|l| l & IN_JOURNAL == 0)
            .collect();
        let mut stats = ExactStats::new(self.header.dim, self.header.classes);
        let (one, total) = (self.spec.fixed.one(), live.len() as u64);
        let mut done = 0u64;
        tracing::info!(done, total, "recomputing the statistics");
        self.for_each_batch_in(versions, &mut |q, r| {
            stats.accumulate(q, r, one, 1);
            done += (r.len() / self.header.classes) as u64;
            tracing::info!(done, total, "recomputing the statistics");
        })
        .map_err(|e| match e {
            Error::State { message, .. } if message.contains("overwritten") => {
                corrupt(&path, JOURNAL, format!("it was cut or damaged: {message}"))
            }
            e => e,
        })?;
        // Released records that still hold bytes: a forget whose overwriting had not reached
        // the disk.
        let mut stale = Vec::new();
        let rec = self.record_len() as usize;
        let mut buf = Scratch::new(rec);
        for &loc in &released {
            let (file, at) = self.place_of(loc, versions)?;
            let f = open_part(&self.dir, &file)?;
            f.read_at(&mut buf, at)?;
            if buf.iter().any(|&b| b != 0) {
                stale.push(loc);
            }
        }
        Ok((stats, stale))
    }

    /// The file and offset of a location (a bucket file in the version `versions` names).
    fn place_of(&self, loc: u64, versions: &BTreeMap<usize, Version>) -> Result<(String, u64)> {
        if loc & IN_JOURNAL != 0 {
            return Ok((JOURNAL.into(), loc & !IN_JOURNAL));
        }
        let (b, i) = split_loc(loc);
        let r = self.buckets.get(&b).ok_or_else(|| {
            corrupt(
                self.dir.path(),
                JOURNAL,
                format!("location {loc:#x} is in no bucket file"),
            )
        })?;
        let version = versions.get(&b).copied().unwrap_or(Version::Current);
        Ok((
            bucket_name(b, version),
            bucket_record_at(&self.sealer, r.count, self.record_len(), i),
        ))
    }

    /// Overwrites records with zeros (not synced).
    fn zero_records(&mut self, locs: &[u64]) -> Result<()> {
        let rec = self.record_len() as usize;
        let zeros = vec![0u8; rec];
        for &loc in locs {
            if loc & IN_JOURNAL != 0 {
                self.journal.zero(loc & !IN_JOURNAL, rec)?;
            } else {
                let (file, at) = self.place_of(loc, &BTreeMap::new())?;
                open_part(&self.dir, &file)?.write_at(&zeros, at)?;
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

    /// Scrubs what no base names and moves the versions it names into place, then syncs the
    /// dir if anything changed.
    fn settle(&mut self, versions: &BTreeMap<usize, Version>, names: &[OsString]) -> Result<()> {
        let mut any = false;
        for name in names {
            let Some((b, version)) = parse_bucket_name(name) else {
                continue;
            };
            if versions.get(&b) != Some(&version) {
                any |= self.dir.scrub(&bucket_name(b, version))?;
            }
        }
        for (&b, &version) in versions {
            if version != Version::Current {
                self.dir
                    .rename(&bucket_name(b, version), &bucket_name(b, Version::Current))?;
                any = true;
            }
        }
        for name in LEFTOVERS {
            any |= self.dir.scrub(name)?;
        }
        if any {
            self.dir.sync()?;
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

    /// Forgets present, distinct ids: appends their features to `q` and targets to `r`, and
    /// overwrites their records before returning (see the module docs), with one sync. On
    /// error nothing changed.
    pub fn forget(&mut self, ids: &[u64], q: &mut Vec<i32>, r: &mut Vec<i32>) -> Result<()> {
        self.ready()?;
        if ids.len() > journal::MAX_COUNT {
            return Err(Error::Limit(format!(
                "{} samples in one call; at most {}",
                ids.len(),
                journal::MAX_COUNT
            )));
        }
        let (d, c) = (self.header.dim, self.header.classes);
        let mut locs = Vec::with_capacity(ids.len());
        let (qn, rn) = (q.len(), r.len());
        for (k, &id) in ids.iter().enumerate() {
            let entry = self.index.get(id).expect("present: checked by the caller");
            q.resize(qn + (k + 1) * d, 0);
            r.resize(rn + (k + 1) * c, 0);
            let read = self.read_record(id, entry, &mut q[qn + k * d..], &mut r[rn + k * c..]);
            if let Err(e) = read {
                q[qn..].zeroize();
                r[rn..].zeroize();
                q.truncate(qn);
                r.truncate(rn);
                return Err(e);
            }
            locs.push(entry.pos);
        }
        let entry = self.journal.forget_entry(&self.sealer, &locs);
        if let Err(Failed::Undone(e) | Failed::Unknown(e)) = self.commit(&entry) {
            q[qn..].zeroize();
            r[rn..].zeroize();
            q.truncate(qn);
            r.truncate(rn);
            return Err(e);
        }
        for &id in ids {
            self.index.remove(id);
        }
        self.released
            .extend(locs.iter().copied().filter(|l| l & IN_JOURNAL == 0));
        if let Err(e) = self.zero_records(&locs) {
            tracing::warn!(
                "forget committed, but overwriting the forgotten records failed (retried before \
                 the next call; close and recovery overwrite them anyway): {e}"
            );
            self.pending.scrub.extend(&locs);
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
    fn read_record(&self, id: u64, entry: Entry, q: &mut [i32], r: &mut [i32]) -> Result<()> {
        let (file, at) = self.place_of(entry.pos, &BTreeMap::new())?;
        let f = open_part(&self.dir, &file)?;
        let mut rec = Scratch::new(self.record_len() as usize);
        f.read_at(&mut rec, at)?;
        self.open_record(&file, id, entry, &rec, q, r)
    }

    /// Opens a record read from `file`.
    fn open_record(
        &self,
        file: &str,
        id: u64,
        entry: Entry,
        rec: &[u8],
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
        let mut payload = Scratch::new(payload_len(self.header.dim, self.header.classes));
        match self
            .sealer
            .open_into(&record_ad(salt, pos, id, entry.label), rec, &mut payload)
        {
            Ok(()) => {
                decode_payload(&payload, q, r);
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
        let mut k = 0;
        // One read per bucket file's records; one per record in the journal.
        let mut group = Scratch::new(0);
        let mut group_of: Option<(String, u64)> = None;
        let mut file_of: Option<(String, StoreFile)> = None;
        for (id, entry) in live {
            let (file, at) = self.place_of(entry.pos, versions)?;
            if file_of.as_ref().is_none_or(|(name, _)| *name != file) {
                file_of = Some((file.clone(), open_part(&self.dir, &file)?));
            }
            let handle = &file_of.as_ref().expect("opened").1;
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

    /// Persists the canonical state (see the module docs) and releases the state dir.
    /// `stats` and `solution` must be the head's current, canonical ones. An error means the
    /// dir is left open (with its journal), and the next open recovers exactly these samples.
    pub fn close(mut self, stats: &ExactStats, solution: &Solution) -> Result<()> {
        if let Some(reason) = &self.poisoned {
            return Err(Error::state(
                self.dir.path(),
                format!(
                    "was not closed cleanly because an earlier call's outcome is unknown \
                     ({reason}); the next open recovers it"
                ),
            ));
        }
        self.maintain()?;
        self.compact(Some((stats, solution)))
    }

    /// Rewrites the state dir in its canonical form, unless it is in it (see the module docs).
    /// On error nothing changed: the journal still describes the state dir.
    fn compact(&mut self, canonical: Option<(&ExactStats, &Solution)>) -> Result<()> {
        if self.journal.entries() == 0 && self.released.is_empty() && self.stats_current {
            return Ok(());
        }
        let mut touched: BTreeSet<usize> = self.released.iter().map(|&l| split_loc(l).0).collect();
        touched.extend(
            self.index
                .iter()
                .filter(|(_, e)| e.pos & IN_JOURNAL != 0)
                .map(|(id, _)| bucket_of(id)),
        );
        let sealer = self.same_sealer();
        let keys = self.same_keys();
        self.rewrite(&touched, sealer, keys, canonical)
    }

    /// Rewrites the `touched` buckets (every record sealed by `sealer`), and `stats.bin` when
    /// `canonical` is given, and commits a new journal naming them, with `keys` (see the
    /// module docs: close, checkpoint, rekey).
    fn rewrite(
        &mut self,
        touched: &BTreeSet<usize>,
        sealer: Sealer,
        keys: Option<Keys>,
        canonical: Option<(&ExactStats, &Solution)>,
    ) -> Result<()> {
        let written = self.write_rewritten(touched, &sealer, keys.as_ref(), canonical);
        let (rewritten, parent, mut fresh) = match written {
            Ok(w) => w,
            Err(e) => {
                self.discard(touched);
                return Err(e);
            }
        };
        // What the old journal and `stats.bin` were overwritten with must be durable before
        // their names are replaced (recovery can no longer reach them then).
        let synced = self
            .journal
            .sync_dirty()
            .and_then(|()| match self.stats_zeroed {
                true => open_part(&self.dir, STATS).and_then(|f| f.sync()),
                false => Ok(()),
            });
        if let Err(e) = synced.and_then(|()| self.dir.rename(JOURNAL_TMP, JOURNAL)) {
            self.discard(touched);
            return Err(e);
        }
        if let Err(e) = self.dir.sync() {
            // Whether the new journal reached the disk is unknown: the old one is put back.
            if let Err(u) = self.journal.restore(&self.dir) {
                self.poison(format!(
                    "{e}: whether the compaction committed is unknown (putting the old journal \
                     back failed: {u})"
                ));
                return Err(e);
            }
            if let Err(z) = fresh.file().scrub_in_place() {
                tracing::warn!("overwriting an uncommitted journal failed: {z}");
            }
            self.discard(touched);
            return Err(e);
        }
        // Committed.
        fresh.renamed(self.dir.join(JOURNAL));
        let old = std::mem::replace(&mut self.journal, fresh);
        for w in &rewritten {
            match w.file {
                Some(r) => {
                    self.buckets.insert(w.bucket, r);
                }
                None => {
                    self.buckets.remove(&w.bucket);
                }
            }
            for &(id, pos) in &w.moved {
                let label = self.index.remove(id).expect("live").label;
                self.index.insert(
                    id,
                    Entry {
                        pos: bucket_loc(w.bucket, pos),
                        label,
                    },
                );
            }
        }
        self.released
            .retain(|&l| !touched.contains(&split_loc(l).0));
        self.pending
            .scrub
            .retain(|&l| l & IN_JOURNAL == 0 && !touched.contains(&split_loc(l).0));
        self.parent = parent;
        self.stats_current = parent != 0;
        self.stats_zeroed = false;
        self.sealer = sealer;
        self.keys = keys;
        self.pending.compaction = true;
        let finished = self.finish_rewrite(&rewritten, parent == 0);
        if let Err(e) = finished.and_then(|()| old.file().scrub_in_place()) {
            tracing::warn!(
                "state dir {}: a compaction committed, but moving its files into place failed \
                 (retried before the next change and at the next open): {e}",
                self.dir.path().display()
            );
        }
        Ok(())
    }

    /// Writes the new bucket files, `stats.bin.tmp` (given `canonical`) and `journal.tmp`,
    /// each synced. Returns the buckets, the new base's parent and the new journal.
    fn write_rewritten(
        &self,
        touched: &BTreeSet<usize>,
        sealer: &Sealer,
        keys: Option<&Keys>,
        canonical: Option<(&ExactStats, &Solution)>,
    ) -> Result<(Vec<Rewritten>, u128, Journal)> {
        let mut members: BTreeMap<usize, Vec<(u64, Entry)>> =
            touched.iter().map(|&b| (b, Vec::new())).collect();
        for (id, e) in self.index.iter() {
            if let Some(m) = members.get_mut(&bucket_of(id)) {
                m.push((id, e));
            }
        }
        let mut rewritten = Vec::with_capacity(members.len());
        for (b, mut m) in members {
            m.sort_unstable_by_key(|&(id, _)| id);
            rewritten.push(self.write_bucket(b, &m, sealer)?);
        }
        let mut parent = 0;
        if let Some((stats, solution)) = canonical {
            let header = Header {
                extra: stats.n(),
                ..self.header
            };
            let bytes = encode_stats(sealer, &header, stats, solution);
            parent = stats_checksum(&bytes).expect("a whole file");
            self.dir.write_new(STATS_TMP, &bytes)?;
        }
        let mut buckets = self.buckets.clone();
        for w in &rewritten {
            match w.file {
                Some(r) => buckets.insert(w.bucket, r),
                None => buckets.remove(&w.bucket),
            };
        }
        let base = Base {
            salt: new_salt(sealer),
            parent,
            buckets: buckets.into_values().collect(),
            holes: self
                .released
                .iter()
                .copied()
                .filter(|&l| !touched.contains(&split_loc(l).0))
                .collect(),
        };
        let journal =
            Journal::create(&self.dir, JOURNAL_TMP, sealer, keys, &self.header, 1, &base)?;
        Ok((rewritten, parent, journal))
    }

    /// Writes and syncs the new version of bucket `b` holding `members` (sorted by id).
    fn write_bucket(
        &self,
        b: usize,
        members: &[(u64, Entry)],
        sealer: &Sealer,
    ) -> Result<Rewritten> {
        if members.is_empty() {
            return Ok(Rewritten {
                bucket: b,
                file: None,
                moved: Vec::new(),
            });
        }
        let (d, c) = (self.header.dim, self.header.classes);
        let count = members.len() as u64;
        let salt = new_salt(sealer);
        let plain_len = payload_len(d, c);
        let rec = sealer.sealed_len(plain_len);
        let ids: Vec<(u64, u32)> = members.iter().map(|&(id, e)| (id, e.label)).collect();
        let index = sealer.seal(&bucket_index_ad(salt, b, count), &encode_ids(&ids));
        let mut body = Scratch::new(index.len() + members.len() * rec);
        body[..index.len()].copy_from_slice(&index);
        let (mut q, mut r) = (Scratch::new(d), Scratch::new(c));
        let mut payload = Scratch::new(plain_len);
        for (i, &(id, e)) in members.iter().enumerate() {
            self.read_record(id, e, &mut q, &mut r)?;
            encode_payload(&q, &r, &mut payload);
            let at = index.len() + i * rec;
            sealer.seal_into(
                &record_ad(salt, i as u64, id, e.label),
                &payload,
                &mut body[at..at + rec],
            );
        }
        let r = BucketRef {
            bucket: b,
            count,
            salt,
            digest: xxh3_128(&body),
        };
        let f = self.dir.create_file(&bucket_name(b, Version::New))?;
        f.write_at(&encode_bucket_head(&self.header, &r), 0)?;
        f.write_at(&body, BUCKET_BODY as u64)?;
        f.sync()?;
        Ok(Rewritten {
            bucket: b,
            file: Some(r),
            moved: ids
                .iter()
                .enumerate()
                .map(|(i, &(id, _))| (id, i as u64))
                .collect(),
        })
    }

    /// After a rewrite committed: scrubs each replaced bucket file and moves the new one into
    /// place, and moves `stats.bin.tmp` into place or (`drop_stats`: the base names none)
    /// scrubs `stats.bin`.
    fn finish_rewrite(&mut self, rewritten: &[Rewritten], drop_stats: bool) -> Result<()> {
        for w in rewritten {
            self.dir.scrub(&bucket_name(w.bucket, Version::Current))?;
            if w.file.is_some() {
                self.dir.rename(
                    &bucket_name(w.bucket, Version::New),
                    &bucket_name(w.bucket, Version::Current),
                )?;
            }
        }
        if self.dir.has(STATS_TMP)? {
            self.dir.rename(STATS_TMP, STATS)?;
        } else if drop_stats {
            self.dir.scrub(STATS)?;
        }
        self.dir.sync()?;
        self.pending.compaction = false;
        Ok(())
    }

    /// Scrubs the files a failed rewrite wrote; on failure they stay leftovers.
    fn discard(&mut self, touched: &BTreeSet<usize>) {
        let done = touched
            .iter()
            .map(|&b| bucket_name(b, Version::New))
            .chain([STATS_TMP.to_string(), JOURNAL_TMP.to_string()])
            .try_fold(false, |any, name| {
                self.dir.scrub(&name).map(|scrubbed| any || scrubbed)
            });
        match done.and_then(|any| if any { self.dir.sync() } else { Ok(()) }) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("removing the files of a failed call failed (retried later): {e}");
                self.pending.leftovers = true;
            }
        }
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

/// Opens a file the state dir cannot be without.
fn open_part(dir: &Dir, name: &str) -> Result<StoreFile> {
    dir.open_file(name)?
        .ok_or_else(|| Error::state(dir.path(), format!("{name} is missing")))
}

fn corrupt(dir: &Path, file: &str, message: impl std::fmt::Display) -> Error {
    Error::state(dir, format!("{file} is corrupt: {message}"))
}

/// Whether the file `name` is a `stats.bin` whose checksum is `parent` (checked over the
/// whole file).
fn stats_matches(dir: &Dir, name: &str, parent: u128) -> bool {
    let Ok(Some(f)) = dir.open_file(name) else {
        return false;
    };
    let Ok(bytes) = f.read_all().map(Scratch) else {
        return false;
    };
    let Some(sum) = stats_checksum(&bytes) else {
        return false;
    };
    sum == parent && xxh3_128(&bytes[..bytes.len() - 16]) == sum
}

/// Which version of each bucket file the base names is on disk (reading their headers).
fn choose_versions(
    dir: &Dir,
    names: &[OsString],
    base: &Base,
    header: &Header,
) -> Result<BTreeMap<usize, Version>> {
    let buckets: BTreeMap<usize, BucketRef> = base.buckets.iter().map(|b| (b.bucket, *b)).collect();
    choose_among(dir, names, &buckets, header, BTreeMap::new())
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

/// Checks that the state files belong with this `meta.json` (every header records its
/// checksum) before anything `meta.json` says is trusted, so that a modified `meta.json` is
/// reported as such.
fn check_tied(dir: &Dir, names: &[OsString], header: &Header) -> Result<()> {
    let buckets = names
        .iter()
        .filter(|n| parse_bucket_name(n).is_some_and(|(_, v)| v == Version::Current))
        .map(|n| (n.to_string_lossy().into_owned(), BUCKET_MAGIC));
    let candidates = [
        (JOURNAL.to_string(), JOURNAL_MAGIC),
        (STATS.to_string(), STATS_MAGIC),
    ]
    .into_iter()
    .chain(buckets);
    for (name, magic) in candidates {
        if let Some(f) = dir.open_file(&name)? {
            let mut head = [0u8; HEADER_LEN];
            let read = f.read_at(&mut head, 0).map(|_| head.as_slice());
            return format::parse_header(read.unwrap_or(&[]), magic, header)
                .map(drop)
                .map_err(|m| corrupt(dir.path(), &name, m));
        }
    }
    Ok(())
}

/// A forget-all that committed is finished with the key given: refused when the forgotten
/// journal's data key does not unwrap with it (while that journal is still readable).
fn check_forgotten_key(dir: &Dir, header: &Header, key: Option<&StateKey>) -> Result<()> {
    let Some(f) = dir.open_file(JOURNAL_FORGOTTEN)? else {
        return Ok(());
    };
    let bytes = Scratch(f.read_all()?);
    match journal::parse_head(&bytes, header, key) {
        Err(journal::HeadError::Key(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Refuses a state dir in which one of Lethe's names is anything but a regular file with one
/// name owned by this user, before anything is read or written.
fn inspect(dir: &Dir, names: &[OsString]) -> Result<()> {
    for name in names.iter().filter(|n| is_lethe_name(n)) {
        if let Some(Kind::Foreign(why)) = dir.kind(name)? {
            return Err(io::refused(dir.path(), &name.to_string_lossy(), why));
        }
    }
    Ok(())
}

/// A dir without `meta.json` may become a state dir only when it holds nothing but the
/// leftovers of an interrupted creation (which hold no samples).
fn check_creatable(dir: &Dir, names: &[OsString]) -> Result<()> {
    for name in names {
        let leftover = match name.to_str() {
            Some(LOCK | META_TMP) => true,
            Some(JOURNAL) => journal::looks_fresh(&open_part(dir, JOURNAL)?.read_all()?),
            _ => false,
        };
        if !leftover {
            return Err(Error::state(
                dir.path(),
                format!(
                    "has no {META} but holds {name:?}: it is not a state dir (or a damaged one); \
                     refusing to create one over it"
                ),
            ));
        }
    }
    Ok(())
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

/// What [`erase`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasedReport {
    /// Lethe's files that were overwritten with zeros, synced, truncated and removed.
    pub scrubbed: Vec<String>,
    /// Names of Lethe's files that were not provably Lethe's (a link, a file with other names
    /// or another owner, …): removed without writing anything, so whatever they point to or
    /// share is untouched (and may still hold data). Each with why.
    pub unlinked: Vec<String>,
    /// Names that are not Lethe's, left in place.
    pub kept: Vec<String>,
    /// Whether the state dir itself was removed (it was left empty and is not a link).
    pub dir_removed: bool,
}

/// Erases the state dir `path` whatever its state: corrupt, unsolvable, encrypted (no key is
/// needed), of this or an earlier format version, left by a crash, or on a full disk. It needs
/// no free space and parses nothing.
///
/// Every file with one of Lethe's names (of this format or format 4's) that is provably
/// Lethe's (a regular file with one name, owned by this user) is overwritten with zeros,
/// synced, truncated and removed: the bucket files first, `meta.json` last; other entries
/// with Lethe's names are removed without being written (links are never followed); other
/// names are left alone. Then the dir is removed if it is empty. A dir that does not exist is
/// nothing to erase.
///
/// Refused, with nothing changed, when a head has the state dir open (forget-all there), and
/// for a dir that does not look like a state dir: one that holds names that are not Lethe's
/// but no `meta.json` and no file that starts like one of Lethe's.
///
/// ```no_run
/// let report = lethe::store::erase(std::path::Path::new("/tmp/my-head"))?;
/// assert!(report.unlinked.is_empty());
/// # Ok::<(), lethe::Error>(())
/// ```
pub fn erase(path: &Path) -> Result<ErasedReport> {
    let mut report = ErasedReport::default();
    let Some(dir) = Dir::open(path, false)? else {
        return Ok(report);
    };
    if !dir.try_lock()? {
        return Err(Error::state(
            path,
            "is open in another process or head: use forget-all there, or close it first",
        ));
    }
    let names = dir.list()?;
    let foreign_names = names.iter().any(|n| !is_lethe_name(n));
    if foreign_names && !looks_like_a_state_dir(&dir, &names)? {
        return Err(Error::state(
            path,
            "does not look like a state dir (no meta.json, no file of Lethe's, but other \
             files): nothing was erased",
        ));
    }
    let mut buckets: Vec<String> = names
        .iter()
        .filter(|n| parse_bucket_name(n).is_some())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    buckets.sort();
    let mut any = false;
    for name in buckets.iter().map(String::as_str).chain(NAMES) {
        match dir.kind(OsStr::new(name))? {
            None => {}
            Some(Kind::Own) => {
                dir.scrub(name)?;
                report.scrubbed.push(name.to_string());
                any = true;
            }
            Some(Kind::Foreign(Foreign::Directory)) => report.kept.push(name.to_string()),
            Some(Kind::Foreign(why)) => {
                dir.remove(OsStr::new(name))?;
                report.unlinked.push(format!("{name} ({})", why.why()));
                any = true;
            }
        }
    }
    report.kept.extend(
        names
            .iter()
            .filter(|n| !is_lethe_name(n))
            .map(|n| n.to_string_lossy().into_owned()),
    );
    if any {
        dir.sync()?;
    }
    report.dir_removed = report.kept.is_empty() && dir.remove_self()?;
    tracing::info!(
        "state dir {}: erased {:?}{}",
        path.display(),
        report.scrubbed,
        if report.dir_removed {
            ", removed the dir"
        } else {
            ""
        }
    );
    Ok(report)
}

const MAGICS: [&[u8; 8]; 4] = [
    BUCKET_MAGIC,
    STATS_MAGIC,
    JOURNAL_MAGIC,
    LEGACY_SAMPLES_MAGIC,
];

/// Whether the dir has `meta.json` or a file of Lethe's with its magic.
fn looks_like_a_state_dir(dir: &Dir, names: &[OsString]) -> Result<bool> {
    if dir.has(META)? {
        return Ok(true);
    }
    for name in names.iter().filter(|n| is_lethe_name(n)) {
        if dir.kind(name)? != Some(Kind::Own) {
            continue;
        }
        let Some(f) = dir.open_file(&name.to_string_lossy())? else {
            continue;
        };
        let mut magic = [0u8; 8];
        if f.read_at(&mut magic, 0).is_ok() && MAGICS.contains(&&magic) {
            return Ok(true);
        }
    }
    Ok(false)
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
    let header = Header {
        dim: meta.head.dim,
        classes: meta.head.num_classes(),
        meta: xxh3_64(&meta_bytes),
        extra: 0,
        seq: 0,
    };
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
