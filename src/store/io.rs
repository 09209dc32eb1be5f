//! The store's file operations. Every file of a state dir is reached through the dir's own
//! descriptor ([`Dir`]), by name, without following links, and is checked to be a regular file
//! with one name, owned by this process's user, before anything reads, writes or scrubs it: a
//! link planted in the state dir is refused, never written through (DESIGN.md G5).
//!
//! Every step that changes the state dir on disk (creating a dir or a file, writing, truncating
//! or syncing a file, renaming or removing a name, syncing a dir) goes through here, so that
//! tests can make any one of them fail, "crash" there, lose power there or run out of space
//! ([`failpoint`], test builds only). Reads change nothing and are not steps.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::math::threads::run_parts;

/// Zeros are written in pieces of this size.
const ZERO_CHUNK: usize = 1 << 20;

/// A state dir, open: its descriptor, and its path for messages.
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a name in a state dir is, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file with one name, owned by this process's user: one Lethe may write.
    Own,
    /// Anything else, with why Lethe must not write it.
    Foreign(Foreign),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Foreign {
    Link,
    Directory,
    Special,
    HardLinked(u64),
    OtherUser(u32),
}

impl Foreign {
    /// Why a file with this name is refused.
    pub fn why(self) -> String {
        match self {
            Foreign::Link => {
                "is a symbolic link: Lethe never makes one and never writes through one".into()
            }
            Foreign::Directory => "is a directory".into(),
            Foreign::Special => "is not a regular file".into(),
            Foreign::HardLinked(n) => format!(
                "has {n} names (hard links): writing or scrubbing it would change the others too"
            ),
            Foreign::OtherUser(uid) => format!("belongs to another user (uid {uid})"),
        }
    }
}

fn cstring(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| Error::InvalidInput(format!("{name:?} holds a NUL byte")))
}

fn os_error(path: &Path) -> Error {
    Error::io(path, io::Error::last_os_error())
}

/// Retries a libc call interrupted by a signal; returns its result or the error.
fn retry(mut call: impl FnMut() -> libc::c_int) -> io::Result<libc::c_int> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

// nlink_t is not u64 on every target.
#[allow(clippy::unnecessary_cast)]
fn kind_of(st: &libc::stat) -> Kind {
    let fmt = st.st_mode & libc::S_IFMT;
    let foreign = match fmt {
        libc::S_IFLNK => Some(Foreign::Link),
        libc::S_IFDIR => Some(Foreign::Directory),
        libc::S_IFREG if st.st_nlink != 1 => Some(Foreign::HardLinked(st.st_nlink as u64)),
        // SAFETY: geteuid cannot fail.
        libc::S_IFREG if st.st_uid != unsafe { libc::geteuid() } => {
            Some(Foreign::OtherUser(st.st_uid))
        }
        libc::S_IFREG => None,
        _ => Some(Foreign::Special),
    };
    foreign.map_or(Kind::Own, Kind::Foreign)
}

/// The dir that holds `path` ("." for a bare name).
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Dir {
    /// Opens the state dir at `path` (a link to a directory is followed: the directory is the
    /// state dir), creating it and any missing parent (0700) when `create` allows; the parent
    /// of every dir created is synced, so that the new name survives a power loss. `Ok(None)`:
    /// `path` does not exist and `create` is false.
    pub fn open(path: &Path, create: bool) -> Result<Option<Dir>> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                make_dirs(path)?;
            }
            Err(e) => return Err(Error::io(path, e)),
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(path).map_err(|e| Error::io(path, e))?;
                match std::fs::metadata(path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(Error::state(
                            path,
                            format!(
                                "is a symbolic link to {target:?}, which does not exist; Lethe \
                                 does not create a state dir through a link: create that \
                                 directory first, or give the state dir's own path"
                            ),
                        ))
                    }
                    Err(e) => return Err(Error::io(path, e)),
                    Ok(m) if !m.is_dir() => {
                        return Err(Error::state(
                            path,
                            format!("is a symbolic link to {target:?}, which is not a directory"),
                        ))
                    }
                    Ok(_) => {}
                }
            }
            Ok(m) if !m.is_dir() => return Err(Error::state(path, "is not a directory")),
            Ok(_) => {}
        }
        let c = cstring(path.as_os_str())?;
        // SAFETY: `c` is NUL-terminated; the descriptor returned is owned below.
        let fd = retry(|| unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| Error::io(path, e))?;
        Ok(Some(Dir {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Makes the dir private to its user (0700).
    pub fn make_private(&self) -> Result<()> {
        // SAFETY: fchmod on a descriptor we own.
        retry(|| unsafe { libc::fchmod(self.fd.as_raw_fd(), 0o700) })
            .map(drop)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Takes the state dir's lock: an exclusive `flock` on the dir itself, which (unlike a lock
    /// file) no one can delete or swap while it is held. `false`: someone else holds it.
    pub fn try_lock(&self) -> Result<bool> {
        // SAFETY: flock on a descriptor we own.
        match retry(|| unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// The names in the dir (without `.` and `..`).
    pub fn list(&self) -> Result<Vec<OsString>> {
        // A descriptor of its own, so that reading the dir never moves another one's offset.
        // SAFETY: openat with a NUL-terminated name; the result is owned by `fdopendir` below.
        let fd = retry(|| unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| Error::io(&self.path, e))?;
        // SAFETY: `fd` is an open dir descriptor; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let e = os_error(&self.path);
            // SAFETY: the stream did not take the descriptor.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut names = Vec::new();
        let outcome = loop {
            // SAFETY: errno is thread-local; readdir on a valid stream.
            unsafe { *libc::__errno_location() = 0 };
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let e = io::Error::last_os_error();
                break match e.raw_os_error() {
                    Some(0) | None => Ok(()),
                    _ => Err(Error::io(&self.path, e)),
                };
            }
            // SAFETY: d_name is NUL-terminated within the entry, valid until the next readdir.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            let name = OsStr::from_bytes(name.to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        };
        // SAFETY: closes the stream and its descriptor once.
        unsafe { libc::closedir(stream) };
        outcome.map(|()| names)
    }

    /// What `name` is (`None`: absent), without following a link.
    pub fn kind(&self, name: &OsStr) -> Result<Option<Kind>> {
        let c = cstring(name)?;
        // SAFETY: `st` is written by fstatat before it is read.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = retry(|| unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        });
        match r {
            Ok(_) => Ok(Some(kind_of(&st))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.path.join(name), e)),
        }
    }

    /// Whether `name` exists (as anything).
    pub fn has(&self, name: &str) -> Result<bool> {
        Ok(self.kind(OsStr::new(name))?.is_some())
    }

    /// Opens the file `name` for reading and writing (`None`: absent). Anything but a regular
    /// file with one name owned by this user is refused with an error that names it, before
    /// a byte is read or written.
    pub fn open_file(&self, name: &str) -> Result<Option<StoreFile>> {
        let path = self.path.join(name);
        let c = cstring(OsStr::new(name))?;
        // SAFETY: openat with a NUL-terminated name; the descriptor is owned below. O_NOFOLLOW
        // refuses a link as the last component; O_NONBLOCK keeps a planted FIFO from blocking.
        let fd = retry(|| unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDWR
                    | libc::O_NOFOLLOW
                    | libc::O_CLOEXEC
                    | libc::O_NOCTTY
                    | libc::O_NONBLOCK,
            )
        });
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(refused(&self.path, name, Foreign::Link))
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an open descriptor into a local.
        retry(|| unsafe { libc::fstat(file.as_raw_fd(), &mut st) })
            .map_err(|e| Error::io(&path, e))?;
        match kind_of(&st) {
            Kind::Own => Ok(Some(StoreFile { file, path })),
            Kind::Foreign(why) => Err(refused(&self.path, name, why)),
        }
    }

    /// Creates the file `name` (0600). A leftover of that name (which only an interrupted call
    /// leaves) is scrubbed first.
    pub fn create_file(&self, name: &str) -> Result<StoreFile> {
        self.scrub(name)?;
        let path = self.path.join(name);
        step(Step::Create(&path))?;
        let c = cstring(OsStr::new(name))?;
        // SAFETY: as in `open_file`; O_EXCL: the name was just freed, and a link cannot be
        // created through.
        let fd = retry(|| unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })
        .map_err(|e| Error::io(&path, e))?;
        Ok(StoreFile {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            file: File::from(unsafe { OwnedFd::from_raw_fd(fd) }),
            path,
        })
    }

    /// Creates `name` with `bytes` and syncs it (not the dir).
    pub fn write_new(&self, name: &str, bytes: &[u8]) -> Result<StoreFile> {
        let f = self.write_unsynced(name, bytes)?;
        f.sync()?;
        Ok(f)
    }

    /// Creates `name` with `bytes`, not synced (see [`sync_all`]).
    pub fn write_unsynced(&self, name: &str, bytes: &[u8]) -> Result<StoreFile> {
        let f = self.create_file(name)?;
        f.write_at(bytes, 0)?;
        Ok(f)
    }

    /// Renames `from` to `to`, replacing `to` (atomic; durable after [`Dir::sync`]). Names are
    /// not followed: a link is renamed or replaced, never its target.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (pf, pt) = (self.path.join(from), self.path.join(to));
        step(Step::Rename(&pf, &pt))?;
        let (cf, ct) = (cstring(OsStr::new(from))?, cstring(OsStr::new(to))?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: renameat with NUL-terminated names relative to our descriptor.
        retry(|| unsafe { libc::renameat(fd, cf.as_ptr(), fd, ct.as_ptr()) })
            .map(drop)
            .map_err(|e| Error::io(pt, e))
    }

    /// Removes the name `name` (a file or a link; never what a link points to).
    pub fn remove(&self, name: &OsStr) -> Result<()> {
        let path = self.path.join(name);
        step(Step::Remove(&path))?;
        let c = cstring(name)?;
        // SAFETY: unlinkat with a NUL-terminated name relative to our descriptor.
        retry(|| unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
            .map(drop)
            .map_err(|e| Error::io(path, e))
    }

    /// Makes the names in the dir (creations, renames, removals) durable.
    pub fn sync(&self) -> Result<()> {
        if step(Step::SyncDir(&self.path))? == Real::Yes {
            // SAFETY: fsync on a descriptor we own.
            retry(|| unsafe { libc::fsync(self.fd.as_raw_fd()) })
                .map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }

    /// Scrubs the file `name` if it exists: overwrites it with zeros, syncs it, frees its space
    /// (truncation frees blocks at once, even while a descriptor is open) and removes its name
    /// (not synced: the caller syncs the dir). Refused, untouched, unless provably Lethe's (see
    /// [`Dir::open_file`]). Returns whether there was one.
    pub fn scrub(&self, name: &str) -> Result<bool> {
        Ok(self.scrub_all(&[name])? == 1)
    }

    /// [`Dir::scrub`] for each of `names` that exists, with the syncs of their zeros in flight
    /// together ([`sync_all`]). Returns how many there were.
    pub fn scrub_all(&self, names: &[impl AsRef<str>]) -> Result<usize> {
        let mut found = Vec::with_capacity(names.len());
        let mut files = Vec::with_capacity(names.len());
        for name in names.iter().map(AsRef::as_ref) {
            if let Some(f) = self.open_file(name)? {
                f.zero_from(0)?;
                found.push(name);
                files.push(f);
            }
        }
        sync_all(&files)?;
        let count = files.len();
        for (name, f) in found.into_iter().zip(files) {
            f.set_len(0)?;
            drop(f);
            self.remove(OsStr::new(name))?;
        }
        Ok(count)
    }

    /// Removes the empty dir itself and syncs its parent. `false`: it is not empty (or is
    /// reached through a link, which is left alone).
    pub fn remove_self(&self) -> Result<bool> {
        if !self.list()?.is_empty()
            || std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Ok(false);
        }
        step(Step::RemoveDir(&self.path))?;
        std::fs::remove_dir(&self.path).map_err(|e| Error::io(&self.path, e))?;
        sync_path(&parent_of(&self.path))?;
        Ok(true)
    }
}

/// The error for a name that is not provably Lethe's.
pub(crate) fn refused(dir: &Path, name: &str, why: Foreign) -> Error {
    Error::state(
        dir,
        format!(
            "{name} {}; nothing was written. Remove it if it is not yours, or erase the state \
             dir",
            why.why()
        ),
    )
}

/// Syncs the dir at `path` (a parent whose entries changed).
fn sync_path(path: &Path) -> Result<()> {
    if step(Step::SyncDir(path))? == Real::Yes {
        File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Creates `path` and its missing parents (0700), syncing each one's parent.
fn make_dirs(path: &Path) -> Result<()> {
    let mut missing = vec![path.to_path_buf()];
    let mut at = path.parent();
    while let Some(p) = at.filter(|p| !p.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(p).is_ok() {
            break;
        }
        missing.push(p.to_path_buf());
        at = p.parent();
    }
    for dir in missing.iter().rev() {
        step(Step::MakeDir(dir))?;
        let c = cstring(dir.as_os_str())?;
        // SAFETY: mkdir with a NUL-terminated path.
        match retry(|| unsafe { libc::mkdir(c.as_ptr(), 0o700) }) {
            Ok(_) => {}
            // Made meanwhile by someone else: what it is gets checked by the caller.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(dir, e)),
        }
        sync_path(&parent_of(dir))?;
    }
    Ok(())
}

/// [`StoreFile::sync`] for every file in `files`, with the syncs in flight together, one thread
/// each: a journaling file system commits concurrent syncs together, where one after another
/// each waits for a commit of its own. The steps a test injects faults at are taken on this
/// thread, in the files' order.
pub fn sync_all(files: &[StoreFile]) -> Result<()> {
    let mut real = Vec::with_capacity(files.len());
    for f in files {
        if step(Step::Sync(f))? == Real::Yes {
            real.push(f);
        }
    }
    // The first error is kept.
    let result = Mutex::new(Ok(()));
    run_parts(real, |f| {
        let synced = f.sync_now();
        let mut result = result.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_ok() {
            *result = synced;
        }
    });
    result.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// A file of the state dir, with its path for error messages.
pub(crate) struct StoreFile {
    file: File,
    path: PathBuf,
}

impl StoreFile {
    /// Records that the file was renamed to `to` (for error messages).
    pub fn renamed(&mut self, to: PathBuf) {
        self.path = to;
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
        step(Step::Write(self, at, bytes))?;
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        step(Step::SetLen(self, len))?;
        self.file.set_len(len).map_err(|e| Error::io(&self.path, e))
    }

    /// Makes the file's data and size durable (not its name: see [`Dir::sync`]).
    pub fn sync(&self) -> Result<()> {
        if step(Step::Sync(self))? == Real::Yes {
            self.sync_now()?;
        }
        Ok(())
    }

    fn sync_now(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
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

    /// Overwrites the whole file with zeros, syncs, and truncates it to nothing (which frees
    /// its space at once). Needs no free space.
    pub fn scrub_in_place(&self) -> Result<()> {
        self.zero_from(0)?;
        self.sync()?;
        self.set_len(0)
    }
}

/// One step, as the failpoints see it.
#[cfg_attr(not(test), allow(dead_code))]
enum Step<'a> {
    /// A new dir (its name is in its parent).
    MakeDir(&'a Path),
    Create(&'a Path),
    Write(&'a StoreFile, u64, &'a [u8]),
    SetLen(&'a StoreFile, u64),
    Sync(&'a StoreFile),
    Rename(&'a Path, &'a Path),
    Remove(&'a Path),
    RemoveDir(&'a Path),
    SyncDir(&'a Path),
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

/// Fault injection for tests. Armed on one thread with a [`Mode`] and a step number N (1-based;
/// 0 only counts): the N-th step fails ([`Mode::Error`]), or the process "dies" there
/// ([`Mode::Crash`]: that step and every later one fail, as after a kill -9), or the machine
/// loses power there and [`disarm`] leaves the files as the disk would hold them after reboot:
/// - [`Mode::PowerLoss`]: nothing that was not synced survives (file contents and sizes not
///   synced by [`StoreFile::sync`], names not synced by [`Dir::sync`] of their dir);
/// - [`Mode::PowerLossKeepNames`]: every name change survives, no unsynced data (a file system
///   that journals metadata ahead of data);
/// - [`Mode::PowerLossTorn`]: a random subset (by the seed) of the unsynced writes and size
///   changes survives, in order, the last one possibly torn (a prefix of it written), and a
///   random prefix of the unsynced name changes (as SQLite's crash tests model a disk);
///
/// or the disk is full from step N on ([`Mode::NoSpace`]: a write that would grow the space in
/// use fails with ENOSPC after writing what fits, unless earlier truncations freed enough).
/// While armed, syncs are modelled, not issued.
#[cfg(test)]
pub(crate) mod failpoint {
    use std::cell::RefCell;
    use std::fs::{self, File};
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::{Path, PathBuf};

    use super::{parent_of, Real, Step};
    use crate::error::{Error, Result};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        Error,
        Crash,
        PowerLoss,
        PowerLossKeepNames,
        PowerLossTorn(u64),
        NoSpace,
    }

    impl Mode {
        fn power_loss(self) -> bool {
            matches!(
                self,
                Mode::PowerLoss | Mode::PowerLossKeepNames | Mode::PowerLossTorn(_)
            )
        }
    }

    /// A change to a file's bytes or size, not synced yet.
    enum DataOp {
        Write(u64, Vec<u8>),
        SetLen(u64),
    }

    /// A file with unsynced changes: what the disk holds (as of its last sync) and the changes.
    struct Unsynced {
        file: File,
        ino: u64,
        durable: Vec<u8>,
        ops: Vec<DataOp>,
    }

    /// How to undo one name change that is not durable yet.
    enum Undo {
        /// A new name (file or dir): remove it.
        Created(PathBuf),
        MadeDir(PathBuf),
        /// `from` was renamed to `to`; `replaced` keeps the file `to` named before.
        Renamed {
            from: PathBuf,
            to: PathBuf,
            replaced: Option<PathBuf>,
        },
        /// A removed name, kept alive under `hidden`.
        Removed {
            path: PathBuf,
            hidden: PathBuf,
        },
        /// A removed (empty) dir.
        RemovedDir(PathBuf),
    }

    struct NameOp {
        /// The dir whose sync makes it durable.
        dir: PathBuf,
        undo: Undo,
    }

    struct Plan {
        mode: Mode,
        at: u64,
        steps: u64,
        crashed: bool,
        failed: bool,
        files: Vec<Unsynced>,
        names: Vec<NameOp>,
        /// The last unsynced data change: (inode, index in its ops).
        last: Option<(u64, usize)>,
        hidden: u64,
        /// [`Mode::NoSpace`] once the disk is full: bytes freed since.
        free: Option<u64>,
        /// Files synced (not dirs).
        syncs: u64,
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
                files: Vec::new(),
                names: Vec::new(),
                last: None,
                hidden: 0,
                free: None,
                syncs: 0,
            })
        });
    }

    pub fn is_armed() -> bool {
        PLAN.with(|p| p.borrow().is_some())
    }

    /// Files synced so far on this thread since it was armed.
    pub fn syncs() -> u64 {
        PLAN.with(|p| p.borrow().as_ref().map_or(0, |plan| plan.syncs))
    }

    /// Steps taken so far on this thread since it was armed.
    pub fn steps() -> u64 {
        PLAN.with(|p| p.borrow().as_ref().map_or(0, |plan| plan.steps))
    }

    /// Disarms this thread (leaving what a power loss leaves) and returns (steps taken,
    /// whether the failpoint fired).
    pub fn disarm() -> (u64, bool) {
        let plan = PLAN.with(|p| p.borrow_mut().take()).expect("armed");
        let lost = plan.crashed && plan.mode.power_loss();
        let mut rng = Rng(match plan.mode {
            Mode::PowerLossTorn(seed) => seed,
            _ => 0,
        });
        if lost {
            for f in plan.files {
                let last = plan.last.filter(|l| l.0 == f.ino).map(|l| l.1);
                let mut image = f.durable;
                for (i, op) in f.ops.iter().enumerate() {
                    let keep = match plan.mode {
                        Mode::PowerLossTorn(_) => rng.next() & 1 == 1,
                        _ => false,
                    };
                    let torn = matches!(plan.mode, Mode::PowerLossTorn(_)) && last == Some(i);
                    match op {
                        DataOp::Write(at, bytes) if keep || torn => {
                            let n = if torn {
                                (rng.next() % (bytes.len() as u64 + 1)) as usize
                            } else {
                                bytes.len()
                            };
                            let end = *at as usize + n;
                            if image.len() < end {
                                image.resize(end, 0);
                            }
                            image[*at as usize..end].copy_from_slice(&bytes[..n]);
                        }
                        DataOp::SetLen(len) if keep => image.resize(*len as usize, 0),
                        _ => {}
                    }
                }
                f.file.set_len(0).expect("undo: truncate");
                f.file.write_all_at(&image, 0).expect("undo: write back");
            }
        }
        let keep = match (lost, plan.mode) {
            (false, _) | (true, Mode::PowerLossKeepNames) => plan.names.len(),
            (true, Mode::PowerLossTorn(_)) => (rng.next() % (plan.names.len() as u64 + 1)) as usize,
            (true, _) => 0,
        };
        let mut names = plan.names;
        for op in names.drain(keep..).rev() {
            revert(op.undo);
        }
        for op in names {
            forget_hidden(op.undo);
        }
        (plan.steps, plan.failed)
    }

    /// splitmix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
            let mut x = self.0;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
            x ^ (x >> 31)
        }
    }

    fn revert(undo: Undo) {
        match undo {
            Undo::Created(path) => fs::remove_file(path).expect("undo a creation"),
            Undo::MadeDir(path) => fs::remove_dir_all(path).expect("undo a new dir"),
            Undo::Renamed { from, to, replaced } => {
                fs::rename(&to, from).expect("undo a rename");
                if let Some(hidden) = replaced {
                    fs::rename(hidden, to).expect("undo a replacement");
                }
            }
            Undo::Removed { path, hidden } => fs::rename(hidden, path).expect("undo a removal"),
            Undo::RemovedDir(path) => fs::create_dir(path).expect("undo a dir removal"),
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
            if matches!(s, Step::Sync(_)) {
                plan.syncs += 1;
            }
            if plan.mode == Mode::NoSpace {
                if plan.at > 0 && plan.steps >= plan.at && plan.free.is_none() {
                    plan.free = Some(0);
                }
                return no_space(plan, &s).map(|()| Real::No);
            }
            if plan.steps == plan.at {
                plan.failed = true;
                plan.crashed = plan.mode != Mode::Error;
                return Err(injected(&format!("step {}", plan.steps)));
            }
            if plan.mode.power_loss() {
                record(plan, &s);
            }
            Ok(Real::No)
        })
    }

    /// A full disk: growth beyond what was freed fails after writing what fits.
    fn no_space(plan: &mut Plan, s: &Step<'_>) -> Result<()> {
        let Some(free) = plan.free.as_mut() else {
            return Ok(());
        };
        match *s {
            Step::Write(f, at, bytes) => {
                // Bytes past the end (and not in a hole before `at`) need new space.
                let from = f.file.metadata().unwrap().len().max(at);
                let end = at + bytes.len() as u64;
                let growth = end.saturating_sub(from);
                if growth > *free {
                    let fits = (from + *free - at).min(bytes.len() as u64);
                    f.file
                        .write_all_at(&bytes[..fits as usize], at)
                        .expect("a partial write");
                    *free -= (at + fits).saturating_sub(from);
                    plan.failed = true;
                    return Err(Error::io(
                        &f.path,
                        std::io::Error::from_raw_os_error(libc::ENOSPC),
                    ));
                }
                *free -= growth;
            }
            Step::SetLen(f, len) => {
                let cur = f.file.metadata().unwrap().len();
                *free += cur.saturating_sub(len);
            }
            _ => {}
        }
        Ok(())
    }

    fn hide(plan: &mut Plan, path: &Path) -> PathBuf {
        plan.hidden += 1;
        let hidden = path.with_file_name(format!(".failpoint-{}", plan.hidden));
        fs::hard_link(path, &hidden).expect("keep a name to undo");
        hidden
    }

    fn unsynced<'p>(plan: &'p mut Plan, f: &File) -> &'p mut Unsynced {
        let meta = f.metadata().unwrap();
        let ino = meta.ino();
        match plan.files.iter().position(|u| u.ino == ino) {
            Some(i) => &mut plan.files[i],
            None => {
                let mut durable = vec![0u8; meta.len() as usize];
                f.read_exact_at(&mut durable, 0).unwrap();
                plan.files.push(Unsynced {
                    file: f.try_clone().unwrap(),
                    ino,
                    durable,
                    ops: Vec::new(),
                });
                plan.files.last_mut().expect("pushed")
            }
        }
    }

    /// Remembers how to undo the step about to be taken.
    fn record(plan: &mut Plan, s: &Step<'_>) {
        let name = |undo: Undo, path: &Path| NameOp {
            dir: parent_of(path),
            undo,
        };
        match *s {
            Step::MakeDir(path) => {
                let op = name(Undo::MadeDir(path.to_path_buf()), path);
                plan.names.push(op);
            }
            Step::Create(path) => {
                assert!(!path.exists(), "{path:?}: created over an existing name");
                plan.names
                    .push(name(Undo::Created(path.to_path_buf()), path));
            }
            Step::Write(f, at, bytes) => {
                let u = unsynced(plan, &f.file);
                u.ops.push(DataOp::Write(at, bytes.to_vec()));
                let last = (u.ino, u.ops.len() - 1);
                plan.last = Some(last);
            }
            Step::SetLen(f, len) => {
                let u = unsynced(plan, &f.file);
                u.ops.push(DataOp::SetLen(len));
                let last = (u.ino, u.ops.len() - 1);
                plan.last = Some(last);
            }
            Step::Sync(f) => {
                let ino = f.file.metadata().unwrap().ino();
                plan.files.retain(|u| u.ino != ino);
                if plan.last.is_some_and(|l| l.0 == ino) {
                    plan.last = None;
                }
            }
            Step::Rename(from, to) => {
                let replaced = to.exists().then(|| hide(plan, to));
                let op = name(
                    Undo::Renamed {
                        from: from.to_path_buf(),
                        to: to.to_path_buf(),
                        replaced,
                    },
                    to,
                );
                plan.names.push(op);
            }
            Step::Remove(path) => {
                let hidden = hide(plan, path);
                let op = name(
                    Undo::Removed {
                        path: path.to_path_buf(),
                        hidden,
                    },
                    path,
                );
                plan.names.push(op);
            }
            Step::RemoveDir(path) => {
                plan.names
                    .push(name(Undo::RemovedDir(path.to_path_buf()), path));
            }
            Step::SyncDir(dir) => {
                let (durable, pending): (Vec<NameOp>, Vec<NameOp>) =
                    std::mem::take(&mut plan.names)
                        .into_iter()
                        .partition(|op| op.dir == dir);
                plan.names = pending;
                durable.into_iter().for_each(|op| forget_hidden(op.undo));
            }
        }
    }
}
