//! The scikit-learn side of the evaluation: jobs for scripts/eval_sklearn.py and its results.

use std::path::{Path, PathBuf};

use crate::python::run_script;
use lethe::{Error, Result};

/// The scikit-learn side, relative to the source tree (like the other default paths).
const SKLEARN_SCRIPT: &str = "scripts/eval_sklearn.py";

/// Python jobs for one setup, run together.
pub struct Jobs {
    dir: PathBuf,
    jobs: Vec<serde_json::Value>,
}

impl Jobs {
    /// No jobs yet; their arrays and `jobs.json` go in `dir`.
    pub fn new(dir: &Path) -> Jobs {
        Jobs {
            dir: dir.to_path_buf(),
            jobs: Vec::new(),
        }
    }

    /// Writes `a` as `name` in the jobs' folder and returns `name` (jobs name their arrays
    /// relative to that folder).
    pub fn write<A: ndarray_npy::WritableElement>(
        &self,
        name: &str,
        a: &ndarray::ArrayD<A>,
    ) -> Result<String> {
        lethe::data::write(&self.dir.join(name), a)?;
        Ok(name.to_string())
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// How many jobs of this kind there are.
    pub fn count_of(&self, kind: &str) -> usize {
        self.jobs.iter().filter(|j| j["kind"] == kind).count()
    }

    pub fn push(&mut self, job: serde_json::Value) {
        self.jobs.push(job);
    }

    /// Runs every job; returns the results by job id.
    pub fn run(&self, python: &Path) -> Result<serde_json::Value> {
        let path = self.dir.join("jobs.json");
        let text = serde_json::json!({ "jobs": self.jobs }).to_string();
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        let out = run_script(python, SKLEARN_SCRIPT, &[&path])?;
        let value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
            Error::InvalidInput(format!("{SKLEARN_SCRIPT}: unreadable output: {e}"))
        })?;
        Ok(value["results"].clone())
    }
}

/// One number of one job's result.
pub fn number(results: &serde_json::Value, id: &str, field: &str) -> Result<f64> {
    results[id][field]
        .as_f64()
        .ok_or_else(|| Error::InvalidInput(format!("scikit-learn gave no {field} for {id}")))
}
