//! The sizes one run measures.

use std::time::Duration;

use crate::digits::MOBILENET;
use crate::tweets::MINILM;

/// The sizes one run measures.
pub struct Plan {
    /// (d, C, the n values to measure at); each (d, C) is one head grown through its n values.
    pub heads: Vec<(usize, usize, Vec<usize>)>,
    /// The k values forgotten at each n (those below n).
    pub ks: Vec<usize>,
    pub forget_repeats: usize,
    /// Pairs of one-sample forgets, without and with a key, for the encryption row.
    pub encryption_forget_pairs: usize,
    /// One-sample forgets issued back to back at the first head's largest n.
    pub back_to_back: usize,
    pub refit_repeats: usize,
    pub predict_batches: Vec<(&'static str, usize)>,
    pub predict_budget: Duration,
    pub learn: Vec<(&'static str, usize)>,
    pub learn_repeats: usize,
    pub open_repeats: usize,
    /// The real bundle and batch of the learn timed without and with a key.
    pub encryption_learn: (&'static str, usize),
}

impl Plan {
    /// A quick run (small sizes, few repeats) or the full one.
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                heads: vec![(256, 10, vec![1000, 4000])],
                ks: vec![1, 100],
                forget_repeats: 3,
                encryption_forget_pairs: 5,
                back_to_back: 50,
                refit_repeats: 3,
                predict_batches: vec![
                    ("mnist-core", 1),
                    ("mnist-core", 64),
                    (MOBILENET, 1),
                    (MINILM, 1),
                ],
                predict_budget: Duration::from_millis(300),
                learn: vec![("mnist-core", 64)],
                learn_repeats: 5,
                open_repeats: 3,
                encryption_learn: ("mnist-core", 64),
            }
        } else {
            Plan {
                heads: vec![
                    (1280, 100, vec![1000, 2000, 5000, 10_000, 20_000, 50_000]),
                    (128, 100, vec![1000, 10_000, 50_000]),
                    (2048, 100, vec![1000, 10_000, 50_000]),
                    (1280, 10, vec![1000, 10_000, 50_000]),
                    (1280, 1000, vec![1000, 10_000, 50_000]),
                ],
                ks: vec![1, 100, 1000],
                forget_repeats: 9,
                encryption_forget_pairs: 41,
                back_to_back: 1000,
                refit_repeats: 3,
                predict_batches: vec![
                    ("mnist-core", 1),
                    ("mnist-core", 64),
                    (MOBILENET, 1),
                    (MOBILENET, 64),
                    (MINILM, 1),
                    (MINILM, 32),
                ],
                predict_budget: Duration::from_secs(4),
                learn: vec![
                    ("mnist-core", 1),
                    ("mnist-core", 64),
                    (MOBILENET, 1),
                    (MOBILENET, 64),
                ],
                learn_repeats: 15,
                open_repeats: 5,
                encryption_learn: (MOBILENET, 64),
            }
        }
    }
}
