//! Scratch folders of the demo, the benchmarks and the evaluation: one the user names (kept),
//! or a fresh temporary one (removed when done).

use std::path::{Path, PathBuf};

use lethe::{Error, Result};

/// A scratch folder.
pub struct Scratch {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Scratch {
    /// `user`'s folder (created if absent; it must be empty, so that nothing left there by an
    /// earlier run is reused), or a new temporary folder named `prefix`….
    pub fn new(user: Option<&Path>, prefix: &str) -> Result<Scratch> {
        match user {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
                if entries.next().is_some() {
                    return Err(Error::InvalidInput(format!(
                        "{} is not empty: give a new or empty folder for scratch files",
                        dir.display()
                    )));
                }
                Ok(Scratch {
                    path: dir.to_path_buf(),
                    _temp: None,
                })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .map_err(|e| Error::io(std::env::temp_dir(), e))?;
                Ok(Scratch {
                    path: temp.path().to_path_buf(),
                    _temp: Some(temp),
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
