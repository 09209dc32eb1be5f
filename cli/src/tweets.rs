//! The labelled tweets of `tests/data` (three sentiment classes), fed to a text bundle.

use std::path::Path;

use crate::batches::Samples;
use lethe::data;
use lethe::math::secret::Zeroizing;
use lethe::{Error, Result};

/// The bundled text bundle.
pub const MINILM: &str = "minilm-l6-sentiment";

/// One split of the tweets: `tweets_<split>.txt` (one tweet per line) and its labels.
pub struct Tweets {
    pub texts: Vec<String>,
    pub labels: Vec<u32>,
}

impl Tweets {
    /// Reads `<dir>/tweets_<split>.txt` and `<dir>/tweets_<split>_labels.npy`, whose labels
    /// must be below `classes`.
    pub fn read(dir: &Path, split: &str, classes: usize) -> Result<Tweets> {
        let texts = data::read_lines(&dir.join(format!("tweets_{split}.txt")))?.to_vec();
        let labels: Vec<u32> = data::read_ids(&dir.join(format!("tweets_{split}_labels.npy")))?
            .into_iter()
            .map(|l| l as u32)
            .collect();
        if labels.len() != texts.len() || labels.iter().any(|&l| l as usize >= classes) {
            return Err(Error::InvalidInput(format!(
                "{}: {} tweets_{split} lines and {} labels, all below {classes}, are needed",
                dir.display(),
                texts.len(),
                labels.len()
            )));
        }
        Ok(Tweets { texts, labels })
    }

    /// The tweets of `rows`, as a command's samples.
    pub fn samples(&self, rows: &[usize]) -> Samples {
        Samples::Texts(Zeroizing::new(
            rows.iter().map(|&r| self.texts[r].clone()).collect(),
        ))
    }

    /// The tweets of `rows`, borrowed.
    pub fn texts(&self, rows: &[usize]) -> Vec<&str> {
        rows.iter().map(|&r| self.texts[r].as_str()).collect()
    }
}
