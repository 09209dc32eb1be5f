//! The samples a head holds: id, label and the fixed-point features and targets that were
//! summed into its statistics (so that forgetting subtracts exactly what learning added).

use std::collections::HashMap;

/// One sample's stored representation, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRef<'a> {
    pub id: u64,
    pub label: u32,
    pub q: &'a [i32],
    pub r: &'a [i32],
}

/// The current sample set, in memory. Rows are kept dense: removing a row moves the last row
/// into its place and zeroes the vacated memory.
#[derive(Debug, Clone, Default)]
pub struct SampleSet {
    dim: usize,
    classes: usize,
    ids: Vec<u64>,
    labels: Vec<u32>,
    q: Vec<i32>,
    r: Vec<i32>,
    index: HashMap<u64, usize>,
}

impl SampleSet {
    pub fn new(dim: usize, classes: usize) -> SampleSet {
        SampleSet {
            dim,
            classes,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.index.contains_key(&id)
    }

    pub fn get(&self, id: u64) -> Option<SampleRef<'_>> {
        self.index.get(&id).map(|&row| self.row(row))
    }

    fn row(&self, row: usize) -> SampleRef<'_> {
        SampleRef {
            id: self.ids[row],
            label: self.labels[row],
            q: &self.q[row * self.dim..(row + 1) * self.dim],
            r: &self.r[row * self.classes..(row + 1) * self.classes],
        }
    }

    /// All samples, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = SampleRef<'_>> {
        (0..self.len()).map(|row| self.row(row))
    }

    /// The ids, sorted.
    pub fn sorted_ids(&self) -> Vec<u64> {
        let mut ids = self.ids.clone();
        ids.sort_unstable();
        ids
    }

    /// The number of samples per class.
    pub fn class_counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Adds a sample whose id is absent (checked by the caller).
    pub fn insert(&mut self, sample: SampleRef<'_>) {
        debug_assert!(!self.contains(sample.id));
        self.index.insert(sample.id, self.ids.len());
        self.ids.push(sample.id);
        self.labels.push(sample.label);
        self.q.extend_from_slice(sample.q);
        self.r.extend_from_slice(sample.r);
    }

    /// Removes a present sample and zeroes the memory that held the last row.
    pub fn remove(&mut self, id: u64) {
        let Some(row) = self.index.remove(&id) else {
            return;
        };
        let last = self.ids.len() - 1;
        if row != last {
            self.ids[row] = self.ids[last];
            self.labels[row] = self.labels[last];
            self.q
                .copy_within(last * self.dim..(last + 1) * self.dim, row * self.dim);
            self.r.copy_within(
                last * self.classes..(last + 1) * self.classes,
                row * self.classes,
            );
            self.index.insert(self.ids[row], row);
        }
        self.q[last * self.dim..].fill(0);
        self.r[last * self.classes..].fill(0);
        self.ids.truncate(last);
        self.labels.truncate(last);
        self.q.truncate(last * self.dim);
        self.r.truncate(last * self.classes);
    }

    /// Removes every sample, zeroing the memory that held them.
    pub fn clear(&mut self) {
        self.q.fill(0);
        self.r.fill(0);
        self.ids.fill(0);
        self.labels.fill(0);
        *self = SampleSet::new(self.dim, self.classes);
    }
}
