//! The state dir: where one head persists, atomically, durably, scrubbed and
//! history-independently (DESIGN.md G2–G5).
//!
//! # Files
//! All integers are little-endian; every binary file starts with a 64-byte header (magic,
//! format version, d, C, the xxh3-64 of `meta.json`, one file-specific word, and an xxh3-64 of
//! the header), so a file from another head or a damaged header is detected at once.
//! - `meta.json`: format, version, the bundle's name and core sha256, and the head's spec.
//!   Written once, when the state dir is created; its checksum is in every other header.
//! - `samples.bin`: the header, then one fixed-size slot per sample:
//!   `id:u64 seq:u64 label:u32 0:u32 q:[i32; d] r:[i32; C] xxh3-64(record):u64`, where `seq`
//!   is the journal entry of the learn that wrote the record (0 once compacted). A free slot is
//!   all zeros. While the head is open, learn fills free slots (or appends) and forget zeroes
//!   slots in place; a closed state dir holds exactly the live samples, sorted by id.
//! - `stats.bin` (only while closed): the exact statistics A and B (i128), the canonical
//!   Cholesky factor L and weights Θ (f64), a digest of `samples.bin` (xxh3-128 over its header
//!   and its records' checksums) and an xxh3-128 of the whole file. It makes opening cheap: no
//!   O(n·d²) recomputation and no O(p³) factorization.
//! - `journal` (only while open, or after a crash): the commit log of changes since the state
//!   dir was last compacted, slot numbers only: no sample bytes, no ids (format in
//!   `src/store/journal.rs`). It grows by 64 + 16·k bytes per call of k samples until the next
//!   close.
//! - `lock`: an empty file, locked (`flock`) while a head has the state dir open.
//!
//! The dir is created 0700 and its files 0600. A closed state dir is a pure function of its
//! sample set (G2): `samples.bin` holds the live records in id order, `stats.bin` the exact sums
//! and the canonical solution, and no file's size depends on how many samples there once were.
//!
//! # Protocol
//! One sync of the journal commits each call (G3); sample bytes are zeroed in place before a
//! forget returns (G4):
//! - first change after opening a closed dir: create the journal (base = the slot count) and
//!   sync it and the dir; then retire `stats.bin`, whose sums depend on every sample: rename it
//!   to `stats.bin.old`, sync the dir, zero it, sync, remove it, sync the dir.
//! - learn: write the records into free slots, sync `samples.bin`; append the entry, sync
//!   (commit).
//! - forget: read and check the records; append the entry, sync (commit); zero the records,
//!   sync `samples.bin`; return.
//! - forget-all: append the entry, sync (commit); zero every record, sync; truncate
//!   `samples.bin` to its header, sync; replace the journal by a fresh one (base 0) through
//!   `journal.tmp` and a rename. The state dir is then exactly a freshly created one.
//! - close (compaction): write `samples.bin.tmp` (the live records sorted by id; never a
//!   forgotten one) and `stats.bin.tmp`, sync both; hard-link `samples.bin` to
//!   `samples.bin.old` and sync the dir, so the old copy keeps a name until it is scrubbed;
//!   rename `stats.bin.tmp` to `stats.bin`, sync the dir (commit: the dir is closed); rename
//!   `samples.bin.tmp` to `samples.bin`, sync the dir; zero the old copy, sync, remove its
//!   name; zero and remove the journal; sync the dir.
//!
//! Any I/O error during a change leaves the store refusing further changes until it is
//! reopened (after a failed sync the kernel's view of the file can no longer be trusted, and the
//! change may or may not be committed); the head keeps serving the state before the call, and
//! the next open recovers exactly the committed state.
//!
//! # Opening and recovery
//! - With `stats.bin`: the dir was closed (or a close had committed). `stats.bin` and
//!   `samples.bin` are checked completely (every record's checksum, ids strictly increasing,
//!   the digest, the sizes); a `samples.bin.tmp` that matches the digest is renamed into place
//!   (a close that crashed after its commit). Leftover files are scrubbed. Cost: one pass over
//!   `samples.bin` (xxh3 runs at memory speed) and a read of `stats.bin`; rows stay on disk,
//!   only an index id → (slot, label) is kept in memory.
//! - Without `stats.bin`: a crash while open. Replay the journal from its base (slots
//!   `0..base` live; learn adds slots, forget removes them, forget-all clears them); a torn
//!   last entry is not committed. Every live slot must hold a valid record with a distinct id,
//!   written by the entry that made the slot live. A free slot that is not zero must be what a
//!   crash can leave there: a record of the call in flight (seq = the next entry), torn or
//!   whole, or a record the last entry released before its zeroing finished; it is zeroed and
//!   synced. Anything else means a damaged or cut journal. Then the statistics are recomputed
//!   (reporting progress as `tracing` events) and the dir is compacted as by close.
//!
//! Every inconsistency is an [`Error::State`] that names the file; nothing is ever repaired by
//! dropping samples.
//!
//! `src/store/tests.rs` makes every step of every call fail, crash, or lose power (see
//! `src/store/io.rs`), and checks that reopening gives exactly the state before or after.
//!
//! # Not covered
//! Checksums detect corruption and accidental modification; they are not a MAC: whoever can
//! write the state dir can also rewrite it consistently. A journal cut exactly after an entry,
//! with a learn as the only entry lost, looks like a crash before that learn was committed and
//! recovers without it (any other lost entry is detected). Zeroing overwrites the file's blocks
//! as the file system sees them; on copy-on-write file systems (btrfs, ZFS, APFS) and behind a
//! flash translation layer the old physical copy may survive until reused, which only
//! full-disk encryption addresses.
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
use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;
use zeroize::{DefaultIsZeroes, Zeroize};

use crate::error::{Error, Result};
use crate::math::samples::{Entry, SampleIndex, SampleRef};
use crate::math::solver::{self, Solution};
use crate::math::spec::HeadSpec;
use crate::math::stats::ExactStats;
use format::{
    decode_rows, encode_header, encode_record, encode_stats, parse_header, parse_record,
    parse_stats, record_len, restamp, Header, Meta, SamplesDigest, Slot, HEADER_LEN, SAMPLES_MAGIC,
};
use io::StoreFile;
use journal::{Journal, Op};

const META: &str = "meta.json";
const META_TMP: &str = "meta.json.tmp";
const SAMPLES: &str = "samples.bin";
const SAMPLES_TMP: &str = "samples.bin.tmp";
const SAMPLES_OLD: &str = "samples.bin.old";
const STATS: &str = "stats.bin";
const STATS_TMP: &str = "stats.bin.tmp";
const STATS_OLD: &str = "stats.bin.old";
const JOURNAL: &str = "journal";
const JOURNAL_TMP: &str = "journal.tmp";
const LOCK: &str = "lock";
/// Records per read when scanning `samples.bin`.
const SCAN_BATCH: usize = 256;
/// Records per batch handed to a caller of [`Store::for_each_batch`].
const ROW_BATCH: usize = 1024;

/// What an existing state dir held besides its samples.
pub struct Loaded {
    pub stats: ExactStats,
    /// The canonical solution for `stats`.
    pub solution: Solution,
}

/// An open state dir: the index of its samples in memory, their rows in `samples.bin`.
pub struct Store {
    dir: PathBuf,
    spec: HeadSpec,
    /// What every header of this state dir says (`extra` = 0).
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
    /// Why changes are refused (an I/O error during an earlier change).
    poisoned: Option<String>,
    _lock: File,
}

impl Store {
    /// Opens the state dir for a head over the bundle with this core sha256, creating it with
    /// the `requested` spec when `create` allows and `dir` is not a state dir yet. An existing
    /// dir keeps the spec it was created with. Returns what it held, or `None` when it was
    /// created.
    pub fn open(
        dir: &Path,
        bundle_name: &str,
        core_sha256: &str,
        requested: &HeadSpec,
        create: bool,
    ) -> Result<(Store, Option<Loaded>)> {
        if !create && !dir.join(META).is_file() {
            return Err(Error::state(
                dir,
                format!("is not a state dir (it has no {META}); only a learn creates one"),
            ));
        }
        prepare_dir(dir)?;
        let meta_path = dir.join(META);
        if !meta_path.exists() {
            check_creatable(dir)?;
        }
        let lock = lock(dir)?;
        if !meta_path.exists() {
            check_creatable(dir)?;
            let store = Store::create(dir, bundle_name, core_sha256, requested, lock)?;
            return Ok((store, None));
        }
        let meta_bytes = fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let meta = Meta::parse(&meta_bytes).map_err(|m| corrupt(dir, META, m))?;
        let spec = meta.head.clone();
        let header = Header {
            dim: spec.dim,
            classes: spec.num_classes(),
            meta: xxh3_64(&meta_bytes),
            extra: 0,
        };
        // Every file records meta.json's checksum: check it before trusting what meta.json says.
        let mut head = [0u8; HEADER_LEN];
        let samples = open_part(dir, SAMPLES)?;
        let read = samples.read_at(&mut head, 0).map(|_| head.as_slice());
        parse_header(read.unwrap_or(&[]), SAMPLES_MAGIC, &header)
            .map_err(|m| corrupt(dir, SAMPLES, m))?;
        drop(samples);
        if meta.core_sha256 != core_sha256 || meta.bundle_name != bundle_name {
            return Err(Error::state(
                dir,
                format!(
                    "belongs to bundle {:?} (core sha256 {}), not to {bundle_name:?} (core sha256 \
                     {core_sha256})",
                    meta.bundle_name, meta.core_sha256
                ),
            ));
        }
        if dir.join(STATS).exists() {
            Store::open_closed(dir, spec, header, lock)
        } else {
            Store::recover(dir, spec, header, lock)
        }
        .map(|(store, loaded)| (store, Some(loaded)))
    }

    fn create(
        dir: &Path,
        bundle_name: &str,
        core_sha256: &str,
        spec: &HeadSpec,
        lock: File,
    ) -> Result<Store> {
        let meta_bytes = Meta::new(bundle_name, core_sha256, spec).encode();
        Meta::parse(&meta_bytes).map_err(|m| {
            Error::InvalidInput(format!("cannot create a state dir for this head: {m}"))
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, e))?;
        let header = Header {
            dim: spec.dim,
            classes: spec.num_classes(),
            meta: xxh3_64(&meta_bytes),
            extra: 0,
        };
        // Leftovers of an interrupted creation hold no samples: they are overwritten.
        let samples = write_new(&dir.join(SAMPLES), &encode_header(SAMPLES_MAGIC, &header))?;
        let journal = Journal::create(&dir.join(JOURNAL), &header)?;
        write_new(&dir.join(META_TMP), &meta_bytes)?;
        io::rename(&dir.join(META_TMP), &dir.join(META))?;
        io::sync_dir(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            spec: spec.clone(),
            header,
            samples,
            index: SampleIndex::new(spec.num_classes()),
            free: Vec::new(),
            slots: 0,
            journal: Some(journal),
            poisoned: None,
            _lock: lock,
        })
    }

    /// Opens a state dir that has `stats.bin` (closed, or a close had committed).
    fn open_closed(
        dir: &Path,
        spec: HeadSpec,
        header: Header,
        lock: File,
    ) -> Result<(Store, Loaded)> {
        let stats_bytes = Scratch(StoreFile::open(&dir.join(STATS))?.read_all()?);
        let stored = parse_stats(&stats_bytes, &header, spec.fixed.one())
            .map_err(|m| corrupt(dir, STATS, m))?;
        let n = stored.stats.n();
        let tmp = dir.join(SAMPLES_TMP);
        let rolled = match tmp.exists() {
            true => StoreFile::open(&tmp)
                .ok()
                .and_then(|f| scan_closed(&f, &header, n, stored.samples_digest).ok()),
            false => None,
        };
        let index = match rolled {
            Some(index) => {
                io::rename(&tmp, &dir.join(SAMPLES))?;
                io::sync_dir(dir)?;
                index
            }
            None => {
                let f = StoreFile::open(&dir.join(SAMPLES))?;
                scan_closed(&f, &header, n, stored.samples_digest)
                    .map_err(|m| corrupt(dir, SAMPLES, m))?
            }
        };
        let samples = StoreFile::open(&dir.join(SAMPLES))?;
        tidy(dir, &samples, true)?;
        let store = Store {
            dir: dir.to_path_buf(),
            spec,
            header,
            samples,
            index,
            free: Vec::new(),
            slots: n,
            journal: None,
            poisoned: None,
            _lock: lock,
        };
        let loaded = Loaded {
            stats: stored.stats,
            solution: stored.solution,
        };
        Ok((store, loaded))
    }

    /// Recovers a state dir that was open when its process died: replays the journal, scrubs
    /// what is not committed, recomputes the statistics and compacts.
    fn recover(dir: &Path, spec: HeadSpec, header: Header, lock: File) -> Result<(Store, Loaded)> {
        let journal_path = dir.join(JOURNAL);
        if !journal_path.exists() {
            return Err(Error::state(
                dir,
                format!("has neither {STATS} nor {JOURNAL}: it is incomplete or was damaged"),
            ));
        }
        let journal_bytes = StoreFile::open(&journal_path)?.read_all()?;
        let parsed =
            journal::parse(&journal_bytes, &header).map_err(|m| corrupt(dir, JOURNAL, m))?;
        if let Some(note) = &parsed.tail_note {
            tracing::warn!("state dir {}: {JOURNAL}: {note}", dir.display());
        }
        // Its header was checked by `open`.
        let samples = StoreFile::open(&dir.join(SAMPLES))?;
        let len = samples.len()?.max(HEADER_LEN as u64);
        let rec = record_len(header.dim, header.classes) as u64;
        let slots = (len - HEADER_LEN as u64) / rec;
        let replayed = replay(&parsed, slots).map_err(|m| corrupt(dir, JOURNAL, m))?;
        tracing::info!(
            "state dir {} was not closed cleanly: recovering {} samples",
            dir.display(),
            replayed.live.len()
        );

        let mut index = SampleIndex::new(header.classes);
        let mut stale = Vec::new();
        let mut buf = Scratch::new(SCAN_BATCH * rec as usize);
        for first in (0..slots).step_by(SCAN_BATCH) {
            let count = (slots - first).min(SCAN_BATCH as u64) as usize;
            let bytes = &mut buf[..count * rec as usize];
            samples.read_at(bytes, offset(first, rec))?;
            for (k, record) in bytes.chunks_exact(rec as usize).enumerate() {
                let slot = first + k as u64;
                match (
                    replayed.live.get(&slot),
                    parse_record(record, header.classes),
                ) {
                    (Some(&by), Ok(Slot::Live { id, seq, label })) if seq == by => {
                        if index.contains(id) {
                            return Err(corrupt(dir, SAMPLES, format!("id {id} is stored twice")));
                        }
                        index.insert(id, Entry { pos: slot, label });
                    }
                    (Some(&by), found) => {
                        let what = match found {
                            Ok(Slot::Live { seq, .. }) => format!(
                                "it holds a sample written by entry {seq} of the {JOURNAL}, not \
                                 {by} (0: before the {JOURNAL}); the {JOURNAL} was cut or damaged"
                            ),
                            Ok(Slot::Free) => "it is empty".into(),
                            Err(m) => m,
                        };
                        return Err(corrupt(
                            dir,
                            SAMPLES,
                            format!("slot {slot} is live in the {JOURNAL}, but {what}"),
                        ));
                    }
                    (None, Ok(Slot::Free)) => {}
                    // What a crash can leave in a free slot: a record of the call in flight
                    // (whole or torn), or one the last call released but had not zeroed yet.
                    (None, Err(_)) => stale.push(slot),
                    (None, Ok(Slot::Live { seq, .. }))
                        if seq == replayed.next || replayed.released(slot) =>
                    {
                        stale.push(slot)
                    }
                    (None, Ok(Slot::Live { seq, .. })) => {
                        return Err(corrupt(
                            dir,
                            JOURNAL,
                            format!(
                                "{SAMPLES} slot {slot} holds a sample written by entry {seq}, \
                                 which the {JOURNAL} does not account for: it was cut or damaged"
                            ),
                        ));
                    }
                }
            }
        }
        drop(buf);
        // Scrub what is not committed: uncommitted learns, committed forgets not zeroed yet,
        // and a record torn at the end of the file.
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
        tidy(dir, &samples, false)?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            spec,
            header,
            samples,
            index,
            free: Vec::new(),
            slots,
            journal: None,
            poisoned: None,
            _lock: lock,
        };
        let stats = store.recompute_stats()?;
        let solution = solver::canonical(&stats, store.spec.lambda, store.spec.fixed.frac_bits)
            .map_err(|_| {
                Error::Limit(format!(
                    "A is not numerically positive definite at λ = {}; increase lambda",
                    store.spec.lambda
                ))
            })?;
        store.compact(&stats, &solution)?;
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

    /// Runs the disk part of a change; an error in it refuses later changes (see the module
    /// docs).
    fn guarded(&mut self, change: impl FnOnce(&mut Store) -> Result<()>) -> Result<()> {
        if let Some(reason) = &self.poisoned {
            return Err(Error::state(
                &self.dir,
                format!(
                    "refusing changes after an earlier write failed ({reason}); close and reopen \
                     the head to recover the state dir"
                ),
            ));
        }
        change(self).inspect_err(|e| self.poisoned = Some(e.to_string()))
    }

    /// Before the first change after opening a closed state dir: start the journal and retire
    /// `stats.bin`.
    fn begin(&mut self) -> Result<()> {
        if self.journal.is_some() {
            return Ok(());
        }
        let header = Header {
            extra: self.slots,
            ..self.header
        };
        let journal = Journal::create(&self.dir.join(JOURNAL), &header)?;
        io::sync_dir(&self.dir)?;
        io::rename(&self.dir.join(STATS), &self.dir.join(STATS_OLD))?;
        io::sync_dir(&self.dir)?;
        io::scrub(&self.dir.join(STATS_OLD))?;
        io::sync_dir(&self.dir)?;
        self.journal = Some(journal);
        Ok(())
    }

    /// Stores new samples (ids checked absent by the caller) durably.
    pub fn learn(&mut self, samples: &[SampleRef<'_>]) -> Result<()> {
        let rec = self.record_len();
        let reused = samples.len().min(self.free.len());
        let mut slots: Vec<u64> = self.free.iter().rev().take(reused).copied().collect();
        slots.extend(self.slots..self.slots + (samples.len() - reused) as u64);
        self.guarded(|st| {
            st.begin()?;
            let seq = st.journal.as_ref().expect("begun").next_seq();
            let mut buf = Scratch::new(rec as usize);
            for (s, &slot) in samples.iter().zip(&slots) {
                encode_record(s, seq, &mut buf);
                st.samples.write_at(&buf, offset(slot, rec))?;
            }
            st.samples.sync()?;
            st.journal
                .as_mut()
                .expect("begun")
                .commit(&Op::Learn(slots.clone()))
        })?;
        self.free.truncate(self.free.len() - reused);
        self.slots += (samples.len() - reused) as u64;
        for (s, &slot) in samples.iter().zip(&slots) {
            self.index.insert(
                s.id,
                Entry {
                    pos: slot,
                    label: s.label,
                },
            );
        }
        Ok(())
    }

    /// Forgets present, distinct ids: appends their features to `q` and targets to `r`, and
    /// zeroes their records durably before returning.
    pub fn forget(&mut self, ids: &[u64], q: &mut Vec<i32>, r: &mut Vec<i32>) -> Result<()> {
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
        self.guarded(|st| {
            st.begin()?;
            st.journal
                .as_mut()
                .expect("begun")
                .commit(&Op::Forget(slots.clone()))?;
            let zeros = vec![0u8; rec as usize];
            for &slot in &slots {
                st.samples.write_at(&zeros, offset(slot, rec))?;
            }
            st.samples.sync()
        })?;
        for &id in ids {
            let entry = self.index.remove(id).expect("present");
            self.free.push(entry.pos);
        }
        Ok(())
    }

    /// Forgets every sample: afterwards the state dir is exactly a freshly created one.
    pub fn forget_all(&mut self) -> Result<()> {
        self.guarded(|st| {
            st.begin()?;
            st.journal.as_mut().expect("begun").commit(&Op::ForgetAll)?;
            st.samples.zero_from(HEADER_LEN as u64)?;
            st.samples.sync()?;
            st.samples.set_len(HEADER_LEN as u64)?;
            st.samples.sync()?;
            let (tmp, path) = (st.dir.join(JOURNAL_TMP), st.dir.join(JOURNAL));
            let mut fresh = Journal::create(&tmp, &st.header)?;
            io::rename(&tmp, &path)?;
            fresh.renamed(&path);
            io::sync_dir(&st.dir)?;
            let old = st.journal.replace(fresh).expect("begun");
            old.file().zero_from(0)?;
            old.file().sync()
        })?;
        self.index.clear();
        self.free.clear();
        self.slots = 0;
        Ok(())
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
                &self.dir,
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
    /// `stats` and `solution` must be the head's current, canonical ones.
    pub fn close(mut self, stats: &ExactStats, solution: &Solution) -> Result<()> {
        if let Some(reason) = &self.poisoned {
            return Err(Error::state(
                &self.dir,
                format!(
                    "was not closed cleanly because an earlier write failed ({reason}); the next \
                     open recovers it"
                ),
            ));
        }
        if self.journal.is_none() {
            return Ok(());
        }
        self.compact(stats, solution)
    }

    /// Rewrites the state dir in its canonical form (see the module docs).
    fn compact(&mut self, stats: &ExactStats, solution: &Solution) -> Result<()> {
        let dir = self.dir.clone();
        let rec = self.record_len() as usize;
        let samples_header = encode_header(SAMPLES_MAGIC, &self.header);
        let mut digest = SamplesDigest::new(&samples_header);
        let mut tmp = StoreFile::create(&dir.join(SAMPLES_TMP))?;
        tmp.write_at(&samples_header, 0)?;
        let ids = self.index.sorted_ids();
        let mut buf = Scratch::new(SCAN_BATCH * rec);
        let mut at = HEADER_LEN as u64;
        for batch in ids.chunks(SCAN_BATCH) {
            for (k, &id) in batch.iter().enumerate() {
                let entry = self.index.get(id).expect("listed");
                let record = &mut buf[k * rec..(k + 1) * rec];
                self.read_record(id, entry, record)?;
                restamp(record, 0);
                digest.record(record);
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
        write_new(&dir.join(STATS_TMP), &stats_bytes)?;
        io::link(&dir.join(SAMPLES), &dir.join(SAMPLES_OLD))?;
        io::sync_dir(&dir)?;
        io::rename(&dir.join(STATS_TMP), &dir.join(STATS))?;
        io::sync_dir(&dir)?;
        io::rename(&dir.join(SAMPLES_TMP), &dir.join(SAMPLES))?;
        tmp.renamed(&dir.join(SAMPLES));
        io::sync_dir(&dir)?;
        self.samples.zero_from(0)?;
        self.samples.sync()?;
        io::remove(&dir.join(SAMPLES_OLD))?;
        io::scrub(&dir.join(JOURNAL))?;
        io::sync_dir(&dir)?;
        self.samples = tmp;
        for (slot, &id) in ids.iter().enumerate() {
            let label = self.index.remove(id).expect("listed").label;
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
        Ok(())
    }
}

/// Opens a file the state dir cannot be without.
fn open_part(dir: &Path, name: &str) -> Result<StoreFile> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(Error::state(dir, format!("{name} is missing")));
    }
    StoreFile::open(&path)
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
    parse_header(&head, SAMPLES_MAGIC, header)?;
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
                Ok(Slot::Free) => return Err(format!("slot {slot} is empty")),
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

/// The journal replayed.
struct Replayed {
    /// Live slot → the entry whose learn filled it (0: before the journal).
    live: HashMap<u64, u64>,
    /// The entry a call in flight would have had.
    next: u64,
    /// The slots the last entry released (its zeroing may not have finished).
    last_released: Released,
}

enum Released {
    Slots(HashSet<u64>),
    All,
}

impl Replayed {
    fn released(&self, slot: u64) -> bool {
        match &self.last_released {
            Released::Slots(slots) => slots.contains(&slot),
            Released::All => true,
        }
    }
}

/// Replays the journal over a `samples.bin` of `slots` whole slots.
fn replay(parsed: &journal::Parsed, slots: u64) -> std::result::Result<Replayed, String> {
    let mut base = parsed.base;
    // Slots below `base` released since, and slots filled by an entry.
    let mut removed = HashSet::new();
    let mut added = HashMap::new();
    let mut last_released = Released::Slots(HashSet::new());
    for (k, op) in parsed.ops.iter().enumerate() {
        let seq = k as u64 + 1;
        let bad = |what: &str, slot: u64| Err(format!("entry {seq}: {what} slot {slot}"));
        let mut released = HashSet::new();
        match op {
            Op::Learn(learned) => {
                for &s in learned {
                    let live = added.contains_key(&s) || (s < base && !removed.contains(&s));
                    if live {
                        return bad("learns into the live", s);
                    }
                    added.insert(s, seq);
                }
            }
            Op::Forget(forgotten) => {
                for &s in forgotten {
                    if added.remove(&s).is_none() && (s >= base || !removed.insert(s)) {
                        return bad("forgets the free", s);
                    }
                    released.insert(s);
                }
            }
            Op::ForgetAll => {
                base = 0;
                removed.clear();
                added.clear();
            }
        }
        last_released = match op {
            Op::ForgetAll => Released::All,
            _ => Released::Slots(released),
        };
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
    let mut live: HashMap<u64, u64> = (0..base.min(slots))
        .filter(|s| !removed.contains(s))
        .map(|s| (s, 0))
        .collect();
    live.extend(added);
    Ok(Replayed {
        live,
        next: parsed.ops.len() as u64 + 1,
        last_released,
    })
}

/// Creates `dir` (0700) if needed.
fn prepare_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
    }
    if !dir.is_dir() {
        return Err(Error::state(dir, "is not a directory"));
    }
    Ok(())
}

/// A dir without `meta.json` may become a state dir only when it holds nothing but the
/// leftovers of an interrupted creation (which hold no samples).
fn check_creatable(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let len = entry.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        let leftover = match name.to_str() {
            Some(LOCK | META_TMP) => true,
            Some(SAMPLES | JOURNAL) => len <= HEADER_LEN as u64,
            _ => false,
        };
        if !leftover {
            return Err(Error::state(
                dir,
                format!(
                    "has no {META} but holds {name:?}: it is not a state dir (or a damaged one); \
                     refusing to create one over it"
                ),
            ));
        }
    }
    Ok(())
}

/// Takes the state dir's lock: one head, in one process, at a time.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::state(
            dir,
            "is open in another process or head (its lock file is held)",
        )),
        Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Creates `path` with `bytes` and syncs it (not the dir).
fn write_new(path: &Path, bytes: &[u8]) -> Result<StoreFile> {
    let f = StoreFile::create(path)?;
    f.write_at(bytes, 0)?;
    f.sync()?;
    Ok(f)
}

/// Scrubs what an interrupted close, retirement or creation left behind. `clean`: the dir has
/// a valid `stats.bin`, so a journal is a leftover too.
fn tidy(dir: &Path, samples: &StoreFile, clean: bool) -> Result<()> {
    let mut names = vec![SAMPLES_TMP, STATS_TMP, STATS_OLD, META_TMP, JOURNAL_TMP];
    if clean {
        names.push(JOURNAL);
    }
    let mut changed = false;
    for name in names {
        let path = dir.join(name);
        if path.exists() {
            io::scrub(&path)?;
            changed = true;
        }
    }
    let old = dir.join(SAMPLES_OLD);
    if old.exists() {
        // Before a close commits, the old name is a second link to `samples.bin` itself.
        if samples.is(&old) {
            io::remove(&old)?;
        } else {
            io::scrub(&old)?;
        }
        changed = true;
    }
    if changed {
        io::sync_dir(dir)?;
    }
    Ok(())
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
    let path = dir.join(META);
    let opened = OpenOptions::new()
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
