//! State dirs from the command line: which bundle a state dir belongs to, and removing what a
//! failed learn created.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use lethe::store::recorded_bundle;
use lethe::{Bundle, Error, Result};

/// Where the bundle a state dir records is looked for, relative to the current dir.
const MODELS: &str = "models";

/// The bundle of the head in `state`: `given` (`--bundle`) if any, else the one `state` records
/// (found at `models/<its name>` and checked against its core sha256), else, for a path that
/// is not a state dir yet, `new` (`None`: the command needs an existing state dir).
pub fn bundle_for(state: &Path, given: Option<&Path>, new: Option<&Path>) -> Result<Bundle> {
    if let Some(dir) = given {
        return Bundle::open(dir);
    }
    match (recorded_bundle(state)?, new) {
        (Some((name, sha256)), _) => recorded(state, &name, &sha256),
        (None, Some(dir)) => Bundle::open(dir),
        (None, None) => Err(Error::state(
            state,
            "is not a state dir (it does not exist or has no meta.json); only `lethe learn` \
             creates one",
        )),
    }
}

/// `models/<name>`, if its core's sha256 is `sha256`.
fn recorded(state: &Path, name: &str, sha256: &str) -> Result<Bundle> {
    let mut parts = Path::new(name).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return Err(Error::state(
            state,
            format!("records the bundle name {name:?}, which is not a folder name: pass --bundle"),
        ));
    }
    let dir = Path::new(MODELS).join(name);
    if !dir.is_dir() {
        return Err(Error::state(
            state,
            format!(
                "belongs to bundle {name:?}, which is not at {}: pass --bundle with its folder",
                dir.display()
            ),
        ));
    }
    let bundle = Bundle::open(&dir)?;
    if bundle.core_sha256() != sha256 {
        return Err(Error::state(
            state,
            format!(
                "belongs to bundle {name:?} with core sha256 {sha256}, but the core at {} has \
                 sha256 {}: pass --bundle with the bundle the state dir was made with",
                dir.display(),
                bundle.core_sha256()
            ),
        ));
    }
    Ok(bundle)
}

/// What is in and above a path before a learn makes it a state dir, so that a failed learn
/// can remove exactly what it created.
pub struct Creation {
    dir: PathBuf,
    /// `dir` and those of its parents that do not exist yet, deepest first.
    new_dirs: Vec<PathBuf>,
    /// What `dir` held, if it existed.
    before: HashSet<OsString>,
}

impl Creation {
    pub fn before(dir: &Path) -> Result<Creation> {
        let new_dirs: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
            .map(Path::to_path_buf)
            .collect();
        let before = if new_dirs.is_empty() {
            names(dir)?
        } else {
            HashSet::new()
        };
        Ok(Creation {
            dir: dir.to_path_buf(),
            new_dirs,
            before,
        })
    }

    /// Removes the files that appeared in the dir since [`Creation::before`], then the dirs
    /// that did not exist, deepest first. Anything else found there stays (and a dir that is
    /// not empty then stays too: the error says so).
    pub fn undo(self) -> Result<()> {
        if self.dir.is_dir() {
            for name in names(&self.dir)?.difference(&self.before) {
                let path = self.dir.join(name);
                let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
                if meta.is_file() {
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
            }
        }
        for dir in &self.new_dirs {
            std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }
}

/// The names in a dir.
fn names(dir: &Path) -> Result<HashSet<OsString>> {
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|entry| entry.map(|e| e.file_name()).map_err(|e| Error::io(dir, e)))
        .collect()
}
