//! Erasing a state dir that cannot be opened (DESIGN.md G5: erasure is unconditional).

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::error::{Error, Result};

use super::format::{
    is_lethe_name, parse_bucket_name, BUCKET_MAGIC, JOURNAL_MAGIC, LEGACY_SAMPLES_MAGIC, META,
    NAMES, STATE_FORMAT, STATS_MAGIC,
};
use super::io::{Dir, Foreign, Kind};

/// What [`erase`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasedReport {
    /// Lethe's files that were overwritten with zeros, synced, truncated and removed.
    pub scrubbed: Vec<String>,
    /// Names of Lethe's files that were not provably Lethe's (a link, a file with other names
    /// or another owner, …): removed without writing anything, so whatever they point to or
    /// share is untouched (and may still hold data). Each with why.
    pub unlinked: Vec<String>,
    /// Names that are not Lethe's, left in place.
    pub kept: Vec<String>,
    /// Whether the state dir itself was removed (it was left empty and is not a link).
    pub dir_removed: bool,
}

/// Erases the state dir `path` whatever its state: corrupt, unsolvable, encrypted (no key is
/// needed), of this or an earlier format version, left by a crash, or on a full disk. It needs
/// no free space and parses nothing.
///
/// Every file with one of Lethe's names (of this format or format 4's) that is provably
/// Lethe's (a regular file with one name, owned by this user) is overwritten with zeros,
/// synced, truncated and removed: the bucket files first, `meta.json` last; other entries
/// with Lethe's names are removed without being written (links are never followed); other
/// names are left alone. Then the dir is removed if it is empty. A dir that does not exist is
/// nothing to erase.
///
/// Refused, with nothing changed, when a head has the state dir open (forget-all there), and
/// for a dir that does not look like a state dir: one that holds names that are not Lethe's
/// but no file that is provably Lethe's (a `meta.json` naming Lethe's format, or a file that
/// starts like one of Lethe's), so that a mistyped path never costs the user their own
/// `meta.json` or `journal`.
///
/// ```no_run
/// let report = lethe::store::erase(std::path::Path::new("/tmp/my-head"))?;
/// assert!(report.unlinked.is_empty());
/// # Ok::<(), lethe::Error>(())
/// ```
pub fn erase(path: &Path) -> Result<ErasedReport> {
    let Some(dir) = Dir::open(path, false)? else {
        return Ok(ErasedReport::default());
    };
    if !dir.try_lock()? {
        return Err(Error::state(
            path,
            "is open in another process or head: use forget-all there, or close it first",
        ));
    }
    erase_locked(&dir, path)
}

/// [`erase`] of `dir` (at `path`), whose lock this process holds.
pub(super) fn erase_locked(dir: &Dir, path: &Path) -> Result<ErasedReport> {
    let mut report = ErasedReport::default();
    let names = dir.list()?;
    let foreign_names = names.iter().any(|n| !is_lethe_name(n));
    if foreign_names && !looks_like_a_state_dir(dir, &names)? {
        return Err(Error::state(
            path,
            "does not look like a state dir (other files, and no file that is Lethe's: \
             neither a meta.json of Lethe's format nor a file with Lethe's header): nothing \
             was erased",
        ));
    }
    let mut buckets: Vec<String> = names
        .iter()
        .filter(|n| parse_bucket_name(n).is_some())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    buckets.sort();
    let mut any = false;
    for name in buckets.iter().map(String::as_str).chain(NAMES) {
        match dir.kind(OsStr::new(name))? {
            None => {}
            Some(Kind::Own) => {
                dir.scrub(name)?;
                report.scrubbed.push(name.to_string());
                any = true;
            }
            Some(Kind::Foreign(Foreign::Directory)) => report.kept.push(name.to_string()),
            Some(Kind::Foreign(why)) => {
                dir.remove(OsStr::new(name))?;
                report.unlinked.push(format!("{name} ({})", why.why()));
                any = true;
            }
        }
    }
    report.kept.extend(
        names
            .iter()
            .filter(|n| !is_lethe_name(n))
            .map(|n| n.to_string_lossy().into_owned()),
    );
    if any {
        dir.sync()?;
    }
    report.dir_removed = report.kept.is_empty() && dir.remove_self()?;
    tracing::info!(
        "state dir {}: erased {:?}{}",
        path.display(),
        report.scrubbed,
        if report.dir_removed {
            ", removed the dir"
        } else {
            ""
        }
    );
    Ok(report)
}

const MAGICS: [&[u8; 8]; 4] = [
    BUCKET_MAGIC,
    STATS_MAGIC,
    JOURNAL_MAGIC,
    LEGACY_SAMPLES_MAGIC,
];

/// How far into `meta.json` its format is looked for (Lethe writes it first).
const META_FORMAT_WITHIN: u64 = 4096;

/// Whether the dir has a file of Lethe's: a `meta.json` that names Lethe's format (whatever
/// else it says), or a file with one of Lethe's names that starts with one of its magics. A
/// file that merely has one of Lethe's names (a user's own `meta.json` or `journal`) is not.
pub(super) fn looks_like_a_state_dir(dir: &Dir, names: &[OsString]) -> Result<bool> {
    if dir.kind(OsStr::new(META))? == Some(Kind::Own) {
        if let Some(f) = dir.open_file(META)? {
            let mut head = vec![0u8; f.len()?.min(META_FORMAT_WITHIN) as usize];
            let format = format!("\"{STATE_FORMAT}\"");
            if f.read_at(&mut head, 0).is_ok()
                && head.windows(format.len()).any(|w| w == format.as_bytes())
            {
                return Ok(true);
            }
        }
    }
    for name in names.iter().filter(|n| is_lethe_name(n)) {
        if dir.kind(name)? != Some(Kind::Own) {
            continue;
        }
        let Some(f) = dir.open_file(&name.to_string_lossy())? else {
            continue;
        };
        let mut magic = [0u8; 8];
        if f.read_at(&mut magic, 0).is_ok() && MAGICS.contains(&&magic) {
            return Ok(true);
        }
    }
    Ok(false)
}
