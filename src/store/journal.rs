//! The journal: the state dir's commit log, and the authority on what it holds. It names the
//! bucket files (and `stats.bin`) its changes start from, and holds every change since: the
//! records of the samples learned (so that a learn is durable with one sync of one file) and
//! where the samples forgotten were.
//!
//! ```text
//! header     64 bytes: extra = the base's sealed length, seq = the first entry's seq
//! mark       entries:u64 xxh3-64(entries):u64       (rewritten after each commit, not synced)
//! key        the data key wrapped by the application's key (encrypted state dirs only)
//! base       sealed: salt:u128 parent:u128 buckets:u64 BucketRef×buckets holes:u64 loc×holes
//! entries    word×4 | frame | frame | records (a learn's)
//! ```
//!
//! `parent` is the checksum of the `stats.bin` that holds the statistics of the base (0: none);
//! `holes` are the bucket records forgotten since the bucket files were written. An entry's
//! word is `count | kind << 30` (kind 1 = learn, 2 = forget), four times; its frame (twice,
//! identical) is sealed for (the journal's salt, the entry's offset, the word) and holds the
//! entry's seq and its items: a learn's (id, label) pairs, a forget's locations ([`super`]).
//! A learn's records follow, each sealed for (the salt, its offset, its id and label).
//!
//! An entry is committed once it is durable (one sync). A crash while appending can only hurt
//! the last entry: it is committed if a frame copy and every record are intact, and is cut off
//! otherwise. A single flipped bit in a frame leaves one valid copy and a majority of the
//! words. The mark says how many entries were committed when it was last written; since it is
//! written after each commit's sync and made durable by the next one, a journal with fewer
//! entries than its mark was cut or damaged, which is reported, never mistaken for a crash.

use xxhash_rust::xxh3::xxh3_64;

use super::format::{
    encode_header, parse_header, record_ad, u128_at, u32_at, u64_at, BucketRef, Header, BUCKETS,
    BUCKET_REF_LEN, HEADER_LEN, ID_LEN, JOURNAL, JOURNAL_MAGIC, JOURNAL_TMP,
};
use super::io::{Dir, StoreFile};
use super::seal::{self, Ad, Sealer, StateKey, KEY_LEN, WRAPPED_LEN};
use crate::error::{Error, Result};
use crate::math::secret::Zeroizing;

const LEARN: u32 = 1;
const FORGET: u32 = 2;
/// Bytes of an entry before its frames: four copies of its word.
const WORDS_LEN: u64 = 16;
/// Where the mark is.
const MARK_AT: u64 = HEADER_LEN as u64;
pub const MARK_LEN: usize = 16;
/// Entries of one call at most.
pub const MAX_COUNT: usize = (1 << 30) - 1;

/// What the journal's changes start from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base {
    /// The salt the journal's frames and records are sealed with.
    pub salt: u128,
    /// The checksum of the `stats.bin` that holds the base's statistics (0: none does).
    pub parent: u128,
    /// The bucket files, by increasing bucket.
    pub buckets: Vec<BucketRef>,
    /// Bucket records released since their files were written, sorted.
    pub holes: Vec<u64>,
}

impl Base {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        out.extend_from_slice(&self.salt.to_le_bytes());
        out.extend_from_slice(&self.parent.to_le_bytes());
        out.extend_from_slice(&(self.buckets.len() as u64).to_le_bytes());
        for b in &self.buckets {
            out.extend_from_slice(&(b.bucket as u64).to_le_bytes());
            out.extend_from_slice(&b.count.to_le_bytes());
            out.extend_from_slice(&b.salt.to_le_bytes());
            out.extend_from_slice(&b.digest.to_le_bytes());
        }
        out.extend_from_slice(&(self.holes.len() as u64).to_le_bytes());
        for h in &self.holes {
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    }

    fn parse(b: &[u8]) -> std::result::Result<Base, String> {
        let short = || "its base is truncated".to_string();
        let salt = u128_at(b.get(..16).ok_or_else(short)?, 0);
        let parent = u128_at(b.get(16..32).ok_or_else(short)?, 0);
        let nb = u64_at(b.get(32..40).ok_or_else(short)?, 0);
        if nb > BUCKETS as u64 {
            return Err(format!("its base lists {nb} buckets"));
        }
        let mut at = 40;
        let mut buckets = Vec::with_capacity(nb as usize);
        for _ in 0..nb {
            let e = b.get(at..at + BUCKET_REF_LEN).ok_or_else(short)?;
            let r = BucketRef {
                bucket: u64_at(e, 0) as usize,
                count: u64_at(e, 8),
                salt: u128_at(e, 16),
                digest: u128_at(e, 32),
            };
            if r.bucket >= BUCKETS || r.count == 0 || r.count > u32::MAX as u64 {
                return Err(format!(
                    "its base lists bucket {} with {} samples",
                    r.bucket, r.count
                ));
            }
            if buckets
                .last()
                .is_some_and(|l: &BucketRef| l.bucket >= r.bucket)
            {
                return Err("its base lists buckets out of order".into());
            }
            buckets.push(r);
            at += BUCKET_REF_LEN;
        }
        let nh = u64_at(b.get(at..at + 8).ok_or_else(short)?, 0);
        at += 8;
        if nh > (b.len() as u64) / 8 {
            return Err(short());
        }
        let holes: Vec<u64> = (0..nh as usize)
            .map(|i| b.get(at + 8 * i..at + 8 * i + 8).map(|h| u64_at(h, 0)))
            .collect::<Option<_>>()
            .ok_or_else(short)?;
        if at + 8 * nh as usize != b.len() {
            return Err("its base has trailing bytes".into());
        }
        if holes.windows(2).any(|w| w[0] >= w[1]) {
            return Err("its base lists holes out of order".into());
        }
        Ok(Base {
            salt,
            parent,
            buckets,
            holes,
        })
    }
}

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Samples (id, label), whose records are at these offsets of the journal.
    Learn(Vec<(u64, u32, u64)>),
    /// Samples released, by location.
    Forget(Vec<u64>),
}

fn word(kind: u32, count: usize) -> u32 {
    count as u32 | kind << 30
}

fn frame_plain_len(kind: u32, count: usize) -> usize {
    8 + count * if kind == LEARN { ID_LEN } else { 8 }
}

fn frame_ad(salt: u128, at: u64, word: u32) -> Ad {
    Ad::new(b"ENTR").u128(salt).u64(at).u32(word)
}

fn wrap_ad(header: &[u8]) -> Ad {
    Ad::new(b"WRAP").bytes(header)
}

fn base_ad(head: &[u8]) -> Ad {
    Ad::new(b"BASE").bytes(head)
}

/// The keys of an encrypted state dir: the application's, and the data key it wraps.
pub struct Keys {
    pub app: StateKey,
    pub data: Zeroizing<[u8; KEY_LEN]>,
}

/// Encodes a journal with no entries: header, mark, key block, base.
fn encode_fresh(
    sealer: &Sealer,
    keys: Option<&Keys>,
    header: &Header,
    first: u64,
    base: &Base,
) -> Vec<u8> {
    let plain = base.encode();
    let sealed_len = sealer.sealed_len(plain.len());
    let head = encode_header(
        JOURNAL_MAGIC,
        &Header {
            extra: sealed_len as u64,
            seq: first,
            ..*header
        },
    );
    let mut out = head.clone();
    out.extend_from_slice(&encode_mark(0));
    if let Some(keys) = keys {
        out.extend_from_slice(&seal::wrap(&keys.app, &wrap_ad(&head), &keys.data));
    }
    let ad = base_ad(&out[..HEADER_LEN]).bytes(&out[HEADER_LEN + MARK_LEN..]);
    out.extend_from_slice(&sealer.seal(&ad, &plain));
    out
}

fn encode_mark(entries: u64) -> [u8; MARK_LEN] {
    let mut out = [0u8; MARK_LEN];
    out[..8].copy_from_slice(&entries.to_le_bytes());
    let sum = xxh3_64(&out[..8]) ^ 0x6d61_726b;
    out[8..].copy_from_slice(&sum.to_le_bytes());
    out
}

fn parse_mark(b: &[u8]) -> Option<u64> {
    let entries = u64_at(b, 0);
    (u64_at(b, 8) == xxh3_64(&b[..8]) ^ 0x6d61_726b).then_some(entries)
}

/// The head of a journal: enough to know its keys and base.
pub struct Head {
    pub first: u64,
    pub base: Base,
    pub sealer: Sealer,
    /// The unwrapped data key (encrypted state dirs).
    pub data_key: Option<Zeroizing<[u8; KEY_LEN]>>,
    /// Where the entries start.
    pub start: u64,
    /// How many entries the mark says were committed (0 when it is unreadable).
    pub mark: u64,
    /// Whether the mark is unreadable: harmless after a commit (an unsynced rewrite of it may
    /// be torn by a power loss), damage in a journal without entries (nothing rewrote it).
    pub mark_damaged: bool,
}

/// How a journal head failed to parse: damage (a message), or the key.
pub enum HeadError {
    Damaged(String),
    Key(Error),
}

/// Parses a journal's head. `key`: the application's key, present exactly for an encrypted
/// state dir (checked by the caller against `meta.json`).
pub fn parse_head(
    bytes: &[u8],
    expect: &Header,
    key: Option<&StateKey>,
) -> std::result::Result<Head, HeadError> {
    let damaged = HeadError::Damaged;
    let h = parse_header(bytes, JOURNAL_MAGIC, expect).map_err(damaged)?;
    let (first, base_len) = (h.seq, h.extra);
    if first == 0 || first > u64::MAX / 2 {
        return Err(damaged(format!(
            "its first entry's seq ({first}) is out of range"
        )));
    }
    let key_len = if key.is_some() { WRAPPED_LEN } else { 0 };
    let start = (HEADER_LEN + MARK_LEN + key_len) as u64 + base_len;
    if (bytes.len() as u64) < start {
        return Err(damaged(format!(
            "{} bytes: shorter than its head ({start} bytes)",
            bytes.len()
        )));
    }
    let parsed_mark = parse_mark(&bytes[HEADER_LEN..HEADER_LEN + MARK_LEN]);
    let key_block = &bytes[HEADER_LEN + MARK_LEN..HEADER_LEN + MARK_LEN + key_len];
    let (sealer, data_key) = match key {
        Some(key) => {
            let (sealer, data) = seal::unwrap(key, &wrap_ad(&bytes[..HEADER_LEN]), key_block)
                .map_err(HeadError::Key)?;
            (sealer, Some(data))
        }
        None => (Sealer::Checksum, None),
    };
    let ad = base_ad(&bytes[..HEADER_LEN]).bytes(key_block);
    let plain = sealer
        .open(&ad, &bytes[HEADER_LEN + MARK_LEN + key_len..start as usize])
        .map_err(|_| {
            damaged("its base does not authenticate: it is damaged or was modified".into())
        })?;
    let base = Base::parse(&plain).map_err(damaged)?;
    Ok(Head {
        first,
        base,
        sealer,
        data_key,
        start,
        mark: parsed_mark.unwrap_or(0),
        mark_damaged: parsed_mark.is_none(),
    })
}

/// A parsed journal.
pub struct Parsed {
    /// The committed changes, in order, with each entry's offset.
    pub ops: Vec<(u64, Op)>,
    /// Where the committed entries end (what follows is a torn tail).
    pub end: u64,
    /// A last entry with a damaged frame copy: where its frames are, and the intact frame (it
    /// is rewritten before anything is appended).
    pub damaged_last: Option<(u64, u64, Vec<u8>)>,
    /// What was wrong with the tail (an interrupted append), if anything: for the log.
    pub tail_note: Option<String>,
}

/// Parses the entries of a journal whose head is `head`; records are `rec_len` bytes.
pub fn parse_entries(
    bytes: &[u8],
    head: &Head,
    rec_len: usize,
    classes: usize,
) -> std::result::Result<Parsed, String> {
    let sealer = &head.sealer;
    let salt = head.base.salt;
    let mut ops = Vec::new();
    let mut at = head.start as usize;
    let mut damaged_last = None;
    let mut tail_note = None;
    let len = bytes.len();
    while at < len {
        let k = ops.len() as u64;
        let seq = head.first + k;
        let words: Vec<u32> = (0..4)
            .filter_map(|i| bytes.get(at + 4 * i..at + 4 * i + 4).map(|b| u32_at(b, 0)))
            .collect();
        let w = words
            .iter()
            .find(|&&c| words.iter().filter(|&&o| o == c).count() >= 3)
            .copied();
        let entry = w.and_then(|w| {
            let (kind, count) = (w >> 30, (w & MAX_COUNT as u32) as usize);
            if (kind != LEARN && kind != FORGET) || count == 0 {
                return None;
            }
            let frame = sealer.sealed_len(frame_plain_len(kind, count));
            let records = if kind == LEARN { count * rec_len } else { 0 };
            Some((
                w,
                kind,
                count,
                frame,
                WORDS_LEN as usize + 2 * frame + records,
            ))
        });
        let cut = |why: String| -> std::result::Result<Parsed, String> {
            Err(format!(
                "entry {seq} (byte {at}) {why}, but the journal's mark says {} entries were \
                 committed: it was cut or damaged",
                head.mark
            ))
        };
        let Some((w, kind, _, frame_len, entry_len)) = entry else {
            if k < head.mark {
                return cut("is unreadable".into());
            }
            tail_note = Some(format!(
                "it ends with an incomplete entry ({seq}, {} bytes): a call interrupted by a \
                 crash, which was not committed",
                len - at
            ));
            break;
        };
        let f1 = at + WORDS_LEN as usize;
        let f2 = f1 + frame_len;
        let frames = [f1, f2].map(|f| {
            let sealed = bytes.get(f..f + frame_len)?;
            let plain = sealer.open(&frame_ad(salt, at as u64, w), sealed).ok()?;
            (u64_at(&plain, 0) == seq).then(|| (plain, sealed.to_vec()))
        });
        let complete = at + entry_len <= len;
        let op = |plain: &[u8]| -> std::result::Result<Op, String> {
            let items = &plain[8..];
            Ok(match kind {
                LEARN => {
                    let rec0 = (f2 + frame_len) as u64;
                    let learned: Vec<(u64, u32, u64)> = items
                        .chunks_exact(ID_LEN)
                        .enumerate()
                        .map(|(j, c)| (u64_at(c, 0), u32_at(c, 8), rec0 + (j * rec_len) as u64))
                        .collect();
                    if let Some(&(id, label, _)) =
                        learned.iter().find(|&&(_, l, _)| l as usize >= classes)
                    {
                        return Err(format!(
                            "entry {seq} learns id {id} with label {label}, not one of the \
                             {classes} classes"
                        ));
                    }
                    Op::Learn(learned)
                }
                _ => Op::Forget(items.chunks_exact(8).map(|c| u64_at(c, 0)).collect()),
            })
        };
        let last = at + entry_len >= len;
        let intact = match &frames {
            [Some(a), Some(b)] if a.0[..] == b.0[..] => Some((a, false)),
            [Some(_), Some(_)] => {
                return Err(format!("entry {seq} (byte {at}) has two different copies"))
            }
            [Some(a), None] | [None, Some(a)] => Some((a, true)),
            [None, None] => None,
        };
        match intact {
            Some((frame, damaged)) if complete => {
                let op = op(&frame.0)?;
                if last {
                    if let Op::Learn(learned) = &op {
                        // A crash while appending may have left the frames whole but a record
                        // torn: then the entry was not committed.
                        if let Some(j) = torn_record(bytes, sealer, salt, learned, rec_len) {
                            if k < head.mark {
                                return cut(format!("has a damaged record ({j})"));
                            }
                            tail_note = Some(format!(
                                "its last entry ({seq}) has a torn record: a learn interrupted \
                                 by a crash, which was not committed"
                            ));
                            break;
                        }
                    }
                }
                if damaged {
                    if !last {
                        return Err(format!("entry {seq} (byte {at}) is damaged"));
                    }
                    tail_note = Some(format!(
                        "its last entry ({seq}) has a damaged copy (a write interrupted by a \
                         crash, or a flipped bit); the intact copy was used"
                    ));
                    damaged_last = Some((f1 as u64, f2 as u64, frame.1.clone()));
                }
                ops.push((at as u64, op));
                at += entry_len;
            }
            _ => {
                if k < head.mark {
                    return cut("is damaged".into());
                }
                if complete && !last {
                    return Err(format!(
                        "entry {seq} (byte {at}) is damaged and more follows it"
                    ));
                }
                tail_note = Some(format!(
                    "it ends with an incomplete entry ({seq}, {} bytes): a call interrupted by a \
                     crash, which was not committed",
                    len - at
                ));
                break;
            }
        }
    }
    let end = at as u64;
    if ops.is_empty() && head.mark_damaged {
        return Err(
            "its mark is damaged, and no entry was committed that could have rewritten \
                    it"
            .into(),
        );
    }
    if (ops.len() as u64) < head.mark {
        return Err(format!(
            "it has {} entries, but its mark says {} were committed: it was cut",
            ops.len(),
            head.mark
        ));
    }
    Ok(Parsed {
        ops,
        end,
        damaged_last,
        tail_note,
    })
}

/// The first record of a learn that does not open, if any.
fn torn_record(
    bytes: &[u8],
    sealer: &Sealer,
    salt: u128,
    learned: &[(u64, u32, u64)],
    rec_len: usize,
) -> Option<usize> {
    let mut plain = Zeroizing::new(vec![0u8; sealer.plain_len(rec_len).unwrap_or(0)]);
    learned.iter().position(|&(id, label, at)| {
        let rec = &bytes[at as usize..at as usize + rec_len];
        sealer
            .open_into(&record_ad(salt, at, id, label), rec, &mut plain)
            .is_err()
    })
}

/// An open journal, appended to by one writer.
pub struct Journal {
    file: StoreFile,
    /// Where the next entry goes: the end of the committed entries.
    end: u64,
    first: u64,
    seq: u64,
    salt: u128,
    /// Bytes written since the last sync (zeroed records, the mark): the next sync makes them
    /// durable.
    dirty: bool,
}

impl Journal {
    /// Creates the journal `name` in `dir` with no entries, first seq `first` and this base,
    /// and syncs it (not the dir).
    pub fn create(
        dir: &Dir,
        name: &str,
        sealer: &Sealer,
        keys: Option<&Keys>,
        header: &Header,
        first: u64,
        base: &Base,
    ) -> Result<Journal> {
        let bytes = encode_fresh(sealer, keys, header, first, base);
        let file = dir.write_new(name, &bytes)?;
        Ok(Journal {
            file,
            end: bytes.len() as u64,
            first,
            seq: first,
            salt: base.salt,
            dirty: false,
        })
    }

    /// Writes a new journal with no entries into `file`, which holds only zeros, and syncs it.
    /// The header goes last, in a sync of its own: until it is whole (its checksum holds) the
    /// file reads as damaged, never as a data key that does not unwrap (a wrong key).
    pub fn create_in(
        file: StoreFile,
        sealer: &Sealer,
        keys: Option<&Keys>,
        header: &Header,
        first: u64,
        base: &Base,
    ) -> Result<Journal> {
        let bytes = encode_fresh(sealer, keys, header, first, base);
        file.write_at(&bytes[HEADER_LEN..], HEADER_LEN as u64)?;
        file.set_len(bytes.len() as u64)?;
        file.sync()?;
        file.write_at(&bytes[..HEADER_LEN], 0)?;
        file.sync()?;
        Ok(Journal {
            file,
            end: bytes.len() as u64,
            first,
            seq: first,
            salt: base.salt,
            dirty: false,
        })
    }

    /// A journal as read at open, before anything is written: continue it with
    /// [`Journal::resume`].
    pub fn detached(file: StoreFile, first: u64, salt: u128, parsed: &Parsed) -> Journal {
        Journal {
            file,
            end: parsed.end,
            first,
            seq: first + parsed.ops.len() as u64,
            salt,
            dirty: false,
        }
    }

    /// Continues a journal read at open: rewrites a last entry with a damaged frame, scrubs
    /// and cuts a torn tail (synced), and brings the mark up to date. Writes nothing when
    /// there is nothing to repair.
    pub fn resume(&mut self, parsed: &Parsed, mark: u64) -> Result<()> {
        if let Some((f1, f2, frame)) = &parsed.damaged_last {
            self.file.write_at(frame, *f1)?;
            self.file.write_at(frame, *f2)?;
            self.file.sync()?;
        }
        if self.file.len()? > self.end {
            self.cut_tail()?;
        }
        if mark != self.entries() {
            self.write_mark()?;
        }
        Ok(())
    }

    /// The seq of the first entry.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The bytes of a learn entry of these samples (id, label, payload), and the offset of
    /// each record.
    pub fn learn_entry(
        &self,
        sealer: &Sealer,
        samples: &[(u64, u32, &[u8])],
        rec_len: usize,
    ) -> (Zeroizing<Vec<u8>>, Vec<u64>) {
        let ids: Vec<(u64, u32)> = samples.iter().map(|s| (s.0, s.1)).collect();
        let mut out = self.frames(
            sealer,
            LEARN,
            samples.len(),
            &super::format::encode_ids(&ids),
        );
        let mut offsets = Vec::with_capacity(samples.len());
        let start = out.len();
        out.resize(start + samples.len() * rec_len, 0);
        for (j, &(id, label, payload)) in samples.iter().enumerate() {
            let at = self.end + (start + j * rec_len) as u64;
            let rec = &mut out[start + j * rec_len..start + (j + 1) * rec_len];
            sealer.seal_into(&record_ad(self.salt, at, id, label), payload, rec);
            offsets.push(at);
        }
        (out, offsets)
    }

    /// The bytes of a forget entry of these locations.
    pub fn forget_entry(&self, sealer: &Sealer, locs: &[u64]) -> Zeroizing<Vec<u8>> {
        let items: Vec<u8> = locs.iter().flat_map(|l| l.to_le_bytes()).collect();
        self.frames(sealer, FORGET, locs.len(), &items)
    }

    fn frames(&self, sealer: &Sealer, kind: u32, count: usize, items: &[u8]) -> Zeroizing<Vec<u8>> {
        let w = word(kind, count);
        let mut plain = Zeroizing::new(Vec::with_capacity(8 + items.len()));
        plain.extend_from_slice(&self.seq.to_le_bytes());
        plain.extend_from_slice(items);
        let frame = sealer.seal(&frame_ad(self.salt, self.end, w), &plain);
        let mut out = Zeroizing::new(Vec::with_capacity(16 + 2 * frame.len()));
        for _ in 0..4 {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&frame);
        out.extend_from_slice(&frame);
        out
    }

    /// Appends an entry and syncs: once this returns, the change is committed. On an error the
    /// entry may or may not be durable: call [`Journal::cut_tail`].
    pub fn commit(&mut self, entry: &[u8]) -> Result<()> {
        self.file.write_at(entry, self.end)?;
        self.file.sync()?;
        self.end += entry.len() as u64;
        self.seq += 1;
        self.dirty = false;
        Ok(())
    }

    /// Scrubs and cuts whatever follows the committed entries (an append that failed) and
    /// syncs, so that the failed entry is not committed whatever the disk kept of it.
    pub fn cut_tail(&self) -> Result<()> {
        if self.file.len()? > self.end {
            self.file.zero_from(self.end)?;
            self.file.sync()?;
            self.file.set_len(self.end)?;
        }
        self.file.sync()
    }

    /// Records how many entries are committed (not synced: the next commit's sync makes it
    /// durable, see the module docs).
    pub fn write_mark(&self) -> Result<()> {
        self.file
            .write_at(&encode_mark(self.seq - self.first), MARK_AT)
    }

    /// Overwrites `len` bytes at `at` with zeros (not synced).
    pub fn zero(&mut self, at: u64, len: usize) -> Result<()> {
        self.dirty = true;
        self.file.write_at(&vec![0u8; len], at)
    }

    /// Makes the zeroing since the last commit durable.
    pub fn sync_dirty(&mut self) -> Result<()> {
        if self.dirty {
            self.file.sync()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Entries since the journal was started.
    pub fn entries(&self) -> u64 {
        self.seq - self.first
    }

    /// Bytes of the journal.
    pub fn len(&self) -> u64 {
        self.end
    }

    pub fn salt(&self) -> u128 {
        self.salt
    }

    pub fn file(&self) -> &StoreFile {
        &self.file
    }

    /// Puts this journal back under its name after another replaced it: a copy of it is
    /// written and synced, renamed into place, and the dir synced; the journal continues in
    /// the copy.
    pub fn restore(&mut self, dir: &Dir) -> Result<()> {
        let bytes = Zeroizing::new(self.file.read_all()?);
        let mut copy = dir.write_new(JOURNAL_TMP, &bytes)?;
        dir.rename(JOURNAL_TMP, JOURNAL)?;
        dir.sync()?;
        copy.renamed(dir.join(JOURNAL));
        self.file = copy;
        Ok(())
    }

    pub fn renamed(&mut self, to: std::path::PathBuf) {
        self.file.renamed(to);
    }
}

/// Whether a journal is what an interrupted creation leaves: a prefix (nothing, or a torn or
/// short write) of a fresh journal with no entries and an empty base. Checked without
/// `meta.json`, so only its shape: the magic, and once the header is whole its checksum, an
/// empty base's length and nothing beyond a fresh journal's end.
pub fn looks_fresh(bytes: &[u8]) -> bool {
    if bytes.len() <= HEADER_LEN {
        let n = bytes.len().min(JOURNAL_MAGIC.len());
        return bytes[..n] == JOURNAL_MAGIC[..n];
    }
    if &bytes[..8] != JOURNAL_MAGIC || u64_at(bytes, 56) != xxh3_64(&bytes[..56]) {
        return false;
    }
    let empty = Base::default().encode().len();
    let base_len = u64_at(bytes, 40) as usize;
    let rest = bytes.len() - HEADER_LEN;
    [
        (empty + seal::CHECKSUM_LEN, MARK_LEN),
        (empty + seal::AEAD_OVERHEAD, MARK_LEN + WRAPPED_LEN),
    ]
    .iter()
    .any(|&(base, before)| base == base_len && rest <= before + base)
}

/// Reads a whole journal and reports the unwrapping error plainly.
pub fn key_error(e: HeadError, path: &std::path::Path, name: &str) -> Error {
    match e {
        HeadError::Key(e) => e,
        HeadError::Damaged(m) => Error::state(path, format!("{name} is corrupt: {m}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_round_trips() {
        let base = Base {
            salt: 5,
            parent: 9,
            buckets: vec![
                BucketRef {
                    bucket: 3,
                    count: 2,
                    salt: 1,
                    digest: 7,
                },
                BucketRef {
                    bucket: 200,
                    count: 1,
                    salt: 0,
                    digest: 8,
                },
            ],
            holes: vec![4, 1 << 40],
        };
        assert_eq!(Base::parse(&base.encode()).unwrap(), base);
        let bytes = base.encode();
        for len in 0..bytes.len() {
            assert!(Base::parse(&bytes[..len]).is_err(), "{len}");
        }
    }
}
