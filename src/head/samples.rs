//! Where a head's samples live: in memory ([`SampleSet`], a head without a state dir) or in a
//! state dir ([`Store`], where only the index is in memory and a row is read from its file
//! when it is forgotten or verified).

use crate::error::{Error, Result};
use crate::math::samples::{SampleIndex, SampleRef, SampleSet};
use crate::store::{StateKey, Store};

/// What committing a forget needs from reading its rows: the records' locations in a state
/// dir (none in memory).
pub struct Forgetting(Vec<u64>);

/// The samples of a head: the index and, wherever they live, the rows.
pub enum Samples {
    /// Rows in memory (a head without a state dir).
    Memory(SampleSet),
    /// Rows in a state dir.
    Stored(Box<Store>),
}

impl Samples {
    pub fn index(&self) -> &SampleIndex {
        match self {
            Samples::Memory(set) => set.index(),
            Samples::Stored(store) => store.index(),
        }
    }

    pub fn len(&self) -> usize {
        self.index().len()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.index().contains(id)
    }

    /// Adds samples whose ids are absent (checked by the caller); durably for a state dir.
    /// On error nothing changed.
    pub fn learn(&mut self, samples: &[SampleRef<'_>]) -> Result<()> {
        match self {
            Samples::Memory(set) => {
                for s in samples {
                    set.insert(*s);
                }
                Ok(())
            }
            Samples::Stored(store) => store.learn(samples),
        }
    }

    /// The first half of a forget, which changes nothing: appends the features of present,
    /// distinct ids to `q` and their targets to `r` (in the order of `ids`), so that the caller
    /// can subtract them from the statistics. Returns what [`Samples::forget_commit`] needs. On
    /// error nothing was appended.
    pub fn forget_rows(
        &mut self,
        ids: &[u64],
        q: &mut Vec<i32>,
        r: &mut Vec<i32>,
    ) -> Result<Forgetting> {
        match self {
            Samples::Memory(set) => {
                for &id in ids {
                    let s = set.get(id).expect("present: checked by the caller");
                    q.extend_from_slice(s.q);
                    r.extend_from_slice(s.r);
                }
                Ok(Forgetting(Vec::new()))
            }
            Samples::Stored(store) => store.forget_rows(ids, q, r).map(Forgetting),
        }
    }

    /// The second half of a forget: removes the ids whose rows [`Samples::forget_rows`] read
    /// (with no other call between); for a state dir, commits that and scrubs the rows from
    /// the files before returning. On error nothing changed.
    pub fn forget_commit(&mut self, ids: &[u64], forgetting: &Forgetting) -> Result<()> {
        match self {
            Samples::Memory(set) => {
                for &id in ids {
                    set.remove(id);
                }
                Ok(())
            }
            Samples::Stored(store) => store.forget_commit(ids, &forgetting.0),
        }
    }

    /// Whether committing a change writes to a state dir (and takes a sync).
    pub fn is_stored(&self) -> bool {
        matches!(self, Samples::Stored(_))
    }

    /// Removes every sample (scrubbing a state dir's files).
    pub fn forget_all(&mut self) -> Result<()> {
        match self {
            Samples::Memory(set) => {
                set.clear();
                Ok(())
            }
            Samples::Stored(store) => store.forget_all(),
        }
    }

    /// Seals a state dir under a new key (see [`Store::rekey`]).
    pub fn rekey(&mut self, new_key: &StateKey) -> Result<()> {
        match self {
            Samples::Memory(_) => Err(Error::Key(
                "this head has no state dir: there is nothing to encrypt".into(),
            )),
            Samples::Stored(store) => store.rekey(new_key),
        }
    }

    /// Calls `f` with consecutive batches of rows (features k × d, targets k × C) until every
    /// sample was seen once, in no particular order.
    pub fn for_each_batch(&self, f: &mut dyn FnMut(&[i32], &[i32])) -> Result<()> {
        match self {
            Samples::Memory(set) => {
                let (q, r) = set.rows();
                f(q, r);
                Ok(())
            }
            Samples::Stored(store) => store.for_each_batch(f),
        }
    }
}
