//! The journal: the commit log of the changes made since the state dir was last compacted.
//! It holds slot numbers only, never sample bytes or ids.
//!
//! Layout: a 64-byte header (`extra` = the base: slots `0..base` of `samples.bin` were live
//! when the journal was started; `seq` = the first entry's seq, 1 after a compaction and one
//! more than the last entry of the journal it replaced after a checkpoint), then entries. An
//! entry is
//!
//! ```text
//! count:u32 ×4 | frame | frame        (the two frames are identical)
//! frame = kind:u32 count:u32 seq:u64 slot:u64 × count xxh3-64(kind..slots):u64
//! ```
//!
//! with kind 1 = learn, 2 = forget and seq = first, first + 1, …. An entry is committed once it
//! is durable (one sync). The redundancy tells a torn write from damage: a
//! crash while appending can only hurt the last entry, and leaves it with no valid frame (not
//! committed) or one (committed). A single flipped bit anywhere leaves one valid frame and a
//! majority of the count copies, so no committed entry is ever lost to it; damage in any entry
//! but the last is reported as corruption, and damage in the last one is logged.

use xxhash_rust::xxh3::xxh3_64;

use super::format::{
    encode_header, parse_header, u32_at, u64_at, Header, HEADER_LEN, JOURNAL_MAGIC,
};
use super::io::{Dir, StoreFile};
use crate::error::Result;

const LEARN: u32 = 1;
const FORGET: u32 = 2;
/// Bytes before the two frames of an entry: four copies of the count.
const COUNTS_LEN: usize = 16;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Records were written to these (free) slots.
    Learn(Vec<u64>),
    /// These (live) slots were released.
    Forget(Vec<u64>),
}

impl Op {
    fn kind(&self) -> u32 {
        match self {
            Op::Learn(_) => LEARN,
            Op::Forget(_) => FORGET,
        }
    }

    fn slots(&self) -> &[u64] {
        match self {
            Op::Learn(s) | Op::Forget(s) => s,
        }
    }
}

fn frame_len(count: usize) -> usize {
    24 + 8 * count
}

/// The bytes of entry `seq`.
pub fn encode_entry(seq: u64, op: &Op) -> Vec<u8> {
    let slots = op.slots();
    let count = slots.len() as u32;
    let mut frame = Vec::with_capacity(frame_len(slots.len()));
    frame.extend_from_slice(&op.kind().to_le_bytes());
    frame.extend_from_slice(&count.to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    for s in slots {
        frame.extend_from_slice(&s.to_le_bytes());
    }
    let sum = xxh3_64(&frame);
    frame.extend_from_slice(&sum.to_le_bytes());
    let mut out = Vec::with_capacity(COUNTS_LEN + 2 * frame.len());
    for _ in 0..4 {
        out.extend_from_slice(&count.to_le_bytes());
    }
    out.extend_from_slice(&frame);
    out.extend_from_slice(&frame);
    out
}

/// The frame at `at` if it is valid, has this count and seq; returns its op.
fn frame_at(bytes: &[u8], at: usize, count: usize, seq: u64) -> Option<Op> {
    let len = frame_len(count);
    let f = bytes.get(at..at.checked_add(len)?)?;
    let kind = u32_at(f, 0);
    if u32_at(f, 4) as usize != count
        || u64_at(f, 8) != seq
        || u64_at(f, len - 8) != xxh3_64(&f[..len - 8])
    {
        return None;
    }
    let slots = || (0..count).map(|i| u64_at(f, 16 + 8 * i)).collect();
    match kind {
        LEARN => Some(Op::Learn(slots())),
        FORGET => Some(Op::Forget(slots())),
        _ => None,
    }
}

/// A parsed journal.
#[derive(Debug)]
pub struct Parsed {
    /// Slots `0..base` were live when the journal was started.
    pub base: u64,
    /// The seq of the first entry.
    pub first: u64,
    /// The committed changes, in order.
    pub ops: Vec<Op>,
    /// Where the committed entries end (what follows is a torn tail).
    pub end: u64,
    /// Where the last entry starts, when one of its copies is damaged (it must be rewritten
    /// before anything is appended).
    pub damaged_last: Option<u64>,
    /// What was wrong with the tail (an interrupted append), if anything: for the log.
    pub tail_note: Option<String>,
}

/// Parses a journal (`expect` = the header it must have, `extra` aside).
pub fn parse(bytes: &[u8], expect: &Header) -> std::result::Result<Parsed, String> {
    let header = parse_header(bytes, JOURNAL_MAGIC, expect)?;
    let (base, first) = (header.extra, header.seq);
    if first == 0 || first > u64::MAX / 2 {
        return Err(format!("its first entry's seq ({first}) is out of range"));
    }
    let mut ops = Vec::new();
    let mut at = HEADER_LEN;
    let mut end = at;
    let mut damaged_last = None;
    let mut tail_note = None;
    while at < bytes.len() {
        let seq = first + ops.len() as u64;
        let counts: Vec<u32> = (0..4)
            .filter_map(|i| bytes.get(at + 4 * i..at + 4 * i + 4).map(|b| u32_at(b, 0)))
            .collect();
        let count = counts
            .iter()
            .find(|&&c| counts.iter().filter(|&&o| o == c).count() >= 3)
            .map(|&c| c as usize);
        let found = count.map(|count| {
            let f1 = at + COUNTS_LEN;
            let f2 = f1 + frame_len(count);
            let end = f2 + frame_len(count);
            let frames = [
                frame_at(bytes, f1, count, seq),
                frame_at(bytes, f2, count, seq),
            ];
            (frames, end, counts.iter().all(|&c| c as usize == count))
        });
        match found {
            Some(([Some(a), Some(b)], entry_end, true)) if a == b => {
                ops.push(a);
                at = entry_end;
                end = at;
            }
            Some(([a, b], entry_end, _)) if a.is_some() || b.is_some() => {
                if entry_end < bytes.len() {
                    return Err(format!("entry {seq} (byte {at}) is damaged"));
                }
                if let (Some(a), Some(b)) = (&a, &b) {
                    if a != b {
                        return Err(format!("entry {seq} (byte {at}) has two different copies"));
                    }
                }
                tail_note = Some(format!(
                    "its last entry ({seq}) has a damaged copy (a write interrupted by a crash, \
                     or a flipped bit); the intact copy was used"
                ));
                ops.push(a.or(b).expect("one is valid"));
                damaged_last = Some(at as u64);
                at = bytes.len();
                end = at;
            }
            _ => {
                if let Some(later) = later_entry(bytes, at, seq) {
                    return Err(format!(
                        "entry {seq} (byte {at}) is damaged and entry {later} follows it"
                    ));
                }
                tail_note = Some(format!(
                    "it ends with an incomplete entry ({seq}, {} bytes): a call interrupted by a \
                     crash, which was not committed",
                    bytes.len() - at
                ));
                at = bytes.len();
            }
        }
    }
    Ok(Parsed {
        base,
        first,
        ops,
        end: end as u64,
        damaged_last,
        tail_note,
    })
}

/// The seq of a valid frame after byte `at` with seq > `seq`, if any (a damaged entry followed
/// by later ones is corruption, not a torn tail).
fn later_entry(bytes: &[u8], at: usize, seq: u64) -> Option<u64> {
    let span = (bytes.len() / 8) as u64;
    (at + 8..bytes.len().saturating_sub(24))
        .step_by(8)
        .find_map(|p| {
            let s = u64_at(bytes, p + 8);
            let count = u32_at(bytes, p + 4) as usize;
            let plausible = s > seq && s <= seq + span && count <= bytes.len() / 8;
            plausible
                .then(|| frame_at(bytes, p, count, s))
                .flatten()
                .map(|_| s)
        })
}

/// An open journal, appended to by one writer.
pub struct Journal {
    file: StoreFile,
    /// Where the next entry goes: the end of the committed entries.
    end: u64,
    first: u64,
    seq: u64,
}

impl Journal {
    /// Creates the journal `name` in `dir` with base `header.extra` and first seq
    /// `header.seq`, and syncs it (not the dir).
    pub fn create(dir: &Dir, name: &str, header: &Header) -> Result<Journal> {
        let file = dir.write_new(name, &encode_header(JOURNAL_MAGIC, header))?;
        Ok(Journal {
            file,
            end: HEADER_LEN as u64,
            first: header.seq,
            seq: header.seq,
        })
    }

    /// Continues a recovered journal: cuts a torn tail, rewrites a last entry with a damaged
    /// copy, and syncs.
    pub fn resume(file: StoreFile, parsed: &Parsed) -> Result<Journal> {
        let mut journal = Journal {
            file,
            end: parsed.end,
            first: parsed.first,
            seq: parsed.first + parsed.ops.len() as u64,
        };
        if let (Some(at), Some(op)) = (parsed.damaged_last, parsed.ops.last()) {
            let entry = encode_entry(journal.seq - 1, op);
            journal.file.write_at(&entry, at)?;
            journal.end = at + entry.len() as u64;
        }
        journal.cut_tail()?;
        Ok(journal)
    }

    /// Appends `op` and syncs: once this returns, the change is committed. On an error the
    /// entry may or may not be durable: call [`Journal::cut_tail`].
    pub fn commit(&mut self, op: &Op) -> Result<()> {
        let entry = encode_entry(self.seq, op);
        self.file.write_at(&entry, self.end)?;
        self.file.sync()?;
        self.end += entry.len() as u64;
        self.seq += 1;
        Ok(())
    }

    /// Cuts whatever follows the committed entries (an append that failed) and syncs, so that
    /// the failed entry is not committed whatever the disk kept of it.
    pub fn cut_tail(&self) -> Result<()> {
        self.file.set_len(self.end)?;
        self.file.sync()
    }

    /// The seq the next entry will have.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Entries since the journal was started.
    pub fn entries(&self) -> u64 {
        self.seq - self.first
    }

    /// Bytes of the journal.
    pub fn len(&self) -> u64 {
        self.end
    }

    pub fn file(&self) -> &StoreFile {
        &self.file
    }

    pub fn renamed(&mut self, to: std::path::PathBuf) {
        self.file.renamed(to);
    }
}
