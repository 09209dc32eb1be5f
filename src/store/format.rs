//! The bytes of the state dir's files: encoding and strict parsing (see [`super`] for the
//! layout). Parsers take untrusted bytes and return a message on any inconsistency; they never
//! panic and never allocate more than the input's size justifies.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

use crate::math::samples::SampleRef;
use crate::math::secret::{SecretMat, Zeroizing};
use crate::math::solver::{Solution, ALGORITHM_VERSION};
use crate::math::spec::HeadSpec;
use crate::math::stats::ExactStats;

/// The version of every state file's format.
pub const FORMAT_VERSION: u32 = 4;
/// `meta.json`'s `format` field.
pub const STATE_FORMAT: &str = "lethe-state";
pub const SAMPLES_MAGIC: &[u8; 8] = b"LETHESMP";
pub const STATS_MAGIC: &[u8; 8] = b"LETHESTA";
pub const JOURNAL_MAGIC: &[u8; 8] = b"LETHEJNL";
/// The header of every binary file.
pub const HEADER_LEN: usize = 64;

/// The names of a state dir's files (see [`super`]). Lethe writes no other name.
pub const META: &str = "meta.json";
pub const META_TMP: &str = "meta.json.tmp";
pub const SAMPLES: &str = "samples.bin";
pub const SAMPLES_TMP: &str = "samples.bin.tmp";
pub const SAMPLES_OLD: &str = "samples.bin.old";
/// `samples.bin` renamed by a forget-all: the name says the forget-all committed.
pub const SAMPLES_FORGOTTEN: &str = "samples.bin.forgotten";
pub const STATS: &str = "stats.bin";
pub const STATS_TMP: &str = "stats.bin.tmp";
pub const STATS_OLD: &str = "stats.bin.old";
pub const JOURNAL: &str = "journal";
pub const JOURNAL_TMP: &str = "journal.tmp";
/// The lock file of earlier versions (the lock is now on the dir itself): removed when found.
pub const LOCK: &str = "lock";
/// Every name above, in the order erasure scrubs them: the samples first, `meta.json` (which
/// identifies the dir as a state dir) last.
pub const NAMES: [&str; 12] = [
    SAMPLES_TMP,
    SAMPLES_OLD,
    SAMPLES_FORGOTTEN,
    SAMPLES,
    STATS_TMP,
    STATS_OLD,
    STATS,
    JOURNAL_TMP,
    JOURNAL,
    LOCK,
    META_TMP,
    META,
];
/// What only an interrupted call leaves behind (and, in a dir without a journal, `journal`).
pub const LEFTOVERS: [&str; 7] = [
    SAMPLES_TMP,
    SAMPLES_OLD,
    STATS_TMP,
    STATS_OLD,
    JOURNAL_TMP,
    META_TMP,
    LOCK,
];

type Parsed<T> = std::result::Result<T, String>;

/// `meta.json`: which bundle the head belongs to and what it is (its spec, in the spec's own
/// serde form; the file's `version` is the state dir's format version, so the spec's on-disk
/// form changes only with it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub bundle_name: String,
    pub core_sha256: String,
    pub head: HeadSpec,
}

impl Meta {
    pub fn new(bundle_name: &str, core_sha256: &str, spec: &HeadSpec) -> Meta {
        Meta {
            format: STATE_FORMAT.into(),
            version: FORMAT_VERSION,
            bundle_name: bundle_name.into(),
            core_sha256: core_sha256.into(),
            head: spec.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut text = serde_json::to_string_pretty(self).expect("meta serializes");
        text.push('\n');
        text.into_bytes()
    }

    /// Parses and checks `meta.json`.
    pub fn parse(bytes: &[u8]) -> Parsed<Meta> {
        let meta: Meta = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if meta.format != STATE_FORMAT || meta.version != FORMAT_VERSION {
            return Err(format!(
                "format {:?} version {}; this build reads {STATE_FORMAT:?} version {FORMAT_VERSION}",
                meta.format, meta.version
            ));
        }
        meta.head
            .validate()
            .map_err(|m| format!("the recorded head settings are out of range: {m}"))?;
        Ok(meta)
    }
}

/// What the header of a binary file says besides its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dim: usize,
    pub classes: usize,
    /// The xxh3-64 of `meta.json`: ties every file to the head it belongs to.
    pub meta: u64,
    /// `stats.bin`: the sample count; the journal: the base slot count; `samples.bin`: 0.
    pub extra: u64,
    /// The journal: the seq of its first entry; every other file: 0.
    pub seq: u64,
}

/// magic[8] version:u32 algorithm:u32 d:u64 C:u64 meta:u64 extra:u64 seq:u64
/// xxh3-64(bytes 0..56):u64, where `algorithm` is [`algorithm`]'s word for the file's kind.
pub fn encode_header(magic: &[u8; 8], h: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&algorithm(magic).to_le_bytes());
    for v in [h.dim as u64, h.classes as u64, h.meta, h.extra, h.seq] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The header's `algorithm` word: in `stats.bin`, the version of the canonical solve that
/// computed its L and Θ (a reader with another version would hold different bits, DESIGN.md
/// G7); 0 in the other files.
fn algorithm(magic: &[u8; 8]) -> u32 {
    if magic == STATS_MAGIC {
        ALGORITHM_VERSION
    } else {
        0
    }
}

/// Checks a header against what the spec and `meta.json` say; returns it (`extra` and `seq`
/// are the file's own).
pub fn parse_header(bytes: &[u8], magic: &[u8; 8], expect: &Header) -> Parsed<Header> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes: shorter than its {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    let h = &bytes[..HEADER_LEN];
    if &h[..8] != magic {
        return Err(format!(
            "not a Lethe file of this kind (expected magic {:?})",
            String::from_utf8_lossy(magic)
        ));
    }
    if u64_at(h, 56) != xxh3_64(&h[..56]) {
        return Err("header checksum mismatch: the file is corrupt or was modified".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}; this build reads version {FORMAT_VERSION}"
        ));
    }
    if u32_at(h, 12) != algorithm(magic) {
        return Err(format!(
            "its canonical solution was computed by solver algorithm version {}; this build \
             computes version {}",
            u32_at(h, 12),
            algorithm(magic)
        ));
    }
    let found = Header {
        dim: u64_at(h, 16) as usize,
        classes: u64_at(h, 24) as usize,
        meta: u64_at(h, 32),
        extra: u64_at(h, 40),
        seq: u64_at(h, 48),
    };
    if found.meta != expect.meta {
        return Err(format!(
            "it belongs with a meta.json of checksum {:016x}, but meta.json's is {:016x}: one of \
             the two was modified",
            found.meta, expect.meta
        ));
    }
    if (found.dim, found.classes) != (expect.dim, expect.classes) {
        return Err(format!(
            "its header is for d = {}, C = {}; meta.json says d = {}, C = {}",
            found.dim, found.classes, expect.dim, expect.classes
        ));
    }
    Ok(found)
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Bytes of one `samples.bin` record: id:u64 seq:u64 label:u32 0:u32 q:[i32; d] r:[i32; C]
/// xxh3-64(everything before):u64. `seq` is the journal entry of the learn that wrote it (0
/// in a compacted file), so that recovery can tell which call each record belongs to.
///
/// A forget overwrites a record with a tombstone: id 0, seq = the forget's entry, label
/// [`TOMBSTONE`], zero features and targets, and the checksum. It holds nothing of the sample;
/// it is the evidence that the entry was committed, so that a journal cut before it is detected.
pub fn record_len(dim: usize, classes: usize) -> usize {
    RECORD_HEAD + 4 * (dim + classes) + 8
}

/// Bytes of a record before its features.
const RECORD_HEAD: usize = 24;
/// The label of a tombstone (no class has it: C ≤ 2^16).
pub const TOMBSTONE: u32 = u32::MAX;

/// Writes the tombstone of journal entry `seq` into `out` ([`record_len`] bytes).
pub fn encode_tombstone(seq: u64, out: &mut [u8]) {
    out.fill(0);
    out[16..20].copy_from_slice(&TOMBSTONE.to_le_bytes());
    restamp(out, seq);
}

/// Writes a sample's record, written by journal entry `seq`, into `out` ([`record_len`]
/// bytes).
pub fn encode_record(s: &SampleRef<'_>, seq: u64, out: &mut [u8]) {
    out[0..8].copy_from_slice(&s.id.to_le_bytes());
    out[16..20].copy_from_slice(&s.label.to_le_bytes());
    out[20..24].fill(0);
    for (b, v) in out[RECORD_HEAD..]
        .chunks_exact_mut(4)
        .zip(s.q.iter().chain(s.r))
    {
        b.copy_from_slice(&v.to_le_bytes());
    }
    restamp(out, seq);
}

/// Sets a (checked) record's `seq` and its checksum.
pub fn restamp(rec: &mut [u8], seq: u64) {
    rec[8..16].copy_from_slice(&seq.to_le_bytes());
    let body = rec.len() - 8;
    let sum = xxh3_64(&rec[..body]);
    rec[body..].copy_from_slice(&sum.to_le_bytes());
}

/// What a slot of `samples.bin` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// All zeros.
    Free,
    /// A tombstone: released by this journal entry.
    Released {
        seq: u64,
    },
    Live {
        id: u64,
        seq: u64,
        label: u32,
    },
}

/// Parses one record (`rec.len()` = [`record_len`]).
pub fn parse_record(rec: &[u8], classes: usize) -> Parsed<Slot> {
    let body = rec.len() - 8;
    if u64_at(rec, body) != xxh3_64(&rec[..body]) {
        return if rec.iter().all(|&b| b == 0) {
            Ok(Slot::Free)
        } else {
            Err("checksum mismatch: the record is corrupt or was modified".into())
        };
    }
    let label = u32_at(rec, 16);
    if label == TOMBSTONE {
        let empty = u64_at(rec, 0) == 0 && rec[20..body].iter().all(|&b| b == 0);
        return match empty {
            true => Ok(Slot::Released {
                seq: u64_at(rec, 8),
            }),
            false => Err("a tombstone that holds data".into()),
        };
    }
    if label as usize >= classes || u32_at(rec, 20) != 0 {
        return Err(format!("label {label} is not one of the {classes} classes"));
    }
    Ok(Slot::Live {
        id: u64_at(rec, 0),
        seq: u64_at(rec, 8),
        label,
    })
}

/// Decodes a (checked) record's features into `q` (d values) and targets into `r` (C values).
pub fn decode_rows(rec: &[u8], q: &mut [i32], r: &mut [i32]) {
    let values = rec[RECORD_HEAD..rec.len() - 8].chunks_exact(4);
    for (v, b) in q.iter_mut().chain(r.iter_mut()).zip(values) {
        *v = i32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
}

/// The digest `stats.bin` keeps of `samples.bin`: xxh3-128 over its header and the checksum of
/// each record in order (each record's checksum covers its bytes).
pub struct SamplesDigest(Xxh3);

impl SamplesDigest {
    pub fn new(header: &[u8]) -> SamplesDigest {
        let mut h = Xxh3::new();
        h.update(header);
        SamplesDigest(h)
    }

    pub fn record(&mut self, rec: &[u8]) {
        self.0.update(&rec[rec.len() - 8..]);
    }

    pub fn finish(&self) -> u128 {
        self.0.digest128()
    }
}

/// Size of `stats.bin` for d, C.
pub fn stats_len(dim: usize, classes: usize) -> usize {
    let p = dim + 1;
    let tri = p * (p + 1) / 2;
    HEADER_LEN + 16 * (tri + p * classes) + 8 * (tri + p * classes) + 16 + 16
}

/// `stats.bin`: header (extra = n), A's packed lower triangle (i128), B (p × C, i128), L's
/// lower triangle column by column (f64), Θ (p × C, f64), the samples digest (u128), and the
/// xxh3-128 of everything before (u128).
pub fn encode_stats(
    header: &Header,
    stats: &ExactStats,
    sol: &Solution,
    samples_digest: u128,
) -> Vec<u8> {
    let (p, c) = (header.dim + 1, header.classes);
    let mut out = Vec::with_capacity(stats_len(header.dim, c));
    out.extend_from_slice(&encode_header(STATS_MAGIC, header));
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
    out.extend_from_slice(&samples_digest.to_le_bytes());
    let sum = xxh3_128(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// What `stats.bin` holds.
pub struct StoredStats {
    pub stats: ExactStats,
    pub solution: Solution,
    pub samples_digest: u128,
}

/// Parses `stats.bin`; `one` is the fixed-point 1 (A's bias corner must be n · one²).
pub fn parse_stats(bytes: &[u8], expect: &Header, one: i32) -> Parsed<StoredStats> {
    let found = parse_header(bytes, STATS_MAGIC, expect)?;
    if found.seq != 0 {
        return Err("its header has a journal seq".into());
    }
    let n = found.extra;
    let (d, c) = (expect.dim, expect.classes);
    let len = stats_len(d, c);
    if bytes.len() != len {
        return Err(format!("{} bytes, expected {len}", bytes.len()));
    }
    let (body, sum) = bytes.split_at(len - 16);
    if u128::from_le_bytes(sum.try_into().expect("16 bytes")) != xxh3_128(body) {
        return Err("checksum mismatch: the file is corrupt or was modified".into());
    }
    let p = d + 1;
    let tri = p * (p + 1) / 2;
    let mut at = HEADER_LEN;
    let mut take = |len: usize| {
        let s = &body[at..at + len];
        at += len;
        s
    };
    let mut i128s = |k: usize| -> Vec<i128> {
        take(16 * k)
            .chunks_exact(16)
            .map(|b| i128::from_le_bytes(b.try_into().expect("16 bytes")))
            .collect()
    };
    // Every buffer below is zeroized when dropped, on errors too (G4).
    let stats =
        ExactStats::from_parts(d, c, n, i128s(tri), i128s(p * c)).ok_or("inconsistent sizes")?;
    let mut f64s = |k: usize| -> Zeroizing<Vec<f64>> {
        Zeroizing::new(
            take(8 * k)
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        )
    };
    let l_packed = f64s(tri);
    let theta = f64s(p * c);
    let samples_digest = u128::from_le_bytes(take(16).try_into().expect("16 bytes"));
    if stats.a_packed()[tri - 1] != n as i128 * (one as i128 * one as i128) {
        return Err(format!("A's bias entry does not match its {n} samples"));
    }
    let mut l = SecretMat::zeros(p, p);
    let mut k = 0;
    for j in 0..p {
        for i in j..p {
            l[(i, j)] = l_packed[k];
            k += 1;
        }
        if !(l[(j, j)].is_finite() && l[(j, j)] > 0.0) {
            return Err(format!(
                "the Cholesky factor's diagonal entry {j} is not positive"
            ));
        }
    }
    if l_packed.iter().chain(theta.iter()).any(|v| !v.is_finite()) {
        return Err("the solution holds a value that is not finite".into());
    }
    let theta = SecretMat::from_fn(p, c, |i, k| theta[i * c + k]);
    Ok(StoredStats {
        stats,
        solution: Solution { l, theta },
        samples_digest,
    })
}
