//! The C API (see ffi/lethe.h, generated from this file by cbindgen; `make header`).
//!
//! Every exported function runs its body inside [`boundary!`]: the listed pointer arguments are
//! checked for NULL, panics are caught (a panic must never cross into C), and a failure is
//! turned into a status code plus a per-thread message for [`lethe_last_error`].
//!
//! Handles are not pointers to Rust objects but opaque tokens: numbers looked up in a process-
//! wide table on every call and never reused. So a closed handle, a handle closed twice or a
//! core passed as a head is a clear `LETHE_ERROR_INVALID_HANDLE`, never a use-after-free (G5).
//! A head lives in an `RwLock<Option<Head>>`: calls share it (predict runs concurrently with
//! learn/forget, which [`Head`] serializes itself); close takes it out under the write lock, so
//! it waits for calls in progress and then calls [`Head::close`] exactly once.

// The C names (`lethe_head`, `LETHE_OK`) are the API.
#![allow(non_camel_case_types)]

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::core::{Core, CoreOptions};
use crate::error::Error;
use crate::head::{Head, HeadOptions};
use crate::placement::{Backend, BackendOptions, Placement};
use crate::store::erase;

/// The major version of this header (0 for 0.1.0).
pub const LETHE_VERSION_MAJOR: u32 = 0;
/// The minor version of this header.
pub const LETHE_VERSION_MINOR: u32 = 1;
/// The patch version of this header.
pub const LETHE_VERSION_PATCH: u32 = 0;
/// MAJOR * 1000000 + MINOR * 1000 + PATCH; compare with lethe_version_number() to check that
/// the library matches the header.
pub const LETHE_VERSION_NUMBER: u32 =
    LETHE_VERSION_MAJOR * 1_000_000 + LETHE_VERSION_MINOR * 1_000 + LETHE_VERSION_PATCH;

/// Parses a decimal version component at compile time.
const fn parse_version(s: &str) -> u32 {
    let bytes = s.as_bytes();
    let mut value = 0u32;
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            bytes[i].is_ascii_digit(),
            "version component is not a number"
        );
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

// The macros above are literals so that cbindgen can write them into the header; these
// assertions fail the build when they drift from Cargo.toml's version.
const _: () = assert!(LETHE_VERSION_MAJOR == parse_version(env!("CARGO_PKG_VERSION_MAJOR")));
const _: () = assert!(LETHE_VERSION_MINOR == parse_version(env!("CARGO_PKG_VERSION_MINOR")));
const _: () = assert!(LETHE_VERSION_PATCH == parse_version(env!("CARGO_PKG_VERSION_PATCH")));

/// The result of a fallible call: LETHE_OK (0) or one of the LETHE_ERROR_* codes below. Values
/// are fixed and never reused; new codes may be added, so treat unknown values as errors.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct lethe_status(pub u32);

/// Success.
pub const LETHE_OK: lethe_status = lethe_status(0);
/// A pointer argument that must not be NULL was NULL. Nothing was changed.
pub const LETHE_ERROR_NULL_ARGUMENT: lethe_status = lethe_status(1);
/// An argument is out of range: n = 0, a NaN or infinite input, a label that is not a class, a
/// bad option value, an unknown features output. Nothing was changed.
pub const LETHE_ERROR_INVALID_ARGUMENT: lethe_status = lethe_status(2);
/// An output buffer is too small; lethe_last_error() says the size needed. Nothing was written.
pub const LETHE_ERROR_BUFFER_TOO_SMALL: lethe_status = lethe_status(3);
/// The handle was closed, or is not a handle of the expected kind. Nothing was changed.
pub const LETHE_ERROR_INVALID_HANDLE: lethe_status = lethe_status(4);
/// A sample id is already learned (learn), not learned (forget), or appears twice in one call.
/// Nothing was changed.
pub const LETHE_ERROR_SAMPLE_ID: lethe_status = lethe_status(5);
/// The bundle is malformed: its manifest, its core's sha256, or its ONNX graph.
pub const LETHE_ERROR_BUNDLE: lethe_status = lethe_status(6);
/// The state dir is corrupt, belongs to another bundle, was created with other settings, or is
/// open elsewhere (in this or another process).
pub const LETHE_ERROR_STATE: lethe_status = lethe_status(7);
/// A file could not be read or written.
pub const LETHE_ERROR_IO: lethe_status = lethe_status(8);
/// The ONNX Runtime shared library was not found or could not be loaded.
pub const LETHE_ERROR_ORT_LIBRARY: lethe_status = lethe_status(9);
/// ONNX Runtime reported an error while running the core.
pub const LETHE_ERROR_ORT: lethe_status = lethe_status(10);
/// A documented limit was exceeded (e.g. lambda too small for the learned features).
pub const LETHE_ERROR_LIMIT: lethe_status = lethe_status(11);
/// The requested backend is not available (e.g. require_gpu without a usable GPU).
pub const LETHE_ERROR_BACKEND_UNAVAILABLE: lethe_status = lethe_status(12);
/// A bug in Lethe (a caught Rust panic). The handle stays usable; please report it.
pub const LETHE_ERROR_INTERNAL: lethe_status = lethe_status(13);

/// Where a core runs: one of the LETHE_BACKEND_* values.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct lethe_backend(pub u32);

/// The CPU (the default and the reference): ONNX Runtime's CPU execution provider for the core,
/// Lethe's CPU code for the head.
pub const LETHE_BACKEND_CPU: lethe_backend = lethe_backend(0);
/// The GPU where it can be used, else the CPU, without a warning.
pub const LETHE_BACKEND_AUTO: lethe_backend = lethe_backend(1);
/// A CUDA GPU: ONNX Runtime's CUDA execution provider for the core (it needs the
/// onnxruntime-gpu wheel's library), Lethe's kernels for the head. Where the GPU cannot be
/// used, Lethe logs a warning once and uses the CPU, or fails if require_gpu is set.
pub const LETHE_BACKEND_CUDA: lethe_backend = lethe_backend(2);

/// An opened core (a bundle's ONNX network). Shared by the heads opened over it.
pub struct lethe_core {
    _opaque: [u8; 0],
}

/// An opened head: one user's learned weights and samples, persisted in a state dir.
pub struct lethe_head {
    _opaque: [u8; 0],
}

/// Options for lethe_core_open and lethe_head_open. Fill with lethe_options_default(), then
/// change fields. Strings are read during the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lethe_options {
    /// lethe_core_open: path of libonnxruntime.so. NULL = the search described in ffi/README.md
    /// (ORT_DYLIB_PATH, then .lethe/ort/ above the current directory or the executable, then the
    /// system loader path). ONNX Runtime is loaded once per process: the first core opened
    /// decides, later values are ignored.
    pub ort_library: *const c_char,
    /// lethe_core_open: ONNX Runtime intra-op threads per session. 0 = ONNX Runtime's default
    /// (one per physical core).
    pub intra_threads: u32,
    /// lethe_core_open: where the core and its heads run: LETHE_BACKEND_CPU (0, the default),
    /// LETHE_BACKEND_AUTO or LETHE_BACKEND_CUDA. lethe_head_info() reports where a head runs.
    pub backend: lethe_backend,
    /// lethe_core_open: fail with LETHE_ERROR_BACKEND_UNAVAILABLE instead of falling back to the
    /// CPU when the GPU cannot be used. false = fall back. Invalid with LETHE_BACKEND_CPU.
    pub require_gpu: bool,
    /// lethe_core_open: the CUDA device ordinal. 0 = the first GPU.
    pub cuda_device: u32,
    /// lethe_head_open: the core output (UTF-8 name) the head is linear in. NULL = the bundle's
    /// default features.
    pub features: *const c_char,
    /// lethe_head_open: ridge strength lambda > 0 of a new head. 0 = the bundle's default.
    pub lambda: f64,
    /// lethe_head_open: target scale s > 0 of a new head. 0 = the bundle's default.
    pub target_scale: f64,
}

/// What lethe_head_info reports about a head.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct lethe_head_summary {
    /// Samples currently learned.
    pub samples: u64,
    /// Classes C: each prediction has C logits, W has C rows.
    pub num_classes: usize,
    /// Feature dimension d: W has d columns.
    pub feature_dim: usize,
    /// The ridge strength lambda in effect (recorded in the state dir when it was created).
    pub lambda: f64,
    /// The target scale s in effect.
    pub target_scale: f64,
    /// The backend that actually runs the head (LETHE_BACKEND_CPU or LETHE_BACKEND_CUDA).
    pub backend: lethe_backend,
}

/// A failed call: its status and the message for `lethe_last_error`.
#[derive(Debug)]
struct Failure {
    status: lethe_status,
    message: String,
}

impl Failure {
    fn new(status: lethe_status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(LETHE_ERROR_INVALID_ARGUMENT, message)
    }

    fn panic(payload: Box<dyn Any + Send>) -> Failure {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Failure::new(
            LETHE_ERROR_INTERNAL,
            format!("internal error (please report): {what}"),
        )
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match &e {
            Error::OrtLibrary(_) => LETHE_ERROR_ORT_LIBRARY,
            Error::Ort(_) => LETHE_ERROR_ORT,
            Error::Io { .. } => LETHE_ERROR_IO,
            Error::Manifest { .. } => LETHE_ERROR_BUNDLE,
            Error::InvalidInput(_) => LETHE_ERROR_INVALID_ARGUMENT,
            Error::Id(_) => LETHE_ERROR_SAMPLE_ID,
            Error::State { .. } => LETHE_ERROR_STATE,
            Error::Limit(_) => LETHE_ERROR_LIMIT,
            Error::Backend(_) => LETHE_ERROR_BACKEND_UNAVAILABLE,
        };
        Failure::new(status, e.to_string())
    }
}

type Outcome = Result<(), Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// Records the outcome of a call for `lethe_last_error` and returns its status.
fn finish(function: &str, outcome: std::thread::Result<Outcome>) -> lethe_status {
    let failure = match outcome {
        Ok(Ok(())) => {
            set_last_error("");
            return LETHE_OK;
        }
        Ok(Err(failure)) => failure,
        Err(payload) => Failure::panic(payload),
    };
    set_last_error(&format!("{function}: {}", failure.message));
    failure.status
}

/// The boundary every exported function that returns a status runs in: NULL checks on the
/// listed pointer arguments, then the body (returning `Outcome`) under `catch_unwind`.
macro_rules! boundary {
    ($function:literal, [$($pointer:ident),*], $body:block) => {{
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Outcome {
            $(
                if $pointer.is_null() {
                    return Err(Failure::new(
                        LETHE_ERROR_NULL_ARGUMENT,
                        concat!("`", stringify!($pointer), "` is NULL"),
                    ));
                }
            )*
            $body
        }));
        finish($function, outcome)
    }};
}

/// The boundary for the few functions that cannot fail: a panic returns `fallback`.
macro_rules! infallible {
    ($fallback:expr, $body:block) => {
        catch_unwind(AssertUnwindSafe(|| $body)).unwrap_or($fallback)
    };
}

/// An object a handle stands for.
enum Handle {
    Core(Arc<Core>),
    Head(Arc<HeadSlot>),
}

/// A head; `None` once closed (calls that looked it up just before the close see that).
struct HeadSlot(RwLock<Option<Head>>);

/// Every open handle, by token. Tokens count up from 1 and are never reused.
static HANDLES: RwLock<BTreeMap<usize, Handle>> = RwLock::new(BTreeMap::new());
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(1);

fn register(handle: Handle) -> Result<usize, Failure> {
    let token = NEXT_TOKEN
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_add(1))
        .map_err(|_| {
            Failure::new(
                LETHE_ERROR_LIMIT,
                "every handle value has been used once; restart the process",
            )
        })?;
    HANDLES
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token, handle);
    Ok(token)
}

fn unknown_handle(kind: &str) -> Failure {
    Failure::new(
        LETHE_ERROR_INVALID_HANDLE,
        format!("not an open {kind} (closed already, or not a {kind} handle)"),
    )
}

fn core_of(core: *const lethe_core) -> Result<Arc<Core>, Failure> {
    match HANDLES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&core.addr())
    {
        Some(Handle::Core(core)) => Ok(core.clone()),
        _ => Err(unknown_handle("lethe_core")),
    }
}

fn slot_of(head: *const lethe_head) -> Result<Arc<HeadSlot>, Failure> {
    match HANDLES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&head.addr())
    {
        Some(Handle::Head(slot)) => Ok(slot.clone()),
        _ => Err(unknown_handle("lethe_head")),
    }
}

/// Runs `f` on an open head. Holds the head's read lock, so a concurrent close waits for it.
fn with_head<T>(
    head: *const lethe_head,
    f: impl FnOnce(&Head) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let slot = slot_of(head)?;
    let guard = slot.0.read().unwrap_or_else(|e| e.into_inner());
    f(guard.as_ref().ok_or_else(|| unknown_handle("lethe_head"))?)
}

/// Removes the handle `token` from the table if it is of the kind `pick` accepts.
fn unregister<T>(token: usize, kind: &str, pick: fn(&Handle) -> Option<T>) -> Result<T, Failure> {
    let mut handles = HANDLES.write().unwrap_or_else(|e| e.into_inner());
    let picked = handles
        .get(&token)
        .and_then(pick)
        .ok_or_else(|| unknown_handle(kind))?;
    handles.remove(&token);
    Ok(picked)
}

/// Checks that `len` values of `T` at `ptr` make a valid slice (alignment, size).
fn check_slice<T>(ptr: *const T, len: usize, name: &str) -> Outcome {
    if !ptr.is_aligned() {
        return Err(Failure::invalid(format!(
            "`{name}` is not aligned for its element type"
        )));
    }
    match len.checked_mul(std::mem::size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
        _ => Err(Failure::invalid(format!(
            "`{name}`: {len} values do not fit in memory"
        ))),
    }
}

/// The caller's `len` values at `ptr` (non-NULL, checked by the boundary).
///
/// # Safety
/// `ptr` must point to `len` initialized values that stay valid and unchanged for `'a`.
unsafe fn input<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<&'a [T], Failure> {
    check_slice(ptr, len, name)?;
    Ok(std::slice::from_raw_parts(ptr, len))
}

/// The caller's output buffer of `len` values at `ptr` (non-NULL, checked by the boundary).
///
/// # Safety
/// `ptr` must point to `len` writable values, not aliased during `'a`.
unsafe fn output<'a, T>(ptr: *mut T, len: usize, name: &str) -> Result<&'a mut [T], Failure> {
    check_slice(ptr, len, name)?;
    Ok(std::slice::from_raw_parts_mut(ptr, len))
}

fn need_buffer(name: &str, have: usize, need: usize, what: &str) -> Outcome {
    if have < need {
        return Err(Failure::new(
            LETHE_ERROR_BUFFER_TOO_SMALL,
            format!("`{name}` holds {have} values but {what} need {need}"),
        ));
    }
    Ok(())
}

fn positive_n(n: usize) -> Outcome {
    if n == 0 {
        return Err(Failure::invalid("n must be at least 1"));
    }
    Ok(())
}

/// `n` samples x `per` values, or an error on overflow.
fn values_of(n: usize, per: usize, name: &str) -> Result<usize, Failure> {
    n.checked_mul(per)
        .ok_or_else(|| Failure::invalid(format!("`{name}`: {n} x {per} values overflow")))
}

/// A path argument (any bytes but NUL; not necessarily UTF-8).
///
/// # Safety
/// `s` must be a NUL-terminated string, valid during the call.
unsafe fn path_arg(s: *const c_char) -> PathBuf {
    Path::new(OsStr::from_bytes(CStr::from_ptr(s).to_bytes())).to_path_buf()
}

/// An optional UTF-8 string argument; NULL = `None`.
///
/// # Safety
/// `s` must be NULL or a NUL-terminated string, valid during the call.
unsafe fn optional_str(s: *const c_char, name: &str) -> Result<Option<String>, Failure> {
    if s.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(s)
        .to_str()
        .map(|s| Some(s.to_string()))
        .map_err(|_| Failure::invalid(format!("`{name}` is not valid UTF-8")))
}

fn default_options() -> lethe_options {
    lethe_options {
        ort_library: std::ptr::null(),
        intra_threads: 0,
        backend: LETHE_BACKEND_CPU,
        require_gpu: false,
        cuda_device: 0,
        features: std::ptr::null(),
        lambda: 0.0,
        target_scale: 0.0,
    }
}

/// The caller's options, or the defaults for NULL.
///
/// # Safety
/// `options` must be NULL or point to a valid `lethe_options`.
unsafe fn options_arg(options: *const lethe_options) -> lethe_options {
    if options.is_null() {
        default_options()
    } else {
        *options
    }
}

/// The core options `options` ask for.
///
/// # Safety
/// The string fields of `options` must be NULL or NUL-terminated strings.
unsafe fn core_options(options: &lethe_options) -> Result<CoreOptions, Failure> {
    let backend = match options.backend {
        LETHE_BACKEND_CPU => Backend::Cpu,
        LETHE_BACKEND_AUTO => Backend::Auto,
        LETHE_BACKEND_CUDA => Backend::Cuda,
        lethe_backend(other) => {
            return Err(Failure::invalid(format!(
                "backend {other} is not a LETHE_BACKEND_* value"
            )))
        }
    };
    Ok(CoreOptions {
        ort_library: (!options.ort_library.is_null()).then(|| path_arg(options.ort_library)),
        intra_threads: options.intra_threads as usize,
        backend: BackendOptions {
            backend,
            require_gpu: options.require_gpu,
            device: options.cuda_device as usize,
        },
    })
}

/// The head options `options` ask for (0 = the bundle's default). The head runs where its core
/// does.
///
/// # Safety
/// The string fields of `options` must be NULL or NUL-terminated strings.
unsafe fn head_options(options: &lethe_options) -> Result<HeadOptions, Failure> {
    let explicit = |v: f64| (v != 0.0).then_some(v);
    Ok(HeadOptions {
        features: optional_str(options.features, "options->features")?,
        lambda: explicit(options.lambda),
        target_scale: explicit(options.target_scale),
        synchronous_resolve: false,
        backend: None,
        must_exist: false,
    })
}

fn backend_code(placement: &Placement) -> lethe_backend {
    match placement {
        Placement::Cpu(_) => LETHE_BACKEND_CPU,
        Placement::Cuda(_) => LETHE_BACKEND_CUDA,
    }
}

/// The version of the library as MAJOR * 1000000 + MINOR * 1000 + PATCH. Compare with
/// LETHE_VERSION_NUMBER to check that the header matches the library at run time.
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn lethe_version_number() -> u32 {
    infallible!(LETHE_VERSION_NUMBER, { LETHE_VERSION_NUMBER })
}

/// The version of the library as a static string, e.g. "0.1.0". Never NULL; do not free.
///
/// Thread-safe; cannot fail.
#[no_mangle]
pub extern "C" fn lethe_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("the version contains a NUL"),
        };
    VERSION.as_ptr()
}

/// A static English description of `status` ("unknown status" for values this library does
/// not define). Never NULL; do not free.
///
/// Thread-safe; cannot fail; does not change lethe_last_error().
#[no_mangle]
pub extern "C" fn lethe_status_str(status: lethe_status) -> *const c_char {
    infallible!(c"unknown status".as_ptr(), { status_text(status).as_ptr() })
}

fn status_text(status: lethe_status) -> &'static CStr {
    match status {
        LETHE_OK => c"ok",
        LETHE_ERROR_NULL_ARGUMENT => c"a required pointer argument is NULL",
        LETHE_ERROR_INVALID_ARGUMENT => c"invalid argument",
        LETHE_ERROR_BUFFER_TOO_SMALL => c"output buffer too small",
        LETHE_ERROR_INVALID_HANDLE => c"invalid or closed handle",
        LETHE_ERROR_SAMPLE_ID => c"sample id already learned, not learned, or repeated",
        LETHE_ERROR_BUNDLE => c"invalid model bundle",
        LETHE_ERROR_STATE => c"invalid, mismatched or locked state dir",
        LETHE_ERROR_IO => c"file input/output error",
        LETHE_ERROR_ORT_LIBRARY => c"ONNX Runtime library not found or not loadable",
        LETHE_ERROR_ORT => c"ONNX Runtime error",
        LETHE_ERROR_LIMIT => c"limit exceeded",
        LETHE_ERROR_BACKEND_UNAVAILABLE => c"backend unavailable",
        LETHE_ERROR_INTERNAL => c"internal error in Lethe",
        _ => c"unknown status",
    }
}

/// The message of the last call on this thread that returned a lethe_status: "" if it
/// succeeded, else what went wrong (with the function's name, paths, sizes). Never NULL; do
/// not free.
///
/// The string belongs to this thread and stays valid until its next call of a function that
/// returns a lethe_status; copy it to keep it. Other threads' calls do not change it.
#[no_mangle]
pub extern "C" fn lethe_last_error() -> *const c_char {
    infallible!(c"".as_ptr(), { LAST_ERROR.with(|e| e.borrow().as_ptr()) })
}

/// Fills `*options` with the defaults: ONNX Runtime found by the documented search, ONNX
/// Runtime's default threads, LETHE_BACKEND_CPU, the bundle's default features, lambda and
/// target scale. Call it before setting fields: future versions may add fields.
///
/// Thread-safe. Returns LETHE_OK, or LETHE_ERROR_NULL_ARGUMENT if `options` is NULL.
///
/// # Safety
/// `options` must be NULL or point to memory for one lethe_options.
#[no_mangle]
pub unsafe extern "C" fn lethe_options_default(options: *mut lethe_options) -> lethe_status {
    boundary!("lethe_options_default", [options], {
        options.write(default_options());
        Ok(())
    })
}

/// Opens the bundle in the folder `bundle_dir` (manifest.json + core.onnx), checks it (the
/// manifest, the core's sha256, the ONNX graph) and loads its core into ONNX Runtime, loading
/// ONNX Runtime itself on first use. `options` may be NULL for the defaults; this call reads
/// its ort_library, intra_threads, backend, require_gpu and cuda_device fields.
///
/// Ownership: on success `*out` is a new core handle owned by the caller, to be released with
/// lethe_core_close(). Heads opened over it keep what they need, so it may be closed before
/// them. On failure `*out` is not written.
///
/// Thread-safe; any number of cores may be open.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (bundle_dir, out); LETHE_ERROR_INVALID_ARGUMENT
/// (an option value); LETHE_ERROR_IO (a missing or unreadable file); LETHE_ERROR_BUNDLE;
/// LETHE_ERROR_ORT_LIBRARY; LETHE_ERROR_ORT; LETHE_ERROR_BACKEND_UNAVAILABLE (require_gpu
/// without a usable GPU).
///
/// # Safety
/// `bundle_dir` must be a NUL-terminated path; `options` NULL or a valid lethe_options whose
/// strings are NULL or NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_core_open(
    bundle_dir: *const c_char,
    options: *const lethe_options,
    out: *mut *mut lethe_core,
) -> lethe_status {
    boundary!("lethe_core_open", [bundle_dir, out], {
        let dir = path_arg(bundle_dir);
        let core_options = core_options(&options_arg(options))?;
        let core = Core::open(&dir, &core_options)?;
        let token = register(Handle::Core(Arc::new(core)))?;
        out.write(std::ptr::without_provenance_mut(token));
        Ok(())
    })
}

/// Releases a core handle. NULL is a harmless no-op. Heads opened over the core stay usable;
/// the core's memory is freed when the last of them is closed.
///
/// Thread-safe, also while other threads use the core: their calls finish normally; calls
/// made after the close return LETHE_ERROR_INVALID_HANDLE.
///
/// Returns LETHE_OK, or LETHE_ERROR_INVALID_HANDLE if `core` is not an open core (e.g.
/// closed twice).
#[no_mangle]
pub extern "C" fn lethe_core_close(core: *mut lethe_core) -> lethe_status {
    boundary!("lethe_core_close", [], {
        if core.is_null() {
            return Ok(());
        }
        let core = unregister(core.addr(), "lethe_core", |h| match h {
            Handle::Core(core) => Some(core.clone()),
            Handle::Head(_) => None,
        })?;
        drop(core);
        Ok(())
    })
}

/// Writes to `*out` the number of float values of one sample's input: the product of the
/// core's input shape without the batch axis (784 for mnist-core's [n, 1, 28, 28]). Inputs
/// passed to learn and predict hold n times this many floats, sample after sample.
///
/// Thread-safe. Returns LETHE_OK, LETHE_ERROR_NULL_ARGUMENT or LETHE_ERROR_INVALID_HANDLE.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_core_input_len(
    core: *const lethe_core,
    out: *mut usize,
) -> lethe_status {
    boundary!("lethe_core_input_len", [core, out], {
        let n = core_of(core)?.input_len();
        out.write(n);
        Ok(())
    })
}

/// Writes to `*out` the number of classes C of heads over this core (the bundle's classes).
///
/// Thread-safe. Returns LETHE_OK, LETHE_ERROR_NULL_ARGUMENT or LETHE_ERROR_INVALID_HANDLE.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_core_num_classes(
    core: *const lethe_core,
    out: *mut usize,
) -> lethe_status {
    boundary!("lethe_core_num_classes", [core, out], {
        let c = core_of(core)?.bundle().manifest.classes.len();
        out.write(c);
        Ok(())
    })
}

/// Writes to `*out` the dimension d of the core's features output named `features` (UTF-8),
/// or of the bundle's default features when `features` is NULL.
///
/// Thread-safe. Returns LETHE_OK, LETHE_ERROR_NULL_ARGUMENT, LETHE_ERROR_INVALID_HANDLE, or
/// LETHE_ERROR_INVALID_ARGUMENT when the bundle has no such features output.
///
/// # Safety
/// `features` must be NULL or NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_core_feature_dim(
    core: *const lethe_core,
    features: *const c_char,
    out: *mut usize,
) -> lethe_status {
    boundary!("lethe_core_feature_dim", [core, out], {
        let name = optional_str(features, "features")?;
        let d = core_of(core)?.bundle().features(name.as_deref())?.dim;
        out.write(d);
        Ok(())
    })
}

/// Writes to `*out` where the core runs: LETHE_BACKEND_CPU or LETHE_BACKEND_CUDA (what
/// options->backend asked for, after any fallback to the CPU).
///
/// Thread-safe. Returns LETHE_OK, LETHE_ERROR_NULL_ARGUMENT or LETHE_ERROR_INVALID_HANDLE.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_core_backend(
    core: *const lethe_core,
    out: *mut lethe_backend,
) -> lethe_status {
    boundary!("lethe_core_backend", [core, out], {
        let backend = backend_code(core_of(core)?.placement());
        out.write(backend);
        Ok(())
    })
}

/// Opens the head persisted in the folder `state_dir` over `core`, creating the folder (mode
/// 0700) and an empty head if it does not exist. `options` may be NULL for the defaults; this
/// call reads its features, lambda and target_scale fields. An existing state dir keeps the
/// settings it was created with; asking for others is LETHE_ERROR_STATE.
///
/// Ownership: on success `*out` is a new head handle owned by the caller, to be released with
/// lethe_head_close() (which persists it). The head keeps the core alive. A state dir can be
/// open in one head at a time, across processes. On failure `*out` is not written.
///
/// Thread-safe; heads over one core may be opened and used from any threads.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (core, state_dir, out);
/// LETHE_ERROR_INVALID_HANDLE (core); LETHE_ERROR_INVALID_ARGUMENT (an option value or unknown
/// features); LETHE_ERROR_STATE (corrupt, another bundle's, other settings, or open
/// elsewhere); LETHE_ERROR_IO; LETHE_ERROR_LIMIT.
///
/// # Safety
/// `state_dir` must be a NUL-terminated path; `options` NULL or a valid lethe_options whose
/// strings are NULL or NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_open(
    core: *mut lethe_core,
    state_dir: *const c_char,
    options: *const lethe_options,
    out: *mut *mut lethe_head,
) -> lethe_status {
    boundary!("lethe_head_open", [core, state_dir, out], {
        let core = core_of(core)?;
        let dir = path_arg(state_dir);
        let head_options = head_options(&options_arg(options))?;
        let head = Head::open(core, &dir, &head_options)?;
        let token = register(Handle::Head(Arc::new(HeadSlot(RwLock::new(Some(head))))))?;
        out.write(std::ptr::without_provenance_mut(token));
        Ok(())
    })
}

/// Closes a head: finishes pending work, writes its canonical state to the state dir and
/// releases the state dir. NULL is a harmless no-op.
///
/// Ownership: the handle is released whatever the result; closing it again returns
/// LETHE_ERROR_INVALID_HANDLE. Learned samples are durable without a close (each learn and
/// forget is); a close makes the state dir canonical and quick to reopen.
///
/// Thread-safe, also while other threads use the head: it waits for their calls in progress
/// to finish; calls made after it started return LETHE_ERROR_INVALID_HANDLE.
///
/// Returns LETHE_OK; LETHE_ERROR_INVALID_HANDLE (not an open head); LETHE_ERROR_IO or
/// LETHE_ERROR_LIMIT if persisting failed (the acknowledged samples are still in the state
/// dir and are loaded when it is reopened).
#[no_mangle]
pub extern "C" fn lethe_head_close(head: *mut lethe_head) -> lethe_status {
    boundary!("lethe_head_close", [], {
        if head.is_null() {
            return Ok(());
        }
        let slot = unregister(head.addr(), "lethe_head", |h| match h {
            Handle::Head(slot) => Some(slot.clone()),
            Handle::Core(_) => None,
        })?;
        let head = slot.0.write().unwrap_or_else(|e| e.into_inner()).take();
        match head {
            Some(head) => Ok(head.close()?),
            None => Err(unknown_handle("lethe_head")),
        }
    })
}

/// Learns n samples: sample i has the caller-chosen id `ids[i]`, the input `inputs[i * L ..
/// (i + 1) * L]` (L = lethe_core_input_len; values preprocessed as the bundle says, finite),
/// and the class `labels[i]` < C. Runs the core, then updates the head exactly and durably:
/// when it returns LETHE_OK the samples survive a crash.
///
/// All or nothing: on any error nothing is learned and the head is unchanged.
///
/// Thread-safe: may run while other threads predict (they see the weights before or after this
/// call, never a mix); learn/forget/forget_all calls on one head run one at a time.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, a NaN or infinite input, a label >= C, features out of
/// the bundle's range); LETHE_ERROR_SAMPLE_ID (an id already learned or repeated);
/// LETHE_ERROR_IO; LETHE_ERROR_ORT; LETHE_ERROR_LIMIT.
///
/// # Safety
/// `ids` and `labels` must point to n values, `inputs` to n * L floats.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_learn(
    head: *mut lethe_head,
    ids: *const u64,
    inputs: *const f32,
    n: usize,
    labels: *const u32,
) -> lethe_status {
    boundary!("lethe_head_learn", [head, ids, inputs, labels], {
        positive_n(n)?;
        with_head(head, |h| {
            let per = h.core().map_or(0, |c| c.input_len());
            let ids = input(ids, n, "ids")?;
            let inputs = input(inputs, values_of(n, per, "inputs")?, "inputs")?;
            let labels = input(labels, n, "labels")?;
            Ok(h.learn(ids, inputs, labels)?)
        })
    })
}

/// Forgets the n learned samples with these ids, exactly: afterwards the head's weights are
/// those of a head that never learned them, and their bytes are overwritten in the state dir.
/// Durable when it returns LETHE_OK.
///
/// All or nothing: if any id is not learned or appears twice, nothing is forgotten.
///
/// Thread-safe: as lethe_head_learn.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0); LETHE_ERROR_SAMPLE_ID; LETHE_ERROR_IO;
/// LETHE_ERROR_LIMIT.
///
/// # Safety
/// `ids` must point to n values.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_forget(
    head: *mut lethe_head,
    ids: *const u64,
    n: usize,
) -> lethe_status {
    boundary!("lethe_head_forget", [head, ids], {
        positive_n(n)?;
        let ids = input(ids, n, "ids")?;
        with_head(head, |h| Ok(h.forget(ids)?))
    })
}

/// Forgets every sample: W = 0, b = 0, and every stored sample is erased from the state dir.
/// The head then predicts exactly the core's logits. Durable when it returns LETHE_OK.
///
/// Thread-safe: as lethe_head_learn.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE; LETHE_ERROR_IO.
#[no_mangle]
pub extern "C" fn lethe_head_forget_all(head: *mut lethe_head) -> lethe_status {
    boundary!("lethe_head_forget_all", [head], {
        with_head(head, |h| Ok(h.forget_all()?))
    })
}

/// Erases the state dir `state_dir` whatever its state (corrupt, of another version, left by a
/// crash, on a full disk), without opening a head: every file of Lethe's in it is overwritten
/// with zeros, synced and removed, then the folder itself if it is left empty. Needs no free
/// disk space. Links are never followed: a name that is a link (or a file with other names, or
/// another user's) is removed without being written, so what it points to is untouched. Other
/// files are left in place. A folder that does not exist is nothing to erase (LETHE_OK).
///
/// Thread-safe. Fails, changing nothing, while a head (in any process) has the state dir open:
/// use lethe_head_forget_all there.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_STATE (open elsewhere, or a folder
/// that does not look like a state dir); LETHE_ERROR_IO.
///
/// # Safety
/// `state_dir` must be a NUL-terminated path.
#[no_mangle]
pub unsafe extern "C" fn lethe_state_erase(state_dir: *const c_char) -> lethe_status {
    boundary!("lethe_state_erase", [state_dir], {
        erase(&path_arg(state_dir))?;
        Ok(())
    })
}

/// Predicts n samples: writes their logits, n rows of C floats (row-major), to `logits`, which
/// holds `logits_len` floats (at least n * C). Inputs as for lethe_head_learn.
///
/// Writes nothing on error.
///
/// Thread-safe: any number of threads may predict on one head, also while another learns or
/// forgets; each call uses one snapshot of the weights for all n samples.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, a NaN or infinite input); LETHE_ERROR_BUFFER_TOO_SMALL
/// (logits_len < n * C); LETHE_ERROR_ORT.
///
/// # Safety
/// `inputs` must point to n * L floats, `logits` to `logits_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_predict(
    head: *const lethe_head,
    inputs: *const f32,
    n: usize,
    logits: *mut f32,
    logits_len: usize,
) -> lethe_status {
    boundary!("lethe_head_predict", [head, inputs, logits], {
        positive_n(n)?;
        with_head(head, |h| {
            let per = h.core().map_or(0, |c| c.input_len());
            let c = h.spec().num_classes();
            need_buffer(
                "logits",
                logits_len,
                values_of(n, c, "logits")?,
                &format!("{n} samples x {c} classes"),
            )?;
            let inputs = input(inputs, values_of(n, per, "inputs")?, "inputs")?;
            let logits = output(logits, logits_len, "logits")?;
            let predicted = h.predict(inputs, n)?;
            let predicted = predicted.as_standard_layout();
            let values = predicted.as_slice().expect("standard layout");
            logits[..values.len()].copy_from_slice(values);
            Ok(())
        })
    })
}

/// Writes the head's canonical weights in double precision: W (C x d, row-major) to `w`, which
/// holds `w_len` doubles (at least C * d), and b (C) to `b`, which holds `b_len` doubles (at
/// least C). Canonical means bit-identical to a fresh head that learned only the current
/// samples; if a background re-solve is pending, this call finishes it first.
///
/// Writes nothing on error.
///
/// Thread-safe: may run while other threads predict, learn or forget (it sees the head between
/// two changes).
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_BUFFER_TOO_SMALL; LETHE_ERROR_LIMIT.
///
/// # Safety
/// `w` must point to `w_len` and `b` to `b_len` writable doubles.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_weights(
    head: *const lethe_head,
    w: *mut f64,
    w_len: usize,
    b: *mut f64,
    b_len: usize,
) -> lethe_status {
    boundary!("lethe_head_weights", [head, w, b], {
        with_head(head, |h| {
            let (c, d) = (h.spec().num_classes(), h.spec().dim);
            need_buffer("w", w_len, values_of(c, d, "w")?, &format!("W ({c} x {d})"))?;
            need_buffer("b", b_len, c, &format!("b ({c} classes)"))?;
            let w = output(w, w_len, "w")?;
            let b = output(b, b_len, "b")?;
            let weights = h.weights()?;
            let w_rows = weights.w.as_standard_layout();
            let w_values = w_rows.as_slice().expect("standard layout");
            w[..w_values.len()].copy_from_slice(w_values);
            b[..weights.b.len()].copy_from_slice(&weights.b);
            Ok(())
        })
    })
}

/// Writes a summary of the head to `*out`: samples learned, classes, feature dimension, the
/// lambda and target scale in effect, and the backend that runs it.
///
/// Thread-safe. Returns LETHE_OK, LETHE_ERROR_NULL_ARGUMENT or LETHE_ERROR_INVALID_HANDLE.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_info(
    head: *const lethe_head,
    out: *mut lethe_head_summary,
) -> lethe_status {
    boundary!("lethe_head_info", [head, out], {
        let summary = with_head(head, |h| {
            let info = h.info();
            Ok(lethe_head_summary {
                samples: info.samples,
                num_classes: info.spec.num_classes(),
                feature_dim: info.spec.dim,
                lambda: info.spec.lambda,
                target_scale: info.spec.target_scale,
                backend: backend_code(&info.backend.head),
            })
        })?;
        out.write(summary);
        Ok(())
    })
}

/// Writes the ids of the learned samples, in increasing order, to `ids`, which holds `ids_len`
/// values, and their number to `*count`. lethe_head_info() gives the number to allocate; if a
/// concurrent learn made it grow, the call returns LETHE_ERROR_BUFFER_TOO_SMALL.
///
/// Writes nothing on error.
///
/// Thread-safe. Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_BUFFER_TOO_SMALL.
///
/// # Safety
/// `ids` must point to `ids_len` writable values; `count` writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_ids(
    head: *const lethe_head,
    ids: *mut u64,
    ids_len: usize,
    count: *mut usize,
) -> lethe_status {
    boundary!("lethe_head_ids", [head, ids, count], {
        with_head(head, |h| {
            let learned = h.ids();
            need_buffer(
                "ids",
                ids_len,
                learned.len(),
                &format!("{} learned samples", learned.len()),
            )?;
            output(ids, ids_len, "ids")?[..learned.len()].copy_from_slice(&learned);
            count.write(learned.len());
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_macros_match_cargo_toml() {
        let version = format!("{LETHE_VERSION_MAJOR}.{LETHE_VERSION_MINOR}.{LETHE_VERSION_PATCH}");
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        let text = unsafe { CStr::from_ptr(lethe_version()) };
        assert_eq!(text.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn panics_become_internal_errors() {
        let status = finish("f", catch_unwind(|| -> Outcome { panic!("boom") }));
        assert_eq!(status, LETHE_ERROR_INTERNAL);
        let message = unsafe { CStr::from_ptr(lethe_last_error()) };
        assert!(message.to_str().unwrap().contains("boom"));
    }

    #[test]
    fn stale_and_foreign_handles_are_rejected() {
        let stale = std::ptr::without_provenance_mut::<lethe_head>(usize::MAX);
        assert_eq!(lethe_head_close(stale), LETHE_ERROR_INVALID_HANDLE);
        assert_eq!(lethe_head_forget_all(stale), LETHE_ERROR_INVALID_HANDLE);
        assert_eq!(lethe_core_close(std::ptr::null_mut()), LETHE_OK);
    }
}
