//! Compaction: close, a checkpoint and rekey write new versions of the bucket files (and
//! `stats.bin`) and commit them by renaming the journal (see `store`'s "Commit points").

use std::collections::{BTreeMap, BTreeSet};

use xxhash_rust::xxh3::xxh3_128;

use crate::error::{Error, Result};
use crate::math::samples::Entry;
use crate::math::stats::ExactStats;

use super::format::{
    bucket_index_ad, bucket_name, bucket_of, encode_bucket_head, encode_ids, encode_payload,
    encode_stats, payload_len, record_ad, stats_checksum, BucketRef, Header, Version, BUCKET_BODY,
    JOURNAL, JOURNAL_TMP, STATS, STATS_TMP,
};
use super::io::{sync_all, StoreFile};
use super::journal::{Base, Journal, Keys};
use super::seal::Sealer;
use super::{bucket_loc, new_salt, open_part, split_loc, OpenPart, Scratch, Store, IN_JOURNAL};

impl Store {
    /// Persists the canonical state (see the module docs) and releases the state dir.
    /// `stats` must be the head's current statistics. An error means the dir is left open
    /// (with its journal), and the next open recovers exactly these samples.
    pub fn close(mut self, stats: &ExactStats) -> Result<()> {
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
        self.compact(Some(stats))
    }

    /// Erases the state dir (see [`super::erase`]) while this store still holds its lock, so
    /// that no other head or process can open it in between.
    pub fn erase(self) -> Result<super::ErasedReport> {
        super::erase::erase_locked(&self.dir, self.dir.path())
    }

    /// Rewrites the state dir in its canonical form, unless it is in it (see the module docs).
    /// On error nothing changed: the journal still describes the state dir.
    pub(super) fn compact(&mut self, stats: Option<&ExactStats>) -> Result<()> {
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
        self.rewrite(&touched, sealer, keys, stats)
    }

    /// Rewrites the `touched` buckets (every record sealed by `sealer`), and `stats.bin` when
    /// `stats` is given, and commits a new journal naming them, with `keys` (see the
    /// module docs: close, checkpoint, rekey).
    pub(super) fn rewrite(
        &mut self,
        touched: &BTreeSet<usize>,
        sealer: Sealer,
        keys: Option<Keys>,
        stats: Option<&ExactStats>,
    ) -> Result<()> {
        let written = self.write_rewritten(touched, &sealer, keys.as_ref(), stats);
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

    /// Writes the new bucket files, `stats.bin.tmp` (given `stats`) and `journal.tmp`,
    /// each synced. Returns the buckets, the new base's parent and the new journal.
    pub(super) fn write_rewritten(
        &self,
        touched: &BTreeSet<usize>,
        sealer: &Sealer,
        keys: Option<&Keys>,
        stats: Option<&ExactStats>,
    ) -> Result<(Vec<Rewritten>, u128, Journal)> {
        let mut members: BTreeMap<usize, Vec<(u64, Entry)>> =
            touched.iter().map(|&b| (b, Vec::new())).collect();
        for (id, e) in self.index.iter() {
            if let Some(m) = members.get_mut(&bucket_of(id)) {
                m.push((id, e));
            }
        }
        // Synced SYNC_BATCH files at a time, together (few descriptors open at once).
        let mut rewritten = Vec::with_capacity(members.len());
        let mut unsynced = Vec::with_capacity(SYNC_BATCH);
        for (b, mut m) in members {
            m.sort_unstable_by_key(|&(id, _)| id);
            let (w, file) = self.write_bucket(b, &m, sealer)?;
            rewritten.push(w);
            unsynced.extend(file);
            if unsynced.len() == SYNC_BATCH {
                sync_all(&std::mem::take(&mut unsynced))?;
            }
        }
        let mut parent = 0;
        if let Some(stats) = stats {
            let header = Header {
                extra: stats.n(),
                ..self.header
            };
            let bytes = encode_stats(sealer, &header, stats);
            parent = stats_checksum(&bytes).expect("a whole file");
            unsynced.push(self.dir.write_unsynced(STATS_TMP, &bytes)?);
        }
        sync_all(&unsynced)?;
        drop(unsynced);
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

    /// Writes the new version of bucket `b` holding `members` (sorted by id); returns it with
    /// its file, not synced (`None` when the bucket is now empty).
    pub(super) fn write_bucket(
        &self,
        b: usize,
        members: &[(u64, Entry)],
        sealer: &Sealer,
    ) -> Result<(Rewritten, Option<StoreFile>)> {
        if members.is_empty() {
            let gone = Rewritten {
                bucket: b,
                file: None,
                moved: Vec::new(),
            };
            return Ok((gone, None));
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
        // Read in location order (the bucket's old file, then the journal), each into its place.
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_unstable_by_key(|&i| members[i].1.pos);
        let mut part = OpenPart::default();
        let mut buf = self.record_buf();
        for i in order {
            let (id, e) = members[i];
            self.read_record(&mut part, &mut buf, id, e, &mut q, &mut r)?;
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
        let written = Rewritten {
            bucket: b,
            file: Some(r),
            moved: ids
                .iter()
                .enumerate()
                .map(|(i, &(id, _))| (id, i as u64))
                .collect(),
        };
        Ok((written, Some(f)))
    }

    /// After a rewrite committed: scrubs each replaced bucket file and moves the new one into
    /// place, and moves `stats.bin.tmp` into place or (`drop_stats`: the base names none)
    /// scrubs `stats.bin`.
    pub(super) fn finish_rewrite(
        &mut self,
        rewritten: &[Rewritten],
        drop_stats: bool,
    ) -> Result<()> {
        for batch in rewritten.chunks(SYNC_BATCH) {
            let replaced: Vec<String> = batch
                .iter()
                .map(|w| bucket_name(w.bucket, Version::Current))
                .collect();
            self.dir.scrub_all(&replaced)?;
            for w in batch.iter().filter(|w| w.file.is_some()) {
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
    pub(super) fn discard(&mut self, touched: &BTreeSet<usize>) {
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

/// The most new files a rewrite keeps open, written but not yet synced.
const SYNC_BATCH: usize = 16;

/// A bucket file rewritten by a compaction (`.tmp`, synced), or `None`: the bucket is empty.
pub(super) struct Rewritten {
    bucket: usize,
    file: Option<BucketRef>,
    /// id → position in the new file.
    moved: Vec<(u64, u64)>,
}
