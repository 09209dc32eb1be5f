//! Opening a state dir and recovering it after a crash (see the module docs of `store`:
//! "Opening and recovery").

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::error::{Error, Result};
use crate::math::samples::{Entry, SampleIndex};
use crate::math::solver;
use crate::math::spec::HeadSpec;
use crate::math::stats::ExactStats;

use super::format::{
    bucket_index_ad, bucket_name, bucket_of, bucket_record_at, decode_ids, is_lethe_name,
    parse_bucket_name, parse_stats, payload_len, stats_checksum, BucketRef, Header, Meta, Version,
    BUCKET_BODY, BUCKET_MAGIC, HEADER_LEN, ID_LEN, JOURNAL, JOURNAL_FORGOTTEN, JOURNAL_MAGIC,
    LEFTOVERS, LOCK, META, META_TMP, STATS, STATS_MAGIC, STATS_TMP,
};
use super::io::{Dir, Kind};
use super::journal::{self, Base, Journal, Keys, Op};
use super::seal::StateKey;
use super::{
    bucket_loc, choose_among, corrupt, finish_forget_all, fresh_journal, fresh_keys, open_part,
    split_loc, Loaded, Pending, Scratch, Store, CHECK_CHUNK, IN_JOURNAL,
};
use super::{format, io};

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
        let header = Header::of_dir(&spec, &meta_bytes);
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

    pub(super) fn create(
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
        let header = Header::of_dir(spec, &meta_bytes);
        let (sealer, keys) = fresh_keys(key);
        // Leftovers of an interrupted creation hold no samples: they are overwritten.
        let journal = fresh_journal(&dir, &header, &sealer, keys.as_ref())?;
        dir.write_new(META_TMP, &meta_bytes)?;
        dir.rename(META_TMP, META)?;
        dir.sync()?;
        Ok(Store::new(dir, spec.clone(), header, sealer, keys, journal))
    }

    /// Opens an existing state dir: closed, or left open by a crash (see the module docs).
    pub(super) fn load(
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
        // Closed: nothing happened since the base, whose statistics file must then be there.
        let closed = parsed.ops.is_empty() && head.base.holes.is_empty() && head.base.parent != 0;
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
            // The statistics are found, decrypted and parsed, and the canonical solution
            // solved from them, on a second thread while this one checks and indexes the
            // bucket files: the two are independent, and each keeps to its own core (one after
            // the other, the solve on every core, when no thread can be started).
            let solved = |threads: usize| {
                let (source, stats, legacy) = store.closed_stats(&header)?;
                let solution = store.solve_on(&stats, threads)?;
                Ok((source, stats, legacy, solution))
            };
            let (index, found): (_, Result<_>) = std::thread::scope(|scope| {
                let stats = std::thread::Builder::new()
                    .spawn_scoped(scope, || solved(1))
                    .ok();
                let index = store.index_closed(&versions);
                let found = match stats {
                    Some(stats) => stats
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    None => solved(solver::threads_for(header.dim + 1)),
                };
                (index, found)
            });
            let (source, stats, legacy, solution) = found?;
            store.index = index?;
            // Checked: from here on, leftovers first, then files moved into place.
            store.settle(&versions, names)?;
            if source == STATS_TMP {
                store.dir.rename(STATS_TMP, STATS)?;
                store.dir.sync()?;
            }
            store.journal.resume(&parsed, head.mark)?;
            // An earlier build's `stats.bin` (with L and Θ) is rewritten by the next close.
            store.stats_current = !legacy;
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
        if let Err(e) = store.compact(Some(&stats)) {
            tracing::warn!(
                "state dir {}: compacting after recovery failed, the head runs on the journal \
                 and compacts at close: {e}",
                path.display()
            );
        }
        Ok((store, Loaded { stats, solution }))
    }

    /// The statistics of a closed state dir: from the `stats.bin` (or, after a crash before its
    /// rename, the `stats.tmp`) whose checksum the journal's base names, with the name of the
    /// file they came from and whether an earlier build wrote it (see [`parse_stats`]).
    fn closed_stats(&self, header: &Header) -> Result<(&'static str, ExactStats, bool)> {
        let path = self.dir.path();
        let one = self.spec.fixed.one();
        let found = [STATS, STATS_TMP]
            .into_iter()
            .find_map(|name| stats_matches(&self.dir, name, self.parent).map(|b| (name, b)));
        let Some((source, mut bytes)) = found else {
            // Only a forget retires the statistics the base names, and its entry precedes that.
            let why = match self.dir.open_file(STATS)? {
                None => "it is missing".to_string(),
                Some(f) => {
                    let mut bytes = Scratch(f.read_all()?);
                    match parse_stats(&self.sealer, &mut bytes, header, one) {
                        Err(m) => m,
                        Ok(_) => "it is not the one the journal names".to_string(),
                    }
                }
            };
            return Err(corrupt(path, STATS, why));
        };
        let (stats, legacy) = parse_stats(&self.sealer, &mut bytes, header, one)
            .map_err(|m| corrupt(path, source, m))?;
        Ok((source, stats, legacy))
    }

    /// The index of a closed state dir, checking every bucket file completely. The records are
    /// hashed as they stream through one reused buffer: holding the files' bytes at once (n·d
    /// values) would cost more in allocating, faulting in and zeroizing than in reading.
    pub(super) fn index_closed(&self, versions: &BTreeMap<usize, Version>) -> Result<SampleIndex> {
        let mut index = SampleIndex::new(self.spec.num_classes());
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
                index.insert(
                    id,
                    Entry {
                        pos: bucket_loc(b, i as u64),
                        label,
                    },
                );
            }
        }
        Ok(index)
    }

    /// Opens a bucket file's index (the file's bytes from its start, at least through the
    /// index) and checks it: ids strictly increasing and in the bucket, labels classes.
    pub(super) fn bucket_ids(
        &self,
        name: &str,
        r: &BucketRef,
        bytes: &[u8],
    ) -> Result<Vec<(u64, u32)>> {
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
    pub(super) fn replay(
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
    pub(super) fn place_of(
        &self,
        loc: u64,
        versions: &BTreeMap<usize, Version>,
    ) -> Result<(String, u64)> {
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

    /// Scrubs what no base names and moves the versions it names into place, then syncs the
    /// dir if anything changed.
    pub(super) fn settle(
        &mut self,
        versions: &BTreeMap<usize, Version>,
        names: &[OsString],
    ) -> Result<()> {
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
}

/// The bytes of the file `name` if it is a `stats.bin` whose checksum is `parent` (checked
/// over the whole file).
pub(super) fn stats_matches(dir: &Dir, name: &str, parent: u128) -> Option<Scratch<u8>> {
    let bytes = Scratch(dir.open_file(name).ok()??.read_all().ok()?);
    let sum = stats_checksum(&bytes)?;
    (sum == parent && xxh3_128(&bytes[..bytes.len() - 16]) == sum).then_some(bytes)
}

/// Which version of each bucket file the base names is on disk (reading their headers).
pub(super) fn choose_versions(
    dir: &Dir,
    names: &[OsString],
    base: &Base,
    header: &Header,
) -> Result<BTreeMap<usize, Version>> {
    let buckets: BTreeMap<usize, BucketRef> = base.buckets.iter().map(|b| (b.bucket, *b)).collect();
    choose_among(dir, names, &buckets, header, BTreeMap::new())
}

/// Checks that the state files belong with this `meta.json` (every header records its
/// checksum) before anything `meta.json` says is trusted, so that a modified `meta.json` is
/// reported as such.
pub(super) fn check_tied(dir: &Dir, names: &[OsString], header: &Header) -> Result<()> {
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
pub(super) fn check_forgotten_key(
    dir: &Dir,
    header: &Header,
    key: Option<&StateKey>,
) -> Result<()> {
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
pub(super) fn inspect(dir: &Dir, names: &[OsString]) -> Result<()> {
    for name in names.iter().filter(|n| is_lethe_name(n)) {
        if let Some(Kind::Foreign(why)) = dir.kind(name)? {
            return Err(io::refused(dir.path(), &name.to_string_lossy(), why));
        }
    }
    Ok(())
}

/// A dir without `meta.json` may become a state dir only when it holds nothing but the
/// leftovers of an interrupted creation (which hold no samples).
pub(super) fn check_creatable(dir: &Dir, names: &[OsString]) -> Result<()> {
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
