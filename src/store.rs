//! The state dir: where one head persists, atomically, durably, scrubbed and
//! history-independently (DESIGN.md G2–G5).
//!
//! # Files
//! All integers are little-endian; every binary file starts with a 64-byte header (magic,
//! format version, d, C, the xxh3-64 of `meta.json`, two file-specific words, and an xxh3-64 of
//! the header), so a file from another head or a damaged header is detected at once.
//! - `meta.json`: format, version, the bundle's name and core sha256, and the head's spec.
//!   Written once, when the state dir is created; its checksum is in every other header.
//! - `samples.bin`: the header, then one fixed-size slot per sample:
//!   `id:u64 seq:u64 label:u32 0:u32 q:[i32; d] r:[i32; C] xxh3-64(record):u64`, where `seq`
//!   is the journal entry of the learn that wrote the record (0 once compacted). A free slot is
//!   all zeros or a tombstone (`src/store/format.rs`): the record a forget leaves, which holds
//!   nothing of the sample but the seq of the forget's entry. While the head is open, learn
//!   fills free slots (or appends) and forget overwrites slots with tombstones in place; a
//!   closed state dir holds exactly the live samples, sorted by id.
//! - `stats.bin` (only while closed): the exact statistics A and B (i128), the canonical
//!   Cholesky factor L and weights Θ (f64), a digest of `samples.bin` (xxh3-128 over its header
//!   and its records' checksums) and an xxh3-128 of the whole file. It makes opening cheap: no
//!   O(n·d²) recomputation and no O(p³) factorization.
//! - `journal` (only while open, or after a crash): the commit log of changes since the state
//!   dir was last compacted or checkpointed, slot numbers only: no sample bytes, no ids (format
//!   in `src/store/journal.rs`). It grows by 64 + 16·k bytes per call of k samples; after
//!   [`CHECKPOINT_ENTRIES`] entries or [`CHECKPOINT_BYTES`] bytes it is checkpointed (below),
//!   so its size and the time to replay it stay bounded for a head that is never closed.
//!
//! The dir is created 0700 (its parent synced, so that it survives a power loss) and its files
//! 0600. A closed state dir is a pure function of its sample set (G2): `samples.bin` holds the
//! live records in id order, `stats.bin` the exact sums and the canonical solution, and no
//! file's size depends on how many samples there once were.
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
//! Each call has one commit point, a single sync. An error before it means nothing changed, in
//! memory or on disk (what the call had written is undone first); from it on the call returns
//! OK, and the work that follows (zeroing, compaction, removing leftovers) is maintenance: when
//! it fails it is logged with `tracing` and retried before the next call, at close, or at the
//! next open, never reported as the call's failure.
//! - first change after opening a closed dir (before the call's own commit): create the journal
//!   (base = the slot count) and sync it and the dir; then retire `stats.bin`, whose sums depend
//!   on every sample: rename it to `stats.bin.old`, sync the dir, zero it, sync, remove it, sync
//!   the dir.
//! - learn: write the records into free slots, sync `samples.bin`; append the entry and sync
//!   it: **commit**. Before the commit, a failure zeroes the records written (they were free
//!   slots) and cuts a partly written entry off the journal, both synced.
//! - forget: read and check the records; append the entry and sync it: **commit**; then
//!   overwrite the records with tombstones and sync `samples.bin` (G4: when the disk works, the
//!   bytes are gone when forget returns; if this fails it is retried before the next call, and
//!   close and recovery rewrite every released slot anyway).
//! - forget-all: rename `samples.bin` to `samples.bin.forgotten` and sync the dir: **commit**.
//!   Then zero the forgotten samples in place, sync, truncate them to nothing; scrub every other
//!   file but `meta.json` the same way; create a fresh `samples.bin` and journal and sync them
//!   and the dir; remove `samples.bin.forgotten`, sync the dir. The state dir is then exactly a
//!   freshly created one. Forget-all depends on nothing it erases, so it runs even after an
//!   earlier failure, and it needs no free space: each file it writes (two headers) is smaller
//!   than what it freed first.
//! - close (compaction): write `samples.bin.tmp` (the live records sorted by id; never a
//!   forgotten one) and `stats.bin.tmp`, sync both; rename `stats.bin.tmp` to `stats.bin`, sync
//!   the dir: **commit** (the dir is closed). Then rename `samples.bin` to `samples.bin.old` and
//!   `samples.bin.tmp` to `samples.bin`, sync the dir; scrub `samples.bin.old` and the journal,
//!   sync the dir. A failure before the commit removes `stats.bin` and the temporary files, so
//!   the journal stays what recovery reads.
//! - checkpoint (after a call, when the journal is due): write `journal.tmp` (base = the slot
//!   count, first seq = the next one, one forget entry listing the free slots), sync it; rename
//!   it to `journal`, sync the dir: **commit**; zero the old journal through its descriptor.
//!   Live records keep the seq of the learn that wrote them, which is below the new journal's
//!   first seq, so nothing in `samples.bin` is rewritten.
//! - creation: write `samples.bin` and the journal (headers only) and `meta.json.tmp`, sync
//!   them, rename `meta.json.tmp` to `meta.json`, sync the dir: **commit**.
//!
//! When an error leaves the outcome unknown (the commit's sync failed, and so did undoing it),
//! the store refuses changes but forget-all until it is reopened, and the next open decides:
//! the call then either fully happened or not at all, as after a crash.
//!
//! # Opening and recovery
//! Before anything is written, every one of Lethe's names in the dir is checked (above), and
//! `meta.json` against the bundle. Then leftovers are scrubbed first, before anything new is
//! written, so that a full disk does not stop recovery.
//! - With `samples.bin.forgotten`: a forget-all committed; it is finished as above.
//! - With `stats.bin`: the dir was closed (or a close had committed). `stats.bin` and
//!   `samples.bin` are checked completely (every record's checksum, ids strictly increasing,
//!   the digest, the sizes); a `samples.bin.tmp` that matches the digest is moved into place (a
//!   close that crashed after its commit). Cost: one pass over `samples.bin` (xxh3 runs at
//!   memory speed) and a read of `stats.bin`; rows stay on disk, only an index id → (slot,
//!   label) is kept in memory.
//! - Without `stats.bin`: a crash while open. Replay the journal from its base (slots
//!   `0..base` live; learn adds slots, forget removes them); a torn last entry is not
//!   committed. Every live slot must hold a valid record with a distinct id, written by the
//!   entry that made the slot live (or before the journal). A free slot that is not zero must
//!   be what a crash can leave there: a record of the call in flight (seq = the next entry),
//!   torn or whole; a released record whose overwriting had not finished; or a tombstone of an
//!   entry the journal has. Anything else means a damaged or cut journal, and so does a
//!   tombstone in a live slot: a cut that loses any entry but a last learn is detected. Stale
//!   records are zeroed and synced, the statistics recomputed (reporting progress as `tracing`
//!   events) and the dir compacted as by close; if compacting fails (a full disk), the head
//!   opens on the journal and compacts at close.
//!
//! Every inconsistency is an [`Error::State`] that names the file; nothing is ever repaired by
//! dropping samples. A state dir that cannot be opened for any reason can still be erased
//! ([`erase`]).
//!
//! `src/store/tests.rs` makes every step of every call fail, crash, lose power (with partial
//! and torn writes) or run out of space (see `src/store/io.rs`), and checks that reopening
//! gives exactly the state before or after, before exactly when the call returned an error.
//!
//! # Not covered
//! Checksums detect corruption and accidental modification; they are not a MAC: whoever can
//! write the state dir can also rewrite it consistently. A journal cut exactly after an entry,
//! with a learn as the only entry lost, looks like a crash before that learn was committed and
//! recovers without it; so does a cut that loses a forget whose tombstones never reached the
//! disk (a forget whose overwriting failed and was still pending). Zeroing overwrites the
//! file's blocks as the file system sees them; on copy-on-write file systems (btrfs, ZFS, APFS)
//! and behind a flash translation layer the old physical copy may survive until reused, which
//! only full-disk encryption addresses.
//!
//! The store reads `samples.bin` with `pread` rather than a memory map: a map would save about
//! 15 ms at n = 50 000, d = 1280, but another process truncating the file would then kill the
//! host with SIGBUS, which G5 rules out.

mod format;
mod io;
mod journal;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;
use zeroize::{DefaultIsZeroes, Zeroize};

use crate::error::{Error, Result};
use crate::math::samples::{Entry, SampleIndex, SampleRef};
use crate::math::solver::{self, Solution};
use crate::math::spec::HeadSpec;
use crate::math::stats::ExactStats;
use format::{
    decode_rows, encode_header, encode_record, encode_stats, encode_tombstone, parse_header,
    parse_record, parse_stats, record_len, restamp, Header, Meta, SamplesDigest, Slot, HEADER_LEN,
    JOURNAL, JOURNAL_MAGIC, JOURNAL_TMP, LEFTOVERS, LOCK, META, META_TMP, NAMES, SAMPLES,
    SAMPLES_FORGOTTEN, SAMPLES_MAGIC, SAMPLES_OLD, SAMPLES_TMP, STATS, STATS_MAGIC, STATS_OLD,
    STATS_TMP,
};
use io::{Dir, Foreign, Kind, StoreFile};
use journal::{Journal, Op};

/// Records per read when scanning `samples.bin`.
const SCAN_BATCH: usize = 256;
/// Records per batch handed to a caller of [`Store::for_each_batch`].
const ROW_BATCH: usize = 1024;
/// Journal entries after which it is checkpointed.
pub const CHECKPOINT_ENTRIES: u64 = 1024;
/// Journal bytes after which it is checkpointed.
pub const CHECKPOINT_BYTES: u64 = 1 << 20;

#[cfg(not(test))]
fn checkpoint_entries() -> u64 {
    CHECKPOINT_ENTRIES
}

/// Tests checkpoint sooner, to reach every step of a checkpoint quickly.
#[cfg(test)]
fn checkpoint_entries() -> u64 {
    tests::CHECKPOINT_EVERY.with(std::cell::Cell::get)
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
    /// Released slots not overwritten yet, with the entry that released them.
    scrub: Vec<(u64, u64)>,
    /// A committed forget-all whose fresh files are not all in place: changes wait for it.
    forget_all: bool,
    /// A committed compaction whose `samples.bin.tmp` is not renamed into place yet: changes
    /// wait for it.
    compaction: bool,
    /// A renamed journal whose dir sync failed: changes wait for it.
    sync_dir: bool,
    /// Leftover files to scrub.
    leftovers: bool,
}

/// An open state dir: the index of its samples in memory, their rows in `samples.bin`.
pub struct Store {
    /// Holds the lock while the store lives.
    dir: Dir,
    spec: HeadSpec,
    /// What every header of this state dir says (`extra` and `seq` = 0).
    header: Header,
    samples: StoreFile,
    /// id → (slot, label) of every live sample.
    index: SampleIndex,
    /// Free slots below `slots`.
    free: Vec<u64>,
    /// Slots in `samples.bin`.
    slots: u64,
    /// Present while the state dir has changes not compacted yet.
    journal: Option<Journal>,
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
    /// Opens the state dir for a head over the bundle with this core sha256, creating it with
    /// the `requested` spec when `create` allows and `dir` is not a state dir yet. An existing
    /// dir keeps the spec it was created with. Returns what it held, or `None` when it was
    /// created.
    pub fn open(
        path: &Path,
        bundle_name: &str,
        core_sha256: &str,
        requested: &HeadSpec,
        create: bool,
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
        inspect(&dir)?;
        if !dir.has(META)? {
            if !create {
                return Err(not_yet(&format!("it has no {META}")));
            }
            check_creatable(&dir)?;
            let store = Store::create(dir, bundle_name, core_sha256, requested)?;
            return Ok((store, None));
        }
        let meta_bytes = open_part(&dir, META)?.read_all()?;
        let meta = Meta::parse(&meta_bytes).map_err(|m| corrupt(path, META, m))?;
        let spec = meta.head.clone();
        let header = Header {
            dim: spec.dim,
            classes: spec.num_classes(),
            meta: xxh3_64(&meta_bytes),
            extra: 0,
            seq: 0,
        };
        let forgotten = dir.has(SAMPLES_FORGOTTEN)?;
        if !forgotten {
            check_tied(&dir, &header)?;
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
            tracing::info!("state dir {}: finishing a forget-all", path.display());
            let (samples, journal) = finish_forget_all(&dir, &header)?;
            let store = Store::new(dir, spec, header, samples, Some(journal));
            let loaded = store.empty_loaded()?;
            return Ok((store, Some(loaded)));
        }
        if dir.has(STATS)? {
            Store::open_closed(dir, spec, header)
        } else {
            Store::recover(dir, spec, header)
        }
        .map(|(store, loaded)| (store, Some(loaded)))
    }

    /// A store over `samples` with no sample yet.
    fn new(
        dir: Dir,
        spec: HeadSpec,
        header: Header,
        samples: StoreFile,
        journal: Option<Journal>,
    ) -> Store {
        Store {
            dir,
            index: SampleIndex::new(spec.num_classes()),
            spec,
            header,
            samples,
            free: Vec::new(),
            slots: 0,
            journal,
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

    fn create(dir: Dir, bundle_name: &str, core_sha256: &str, spec: &HeadSpec) -> Result<Store> {
        let meta_bytes = Meta::new(bundle_name, core_sha256, spec).encode();
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
        // Leftovers of an interrupted creation hold no samples: they are overwritten.
        let (samples, journal) = fresh_files(&dir, &header)?;
        dir.write_new(META_TMP, &meta_bytes)?;
        dir.rename(META_TMP, META)?;
        dir.sync()?;
        Ok(Store::new(
            dir,
            spec.clone(),
            header,
            samples,
            Some(journal),
        ))
    }

    /// Opens a state dir that has `stats.bin` (closed, or a close had committed).
    fn open_closed(dir: Dir, spec: HeadSpec, header: Header) -> Result<(Store, Loaded)> {
        let path = dir.path().to_path_buf();
        let stats_file = dir
            .open_file(STATS)?
            .ok_or_else(|| Error::state(&path, format!("{STATS} vanished")))?;
        let stats_bytes = Scratch(stats_file.read_all()?);
        let stored = parse_stats(&stats_bytes, &header, spec.fixed.one())
            .map_err(|m| corrupt(&path, STATS, m))?;
        let n = stored.stats.n();
        let rolled = match dir.open_file(SAMPLES_TMP)? {
            Some(f) => scan_closed(&f, &header, n, stored.samples_digest)
                .ok()
                .map(|index| (f, index)),
            None => None,
        };
        let (samples, index, rolled) = match rolled {
            Some((f, index)) => (f, index, true),
            None => {
                let f = open_part(&dir, SAMPLES)?;
                let index = scan_closed(&f, &header, n, stored.samples_digest)
                    .map_err(|m| corrupt(&path, SAMPLES, m))?;
                (f, index, false)
            }
        };
        let mut store = Store::new(dir, spec, header, samples, None);
        store.index = index;
        store.slots = n;
        if rolled {
            // A close that crashed after its commit: finish it.
            store.pending.compaction = true;
            store.finish_compaction()?;
        }
        tidy(&store.dir, true)?;
        let loaded = Loaded {
            stats: stored.stats,
            solution: stored.solution,
        };
        Ok((store, loaded))
    }

    /// Recovers a state dir that was open when its process died: replays the journal, scrubs
    /// what is not committed, recomputes the statistics and compacts.
    fn recover(dir: Dir, spec: HeadSpec, header: Header) -> Result<(Store, Loaded)> {
        let path = dir.path().to_path_buf();
        let journal_file = dir.open_file(JOURNAL)?.ok_or_else(|| {
            Error::state(
                &path,
                format!("has neither {STATS} nor {JOURNAL}: it is incomplete or was damaged"),
            )
        })?;
        let journal_bytes = journal_file.read_all()?;
        let parsed =
            journal::parse(&journal_bytes, &header).map_err(|m| corrupt(&path, JOURNAL, m))?;
        if let Some(note) = &parsed.tail_note {
            tracing::warn!("state dir {}: {JOURNAL}: {note}", path.display());
        }
        let samples = open_part(&dir, SAMPLES)?;
        let mut head = [0u8; HEADER_LEN];
        let read = samples.read_at(&mut head, 0).map(|_| head.as_slice());
        match parse_header(read.unwrap_or(&[]), SAMPLES_MAGIC, &header) {
            Ok(found) if found == header => {}
            Ok(_) => return Err(corrupt(&path, SAMPLES, "its header has a count or seq")),
            Err(m) => return Err(corrupt(&path, SAMPLES, m)),
        }
        let len = samples.len()?;
        let rec = record_len(header.dim, header.classes) as u64;
        let slots = (len - HEADER_LEN as u64) / rec;
        let replayed = replay(&parsed, slots).map_err(|m| corrupt(&path, JOURNAL, m))?;
        tracing::info!(
            "state dir {} was not closed cleanly: recovering {} samples",
            path.display(),
            replayed.live.len()
        );

        let mut index = SampleIndex::new(header.classes);
        let mut stale = Vec::new();
        let mut free = Vec::new();
        let mut buf = Scratch::new(SCAN_BATCH * rec as usize);
        for first in (0..slots).step_by(SCAN_BATCH) {
            let count = (slots - first).min(SCAN_BATCH as u64) as usize;
            let bytes = &mut buf[..count * rec as usize];
            samples.read_at(bytes, offset(first, rec))?;
            for (k, record) in bytes.chunks_exact(rec as usize).enumerate() {
                let slot = first + k as u64;
                let found = parse_record(record, header.classes);
                match replayed.live.get(&slot) {
                    Some(&fill) => match found {
                        Ok(Slot::Live { id, seq, label }) if replayed.filled_by(fill, seq) => {
                            if index.contains(id) {
                                return Err(corrupt(
                                    &path,
                                    SAMPLES,
                                    format!("id {id} is stored twice"),
                                ));
                            }
                            index.insert(id, Entry { pos: slot, label });
                        }
                        Ok(Slot::Released { seq }) => {
                            return Err(corrupt(
                                &path,
                                JOURNAL,
                                format!(
                                    "it was cut or damaged: {SAMPLES} slot {slot} was released by \
                                     entry {seq}, but the {JOURNAL} has it live"
                                ),
                            ))
                        }
                        found => {
                            let what = match found {
                                Ok(Slot::Live { seq, .. }) => format!(
                                    "it holds a sample written by entry {seq} of the {JOURNAL}, \
                                     not {}; the {JOURNAL} was cut or damaged",
                                    fill.describe()
                                ),
                                Err(m) => m,
                                _ => "it is empty".into(),
                            };
                            return Err(corrupt(
                                &path,
                                SAMPLES,
                                format!("slot {slot} is live in the {JOURNAL}, but {what}"),
                            ));
                        }
                    },
                    None => {
                        free.push(slot);
                        match found {
                            Ok(Slot::Free) => {}
                            Ok(Slot::Released { seq }) if seq <= replayed.last() => {}
                            Ok(Slot::Released { seq }) => {
                                return Err(corrupt(
                                    &path,
                                    JOURNAL,
                                    format!(
                                        "it was cut: {SAMPLES} slot {slot} was released by entry \
                                         {seq}, but the {JOURNAL} ends at entry {}",
                                        replayed.last()
                                    ),
                                ))
                            }
                            // What a crash can leave in a free slot: a record of the call in
                            // flight (whole or torn), or a released one not overwritten yet.
                            Err(_) => stale.push(slot),
                            Ok(Slot::Live { seq, .. }) if replayed.stale(slot, seq) => {
                                stale.push(slot)
                            }
                            Ok(Slot::Live { seq, .. }) => {
                                return Err(corrupt(
                                    &path,
                                    JOURNAL,
                                    format!(
                                        "{SAMPLES} slot {slot} holds a sample written by entry \
                                         {seq}, which the {JOURNAL} does not account for: it was \
                                         cut or damaged"
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        drop(buf);
        // Checked: from here on, leftovers first, then what is not committed: uncommitted
        // learns, released records not overwritten yet, a record torn at the end of the file.
        tidy(&dir, false)?;
        let zeros = vec![0u8; rec as usize];
        for &slot in &stale {
            samples.write_at(&zeros, offset(slot, rec))?;
        }
        let whole = offset(slots, rec);
        if len > whole {
            samples.zero_from(whole)?;
        }
        if !stale.is_empty() || len > whole {
            samples.sync()?;
        }
        let journal = Journal::resume(journal_file, &parsed)?;
        let mut store = Store::new(dir, spec, header, samples, Some(journal));
        store.index = index;
        store.free = free;
        store.slots = slots;
        let stats = store.recompute_stats()?;
        let solution = store.solve(&stats)?;
        if let Err(e) = store.compact(&stats, &solution) {
            tracing::warn!(
                "state dir {}: compacting after recovery failed, the head runs on the journal \
                 and compacts at close: {e}",
                path.display()
            );
        }
        Ok((store, Loaded { stats, solution }))
    }

    fn recompute_stats(&self) -> Result<ExactStats> {
        let mut stats = ExactStats::new(self.header.dim, self.header.classes);
        let one = self.spec.fixed.one();
        let total = self.index.len() as u64;
        let mut done = 0u64;
        tracing::info!(done, total, "recomputing the statistics");
        self.for_each_batch(&mut |q, r| {
            stats.accumulate(q, r, one, 1);
            done += (r.len() / self.header.classes) as u64;
            tracing::info!(done, total, "recomputing the statistics");
        })?;
        Ok(stats)
    }

    /// The spec recorded in the state dir.
    pub fn spec(&self) -> &HeadSpec {
        &self.spec
    }

    /// The live samples: id → (slot, label).
    pub fn index(&self) -> &SampleIndex {
        &self.index
    }

    fn record_len(&self) -> u64 {
        record_len(self.header.dim, self.header.classes) as u64
    }

    fn journal(&mut self) -> &mut Journal {
        self.journal.as_mut().expect("begun")
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
            let (samples, journal) = finish_forget_all(&self.dir, &self.header)?;
            self.samples = samples;
            self.journal = Some(journal);
            self.pending = Pending::default();
        }
        if self.pending.compaction {
            self.finish_compaction()?;
        }
        if self.pending.sync_dir {
            self.dir.sync()?;
            self.pending.sync_dir = false;
        }
        if let Err(e) = self.scrub_released() {
            tracing::warn!("overwriting released samples failed again (retried later): {e}");
        }
        if self.pending.leftovers {
            match tidy(&self.dir, self.journal.is_none()) {
                Ok(()) => self.pending.leftovers = false,
                Err(e) => tracing::warn!("removing leftover files failed (retried later): {e}"),
            }
        }
        Ok(())
    }

    /// Overwrites released slots with their tombstones and syncs.
    fn scrub_released(&mut self) -> Result<()> {
        if self.pending.scrub.is_empty() {
            return Ok(());
        }
        let rec = self.record_len();
        let mut tomb = vec![0u8; rec as usize];
        for &(slot, seq) in &self.pending.scrub {
            encode_tombstone(seq, &mut tomb);
            self.samples.write_at(&tomb, offset(slot, rec))?;
        }
        self.samples.sync()?;
        self.pending.scrub.clear();
        Ok(())
    }

    /// Before the first change after opening a closed state dir (or compacting): start the
    /// journal and retire `stats.bin`. Not a commit: a failure leaves the state as it was, and
    /// the next change starts over.
    fn begin(&mut self) -> Result<()> {
        if self.journal.is_some() {
            return Ok(());
        }
        let header = Header {
            extra: self.slots,
            seq: 1,
            ..self.header
        };
        let journal = Journal::create(&self.dir, JOURNAL, &header)?;
        self.dir.sync()?;
        if self.dir.has(STATS)? {
            self.dir.rename(STATS, STATS_OLD)?;
            self.dir.sync()?;
        }
        if self.dir.scrub(STATS_OLD)? {
            self.dir.sync()?;
        }
        self.journal = Some(journal);
        Ok(())
    }

    /// Appends `op` to the journal: the commit point of learn and forget. On failure the
    /// partly written entry is cut off; if that fails too, the outcome is unknown.
    fn commit(&mut self, op: &Op) -> std::result::Result<(), Failed> {
        let journal = self.journal();
        let Err(e) = journal.commit(op) else {
            return Ok(());
        };
        match journal.cut_tail() {
            Ok(()) => Err(Failed::Undone(e)),
            Err(cut) => {
                self.poison(format!(
                    "{e}; cutting the failed journal entry off failed: {cut}"
                ));
                Err(Failed::Unknown(e))
            }
        }
    }

    /// Stores new samples (ids checked absent by the caller) durably. On error nothing
    /// changed.
    pub fn learn(&mut self, samples: &[SampleRef<'_>]) -> Result<()> {
        self.ready()?;
        let reused = samples.len().min(self.free.len());
        let mut slots: Vec<u64> = self.free.iter().rev().take(reused).copied().collect();
        slots.extend(self.slots..self.slots + (samples.len() - reused) as u64);
        self.begin()?;
        let seq = self.journal().next_seq();
        if let Err(e) = self.write_records(samples, &slots, seq) {
            self.roll_back(&slots);
            return Err(e);
        }
        match self.commit(&Op::Learn(slots.clone())) {
            Ok(()) => {}
            Err(Failed::Undone(e)) => {
                self.roll_back(&slots);
                return Err(e);
            }
            // The records must stay: the entry may have committed.
            Err(Failed::Unknown(e)) => return Err(e),
        }
        self.free.truncate(self.free.len() - reused);
        self.slots += (samples.len() - reused) as u64;
        self.pending.scrub.retain(|(s, _)| !slots.contains(s));
        for (s, &slot) in samples.iter().zip(&slots) {
            self.index.insert(
                s.id,
                Entry {
                    pos: slot,
                    label: s.label,
                },
            );
        }
        self.after_commit();
        Ok(())
    }

    fn write_records(&self, samples: &[SampleRef<'_>], slots: &[u64], seq: u64) -> Result<()> {
        let rec = self.record_len();
        let mut buf = Scratch::new(rec as usize);
        for (s, &slot) in samples.iter().zip(slots) {
            encode_record(s, seq, &mut buf);
            self.samples.write_at(&buf, offset(slot, rec))?;
        }
        self.samples.sync()
    }

    /// Zeroes the records of a learn that did not commit (their slots were free); if that
    /// fails, recovery at the next open scrubs them (they carry the next entry's seq).
    fn roll_back(&mut self, slots: &[u64]) {
        let rec = self.record_len();
        let zeros = vec![0u8; rec as usize];
        let undone = slots
            .iter()
            .try_for_each(|&slot| self.samples.write_at(&zeros, offset(slot, rec)))
            .and_then(|()| self.samples.sync());
        if let Err(e) = undone {
            self.poison(format!("zeroing the records of a failed learn failed: {e}"));
        }
    }

    /// Forgets present, distinct ids: appends their features to `q` and targets to `r`, and
    /// overwrites their records durably before returning (see the module docs). On error
    /// nothing changed.
    pub fn forget(&mut self, ids: &[u64], q: &mut Vec<i32>, r: &mut Vec<i32>) -> Result<()> {
        self.ready()?;
        let rec = self.record_len();
        let (d, c) = (self.header.dim, self.header.classes);
        let mut buf = Scratch::new(rec as usize);
        let mut slots = Vec::with_capacity(ids.len());
        for &id in ids {
            let entry = self.index.get(id).expect("present: checked by the caller");
            self.read_record(id, entry, &mut buf)?;
            let (qn, rn) = (q.len(), r.len());
            q.resize(qn + d, 0);
            r.resize(rn + c, 0);
            decode_rows(&buf, &mut q[qn..], &mut r[rn..]);
            slots.push(entry.pos);
        }
        self.begin()?;
        let seq = self.journal().next_seq();
        if let Err(Failed::Undone(e) | Failed::Unknown(e)) = self.commit(&Op::Forget(slots.clone()))
        {
            return Err(e);
        }
        for &id in ids {
            let entry = self.index.remove(id).expect("present");
            self.free.push(entry.pos);
        }
        self.pending.scrub.extend(slots.iter().map(|&s| (s, seq)));
        if let Err(e) = self.scrub_released() {
            tracing::warn!(
                "forget committed, but overwriting the forgotten records failed (retried before \
                 the next call; close and recovery rewrite them anyway): {e}"
            );
        }
        self.after_commit();
        Ok(())
    }

    /// Forgets every sample: afterwards the state dir is exactly a freshly created one. Runs
    /// whatever state the store is in and needs no free space (see the module docs).
    pub fn forget_all(&mut self) -> Result<()> {
        if !self.pending.forget_all {
            self.dir.rename(SAMPLES, SAMPLES_FORGOTTEN)?;
            if let Err(e) = self.dir.sync() {
                let undone = self
                    .dir
                    .rename(SAMPLES_FORGOTTEN, SAMPLES)
                    .and_then(|()| self.dir.sync());
                if let Err(u) = undone {
                    self.poison(format!("{e}; undoing the forget-all's rename failed: {u}"));
                }
                return Err(e);
            }
        }
        // Committed.
        self.index.clear();
        self.free.clear();
        self.slots = 0;
        self.journal = None;
        self.poisoned = None;
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

    /// After a commit: checkpoints the journal when it is due (maintenance).
    fn after_commit(&mut self) {
        let journal = self.journal();
        if journal.entries() < checkpoint_entries() && journal.len() < CHECKPOINT_BYTES {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::warn!("checkpointing the journal failed (retried after the next call): {e}");
        }
    }

    /// Replaces the journal by one that starts from the current slots (see the module docs).
    fn checkpoint(&mut self) -> Result<()> {
        let header = Header {
            extra: self.slots,
            seq: self.journal().next_seq(),
            ..self.header
        };
        let mut holes = self.free.clone();
        holes.sort_unstable();
        let written = Journal::create(&self.dir, JOURNAL_TMP, &header).and_then(|mut fresh| {
            if !holes.is_empty() {
                fresh.commit(&Op::Forget(holes))?;
            }
            self.dir.rename(JOURNAL_TMP, JOURNAL)?;
            Ok(fresh)
        });
        let mut fresh = match written {
            Ok(fresh) => fresh,
            Err(e) => {
                self.discard(&[JOURNAL_TMP]);
                return Err(e);
            }
        };
        fresh.renamed(self.dir.join(JOURNAL));
        let old = self.journal.replace(fresh).expect("begun");
        if let Err(e) = self.dir.sync() {
            // The new journal has the name; appending to it before the name is durable could
            // lose entries: the next change syncs the dir first.
            self.pending.sync_dir = true;
            return Err(e);
        }
        old.file().scrub_in_place()
    }

    /// Scrubs files a call wrote before failing; on failure they stay leftovers.
    fn discard(&mut self, names: &[&str]) {
        let done = names.iter().try_fold(false, |any, name| {
            self.dir.scrub(name).map(|scrubbed| any || scrubbed)
        });
        match done.and_then(|any| if any { self.dir.sync() } else { Ok(()) }) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!("removing the files of a failed call failed (retried later): {e}");
                self.pending.leftovers = true;
            }
        }
    }

    /// Reads the record of a live sample into `buf`, checking it.
    fn read_record(&self, id: u64, entry: Entry, buf: &mut [u8]) -> Result<()> {
        let rec = buf.len() as u64;
        self.samples.read_at(buf, offset(entry.pos, rec))?;
        match parse_record(buf, self.header.classes) {
            Ok(Slot::Live {
                id: found, label, ..
            }) if found == id && label == entry.label => Ok(()),
            found => Err(corrupt(
                self.dir.path(),
                SAMPLES,
                format!(
                    "slot {} should hold id {id}: {}",
                    entry.pos,
                    match found {
                        Err(m) => m,
                        Ok(_) => "it holds another sample".into(),
                    }
                ),
            )),
        }
    }

    /// Calls `f` with batches of rows (features k × d, targets k × C) of every live sample, in
    /// slot order, checking each record.
    pub fn for_each_batch(&self, f: &mut dyn FnMut(&[i32], &[i32])) -> Result<()> {
        let (d, c) = (self.header.dim, self.header.classes);
        let mut live: Vec<(u64, Entry)> = self.index.iter().collect();
        live.sort_unstable_by_key(|(_, e)| e.pos);
        let mut buf = Scratch::new(self.record_len() as usize);
        let mut q = Scratch::new(ROW_BATCH * d);
        let mut r = Scratch::new(ROW_BATCH * c);
        for batch in live.chunks(ROW_BATCH) {
            for (k, &(id, entry)) in batch.iter().enumerate() {
                self.read_record(id, entry, &mut buf)?;
                decode_rows(&buf, &mut q[k * d..(k + 1) * d], &mut r[k * c..(k + 1) * c]);
            }
            f(&q[..batch.len() * d], &r[..batch.len() * c]);
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
        if self.journal.is_none() {
            return Ok(());
        }
        self.compact(stats, solution)
    }

    /// Rewrites the state dir in its canonical form (see the module docs). On error nothing
    /// changed: the journal still describes the state dir.
    fn compact(&mut self, stats: &ExactStats, solution: &Solution) -> Result<()> {
        let (file, ids) = match self.write_compacted(stats, solution) {
            Ok(written) => written,
            Err(e) => {
                self.discard(&[SAMPLES_TMP, STATS_TMP]);
                return Err(e);
            }
        };
        if let Err(e) = self.dir.rename(STATS_TMP, STATS) {
            self.discard(&[SAMPLES_TMP, STATS_TMP]);
            return Err(e);
        }
        if let Err(e) = self.dir.sync() {
            // Whether the new stats.bin reached the disk is unknown: remove it, so that the
            // journal stays what the next open reads.
            match self.dir.scrub(STATS).and_then(|_| self.dir.sync()) {
                Ok(()) => self.discard(&[SAMPLES_TMP]),
                Err(u) => self.poison(format!("{e}; removing the new {STATS} failed: {u}")),
            }
            return Err(e);
        }
        // Committed: the dir is closed.
        self.samples = file;
        self.index.clear();
        for (slot, &(id, label)) in ids.iter().enumerate() {
            self.index.insert(
                id,
                Entry {
                    pos: slot as u64,
                    label,
                },
            );
        }
        self.free.clear();
        self.slots = ids.len() as u64;
        self.journal = None;
        self.pending.scrub.clear();
        self.pending.compaction = true;
        if let Err(e) = self.finish_compaction() {
            tracing::warn!(
                "state dir {}: compaction committed, but moving its files into place failed \
                 (retried before the next change and at the next open): {e}",
                self.dir.path().display()
            );
        }
        Ok(())
    }

    /// Writes and syncs `samples.bin.tmp` (returned, with the ids and labels in slot order)
    /// and `stats.bin.tmp`.
    fn write_compacted(
        &self,
        stats: &ExactStats,
        solution: &Solution,
    ) -> Result<(StoreFile, Vec<(u64, u32)>)> {
        let rec = self.record_len() as usize;
        let samples_header = encode_header(SAMPLES_MAGIC, &self.header);
        let mut digest = SamplesDigest::new(&samples_header);
        let tmp = self.dir.create_file(SAMPLES_TMP)?;
        tmp.write_at(&samples_header, 0)?;
        let ids = self.index.sorted_ids();
        let mut labels = Vec::with_capacity(ids.len());
        let mut buf = Scratch::new(SCAN_BATCH * rec);
        let mut at = HEADER_LEN as u64;
        for batch in ids.chunks(SCAN_BATCH) {
            for (k, &id) in batch.iter().enumerate() {
                let entry = self.index.get(id).expect("listed");
                let record = &mut buf[k * rec..(k + 1) * rec];
                self.read_record(id, entry, record)?;
                restamp(record, 0);
                digest.record(record);
                labels.push((id, entry.label));
            }
            let bytes = &buf[..batch.len() * rec];
            tmp.write_at(bytes, at)?;
            at += bytes.len() as u64;
        }
        drop(buf);
        tmp.sync()?;
        let stats_header = Header {
            extra: stats.n(),
            ..self.header
        };
        let stats_bytes = Scratch(encode_stats(
            &stats_header,
            stats,
            solution,
            digest.finish(),
        ));
        self.dir.write_new(STATS_TMP, &stats_bytes)?;
        Ok((tmp, labels))
    }

    /// After a compaction committed: moves `samples.bin.tmp` into place and scrubs the old
    /// samples and the journal (idempotent, by name).
    fn finish_compaction(&mut self) -> Result<()> {
        if self.dir.has(SAMPLES_TMP)? {
            self.dir.scrub(SAMPLES_OLD)?;
            if self.dir.has(SAMPLES)? {
                self.dir.rename(SAMPLES, SAMPLES_OLD)?;
            }
            self.dir.rename(SAMPLES_TMP, SAMPLES)?;
            self.samples.renamed(self.dir.join(SAMPLES));
            self.dir.sync()?;
        }
        self.dir.scrub(SAMPLES_OLD)?;
        self.dir.scrub(JOURNAL)?;
        self.dir.sync()?;
        self.pending.compaction = false;
        Ok(())
    }
}

/// Opens a file the state dir cannot be without.
fn open_part(dir: &Dir, name: &str) -> Result<StoreFile> {
    dir.open_file(name)?
        .ok_or_else(|| Error::state(dir.path(), format!("{name} is missing")))
}

/// Byte offset of a slot.
fn offset(slot: u64, rec: u64) -> u64 {
    HEADER_LEN as u64 + slot * rec
}

fn corrupt(dir: &Path, file: &str, message: impl std::fmt::Display) -> Error {
    Error::state(dir, format!("{file} is corrupt: {message}"))
}

/// Checks a compacted `samples.bin` against what `stats.bin` says (n samples, the digest) and
/// indexes it.
fn scan_closed(
    file: &StoreFile,
    header: &Header,
    n: u64,
    digest: u128,
) -> std::result::Result<SampleIndex, String> {
    let rec = record_len(header.dim, header.classes) as u64;
    let len = file.len().map_err(|e| e.to_string())?;
    let expected = offset(n, rec);
    if len != expected {
        return Err(format!(
            "{len} bytes, but {STATS} counts {n} samples ({expected} bytes)"
        ));
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_at(&mut head, 0).map_err(|e| e.to_string())?;
    if parse_header(&head, SAMPLES_MAGIC, header)? != *header {
        return Err("its header has a count or seq".into());
    }
    let mut sum = SamplesDigest::new(&head);
    let mut index = SampleIndex::new(header.classes);
    let mut buf = Scratch::new(SCAN_BATCH * rec as usize);
    let mut last = None;
    for first in (0..n).step_by(SCAN_BATCH) {
        let count = (n - first).min(SCAN_BATCH as u64) as usize;
        let bytes = &mut buf[..count * rec as usize];
        file.read_at(bytes, offset(first, rec))
            .map_err(|e| e.to_string())?;
        for (k, record) in bytes.chunks_exact(rec as usize).enumerate() {
            let slot = first + k as u64;
            let (id, label) = match parse_record(record, header.classes) {
                Ok(Slot::Live { id, seq: 0, label }) => (id, label),
                Ok(Slot::Live { seq, .. }) => {
                    return Err(format!("slot {slot} was written by journal entry {seq}"))
                }
                Ok(Slot::Free | Slot::Released { .. }) => {
                    return Err(format!("slot {slot} is empty"))
                }
                Err(m) => return Err(format!("slot {slot}: {m}")),
            };
            if last.is_some_and(|last| id <= last) {
                return Err(format!("slot {slot}: ids are not strictly increasing"));
            }
            last = Some(id);
            sum.record(record);
            index.insert(id, Entry { pos: slot, label });
        }
    }
    if sum.finish() != digest {
        return Err(format!("its content does not match the digest in {STATS}"));
    }
    Ok(index)
}

/// Which entry filled a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Before the journal started (the record's seq is below its first entry's).
    Before,
    Entry(u64),
}

impl Fill {
    fn describe(self) -> String {
        match self {
            Fill::Before => "one from before the journal".into(),
            Fill::Entry(seq) => format!("{seq}"),
        }
    }
}

/// The journal replayed.
struct Replayed {
    /// Live slot → the entry whose learn filled it.
    live: HashMap<u64, Fill>,
    /// Released slots (not filled again) → the entry that had filled them.
    released: HashMap<u64, Fill>,
    /// The journal's first seq.
    first: u64,
    /// The entry a call in flight would have had.
    next: u64,
}

impl Replayed {
    /// The last committed entry (`first - 1` when there is none).
    fn last(&self) -> u64 {
        self.next - 1
    }

    /// Whether a record written by entry `seq` is what `fill` put in a slot.
    fn filled_by(&self, fill: Fill, seq: u64) -> bool {
        match fill {
            Fill::Before => seq < self.first,
            Fill::Entry(by) => seq == by,
        }
    }

    /// Whether a record written by entry `seq` in the free `slot` is what a crash can leave:
    /// the call in flight's, or a released one not overwritten yet.
    fn stale(&self, slot: u64, seq: u64) -> bool {
        seq == self.next
            || self
                .released
                .get(&slot)
                .is_some_and(|&fill| self.filled_by(fill, seq))
    }
}

/// Replays the journal over a `samples.bin` of `slots` whole slots.
fn replay(parsed: &journal::Parsed, slots: u64) -> std::result::Result<Replayed, String> {
    let base = parsed.base;
    // Slots below `base` released since, and slots filled by an entry.
    let mut removed = HashSet::new();
    let mut added = HashMap::new();
    let mut released = HashMap::new();
    for (k, op) in parsed.ops.iter().enumerate() {
        let seq = parsed.first + k as u64;
        let bad = |what: &str, slot: u64| Err(format!("entry {seq}: {what} slot {slot}"));
        match op {
            Op::Learn(learned) => {
                for &s in learned {
                    let live = added.contains_key(&s) || (s < base && !removed.contains(&s));
                    if live {
                        return bad("learns into the live", s);
                    }
                    added.insert(s, seq);
                    released.remove(&s);
                }
            }
            Op::Forget(forgotten) => {
                for &s in forgotten {
                    let fill = match added.remove(&s) {
                        Some(by) => Fill::Entry(by),
                        None if s < base && removed.insert(s) => Fill::Before,
                        None => return bad("forgets the free", s),
                    };
                    released.insert(s, fill);
                }
            }
        }
    }
    if let Some(s) = added.keys().find(|&&s| s >= slots) {
        return Err(format!(
            "slot {s} is live but {SAMPLES} has only {slots} slots"
        ));
    }
    let removed_beyond = removed.iter().filter(|&&s| s >= slots).count() as u64;
    if removed_beyond != base.saturating_sub(slots) {
        return Err(format!(
            "slots up to {base} are live but {SAMPLES} has only {slots} slots"
        ));
    }
    let mut live: HashMap<u64, Fill> = (0..base.min(slots))
        .filter(|s| !removed.contains(s))
        .map(|s| (s, Fill::Before))
        .collect();
    live.extend(added.into_iter().map(|(s, by)| (s, Fill::Entry(by))));
    Ok(Replayed {
        live,
        released,
        first: parsed.first,
        next: parsed.first + parsed.ops.len() as u64,
    })
}

/// Checks that the state files belong with this `meta.json` (every header records its
/// checksum) before anything `meta.json` says is trusted, so that a modified `meta.json` is
/// reported as such.
fn check_tied(dir: &Dir, header: &Header) -> Result<()> {
    for (name, magic) in [
        (SAMPLES, SAMPLES_MAGIC),
        (STATS, STATS_MAGIC),
        (JOURNAL, JOURNAL_MAGIC),
    ] {
        if let Some(f) = dir.open_file(name)? {
            let mut head = [0u8; HEADER_LEN];
            let read = f.read_at(&mut head, 0).map(|_| head.as_slice());
            return parse_header(read.unwrap_or(&[]), magic, header)
                .map(drop)
                .map_err(|m| corrupt(dir.path(), name, m));
        }
    }
    Ok(())
}

/// Refuses a state dir in which one of Lethe's names is anything but a regular file with one
/// name owned by this user, before anything is read or written.
fn inspect(dir: &Dir) -> Result<()> {
    for name in NAMES {
        if let Some(Kind::Foreign(why)) = dir.kind(OsStr::new(name))? {
            return Err(io::refused(dir.path(), name, why));
        }
    }
    Ok(())
}

/// A dir without `meta.json` may become a state dir only when it holds nothing but the
/// leftovers of an interrupted creation (which hold no samples).
fn check_creatable(dir: &Dir) -> Result<()> {
    for name in dir.list()? {
        let len = match name.to_str() {
            Some(n @ (SAMPLES | JOURNAL)) => open_part(dir, n)?.len()?,
            _ => 0,
        };
        let leftover = match name.to_str() {
            Some(LOCK | META_TMP) => true,
            Some(SAMPLES | JOURNAL) => len <= HEADER_LEN as u64,
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

/// Scrubs what an interrupted call left behind, and syncs the dir if there was any. `closed`:
/// the dir has a valid `stats.bin`, so a journal is a leftover too.
fn tidy(dir: &Dir, closed: bool) -> Result<()> {
    let mut any = false;
    for name in LEFTOVERS.iter().chain(closed.then_some(&JOURNAL)) {
        any |= dir.scrub(name)?;
    }
    if any {
        dir.sync()?;
    }
    Ok(())
}

/// Creates the files of an empty state dir, `meta.json` aside: `samples.bin` (its header) and a
/// journal (base 0, first seq 1), synced (not the dir).
fn fresh_files(dir: &Dir, header: &Header) -> Result<(StoreFile, Journal)> {
    let samples = dir.write_new(SAMPLES, &encode_header(SAMPLES_MAGIC, header))?;
    let journal = Journal::create(dir, JOURNAL, &Header { seq: 1, ..*header })?;
    Ok((samples, journal))
}

/// Finishes a forget-all that committed (idempotent, by name): scrubs the forgotten samples in
/// place and frees their space, scrubs every other file but `meta.json`, creates fresh files,
/// then removes `samples.bin.forgotten`, the commit's evidence. Needs no free space: the fresh
/// files (two headers) are created after at least as much was freed.
fn finish_forget_all(dir: &Dir, header: &Header) -> Result<(StoreFile, Journal)> {
    if let Some(forgotten) = dir.open_file(SAMPLES_FORGOTTEN)? {
        forgotten.scrub_in_place()?;
    }
    for name in NAMES {
        if name != META && name != SAMPLES_FORGOTTEN {
            dir.scrub(name)?;
        }
    }
    let fresh = fresh_files(dir, header)?;
    dir.sync()?;
    if dir.has(SAMPLES_FORGOTTEN)? {
        dir.remove(OsStr::new(SAMPLES_FORGOTTEN))?;
        dir.sync()?;
    }
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

/// Erases the state dir `path` whatever its state: corrupt, unsolvable, of another format
/// version, left by a crash, or on a full disk. It needs no free space and parses nothing.
///
/// Every file with one of Lethe's names that is provably Lethe's (a regular file with one
/// name, owned by this user) is overwritten with zeros, synced, truncated and removed,
/// `meta.json` last; other entries with Lethe's names are removed without being written (links
/// are never followed); other names are left alone. Then the dir is removed if it is empty.
/// A dir that does not exist is nothing to erase.
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
    let lethe = |n: &OsStr| NAMES.iter().any(|&name| n == name);
    let foreign_names = names.iter().any(|n| !lethe(n));
    if foreign_names && !looks_like_a_state_dir(&dir)? {
        return Err(Error::state(
            path,
            "does not look like a state dir (no meta.json, no file of Lethe's, but other \
             files): nothing was erased",
        ));
    }
    let mut any = false;
    for name in NAMES {
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
            .filter(|n| !lethe(n))
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

const MAGICS: [&[u8; 8]; 3] = [SAMPLES_MAGIC, STATS_MAGIC, JOURNAL_MAGIC];

/// Whether the dir has `meta.json` or a file of Lethe's with its magic.
fn looks_like_a_state_dir(dir: &Dir) -> Result<bool> {
    if dir.has(META)? {
        return Ok(true);
    }
    for name in NAMES {
        if dir.kind(OsStr::new(name))? != Some(Kind::Own) {
            continue;
        }
        let Some(f) = dir.open_file(name)? else {
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
