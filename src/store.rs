//! The state dir: where one head persists.
//!
//! Files (all little-endian):
//! - `meta.json`: the format version, the bundle's core sha256 and the head's spec. Written once.
//! - `samples.bin`: a 64-byte header, then one fixed-size record per slot:
//!   `live: u32, label: u32, id: u64, q: [i32; d], r: [i32; C]`. A free slot is all zeros.
//! - `stats.bin`: the exact statistics and the canonical solution, with a sha256 of its
//!   contents. It exists only while the state dir is clean (closed): the first change after
//!   opening scrubs and removes it, and `close` writes it again.
//! - `lock`: an empty file, locked while a process has the state dir open.
//!
//! Learning appends records (or fills free slots); forgetting overwrites the forgotten records
//! with zeros in place and syncs the file before returning. `close` rewrites `samples.bin` with
//! the live records sorted by id and writes `stats.bin`, so a closed state dir is a function of
//! its sample set alone.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use faer::Mat;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::head::quant::FixedPoint;
use crate::head::samples::{SampleRef, SampleSet};
use crate::head::solver::Solution;
use crate::head::stats::ExactStats;
use crate::head::HeadSpec;

const META: &str = "meta.json";
const SAMPLES: &str = "samples.bin";
const STATS: &str = "stats.bin";
const LOCK: &str = "lock";
const STATE_FORMAT: &str = "lethe-state";
const STATE_VERSION: u32 = 1;
const SAMPLES_MAGIC: &[u8; 8] = b"LETHESMP";
const STATS_MAGIC: &[u8; 8] = b"LETHESTA";
const HEADER_LEN: u64 = 64;

/// `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: String,
    version: u32,
    bundle_name: String,
    core_sha256: String,
    features: String,
    dim: usize,
    classes: Vec<String>,
    core_logits: Option<(String, Vec<usize>)>,
    lambda: f64,
    target_scale: f64,
    frac_bits: u32,
    feature_max_abs: f64,
    target_max_abs: f64,
}

impl Meta {
    fn spec(&self) -> HeadSpec {
        HeadSpec {
            features: self.features.clone(),
            dim: self.dim,
            classes: self.classes.clone(),
            core_logits: self.core_logits.clone(),
            lambda: self.lambda,
            target_scale: self.target_scale,
            fixed: FixedPoint {
                frac_bits: self.frac_bits,
                feature_max_abs: self.feature_max_abs,
                target_max_abs: self.target_max_abs,
            },
        }
    }
}

/// What an existing state dir held.
pub struct Loaded {
    pub samples: SampleSet,
    pub stats: ExactStats,
    /// The canonical solution, when the state dir was closed cleanly.
    pub solution: Option<Solution>,
}

/// An open state dir.
pub struct Store {
    dir: PathBuf,
    spec: HeadSpec,
    samples: File,
    /// Slot of each live id.
    slots: HashMap<u64, u64>,
    free: Vec<u64>,
    end: u64,
    clean: bool,
    _lock: File,
}

impl Store {
    /// Opens (or creates) the state dir for a head over `bundle` with the `requested` spec.
    /// An existing dir keeps the spec it was created with.
    pub fn open(
        dir: &Path,
        bundle: &Bundle,
        requested: &HeadSpec,
    ) -> Result<(Store, Option<Loaded>)> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(dir, e))?;
        }
        let lock = private_file(&dir.join(LOCK), false)?;
        lock.try_lock()
            .map_err(|_| Error::state(dir, "another process (or head) has this state dir open"))?;
        let meta_path = dir.join(META);
        if !meta_path.exists() {
            return Store::create(dir, bundle, requested, lock).map(|s| (s, None));
        }
        let text = fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let meta: Meta = serde_json::from_str(&text)
            .map_err(|e| Error::state(dir, format!("{META} is corrupt: {e}")))?;
        if meta.format != STATE_FORMAT || meta.version != STATE_VERSION {
            return Err(Error::state(
                dir,
                format!(
                    "{META} has format {:?} version {}; this build reads {STATE_FORMAT:?} version {STATE_VERSION}",
                    meta.format, meta.version
                ),
            ));
        }
        if meta.core_sha256 != bundle.core_sha256() {
            return Err(Error::state(
                dir,
                format!(
                    "belongs to bundle {:?} (core sha256 {}), not to {:?} (core sha256 {})",
                    meta.bundle_name,
                    meta.core_sha256,
                    bundle.manifest.name,
                    bundle.core_sha256()
                ),
            ));
        }
        let spec = meta.spec();
        let (d, c) = (spec.dim, spec.num_classes());
        let samples_path = dir.join(SAMPLES);
        let mut file = private_file(&samples_path, false)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(&samples_path, e))?;
        let record = record_len(d, c) as usize;
        check_header(&bytes, SAMPLES_MAGIC, d, c)
            .map_err(|m| Error::state(dir, format!("{SAMPLES}: {m}")))?;
        let body = &bytes[HEADER_LEN as usize..];
        if body.len() % record != 0 {
            return Err(Error::state(
                dir,
                format!(
                    "{SAMPLES}: {} bytes is not a whole number of records",
                    bytes.len()
                ),
            ));
        }
        let mut set = SampleSet::new(d, c);
        let mut slots = HashMap::new();
        let mut free = Vec::new();
        let mut q = vec![0i32; d];
        let mut r = vec![0i32; c];
        for (slot, rec) in body.chunks_exact(record).enumerate() {
            let live = u32::from_le_bytes(rec[0..4].try_into().unwrap());
            if live == 0 {
                if rec.iter().any(|&b| b != 0) {
                    return Err(Error::state(
                        dir,
                        format!("{SAMPLES}: free slot {slot} is not zeroed"),
                    ));
                }
                free.push(slot as u64);
                continue;
            }
            let label = u32::from_le_bytes(rec[4..8].try_into().unwrap());
            let id = u64::from_le_bytes(rec[8..16].try_into().unwrap());
            if live != 1 || label as usize >= c || set.contains(id) {
                return Err(Error::state(
                    dir,
                    format!("{SAMPLES}: record {slot} is corrupt"),
                ));
            }
            decode_i32(&rec[16..16 + 4 * d], &mut q);
            decode_i32(&rec[16 + 4 * d..], &mut r);
            set.insert(SampleRef {
                id,
                label,
                q: &q,
                r: &r,
            });
            slots.insert(id, slot as u64);
        }
        let end = HEADER_LEN + (body.len() / record) as u64 * record as u64;
        bytes.fill(0);
        q.fill(0);
        r.fill(0);
        free.reverse();
        let stats_path = dir.join(STATS);
        let (stats, solution, clean) = if stats_path.exists() {
            let (stats, solution) = read_stats(&stats_path, d, c)
                .map_err(|m| Error::state(dir, format!("{STATS}: {m}")))?;
            if stats.n() != set.len() as u64 {
                return Err(Error::state(
                    dir,
                    format!(
                        "{STATS} counts {} samples but {SAMPLES} holds {}",
                        stats.n(),
                        set.len()
                    ),
                ));
            }
            (stats, Some(solution), true)
        } else {
            tracing::info!(
                samples = set.len(),
                "state dir was not closed cleanly; recomputing the statistics"
            );
            (rebuild_stats(&set, &spec), None, false)
        };
        let store = Store {
            dir: dir.to_path_buf(),
            spec,
            samples: file,
            slots,
            free,
            end,
            clean,
            _lock: lock,
        };
        Ok((
            store,
            Some(Loaded {
                samples: set,
                stats,
                solution,
            }),
        ))
    }

    fn create(dir: &Path, bundle: &Bundle, spec: &HeadSpec, lock: File) -> Result<Store> {
        let meta = Meta {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            bundle_name: bundle.manifest.name.clone(),
            core_sha256: bundle.core_sha256().into(),
            features: spec.features.clone(),
            dim: spec.dim,
            classes: spec.classes.clone(),
            core_logits: spec.core_logits.clone(),
            lambda: spec.lambda,
            target_scale: spec.target_scale,
            frac_bits: spec.fixed.frac_bits,
            feature_max_abs: spec.fixed.feature_max_abs,
            target_max_abs: spec.fixed.target_max_abs,
        };
        let mut text = serde_json::to_string_pretty(&meta).expect("meta serializes");
        text.push('\n');
        let samples_path = dir.join(SAMPLES);
        write_atomic(
            dir,
            SAMPLES,
            &header(SAMPLES_MAGIC, spec.dim, spec.num_classes()),
        )?;
        write_atomic(dir, META, text.as_bytes())?;
        let samples = private_file(&samples_path, false)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            spec: spec.clone(),
            samples,
            slots: HashMap::new(),
            free: Vec::new(),
            end: HEADER_LEN,
            clean: false,
            _lock: lock,
        })
    }

    /// The spec recorded in the state dir.
    pub fn spec(&self) -> &HeadSpec {
        &self.spec
    }

    fn record_len(&self) -> u64 {
        record_len(self.spec.dim, self.spec.num_classes())
    }

    /// Before the first change: the stored statistics go stale, so scrub and remove them.
    fn mark_dirty(&mut self) -> Result<()> {
        if self.clean {
            scrub_and_remove(&self.dir.join(STATS))?;
            sync_dir(&self.dir)?;
            self.clean = false;
        }
        Ok(())
    }

    /// Stores new samples (ids checked absent by the caller) durably.
    pub fn learn(&mut self, samples: &[SampleRef<'_>]) -> Result<()> {
        self.mark_dirty()?;
        let record = self.record_len();
        let mut buf = Vec::with_capacity(record as usize);
        let mut placed = Vec::with_capacity(samples.len());
        for s in samples {
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None => {
                    let slot = (self.end - HEADER_LEN) / record;
                    self.end += record;
                    slot
                }
            };
            buf.clear();
            encode_record(s, &mut buf);
            self.write_at(HEADER_LEN + slot * record, &buf)?;
            placed.push((s.id, slot));
        }
        buf.fill(0);
        self.sync()?;
        self.slots.extend(placed);
        Ok(())
    }

    /// Overwrites the records of these (present) ids with zeros, durably.
    pub fn forget(&mut self, ids: &[u64]) -> Result<()> {
        self.mark_dirty()?;
        let record = self.record_len();
        let zeros = vec![0u8; record as usize];
        for id in ids {
            let slot = self.slots[id];
            self.write_at(HEADER_LEN + slot * record, &zeros)?;
        }
        self.sync()?;
        for id in ids {
            let slot = self.slots.remove(id).expect("present");
            self.free.push(slot);
        }
        Ok(())
    }

    /// Overwrites every record with zeros, then truncates the file to its header.
    pub fn forget_all(&mut self) -> Result<()> {
        self.mark_dirty()?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = HEADER_LEN;
        while at < self.end {
            let len = (self.end - at).min(zeros.len() as u64) as usize;
            self.write_at(at, &zeros[..len])?;
            at += len as u64;
        }
        self.sync()?;
        let path = self.dir.join(SAMPLES);
        self.samples
            .set_len(HEADER_LEN)
            .map_err(|e| Error::io(&path, e))?;
        self.sync()?;
        self.slots.clear();
        self.free.clear();
        self.end = HEADER_LEN;
        Ok(())
    }

    /// Writes the canonical files: samples sorted by id, then the statistics.
    pub fn close(
        &mut self,
        samples: &SampleSet,
        stats: &ExactStats,
        solution: &Solution,
    ) -> Result<()> {
        if self.clean {
            return Ok(());
        }
        let (d, c) = (self.spec.dim, self.spec.num_classes());
        let mut bytes = header(SAMPLES_MAGIC, d, c);
        for id in samples.sorted_ids() {
            encode_record(&samples.get(id).expect("listed"), &mut bytes);
        }
        write_atomic(&self.dir, SAMPLES, &bytes)?;
        bytes.fill(0);
        write_atomic(&self.dir, STATS, &encode_stats(stats, solution, d, c))?;
        self.clean = true;
        Ok(())
    }

    fn write_at(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(SAMPLES);
        self.samples
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.samples.write_all(bytes))
            .map_err(|e| Error::io(&path, e))
    }

    fn sync(&mut self) -> Result<()> {
        self.samples
            .sync_data()
            .map_err(|e| Error::io(self.dir.join(SAMPLES), e))
    }
}

fn record_len(d: usize, c: usize) -> u64 {
    16 + 4 * (d + c) as u64
}

fn header(magic: &[u8; 8], d: usize, c: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(magic);
    h.extend_from_slice(&STATE_VERSION.to_le_bytes());
    h.extend_from_slice(&(d as u64).to_le_bytes());
    h.extend_from_slice(&(c as u64).to_le_bytes());
    h.resize(HEADER_LEN as usize, 0);
    h
}

fn check_header(
    bytes: &[u8],
    magic: &[u8; 8],
    d: usize,
    c: usize,
) -> std::result::Result<(), String> {
    if bytes.len() < HEADER_LEN as usize || bytes[..HEADER_LEN as usize] != header(magic, d, c)[..]
    {
        return Err(format!(
            "bad header (expected {} for d = {d}, C = {c})",
            String::from_utf8_lossy(magic)
        ));
    }
    Ok(())
}

fn encode_record(s: &SampleRef<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&s.label.to_le_bytes());
    out.extend_from_slice(&s.id.to_le_bytes());
    for v in s.q.iter().chain(s.r) {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn decode_i32(bytes: &[u8], out: &mut [i32]) {
    for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = i32::from_le_bytes(b.try_into().unwrap());
    }
}

fn encode_stats(stats: &ExactStats, sol: &Solution, d: usize, c: usize) -> Vec<u8> {
    let p = d + 1;
    let mut out = header(STATS_MAGIC, d, c);
    out.extend_from_slice(&stats.n().to_le_bytes());
    for v in stats.a_packed().iter().chain(stats.b()) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for j in 0..p {
        for i in j..p {
            out.extend_from_slice(&sol.l[(i, j)].to_le_bytes());
        }
    }
    for i in 0..p {
        for k in 0..c {
            out.extend_from_slice(&sol.theta[(i, k)].to_le_bytes());
        }
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

fn read_stats(
    path: &Path,
    d: usize,
    c: usize,
) -> std::result::Result<(ExactStats, Solution), String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    check_header(&bytes, STATS_MAGIC, d, c)?;
    let p = d + 1;
    let tri = p * (p + 1) / 2;
    let expected = HEADER_LEN as usize + 8 + 16 * (tri + p * c) + 8 * (tri + p * c) + 32;
    if bytes.len() != expected {
        return Err(format!("{} bytes, expected {expected}", bytes.len()));
    }
    let (body, digest) = bytes.split_at(expected - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch: the file is corrupt or was modified".into());
    }
    let mut at = HEADER_LEN as usize;
    let mut take = |len: usize| {
        let s = &body[at..at + len];
        at += len;
        s
    };
    let n = u64::from_le_bytes(take(8).try_into().unwrap());
    let a: Vec<i128> = (0..tri)
        .map(|_| i128::from_le_bytes(take(16).try_into().unwrap()))
        .collect();
    let b: Vec<i128> = (0..p * c)
        .map(|_| i128::from_le_bytes(take(16).try_into().unwrap()))
        .collect();
    let mut l = Mat::<f64>::zeros(p, p);
    for j in 0..p {
        for i in j..p {
            l[(i, j)] = f64::from_le_bytes(take(8).try_into().unwrap());
        }
    }
    let mut theta = Mat::<f64>::zeros(p, c);
    for i in 0..p {
        for k in 0..c {
            theta[(i, k)] = f64::from_le_bytes(take(8).try_into().unwrap());
        }
    }
    let stats = ExactStats::from_parts(d, c, n, a, b).ok_or("inconsistent sizes")?;
    Ok((stats, Solution { l, theta }))
}

/// Recomputes the statistics from the stored samples (after an unclean shutdown).
fn rebuild_stats(set: &SampleSet, spec: &HeadSpec) -> ExactStats {
    let (d, c) = (spec.dim, spec.num_classes());
    let mut stats = ExactStats::new(d, c);
    let chunk = 1024;
    let ids = set.sorted_ids();
    let bar = crate::progress::bar(ids.len() as u64, "recomputing statistics");
    let mut q = Vec::with_capacity(chunk * d);
    let mut r = Vec::with_capacity(chunk * c);
    for part in ids.chunks(chunk) {
        q.clear();
        r.clear();
        for &id in part {
            let s = set.get(id).expect("listed");
            q.extend_from_slice(s.q);
            r.extend_from_slice(s.r);
        }
        stats.accumulate(&q, &r, spec.fixed.one(), 1);
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    q.fill(0);
    r.fill(0);
    stats
}

fn private_file(path: &Path, truncate: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Writes `name` in `dir` atomically: a temporary file, fsync, rename, fsync of the dir.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = private_file(&tmp, true)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)
}

/// Overwrites a file with zeros, syncs, and removes it.
fn scrub_and_remove(path: &Path) -> Result<()> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = meta.len();
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(|e| Error::io(path, e))?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| Error::io(path, e))?;
    fs::remove_file(path).map_err(|e| Error::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
