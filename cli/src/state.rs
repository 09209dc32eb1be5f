//! State dirs from the command line: which bundle a state dir belongs to, and putting back
//! what was at a state dir's path when a learn that created it failed.

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

/// What was at a path before a learn made it a state dir: an empty dir (a learn refuses any
/// other), or nothing, under parents that may not exist either.
pub struct Creation {
    dir: PathBuf,
    existed: bool,
    /// The parents of `dir` that do not exist yet, deepest first.
    new_parents: Vec<PathBuf>,
}

impl Creation {
    pub fn before(dir: &Path) -> Creation {
        let absent = |a: &Path| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err();
        Creation {
            dir: dir.to_path_buf(),
            existed: !absent(dir),
            new_parents: dir
                .ancestors()
                .skip(1)
                .take_while(|a| absent(a))
                .map(Path::to_path_buf)
                .collect(),
        }
    }

    /// After a failed learn erased the state dir it created (which removes the dir): makes
    /// the empty dir again if there was one, else removes the parents the learn created,
    /// deepest first, as long as they are empty (another process may be using them).
    pub fn put_back(self) -> Result<()> {
        if self.existed {
            if !self.dir.exists() {
                std::fs::create_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
            }
            return Ok(());
        }
        for dir in &self.new_parents {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
        Ok(())
    }
}
