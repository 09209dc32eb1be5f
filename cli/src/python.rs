//! Running the project's Python scripts (the scikit-learn baselines, the synthetic ONNX core)
//! with the Python of scripts/setup.sh.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use lethe::{Error, Result};

/// The Python scripts/setup.sh makes, relative to the source tree (like the other defaults).
pub const DEFAULT_PYTHON: &str = ".lethe/venv/bin/python";

/// Runs `python script args…` and returns what it printed on stdout.
pub fn run_script<S: AsRef<OsStr>>(python: &Path, script: &str, args: &[S]) -> Result<Vec<u8>> {
    if !python.is_file() {
        return Err(Error::InvalidInput(format!(
            "{} not found: it runs {script}; run scripts/setup.sh first (or pass --python)",
            python.display()
        )));
    }
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| Error::io(python, e))?;
    if !out.status.success() {
        return Err(Error::InvalidInput(format!(
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}
