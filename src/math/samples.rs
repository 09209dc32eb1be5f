//! The samples a head holds: id, label and the fixed-point features and targets that were
//! summed into its statistics (so that forgetting subtracts exactly what learning added).
//!
//! Every head keeps a [`SampleIndex`] in memory (id → where the sample's row is, and its
//! label). The rows themselves live either in a [`SampleSet`] (in memory, for heads without a
//! state dir) or in a state dir (see `crate::store`), where only the index is in memory.
//!
//! Memory that held a row is zeroized before it is released or reused (G4), including the old
//! buffer when a row buffer grows.

use std::collections::HashMap;

use zeroize::{Zeroize, Zeroizing};

/// One sample's stored representation, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRef<'a> {
    pub id: u64,
    pub label: u32,
    pub q: &'a [i32],
    pub r: &'a [i32],
}

/// Where one sample's row is and its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The row (in memory) or where the record is in the state dir.
    pub pos: u64,
    pub label: u32,
}

/// The ids a head holds, where their rows are, and how many samples each class has.
#[derive(Debug, Clone, Default)]
pub struct SampleIndex {
    entries: HashMap<u64, Entry>,
    class_counts: Vec<u64>,
}

impl SampleIndex {
    pub fn new(classes: usize) -> SampleIndex {
        SampleIndex {
            entries: HashMap::new(),
            class_counts: vec![0; classes],
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    pub fn get(&self, id: u64) -> Option<Entry> {
        self.entries.get(&id).copied()
    }

    /// Adds an absent id (`label` < the number of classes; both checked by the caller).
    pub fn insert(&mut self, id: u64, entry: Entry) {
        let old = self.entries.insert(id, entry);
        debug_assert!(old.is_none(), "id {id} inserted twice");
        self.class_counts[entry.label as usize] += 1;
    }

    /// Removes an id, returning where its row was.
    pub fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.class_counts[entry.label as usize] -= 1;
        Some(entry)
    }

    /// Moves a present id's row.
    fn relocate(&mut self, id: u64, pos: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.pos = pos;
        }
    }

    /// The ids, sorted.
    pub fn sorted_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// All (id, entry) pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.entries.iter().map(|(&id, &e)| (id, e))
    }

    /// The number of samples per class.
    pub fn class_counts(&self) -> &[u64] {
        &self.class_counts
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.class_counts.fill(0);
    }
}

/// Rows in memory. Rows are kept dense: removing a row moves the last row into its place and
/// zeroizes the vacated memory.
#[derive(Debug, Clone, Default)]
pub struct SampleSet {
    dim: usize,
    classes: usize,
    index: SampleIndex,
    /// The id of each row.
    ids: Vec<u64>,
    q: Zeroizing<Vec<i32>>,
    r: Zeroizing<Vec<i32>>,
}

impl SampleSet {
    pub fn new(dim: usize, classes: usize) -> SampleSet {
        SampleSet {
            dim,
            classes,
            index: SampleIndex::new(classes),
            ..Default::default()
        }
    }

    pub fn index(&self) -> &SampleIndex {
        &self.index
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.index.contains(id)
    }

    pub fn get(&self, id: u64) -> Option<SampleRef<'_>> {
        self.index
            .get(id)
            .map(|e| self.row(e.pos as usize, e.label))
    }

    fn row(&self, row: usize, label: u32) -> SampleRef<'_> {
        SampleRef {
            id: self.ids[row],
            label,
            q: &self.q[row * self.dim..(row + 1) * self.dim],
            r: &self.r[row * self.classes..(row + 1) * self.classes],
        }
    }

    /// All features (`len` × d) and targets (`len` × C), row-major, in row order.
    pub fn rows(&self) -> (&[i32], &[i32]) {
        (&self.q, &self.r)
    }

    /// Adds a sample whose id is absent (checked by the caller).
    pub fn insert(&mut self, sample: SampleRef<'_>) {
        debug_assert!(!self.contains(sample.id));
        let row = self.ids.len() as u64;
        self.index.insert(
            sample.id,
            Entry {
                pos: row,
                label: sample.label,
            },
        );
        self.ids.push(sample.id);
        extend_zeroing(&mut self.q, sample.q);
        extend_zeroing(&mut self.r, sample.r);
    }

    /// Removes a present sample and zeroes the memory that held the last row.
    pub fn remove(&mut self, id: u64) {
        let Some(entry) = self.index.remove(id) else {
            return;
        };
        let row = entry.pos as usize;
        let last = self.ids.len() - 1;
        if row != last {
            self.ids[row] = self.ids[last];
            self.q
                .copy_within(last * self.dim..(last + 1) * self.dim, row * self.dim);
            self.r.copy_within(
                last * self.classes..(last + 1) * self.classes,
                row * self.classes,
            );
            self.index.relocate(self.ids[row], row as u64);
        }
        self.q[last * self.dim..].zeroize();
        self.r[last * self.classes..].zeroize();
        self.ids.truncate(last);
        self.q.truncate(last * self.dim);
        self.r.truncate(last * self.classes);
    }

    /// Removes every sample, zeroizing the memory that held them.
    pub fn clear(&mut self) {
        *self = SampleSet::new(self.dim, self.classes);
    }
}

/// Appends `data`, growing the buffer by hand so that the old allocation is zeroized before it
/// is freed (a plain `extend` would free it with the rows still in it).
fn extend_zeroing(v: &mut Vec<i32>, data: &[i32]) {
    if v.capacity() - v.len() < data.len() {
        let mut grown = Vec::with_capacity((v.len() + data.len()).max(2 * v.capacity()));
        grown.extend_from_slice(v);
        v.zeroize();
        std::mem::swap(v, &mut grown);
    }
    v.extend_from_slice(data);
}
