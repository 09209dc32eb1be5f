//! The bytes of the state dir's files: encoding and strict parsing (see [`super`] for the
//! layout; the journal's own format is in `journal.rs`). Parsers take untrusted bytes and
//! return a message on any inconsistency; they never panic and never allocate more than the
//! input's size justifies.

use std::ffi::OsStr;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use super::seal::{Ad, Sealer, Unsealed};
use crate::math::secret::Zeroizing;
use crate::math::spec::HeadSpec;
use crate::math::stats::ExactStats;

/// The version of every state file's format.
pub const FORMAT_VERSION: u32 = 5;
/// `meta.json`'s `format` field.
pub const STATE_FORMAT: &str = "lethe-state";
/// `meta.json`'s `encryption` field of an encrypted state dir.
pub const CIPHER: &str = "xchacha20poly1305";
pub const BUCKET_MAGIC: &[u8; 8] = b"LETHEBKT";
pub const STATS_MAGIC: &[u8; 8] = b"LETHESTA";
pub const JOURNAL_MAGIC: &[u8; 8] = b"LETHEJNL";
/// The magic of format 4's `samples.bin` (recognized by [`super::erase`]).
pub const LEGACY_SAMPLES_MAGIC: &[u8; 8] = b"LETHESMP";
/// The header of every binary file.
pub const HEADER_LEN: usize = 64;

/// The number of buckets a closed state dir keeps its samples in (a sample's bucket is a
/// fixed hash of its id, [`bucket_of`]). Each bucket is a file of its own, so a close
/// rewrites only the buckets that changed.
pub const BUCKETS: usize = 256;

/// The bucket of sample `id` (splitmix64's finalizer: ids a caller numbers 1, 2, 3, … spread
/// evenly).
pub fn bucket_of(id: u64) -> usize {
    let mut x = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((x ^ (x >> 31)) >> 56) as usize
}

/// The names of a state dir's files (see [`super`]); bucket files are named by
/// [`bucket_name`]. Lethe writes no other name.
pub const META: &str = "meta.json";
pub const META_TMP: &str = "meta.json.tmp";
pub const STATS: &str = "stats.bin";
pub const STATS_TMP: &str = "stats.bin.tmp";
pub const JOURNAL: &str = "journal";
pub const JOURNAL_TMP: &str = "journal.tmp";
/// The journal renamed by a forget-all: the name says the forget-all committed.
pub const JOURNAL_FORGOTTEN: &str = "journal.forgotten";
/// The lock file of earlier versions (the lock is now on the dir itself): removed when found.
pub const LOCK: &str = "lock";
/// Names of format 4 (one `samples.bin`): never written now, scrubbed by [`super::erase`].
pub const LEGACY: [&str; 5] = [
    "samples.bin.tmp",
    "samples.bin.old",
    "samples.bin.forgotten",
    "samples.bin",
    "stats.bin.old",
];
/// Every fixed name, in the order erasure scrubs them (after the bucket files): what holds
/// samples first, `meta.json` (which identifies the dir as a state dir) last.
pub const NAMES: [&str; 13] = [
    LEGACY[0],
    LEGACY[1],
    LEGACY[2],
    LEGACY[3],
    JOURNAL_FORGOTTEN,
    JOURNAL_TMP,
    JOURNAL,
    STATS_TMP,
    LEGACY[4],
    STATS,
    LOCK,
    META_TMP,
    META,
];
/// Fixed names that only an interrupted call leaves behind.
pub const LEFTOVERS: [&str; 8] = [
    LEGACY[0],
    LEGACY[1],
    LEGACY[2],
    LEGACY[3],
    LEGACY[4],
    JOURNAL_TMP,
    META_TMP,
    LOCK,
];

/// Which file of a bucket: the file itself, or the new one a compaction writes beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Current,
    New,
}

/// `samples-XX.bin` (XX: the bucket in hex), `.tmp` for [`Version::New`].
pub fn bucket_name(bucket: usize, version: Version) -> String {
    let suffix = match version {
        Version::Current => "",
        Version::New => ".tmp",
    };
    format!("samples-{bucket:02x}.bin{suffix}")
}

/// The bucket and version a name stands for, if it is a bucket file's name.
pub fn parse_bucket_name(name: &OsStr) -> Option<(usize, Version)> {
    let name = name.to_str()?;
    let rest = name.strip_prefix("samples-")?;
    let (hex, suffix) = rest.split_at_checked(2)?;
    let version = match suffix {
        ".bin" => Version::Current,
        ".bin.tmp" => Version::New,
        _ => return None,
    };
    let bucket = usize::from_str_radix(hex, 16).ok()?;
    (hex.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && bucket_name(bucket, version) == name)
        .then_some((bucket, version))
}

/// Whether Lethe writes (or once wrote) a file of this name.
pub fn is_lethe_name(name: &OsStr) -> bool {
    NAMES.iter().any(|&n| name == n) || parse_bucket_name(name).is_some()
}

type Parsed<T> = std::result::Result<T, String>;

/// `meta.json`: which bundle the head belongs to, what it is (its spec, in the spec's own
/// serde form; the file's `version` is the state dir's format version, so the spec's on-disk
/// form changes only with it) and whether the state dir is encrypted. It holds nothing
/// derived from user data, and is plaintext in every state dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub bundle_name: String,
    pub core_sha256: String,
    pub head: HeadSpec,
    /// [`CIPHER`] for an encrypted state dir, `null` otherwise.
    pub encryption: Option<String>,
}

impl Meta {
    pub fn new(bundle_name: &str, core_sha256: &str, spec: &HeadSpec, encrypted: bool) -> Meta {
        Meta {
            format: STATE_FORMAT.into(),
            version: FORMAT_VERSION,
            bundle_name: bundle_name.into(),
            core_sha256: core_sha256.into(),
            head: spec.clone(),
            encryption: encrypted.then(|| CIPHER.into()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut text = serde_json::to_string_pretty(self).expect("meta serializes");
        text.push('\n');
        text.into_bytes()
    }

    /// Parses and checks `meta.json`.
    pub fn parse(bytes: &[u8]) -> Parsed<Meta> {
        #[derive(Deserialize)]
        struct Version {
            format: String,
            version: u32,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if v.format != STATE_FORMAT || v.version != FORMAT_VERSION {
            return Err(format!(
                "format {:?} version {}; this build reads {STATE_FORMAT:?} version \
                 {FORMAT_VERSION} (erase the state dir to start over)",
                v.format, v.version
            ));
        }
        let meta: Meta = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if meta.encryption.as_deref().is_some_and(|c| c != CIPHER) {
            return Err(format!(
                "encryption {:?}; this build encrypts with {CIPHER:?}",
                meta.encryption
            ));
        }
        meta.head
            .validate()
            .map_err(|m| format!("the recorded head settings are out of range: {m}"))?;
        Ok(meta)
    }

    pub fn encrypted(&self) -> bool {
        self.encryption.is_some()
    }
}

/// What the header of a binary file says besides its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dim: usize,
    pub classes: usize,
    /// The xxh3-64 of `meta.json`: ties every file to the head it belongs to.
    pub meta: u64,
    /// A bucket file: its sample count; `stats.bin`: the sample count; the journal: the length
    /// of its base.
    pub extra: u64,
    /// A bucket file: its bucket; the journal: the seq of its first entry; `stats.bin`: 0.
    pub seq: u64,
}

impl Header {
    /// What every header of the state dir of a head with `spec` and this `meta.json` says
    /// (`extra` and `seq` = 0).
    pub fn of_dir(spec: &HeadSpec, meta_bytes: &[u8]) -> Header {
        Header {
            dim: spec.dim,
            classes: spec.num_classes(),
            meta: xxh3_64(meta_bytes),
            extra: 0,
            seq: 0,
        }
    }
}

/// magic[8] version:u32 algorithm:u32 d:u64 C:u64 meta:u64 extra:u64 seq:u64
/// xxh3-64(bytes 0..56):u64. The `algorithm` word is 0: no file holds a value the canonical
/// solve computed (DESIGN.md G7). A `stats.bin` written by an earlier build holds its version
/// there, beside the L and Θ that build stored (see [`parse_stats`]).
pub fn encode_header(magic: &[u8; 8], h: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [h.dim as u64, h.classes as u64, h.meta, h.extra, h.seq] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
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
    let version = u32_at(h, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}; this build reads version {FORMAT_VERSION}"
        ));
    }
    if magic != STATS_MAGIC && u32_at(h, 12) != 0 {
        return Err(format!("its algorithm word is {}, not 0", u32_at(h, 12)));
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

pub fn u128_at(bytes: &[u8], at: usize) -> u128 {
    u128::from_le_bytes(bytes[at..at + 16].try_into().expect("16 bytes"))
}

/// Bytes of a sample's payload: its features q (d × i32) and targets r (C × i32).
pub fn payload_len(dim: usize, classes: usize) -> usize {
    4 * (dim + classes)
}

/// Writes a sample's features and targets into `out` ([`payload_len`] bytes).
pub fn encode_payload(q: &[i32], r: &[i32], out: &mut [u8]) {
    for (b, v) in out.chunks_exact_mut(4).zip(q.iter().chain(r)) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Decodes a payload's features into `q` (d values) and targets into `r` (C values).
pub fn decode_payload(payload: &[u8], q: &mut [i32], r: &mut [i32]) {
    // Features and targets each in a loop of its own, which the compiler vectorizes.
    let (pq, pr) = payload.split_at(4 * q.len());
    for (v, b) in q.iter_mut().zip(pq.chunks_exact(4)) {
        *v = i32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
    for (v, b) in r.iter_mut().zip(pr.chunks_exact(4)) {
        *v = i32::from_le_bytes(b.try_into().expect("4 bytes"));
    }
}

/// The place of a record: sealed for file `salt` (a bucket file's or the journal's), at
/// position `pos` (a bucket's index, the journal's byte offset), for sample `id` with `label`,
/// so that a record opens only where it was written and as the sample it was written for.
pub fn record_ad(salt: u128, pos: u64, id: u64, label: u32) -> Ad {
    Ad::new(b"REC ").u128(salt).u64(pos).u64(id).u32(label)
}

/// Bytes of one (id, label) pair in a bucket's index or a learn entry.
pub const ID_LEN: usize = 12;

pub fn encode_ids(ids: &[(u64, u32)]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(ids.len() * ID_LEN));
    for &(id, label) in ids {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&label.to_le_bytes());
    }
    out
}

pub fn decode_ids(bytes: &[u8]) -> Vec<(u64, u32)> {
    bytes
        .chunks_exact(ID_LEN)
        .map(|c| (u64_at(c, 0), u32_at(c, 8)))
        .collect()
}

/// A bucket file as the journal's base lists it: which bucket, how many samples, the file's
/// salt (random in an encrypted state dir, 0 otherwise) and the xxh3-128 of its body (the
/// index and the records, as written), which names the version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRef {
    pub bucket: usize,
    pub count: u64,
    pub salt: u128,
    pub digest: u128,
}

/// Bytes of a [`BucketRef`] in the journal's base.
pub const BUCKET_REF_LEN: usize = 48;

/// Where a bucket file's index starts: after the header and the version block
/// (salt:u128 digest:u128 xxh3-64(bytes 0..96):u64).
pub const BUCKET_BODY: usize = HEADER_LEN + 40;

pub fn bucket_index_ad(salt: u128, bucket: usize, count: u64) -> Ad {
    Ad::new(b"BIDX").u128(salt).u64(bucket as u64).u64(count)
}

/// Where record `i` of a bucket file with `count` samples starts.
pub fn bucket_record_at(sealer: &Sealer, count: u64, rec_len: u64, i: u64) -> u64 {
    BUCKET_BODY as u64 + sealer.sealed_len(count as usize * ID_LEN) as u64 + i * rec_len
}

/// Encodes a bucket file's header and version block.
pub fn encode_bucket_head(header: &Header, r: &BucketRef) -> Vec<u8> {
    let mut out = encode_header(
        BUCKET_MAGIC,
        &Header {
            extra: r.count,
            seq: r.bucket as u64,
            ..*header
        },
    );
    out.extend_from_slice(&r.salt.to_le_bytes());
    out.extend_from_slice(&r.digest.to_le_bytes());
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Parses a bucket file's header and version block ([`BUCKET_BODY`] bytes).
pub fn parse_bucket_head(bytes: &[u8], expect: &Header) -> Parsed<BucketRef> {
    let h = parse_header(bytes, BUCKET_MAGIC, expect)?;
    if bytes.len() < BUCKET_BODY {
        return Err("shorter than its header".into());
    }
    if u64_at(bytes, BUCKET_BODY - 8) != xxh3_64(&bytes[..BUCKET_BODY - 8]) {
        return Err("header checksum mismatch: the file is corrupt or was modified".into());
    }
    if h.seq >= BUCKETS as u64 || h.extra == 0 {
        return Err(format!(
            "its header names bucket {} with {} samples",
            h.seq, h.extra
        ));
    }
    Ok(BucketRef {
        bucket: h.seq as usize,
        count: h.extra,
        salt: u128_at(bytes, HEADER_LEN),
        digest: u128_at(bytes, HEADER_LEN + 16),
    })
}

/// Size of `stats.bin`'s payload for d, C: A's packed lower triangle and B, as i128.
fn stats_payload_len(dim: usize, classes: usize) -> usize {
    let p = dim + 1;
    16 * (p * (p + 1) / 2 + p * classes)
}

/// Size of the payload of a `stats.bin` written by an earlier build: A and B, then L's lower
/// triangle and Θ as f64.
fn legacy_stats_payload_len(dim: usize, classes: usize) -> usize {
    let p = dim + 1;
    stats_payload_len(dim, classes) + 8 * (p * (p + 1) / 2 + p * classes)
}

/// Size of `stats.bin` for d, C.
pub fn stats_len(sealer: &Sealer, dim: usize, classes: usize) -> usize {
    stats_file_len(sealer, stats_payload_len(dim, classes))
}

/// Size of a `stats.bin` whose payload is `payload` bytes: header, sealed payload, checksum.
fn stats_file_len(sealer: &Sealer, payload: usize) -> usize {
    HEADER_LEN + sealer.sealed_len(payload) + 16
}

pub fn stats_ad(header: &[u8]) -> Ad {
    Ad::new(b"STAT").bytes(header)
}

/// `stats.bin`: header (extra = n), then sealed: A's packed lower triangle (i128) and B (p × C,
/// i128), the exact statistics and nothing computed from them; then the xxh3-128 of everything
/// before, which the journal's base names it by.
pub fn encode_stats(sealer: &Sealer, header: &Header, stats: &ExactStats) -> Zeroizing<Vec<u8>> {
    let c = header.classes;
    let head = encode_header(STATS_MAGIC, header);
    let mut out = Zeroizing::new(vec![0u8; stats_len(sealer, header.dim, c)]);
    let sealed_end = out.len() - 16;
    out[..HEADER_LEN].copy_from_slice(&head);
    // The payload is written where the sealer wants it and sealed in place: a second buffer
    // of its size would cost as much again in fresh memory, copying and zeroizing.
    let sealed = &mut out[HEADER_LEN..sealed_end];
    let body = sealer.body_of(stats_payload_len(header.dim, c));
    for (place, v) in sealed[body.clone()]
        .chunks_exact_mut(16)
        .zip(stats.a_values().chain(stats.b_values()))
    {
        place.copy_from_slice(&v.to_le_bytes());
    }
    sealer.seal_in_place(&stats_ad(&head), sealed);
    let sum = xxh3_128(&out[..sealed_end]);
    out[sealed_end..].copy_from_slice(&sum.to_le_bytes());
    out
}

/// The checksum `stats.bin` ends with (its identity), if the file is long enough to have one.
pub fn stats_checksum(bytes: &[u8]) -> Option<u128> {
    let at = bytes.len().checked_sub(16)?;
    Some(u128_at(bytes, at))
}

/// Parses `stats.bin`, opening its sealed part in place in `bytes`; `one` is the fixed-point
/// 1 (A's bias corner must be n · one²). Also reads a `stats.bin` written by an earlier build
/// (its header's algorithm word not 0), whose L and Θ after A and B are authenticated with the
/// rest and not used: the statistics come with whether the file is such a one (`true`), which
/// the next close then rewrites.
pub fn parse_stats(
    sealer: &Sealer,
    bytes: &mut [u8],
    expect: &Header,
    one: i32,
) -> Parsed<(ExactStats, bool)> {
    let found = parse_header(bytes, STATS_MAGIC, expect)?;
    if found.seq != 0 {
        return Err("its header has a journal seq".into());
    }
    let n = found.extra;
    let (d, c) = (expect.dim, expect.classes);
    let legacy = u32_at(bytes, 12) != 0;
    let len = if legacy {
        stats_file_len(sealer, legacy_stats_payload_len(d, c))
    } else {
        stats_len(sealer, d, c)
    };
    if bytes.len() != len {
        return Err(format!("{} bytes, expected {len}", bytes.len()));
    }
    let (body, sum) = bytes.split_at_mut(len - 16);
    if u128_at(sum, 0) != xxh3_128(body) {
        return Err("checksum mismatch: the file is corrupt or was modified".into());
    }
    let (head, sealed) = body.split_at_mut(HEADER_LEN);
    let plain = sealer
        .open_in_place(&stats_ad(head), sealed)
        .map_err(|why| match why {
            Unsealed::Zero => "its statistics are zero bytes".to_string(),
            Unsealed::Bad => "its statistics do not authenticate: the file was modified, or \
                              sealed under another key"
                .to_string(),
        })?;
    let p = d + 1;
    let tri = p * (p + 1) / 2;
    let i128s = |from: usize, k: usize| -> Vec<i128> {
        plain[16 * from..16 * (from + k)]
            .chunks_exact(16)
            .map(|b| i128::from_le_bytes(b.try_into().expect("16 bytes")))
            .collect()
    };
    // Every buffer below is zeroized when dropped, on errors too (G4).
    let stats = ExactStats::from_parts(d, c, n, i128s(0, tri), i128s(tri, p * c))
        .ok_or("inconsistent sizes")?;
    if stats.a(p - 1, p - 1) != n as i128 * (one as i128 * one as i128) {
        return Err(format!("A's bias entry does not match its {n} samples"));
    }
    Ok((stats, legacy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_round_trip_and_nothing_else_parses() {
        for b in [0, 7, 0xa3, 255] {
            for v in [Version::Current, Version::New] {
                let name = bucket_name(b, v);
                assert_eq!(parse_bucket_name(OsStr::new(&name)), Some((b, v)), "{name}");
            }
        }
        for bad in [
            "samples-0.bin",
            "samples-100.bin",
            "samples-0A.bin",
            "samples-0g.bin",
            "samples-00.bin.bak",
            "samples-00.bin.old",
            "samples.bin",
            "samples-+1.bin",
        ] {
            assert_eq!(parse_bucket_name(OsStr::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn buckets_are_even_for_consecutive_ids() {
        let mut counts = [0u32; BUCKETS];
        for id in 0..BUCKETS as u64 * 100 {
            counts[bucket_of(id)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (60..=140).contains(&c)),
            "{counts:?}"
        );
    }
}
