//! The store's file operations. Every step that changes the state dir on disk (creating,
//! writing, truncating or syncing a file; renaming, linking or removing a name; syncing the
//! dir) goes through here, so that tests can make any one of them fail or "crash" there
//! ([`failpoint`], test builds only). Reads change nothing and are not steps.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Zeros are written in pieces of this size.
const ZERO_CHUNK: usize = 1 << 20;

/// A file of the state dir, with its path for error messages.
pub(crate) struct StoreFile {
    file: File,
    path: PathBuf,
}

impl StoreFile {
    /// Opens an existing file for reading and writing.
    pub fn open(path: &Path) -> Result<StoreFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(StoreFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Creates a file private to the user (0600), truncating one that exists.
    pub fn create(path: &Path) -> Result<StoreFile> {
        step(Step::Create(path))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(StoreFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Records that the file was renamed to `to` (for error messages).
    pub fn renamed(&mut self, to: &Path) {
        self.path = to.to_path_buf();
    }

    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Reads exactly `buf.len()` bytes at `at`.
    pub fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The whole file (for the small files: meta, stats, journal).
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; self.len()? as usize];
        self.read_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    pub fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        step(Step::Write(self, at, bytes.len() as u64))?;
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        step(Step::SetLen(self, len))?;
        self.file.set_len(len).map_err(|e| Error::io(&self.path, e))
    }

    /// Makes the file's data and size durable (not its name: see [`sync_dir`]).
    pub fn sync(&self) -> Result<()> {
        if step(Step::Sync(self))? == Real::Yes {
            self.file
                .sync_data()
                .map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }

    /// Overwrites `[from, len)` with zeros (not synced).
    pub fn zero_from(&self, from: u64) -> Result<()> {
        let len = self.len()?;
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = from;
        while at < len {
            let n = (len - at).min(ZERO_CHUNK as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Whether `path` names this very file (same device and inode).
    pub fn is(&self, path: &Path) -> bool {
        match (self.file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
}

/// Renames `from` to `to`, replacing `to` (atomic; durable after [`sync_dir`]).
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    step(Step::Rename(from, to))?;
    fs::rename(from, to).map_err(|e| Error::io(to, e))
}

/// Gives the file `existing` a second name `new`.
pub(crate) fn link(existing: &Path, new: &Path) -> Result<()> {
    step(Step::Link(new))?;
    fs::hard_link(existing, new).map_err(|e| Error::io(new, e))
}

pub(crate) fn remove(path: &Path) -> Result<()> {
    step(Step::Remove(path))?;
    fs::remove_file(path).map_err(|e| Error::io(path, e))
}

/// Makes the names in `dir` (creations, renames, links, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    if step(Step::SyncDir)? == Real::Yes {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Overwrites a file with zeros, syncs it, removes it (not synced: the caller syncs the dir).
/// Nothing to do when it does not exist.
pub(crate) fn scrub(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let f = StoreFile::open(path)?;
    f.zero_from(0)?;
    f.sync()?;
    drop(f);
    remove(path)
}

/// One step, as the failpoints see it.
#[cfg_attr(not(test), allow(dead_code))]
enum Step<'a> {
    Create(&'a Path),
    Write(&'a StoreFile, u64, u64),
    SetLen(&'a StoreFile, u64),
    Sync(&'a StoreFile),
    Rename(&'a Path, &'a Path),
    /// The new name.
    Link(&'a Path),
    Remove(&'a Path),
    SyncDir,
}

/// Whether a sync must really be issued (failpoint tests model durability themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Real {
    Yes,
    #[cfg_attr(not(test), allow(dead_code))]
    No,
}

#[cfg(not(test))]
#[inline]
fn step(_: Step<'_>) -> Result<Real> {
    Ok(Real::Yes)
}

#[cfg(test)]
fn step(s: Step<'_>) -> Result<Real> {
    failpoint::step(s)
}

/// Fault injection for tests: the N-th step of this thread fails ([`Mode::Error`]), or the
/// process "dies" there ([`Mode::Crash`]: that step and every later one fail, as after a
/// kill -9), or the machine loses power there ([`Mode::PowerLoss`]: as a crash, and then
/// [`disarm`] undoes every change not yet made durable by a sync: file contents and sizes not
/// synced by [`StoreFile::sync`], names not synced by [`sync_dir`]), or loses power such that
/// the names reached the disk but unsynced data did not ([`Mode::PowerLossKeepNames`], as a
/// file system that journals metadata ahead of data can do). While armed, syncs are modelled,
/// not issued.
#[cfg(test)]
pub(crate) mod failpoint {
    use std::cell::RefCell;
    use std::fs::{self, File};
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::{Path, PathBuf};

    use super::{Real, Step};
    use crate::error::{Error, Result};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        Error,
        Crash,
        PowerLoss,
        PowerLossKeepNames,
    }

    /// How to undo one change that is not durable yet.
    enum Undo {
        /// File data or size: write `old` back at `at`, then set the length to `len`.
        Data {
            file: File,
            ino: u64,
            at: u64,
            old: Vec<u8>,
            len: u64,
        },
        /// A new name: remove it.
        Created(PathBuf),
        /// `from` was renamed to `to`; `replaced` keeps the file `to` named before.
        Renamed {
            from: PathBuf,
            to: PathBuf,
            replaced: Option<PathBuf>,
        },
        /// A removed name, kept alive under `hidden`.
        Removed { path: PathBuf, hidden: PathBuf },
    }

    struct Plan {
        mode: Mode,
        at: u64,
        steps: u64,
        crashed: bool,
        failed: bool,
        undo: Vec<Undo>,
        hidden: u64,
    }

    thread_local! {
        static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
    }

    /// Arms this thread: step number `at` (1-based) fails as `mode` says. `at` = 0 only counts.
    pub fn arm(mode: Mode, at: u64) {
        PLAN.with(|p| {
            *p.borrow_mut() = Some(Plan {
                mode,
                at,
                steps: 0,
                crashed: false,
                failed: false,
                undo: Vec::new(),
                hidden: 0,
            })
        });
    }

    pub fn is_armed() -> bool {
        PLAN.with(|p| p.borrow().is_some())
    }

    /// Disarms this thread (undoing what a power loss loses) and returns (steps taken, whether
    /// the failpoint fired).
    pub fn disarm() -> (u64, bool) {
        let plan = PLAN.with(|p| p.borrow_mut().take()).expect("armed");
        if plan.mode == Mode::PowerLoss && plan.crashed {
            for undo in plan.undo.into_iter().rev() {
                revert(undo);
            }
        } else if plan.mode == Mode::PowerLossKeepNames && plan.crashed {
            let (data, names): (Vec<Undo>, Vec<Undo>) = plan
                .undo
                .into_iter()
                .partition(|u| matches!(u, Undo::Data { .. }));
            data.into_iter().rev().for_each(revert);
            names.into_iter().for_each(forget_hidden);
        } else {
            for undo in plan.undo {
                forget_hidden(undo);
            }
        }
        (plan.steps, plan.failed)
    }

    fn revert(undo: Undo) {
        match undo {
            Undo::Data {
                file, at, old, len, ..
            } => {
                file.write_all_at(&old, at).expect("undo a write");
                file.set_len(len).expect("undo a size change");
            }
            Undo::Created(path) => fs::remove_file(path).expect("undo a creation"),
            Undo::Renamed { from, to, replaced } => {
                fs::rename(&to, from).expect("undo a rename");
                if let Some(hidden) = replaced {
                    fs::rename(hidden, to).expect("undo a replacement");
                }
            }
            Undo::Removed { path, hidden } => fs::rename(hidden, path).expect("undo a removal"),
        }
    }

    /// A change became durable: drop the copy kept to undo it.
    fn forget_hidden(undo: Undo) {
        match undo {
            Undo::Renamed {
                replaced: Some(hidden),
                ..
            }
            | Undo::Removed { hidden, .. } => fs::remove_file(hidden).expect("drop a hidden name"),
            _ => {}
        }
    }

    fn injected(what: &str) -> Error {
        Error::io(
            what,
            std::io::Error::other(format!("failpoint: injected failure of {what}")),
        )
    }

    pub(super) fn step(s: Step<'_>) -> Result<Real> {
        PLAN.with(|p| {
            let mut p = p.borrow_mut();
            let Some(plan) = p.as_mut() else {
                return Ok(Real::Yes);
            };
            if plan.crashed {
                return Err(injected("a step after the crash"));
            }
            plan.steps += 1;
            if plan.steps == plan.at {
                plan.failed = true;
                plan.crashed = plan.mode != Mode::Error;
                return Err(injected(&format!("step {}", plan.steps)));
            }
            if matches!(plan.mode, Mode::PowerLoss | Mode::PowerLossKeepNames) {
                record(plan, &s);
            }
            Ok(Real::No)
        })
    }

    fn hide(plan: &mut Plan, path: &Path) -> PathBuf {
        plan.hidden += 1;
        let hidden = path.with_file_name(format!(".failpoint-{}", plan.hidden));
        fs::hard_link(path, &hidden).expect("keep a name to undo");
        hidden
    }

    /// Remembers how to undo the step about to be taken.
    fn record(plan: &mut Plan, s: &Step<'_>) {
        match *s {
            Step::Create(path) => {
                if path.exists() {
                    let f = File::options().read(true).write(true).open(path).unwrap();
                    record_data(plan, &f, 0, u64::MAX);
                } else {
                    plan.undo.push(Undo::Created(path.to_path_buf()));
                }
            }
            Step::Write(f, at, n) => record_data(plan, &f.file, at, n),
            Step::SetLen(f, len) => {
                let cur = f.file.metadata().unwrap().len();
                record_data(plan, &f.file, len.min(cur), cur.saturating_sub(len));
            }
            Step::Sync(f) => {
                let ino = f.file.metadata().unwrap().ino();
                plan.undo
                    .retain(|u| !matches!(u, Undo::Data { ino: i, .. } if *i == ino));
            }
            Step::Rename(from, to) => {
                let replaced = to.exists().then(|| hide(plan, to));
                plan.undo.push(Undo::Renamed {
                    from: from.to_path_buf(),
                    to: to.to_path_buf(),
                    replaced,
                });
            }
            Step::Link(new) => plan.undo.push(Undo::Created(new.to_path_buf())),
            Step::Remove(path) => {
                let hidden = hide(plan, path);
                plan.undo.push(Undo::Removed {
                    path: path.to_path_buf(),
                    hidden,
                });
            }
            Step::SyncDir => {
                let (data, names): (Vec<Undo>, Vec<Undo>) = std::mem::take(&mut plan.undo)
                    .into_iter()
                    .partition(|u| matches!(u, Undo::Data { .. }));
                plan.undo = data;
                names.into_iter().for_each(forget_hidden);
            }
        }
    }

    /// Keeps the bytes `[at, at + n)` (those that exist) and the length of `f`.
    fn record_data(plan: &mut Plan, f: &File, at: u64, n: u64) {
        let meta = f.metadata().unwrap();
        let len = meta.len();
        let end = at.saturating_add(n).min(len);
        let mut old = vec![0u8; end.saturating_sub(at) as usize];
        f.read_exact_at(&mut old, at).unwrap();
        plan.undo.push(Undo::Data {
            file: f.try_clone().unwrap(),
            ino: meta.ino(),
            at,
            old,
            len,
        });
    }
}
