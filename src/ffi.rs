//! The C API (see ffi/lethe.h, generated from this file by cbindgen; `make header`).
//!
//! Every exported function runs its body inside `boundary!`: the listed pointer arguments are
//! checked for NULL, panics are caught (a panic must never cross into C), and a failure is
//! turned into a status code plus a per-thread message for [`lethe_last_error`].
//!
//! Handles are not pointers to Rust objects but opaque tokens: numbers looked up in a process-
//! wide table on every call and never reused. So a closed handle, a handle closed twice or a
//! core passed as a head is a clear `LETHE_ERROR_INVALID_HANDLE`, never a use-after-free (G5).
//! A head lives in an `RwLock<Option<Head>>`: calls share it (predict runs concurrently with
//! learn/forget, which [`Head`] serializes itself); close takes it out under the write lock, so
//! it waits for calls in progress and then calls [`Head::close`] exactly once. A panic in a call
//! on a head marks its slot poisoned: the caller cannot know what the call left behind, so every
//! later call on that handle is refused (`LETHE_ERROR_POISONED`).
//!
//! The doc comments of the exported items are the header's documentation, written for C
//! programmers: each function states what it requires of its pointer arguments in C terms
//! (where Rust would write a `# Safety` section).
//!
//! [`lethe_set_log_callback`] installs `CallbackLog`, a minimal `tracing` subscriber, as the
//! process's global default, so Lethe's events (a GPU fallback, a recovered state dir) reach the
//! host's log.

// The C names (`lethe_head`, `LETHE_OK`) are the API.
#![allow(non_camel_case_types)]
// Each function's requirements on its pointers are in its C documentation (see above).
#![allow(clippy::missing_safety_doc)]

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString, OsStr};
use std::fmt::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use crate::bundle::tensor::{DType, Tensor};
use crate::core::{Core, CoreOptions};
use crate::error::Error;
use crate::head::{Head, HeadOptions};
use crate::placement::{Backend, BackendOptions, Placement};
use crate::store::{erase, StateKey};

/// The major version of this header (0 for 0.2.0).
pub const LETHE_VERSION_MAJOR: u32 = 0;
/// The minor version of this header.
pub const LETHE_VERSION_MINOR: u32 = 2;
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
/// bad option value or struct_size, an unknown features output, buffers that overlap. Nothing
/// was changed.
pub const LETHE_ERROR_INVALID_ARGUMENT: lethe_status = lethe_status(2);
/// An output buffer is too small. Nothing was written but the call's "needed" out-parameter
/// (the one exception to "out-parameters only on success"); lethe_last_error() also says the
/// size needed.
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
/// A bug in Lethe (a caught Rust panic); please report it with lethe_last_error(). A head on
/// which this happened is poisoned: later calls on it return LETHE_ERROR_POISONED.
pub const LETHE_ERROR_INTERNAL: lethe_status = lethe_status(13);
/// An earlier call on this head failed with LETHE_ERROR_INTERNAL, which may have left it
/// half-updated, so the head refuses every call. Close it (lethe_head_close() releases it and
/// also returns this code) and open its state dir again: the state dir holds every change
/// acknowledged with LETHE_OK.
pub const LETHE_ERROR_POISONED: lethe_status = lethe_status(14);
/// A state dir's key is wrong (it does not open the state dir's data key), missing (the state
/// dir is encrypted), given for a state dir that is not encrypted, not 32 bytes, or
/// lethe_head_rekey() was called on a head without an encrypted state dir. Nothing was
/// changed.
pub const LETHE_ERROR_KEY: lethe_status = lethe_status(15);

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
/// used, Lethe logs a warning (see lethe_set_log_callback()) and uses the CPU, or fails if
/// require_gpu is 1.
pub const LETHE_BACKEND_CUDA: lethe_backend = lethe_backend(2);

/// The severity of a log message: one of the LETHE_LOG_* values. A larger value is more
/// verbose.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct lethe_log_level(pub u32);

/// Something failed that no call's status reports (e.g. a background re-solve).
pub const LETHE_LOG_ERROR: lethe_log_level = lethe_log_level(1);
/// Lethe works, but not as asked (e.g. a GPU fallback, a state dir recovered after a crash).
pub const LETHE_LOG_WARN: lethe_log_level = lethe_log_level(2);
/// Notable events (where a core runs, ONNX Runtime loaded, recovery progress).
pub const LETHE_LOG_INFO: lethe_log_level = lethe_log_level(3);
/// Details for debugging.
pub const LETHE_LOG_DEBUG: lethe_log_level = lethe_log_level(4);
/// Everything.
pub const LETHE_LOG_TRACE: lethe_log_level = lethe_log_level(5);

/// Receives a log message: `user_data` as given to lethe_set_log_callback(), the level, and the
/// message (UTF-8, NUL-terminated, valid only during the call: copy it to keep it).
pub type lethe_log_callback = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: lethe_log_level, message: *const c_char),
>;

/// An opened core (a bundle's ONNX network). Shared by the heads opened over it.
pub struct lethe_core {
    _opaque: [u8; 0],
}

/// An opened head: one user's learned weights and samples, persisted in a state dir.
pub struct lethe_head {
    _opaque: [u8; 0],
}

/// Options for lethe_core_open and lethe_head_open. Fill with lethe_options_default(), then
/// change fields; 0 or NULL in a field means its default. Strings are read during the call
/// only.
///
/// Compatibility: new versions only append fields, and struct_size says which version of the
/// struct the caller was built with, so a program built against an older lethe.h keeps working
/// with a newer library (the fields it lacks take their defaults). Fields are fixed-size
/// integers, pointers and doubles, so any value the caller leaves in them is checked, never
/// undefined behaviour.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lethe_options {
    /// Bytes: sizeof(lethe_options) in the caller's lethe.h, set by lethe_options_default().
    /// A size no lethe.h has had (0, garbage, or a newer header's larger struct on an older
    /// library) is LETHE_ERROR_INVALID_ARGUMENT.
    pub struct_size: u64,
    /// lethe_core_open: path of libonnxruntime.so. NULL = the search described in ffi/README.md
    /// (ORT_DYLIB_PATH, then .lethe/ort/ above the current directory or the executable, then the
    /// system loader path). ONNX Runtime is loaded once per process: the first core opened
    /// decides, later values are ignored.
    pub ort_library: *const c_char,
    /// lethe_core_open: ONNX Runtime intra-op threads per session. 0 = ONNX Runtime's default
    /// (one per physical core).
    pub intra_threads: u32,
    /// lethe_core_open: where the core and its heads run: LETHE_BACKEND_CPU (0, the default),
    /// LETHE_BACKEND_AUTO or LETHE_BACKEND_CUDA. Other values are LETHE_ERROR_INVALID_ARGUMENT.
    /// lethe_core_backend() and lethe_head_info() report where they actually run.
    pub backend: lethe_backend,
    /// lethe_core_open: 1 = fail with LETHE_ERROR_BACKEND_UNAVAILABLE instead of falling back to
    /// the CPU when the GPU cannot be used; 0 = fall back (the default). Other values, and 1
    /// with LETHE_BACKEND_CPU, are LETHE_ERROR_INVALID_ARGUMENT.
    pub require_gpu: u32,
    /// lethe_core_open: the CUDA device ordinal. 0 = the first GPU.
    pub cuda_device: u32,
    /// lethe_head_open: the core output (UTF-8 name) the head is linear in, or several joined
    /// by '+' (e.g. "features+conv_features": their columns concatenated). NULL = the
    /// bundle's default features.
    pub features: *const c_char,
    /// lethe_head_open: ridge strength lambda > 0 of a new head: the weight of the penalty
    /// lambda * (|W|^2 + |b|^2) in its least-squares loss (see DESIGN.md). 0 = the bundle's
    /// default.
    pub lambda: f64,
    /// lethe_head_open: target scale s > 0 of a new head: a learned sample's target is s times
    /// its one-hot label (in logits). 0 = the bundle's default.
    pub target_scale: f64,
    /// lethe_head_open: the application's key (key_len = 32 bytes) of an encrypted state dir;
    /// NULL = none. A new state dir is created encrypted with it; an existing one must be
    /// opened with exactly its key (else LETHE_ERROR_KEY), and one created without a key
    /// without one. Lethe copies the key; the caller keeps (and later wipes) its own buffer.
    /// See lethe_head_rekey() and "Encryption" in ffi/README.md for what to do with keys.
    pub key: *const u8,
    /// lethe_head_open: bytes at `key`: 32, or 0 when `key` is NULL. Anything else is
    /// LETHE_ERROR_KEY.
    pub key_len: u64,
}

/// sizeof(lethe_options) in each released lethe.h, oldest first. Fields are only appended, so
/// every older layout is a prefix of the current one.
const OPTIONS_SIZES: [u64; 2] = [56, 72];
const _: () = assert!(OPTIONS_SIZES[OPTIONS_SIZES.len() - 1] == size_of::<lethe_options>() as u64);

/// What lethe_head_info reports about a head.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct lethe_head_summary {
    /// Samples currently learned.
    pub samples: u64,
    /// Classes C: each prediction has C logits, W has C rows.
    pub num_classes: u64,
    /// Feature dimension d: W has d columns.
    pub feature_dim: u64,
    /// The ridge strength lambda in effect (recorded in the state dir when it was created).
    pub lambda: f64,
    /// The target scale s in effect.
    pub target_scale: f64,
    /// The backend that actually runs the head (LETHE_BACKEND_CPU or LETHE_BACKEND_CUDA).
    pub backend: lethe_backend,
}

/// sizeof(lethe_head_summary) in each released lethe.h, oldest first (see [`OPTIONS_SIZES`]).
const SUMMARY_SIZES: [u64; 1] = [48];
const _: () =
    assert!(SUMMARY_SIZES[SUMMARY_SIZES.len() - 1] == size_of::<lethe_head_summary>() as u64);

/// What lethe_head_receipt reports: a digest of the head's state that anyone holding the
/// retained samples can recompute (see DESIGN.md, G8, for the exact bytes it covers).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct lethe_receipt {
    /// The version of the digest's byte layout.
    pub receipt_version: u32,
    /// The version of the canonical solve that produced the weights.
    pub algorithm_version: u32,
    /// Samples the head holds.
    pub samples: u64,
    /// SHA-256 commitment to the ids of the samples the head holds.
    pub ids_digest: [u8; 32],
    /// SHA-256 of the spec, the algorithm version, the canonical weights and `ids_digest`.
    pub digest: [u8; 32],
}

/// sizeof(lethe_receipt) in each released lethe.h, oldest first (see [`OPTIONS_SIZES`]).
const RECEIPT_SIZES: [u64; 1] = [80];
const _: () = assert!(RECEIPT_SIZES[RECEIPT_SIZES.len() - 1] == size_of::<lethe_receipt>() as u64);

/// The element type of a tensor: one of the LETHE_DTYPE_* values (ONNX's element type codes).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct lethe_dtype(pub u32);

/// 32-bit IEEE float (`float`); values must be finite.
pub const LETHE_DTYPE_FLOAT32: lethe_dtype = lethe_dtype(1);
/// Unsigned 8-bit integer (`uint8_t`).
pub const LETHE_DTYPE_UINT8: lethe_dtype = lethe_dtype(2);
/// Signed 32-bit integer (`int32_t`).
pub const LETHE_DTYPE_INT32: lethe_dtype = lethe_dtype(6);
/// Signed 64-bit integer (`int64_t`).
pub const LETHE_DTYPE_INT64: lethe_dtype = lethe_dtype(7);
/// Boolean, one byte each, 0 or 1 (other byte values are LETHE_ERROR_INVALID_ARGUMENT).
pub const LETHE_DTYPE_BOOL: lethe_dtype = lethe_dtype(9);
/// 16-bit IEEE float (the bits, as `uint16_t`); values must be finite.
pub const LETHE_DTYPE_FLOAT16: lethe_dtype = lethe_dtype(10);

/// One named input tensor of a core, in the caller's memory: pass one per core input to
/// lethe_head_learn_tensors and lethe_head_predict_tensors. The bundle's manifest says what each
/// input is (its name, element type and shape; its README how to prepare it); every field is
/// checked against it.
///
/// Set struct_size to sizeof(lethe_tensor): new versions only append fields, and every element
/// of an array passed in one call must have the same struct_size (it is the array's stride).
/// Strings and arrays are read during the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lethe_tensor {
    /// Bytes: sizeof(lethe_tensor) in the caller's lethe.h.
    pub struct_size: u64,
    /// The core input's name (UTF-8, NUL-terminated), e.g. "input_ids".
    pub name: *const c_char,
    /// The element type, a LETHE_DTYPE_* value: the manifest's dtype of that input.
    pub dtype: lethe_dtype,
    /// The number of axes (the entries of shape), at least 1.
    pub rank: u32,
    /// The size of each axis, the batch axis first (n, the number of samples).
    pub shape: *const i64,
    /// The values, row-major, in the machine's byte order.
    pub data: *const c_void,
    /// The size of data in bytes: the product of the shape times the element size.
    pub byte_len: u64,
}

/// sizeof(lethe_tensor) in each released lethe.h, oldest first (see [`OPTIONS_SIZES`]).
const TENSOR_SIZES: [u64; 1] = [48];
const _: () = assert!(TENSOR_SIZES[TENSOR_SIZES.len() - 1] == size_of::<lethe_tensor>() as u64);

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
            Error::Key(_) => LETHE_ERROR_KEY,
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

struct HeadSlot {
    /// `None` once closed (calls that looked it up just before the close see that).
    head: RwLock<Option<Head>>,
    /// Set by the first call on the head that panicked: what the panic said.
    poisoned: OnceLock<String>,
}

/// Every open handle, by token. Tokens count up from 1 and are never reused.
static HANDLES: RwLock<BTreeMap<usize, Handle>> = RwLock::new(BTreeMap::new());
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(1);

/// The handle table is only changed by one map insert or remove, which leaves it whole even if
/// it panicked; its lock being poisoned would still mean a bug, so it is reported, not ignored.
fn table_poisoned() -> Failure {
    Failure::new(
        LETHE_ERROR_POISONED,
        "the handle table is unusable after an internal error (a panic while it was changed); \
         restart the process",
    )
}

fn handles() -> Result<RwLockReadGuard<'static, BTreeMap<usize, Handle>>, Failure> {
    HANDLES.read().map_err(|_| table_poisoned())
}

fn handles_mut() -> Result<RwLockWriteGuard<'static, BTreeMap<usize, Handle>>, Failure> {
    HANDLES.write().map_err(|_| table_poisoned())
}

fn register(handle: Handle) -> Result<usize, Failure> {
    let token = NEXT_TOKEN
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_add(1))
        .map_err(|_| {
            Failure::new(
                LETHE_ERROR_LIMIT,
                "every handle value has been used once; restart the process",
            )
        })?;
    handles_mut()?.insert(token, handle);
    Ok(token)
}

fn unknown_handle(kind: &str) -> Failure {
    Failure::new(
        LETHE_ERROR_INVALID_HANDLE,
        format!("not an open {kind} (closed already, or not a {kind} handle)"),
    )
}

fn core_of(core: *const lethe_core) -> Result<Arc<Core>, Failure> {
    match handles()?.get(&core.addr()) {
        Some(Handle::Core(core)) => Ok(core.clone()),
        _ => Err(unknown_handle("lethe_core")),
    }
}

fn slot_of(head: *const lethe_head) -> Result<Arc<HeadSlot>, Failure> {
    match handles()?.get(&head.addr()) {
        Some(Handle::Head(slot)) => Ok(slot.clone()),
        _ => Err(unknown_handle("lethe_head")),
    }
}

fn head_poisoned(why: &str) -> Failure {
    Failure::new(
        LETHE_ERROR_POISONED,
        format!(
            "the head refuses calls after an internal error in an earlier call ({why}); close it \
             and open its state dir again"
        ),
    )
}

/// Runs `f` on an open head. Holds the head's read lock, so a concurrent close waits for it. A
/// panic in `f` poisons the head: this call returns `LETHE_ERROR_INTERNAL`, later ones
/// `LETHE_ERROR_POISONED`.
fn with_head<T>(
    head: *const lethe_head,
    f: impl FnOnce(&Head) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let slot = slot_of(head)?;
    // Only close takes the write lock, to move the head out: a panic there is a bug too.
    let guard = slot
        .head
        .read()
        .map_err(|_| head_poisoned("a panic while closing it"))?;
    let head = guard.as_ref().ok_or_else(|| unknown_handle("lethe_head"))?;
    if let Some(why) = slot.poisoned.get() {
        return Err(head_poisoned(why));
    }
    catch_unwind(AssertUnwindSafe(|| f(head))).unwrap_or_else(|payload| {
        let failure = Failure::panic(payload);
        // A concurrent panic may have set it first; either message says why.
        let _ = slot.poisoned.set(failure.message.clone());
        Err(failure)
    })
}

/// Removes the handle `token` from the table if it is of the kind `pick` accepts.
fn unregister<T>(token: usize, kind: &str, pick: fn(&Handle) -> Option<T>) -> Result<T, Failure> {
    let mut handles = handles_mut()?;
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
    match len.checked_mul(size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
        _ => Err(Failure::invalid(format!(
            "`{name}`: {len} values do not fit in memory"
        ))),
    }
}

/// The caller's `len` values at `ptr` (non-NULL, checked by the boundary).
///
/// # Safety
/// `ptr` must point to `len` initialized values that stay valid and unchanged for `'a`, and no
/// output of the call may overlap them ([`disjoint`]).
unsafe fn input<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<&'a [T], Failure> {
    check_slice(ptr, len, name)?;
    Ok(std::slice::from_raw_parts(ptr, len))
}

/// The caller's output buffer of `len` values at `ptr` (non-NULL, checked by the boundary).
///
/// # Safety
/// `ptr` must point to `len` writable values, not aliased during `'a` ([`disjoint`]).
unsafe fn output<'a, T>(ptr: *mut T, len: usize, name: &str) -> Result<&'a mut [T], Failure> {
    check_slice(ptr, len, name)?;
    Ok(std::slice::from_raw_parts_mut(ptr, len))
}

/// A caller's array in memory: its name, first byte and size in bytes.
struct Region {
    name: String,
    start: usize,
    bytes: usize,
}

/// The `len` values of `T` at `ptr` (NULL = no region).
fn region<T>(name: impl Into<String>, ptr: *const T, len: usize) -> Region {
    Region {
        name: name.into(),
        start: ptr.addr(),
        bytes: if ptr.is_null() {
            0
        } else {
            len.saturating_mul(size_of::<T>())
        },
    }
}

/// Refuses arrays of one call that share memory where one of them is written: Rust would see
/// the same bytes through a shared and a unique reference, which is undefined behaviour even
/// when the results look right. Checked before any reference to them exists.
fn disjoint(regions: &[Region]) -> Outcome {
    for (i, a) in regions.iter().enumerate() {
        disjoint_from(a, &regions[i + 1..])?;
    }
    Ok(())
}

/// Refuses an output region `a` that shares memory with any of `others` (inputs may share
/// memory with each other: they are only read).
fn disjoint_from(a: &Region, others: &[Region]) -> Outcome {
    for b in others {
        let overlap = a.bytes > 0
            && b.bytes > 0
            && a.start < b.start.saturating_add(b.bytes)
            && b.start < a.start.saturating_add(a.bytes);
        if overlap {
            return Err(Failure::invalid(format!(
                "`{}` and `{}` overlap; pass arrays that do not share memory",
                a.name, b.name
            )));
        }
    }
    Ok(())
}

/// The caller's tensors (`count` lethe_tensor structs at `tensors`), checked field by field,
/// and the memory they read (the array, each name, shape and data), for overlap checks.
///
/// # Safety
/// `tensors` must point to `count` structs, each with the first one's struct_size readable
/// bytes (the first 8 bytes of each are read before that is checked), whose pointers are NULL
/// or point to what their fields say, unchanged for `'a`.
unsafe fn tensors_arg<'a>(
    tensors: *const lethe_tensor,
    count: usize,
) -> Result<(Vec<Tensor<'a>>, Vec<Region>), Failure> {
    if count == 0 {
        return Err(Failure::invalid(
            "num_inputs must be at least 1: one tensor per core input",
        ));
    }
    check_slice(tensors, 1, "inputs")?;
    let stride = known_size(
        "inputs[0].struct_size",
        tensors.cast::<u64>().read(),
        &TENSOR_SIZES,
    )?;
    let array_bytes = count
        .checked_mul(stride)
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| Failure::invalid(format!("{count} tensors do not fit in memory")))?;
    let mut regions = vec![region("inputs", tensors.cast::<u8>(), array_bytes)];
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = tensors.cast::<u8>().add(i * stride);
        let size = at.cast::<u64>().read();
        if size != stride as u64 {
            return Err(Failure::invalid(format!(
                "inputs[{i}].struct_size is {size} but inputs[0].struct_size is {stride}: every \
                 element of the array has the same size, sizeof(lethe_tensor)"
            )));
        }
        let mut t = lethe_tensor {
            struct_size: stride as u64,
            name: std::ptr::null(),
            dtype: lethe_dtype(0),
            rank: 0,
            shape: std::ptr::null(),
            data: std::ptr::null(),
            byte_len: 0,
        };
        std::ptr::copy_nonoverlapping(
            at,
            (&raw mut t).cast::<u8>(),
            stride.min(size_of::<lethe_tensor>()),
        );
        let null = |field: &str| {
            Failure::new(
                LETHE_ERROR_NULL_ARGUMENT,
                format!("`inputs[{i}].{field}` is NULL"),
            )
        };
        if t.name.is_null() {
            return Err(null("name"));
        }
        let name_bytes = CStr::from_ptr(t.name);
        regions.push(region(
            format!("inputs[{i}].name"),
            t.name,
            name_bytes.count_bytes() + 1,
        ));
        let name = name_bytes
            .to_str()
            .map_err(|_| Failure::invalid(format!("`inputs[{i}].name` is not valid UTF-8")))?;
        let dtype = dtype_of(t.dtype).ok_or_else(|| {
            Failure::invalid(format!(
                "inputs[{i}] ({name:?}): dtype {} is not a LETHE_DTYPE_* value",
                t.dtype.0
            ))
        })?;
        if t.rank == 0 {
            return Err(Failure::invalid(format!(
                "inputs[{i}] ({name:?}): rank 0; the first axis is the batch axis"
            )));
        }
        if t.shape.is_null() {
            return Err(null("shape"));
        }
        let rank = t.rank as usize;
        let dims = input(t.shape, rank, &format!("inputs[{i}].shape"))?;
        regions.push(region(format!("inputs[{i}].shape"), t.shape, rank));
        let shape = dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| {
                Failure::invalid(format!(
                    "inputs[{i}] ({name:?}): shape {dims:?} has a negative size"
                ))
            })?;
        let byte_len = usize::try_from(t.byte_len)
            .ok()
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "inputs[{i}] ({name:?}): byte_len {} does not fit in memory",
                    t.byte_len
                ))
            })?;
        let data: &[u8] = if byte_len == 0 {
            &[]
        } else if t.data.is_null() {
            return Err(null("data"));
        } else {
            std::slice::from_raw_parts(t.data.cast::<u8>(), byte_len)
        };
        regions.push(region(
            format!("inputs[{i}].data"),
            t.data.cast::<u8>(),
            byte_len,
        ));
        out.push(Tensor::from_bytes(name.to_string(), dtype, &shape, data));
    }
    Ok((out, regions))
}

/// The element type of a LETHE_DTYPE_* code.
fn dtype_of(code: lethe_dtype) -> Option<DType> {
    Some(match code {
        LETHE_DTYPE_FLOAT32 => DType::Float32,
        LETHE_DTYPE_UINT8 => DType::Uint8,
        LETHE_DTYPE_INT32 => DType::Int32,
        LETHE_DTYPE_INT64 => DType::Int64,
        LETHE_DTYPE_BOOL => DType::Bool,
        LETHE_DTYPE_FLOAT16 => DType::Float16,
        _ => return None,
    })
}

/// The caller's `n` UTF-8 texts and the memory they occupy (the array and each string).
///
/// # Safety
/// `texts` must point to `n` pointers, each NULL or a NUL-terminated string, unchanged for
/// `'a`.
unsafe fn texts_arg<'a>(
    texts: *const *const c_char,
    n: usize,
) -> Result<(Vec<&'a str>, Vec<Region>), Failure> {
    let pointers = input(texts, n, "texts")?;
    let mut regions = vec![region("texts", texts, n)];
    let mut out = Vec::with_capacity(n);
    for (i, &p) in pointers.iter().enumerate() {
        if p.is_null() {
            return Err(Failure::new(
                LETHE_ERROR_NULL_ARGUMENT,
                format!("`texts[{i}]` is NULL"),
            ));
        }
        let text = CStr::from_ptr(p);
        regions.push(region(format!("texts[{i}]"), p, text.count_bytes() + 1));
        out.push(
            text.to_str()
                .map_err(|e| Failure::invalid(format!("`texts[{i}]` is not valid UTF-8: {e}")))?,
        );
    }
    Ok((out, regions))
}

/// Writes `predicted` (n × C logits) to the caller's `logits` after the usual checks: the
/// buffer's size (LETHE_ERROR_BUFFER_TOO_SMALL writes `logits_needed`), and no overlap of the
/// outputs with each other or with `inputs`.
///
/// # Safety
/// `logits` must point to `logits_len` writable floats, `logits_needed` be NULL or writable.
unsafe fn write_logits(
    n: usize,
    c: usize,
    inputs: &[Region],
    logits: *mut f32,
    logits_len: usize,
    logits_needed: *mut usize,
    predict: impl FnOnce() -> Result<ndarray::Array2<f32>, Error>,
) -> Outcome {
    let need = values_of(n, c, "logits")?;
    let outputs = [
        region("logits", logits, logits_len),
        region("logits_needed", logits_needed, 1),
    ];
    disjoint(&outputs)?;
    for out in &outputs {
        disjoint_from(out, inputs)?;
    }
    let what = format!("{n} samples x {c} classes");
    let needed = [(logits_needed, "logits_needed", need)];
    need_buffer("logits", logits_len, need, &what, &needed)?;
    let logits = output(logits, logits_len, "logits")?;
    let predicted = predict()?;
    let predicted = predicted.as_standard_layout();
    let values = predicted.as_slice().expect("standard layout");
    logits[..values.len()].copy_from_slice(values);
    write_optional(logits_needed, "logits_needed", need)
}

/// Writes `value` to the optional out-parameter `out` (NULL = not wanted).
///
/// # Safety
/// `out` must be NULL or writable (alignment is checked).
unsafe fn write_optional(out: *mut usize, name: &str, value: usize) -> Outcome {
    if !out.is_null() {
        check_slice(out, 1, name)?;
        out.write(value);
    }
    Ok(())
}

/// A needed out-parameter: where to write the size needed, and the size.
type Needed = (*mut usize, &'static str, usize);

/// Refuses an output buffer of `have` values that needs `need`, writing every needed size of
/// the call to its out-parameter first (see LETHE_ERROR_BUFFER_TOO_SMALL).
///
/// # Safety
/// The pointers in `needed` must be NULL or writable.
unsafe fn need_buffer(
    name: &str,
    have: usize,
    need: usize,
    what: &str,
    needed: &[Needed],
) -> Outcome {
    if have < need {
        for &(out, out_name, value) in needed {
            write_optional(out, out_name, value)?;
        }
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

/// Checks a caller's struct size against the sizes its struct has had in released headers.
fn known_size(name: &str, size: u64, sizes: &[u64]) -> Result<usize, Failure> {
    let newest = sizes[sizes.len() - 1];
    if sizes.contains(&size) {
        return Ok(size as usize);
    }
    let why = if size > newest {
        format!(
            "larger than this library's ({newest} bytes): the program was built with a newer \
             lethe.h than liblethe {}",
            env!("CARGO_PKG_VERSION")
        )
    } else {
        format!("not a size this struct has had ({sizes:?})")
    };
    Err(Failure::invalid(format!(
        "{name} is {size}, {why}; fill the struct with its lethe_*_default() function and pass \
         sizeof of it"
    )))
}

/// Writes the first `size` bytes of `value` to `out`: all of it, or the fields an older,
/// smaller version of the struct has.
///
/// # Safety
/// `out` must point to `size` writable bytes; `size` is at most `size_of::<T>()`.
unsafe fn write_prefix<T>(out: *mut T, value: &T, size: usize) {
    debug_assert!(size <= size_of::<T>());
    std::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), out.cast::<u8>(), size);
}

fn default_options() -> lethe_options {
    lethe_options {
        struct_size: size_of::<lethe_options>() as u64,
        ort_library: std::ptr::null(),
        intra_threads: 0,
        backend: LETHE_BACKEND_CPU,
        require_gpu: 0,
        cuda_device: 0,
        features: std::ptr::null(),
        lambda: 0.0,
        target_scale: 0.0,
        key: std::ptr::null(),
        key_len: 0,
    }
}

/// The caller's options, or the defaults for NULL. `sizes` are the known struct sizes
/// ([`OPTIONS_SIZES`]); fields beyond an older caller's struct_size take their defaults.
///
/// # Safety
/// `options` must be NULL or point to `options->struct_size` readable bytes.
unsafe fn options_arg(
    options: *const lethe_options,
    sizes: &[u64],
) -> Result<lethe_options, Failure> {
    let mut out = default_options();
    if options.is_null() {
        return Ok(out);
    }
    check_slice(options, 1, "options")?;
    let size = known_size("options->struct_size", options.cast::<u64>().read(), sizes)?;
    std::ptr::copy_nonoverlapping(
        options.cast::<u8>(),
        (&raw mut out).cast::<u8>(),
        size.min(size_of::<lethe_options>()),
    );
    Ok(out)
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
    let require_gpu = match options.require_gpu {
        0 => false,
        1 => true,
        other => {
            return Err(Failure::invalid(format!(
                "require_gpu is {other}, not 0 or 1"
            )))
        }
    };
    Ok(CoreOptions {
        ort_library: (!options.ort_library.is_null()).then(|| path_arg(options.ort_library)),
        intra_threads: options.intra_threads as usize,
        backend: BackendOptions {
            backend,
            require_gpu,
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
        key: key_arg(options.key, options.key_len, "options->key")?,
    })
}

/// The key of `len` bytes at `key` (NULL with 0: none).
///
/// # Safety
/// `key` must be NULL or point to `len` readable bytes.
unsafe fn key_arg(key: *const u8, len: u64, name: &str) -> Result<Option<StateKey>, Failure> {
    if key.is_null() {
        return match len {
            0 => Ok(None),
            _ => Err(Failure::new(
                LETHE_ERROR_KEY,
                format!("`{name}` is NULL but its length is {len}"),
            )),
        };
    }
    let bytes = input(key, len as usize, name)?;
    Ok(Some(StateKey::from_slice(bytes)?))
}

fn backend_code(placement: &Placement) -> lethe_backend {
    match placement {
        Placement::Cpu(_) => LETHE_BACKEND_CPU,
        Placement::Cuda(_) => LETHE_BACKEND_CUDA,
    }
}

/// The host's log callback.
#[derive(Clone, Copy)]
struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, lethe_log_level, *const c_char),
    user_data: *mut c_void,
}

// SAFETY: lethe_set_log_callback's contract makes the callback and its user_data usable from
// any thread.
unsafe impl Send for Sink {}
unsafe impl Sync for Sink {}

/// The callback; held shared while it runs, so replacing it waits for calls in progress.
static SINK: RwLock<Option<Sink>> = RwLock::new(None);
/// The most verbose level delivered (0 = none), read on every event without a lock.
static MAX_LEVEL: AtomicU32 = AtomicU32::new(0);
/// Whether [`CallbackLog`] is the global subscriber (or why it could not be).
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

thread_local! {
    /// Set while this thread runs the callback: events it causes are dropped, not delivered
    /// re-entrantly, and it may not replace the callback (that would wait for itself).
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn level_code(level: &Level) -> u32 {
    match *level {
        Level::ERROR => LETHE_LOG_ERROR.0,
        Level::WARN => LETHE_LOG_WARN.0,
        Level::INFO => LETHE_LOG_INFO.0,
        Level::DEBUG => LETHE_LOG_DEBUG.0,
        Level::TRACE => LETHE_LOG_TRACE.0,
    }
}

fn level_filter(code: u32) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// A `tracing` subscriber that hands events to the host's callback. Spans are not recorded.
struct CallbackLog;

impl Subscriber for CallbackLog {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // Events are asked each time: the level filter changes at run time.
        if metadata.is_event() {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && level_code(metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(level_filter(MAX_LEVEL.load(Ordering::Relaxed)))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Never called: spans are disabled above.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if IN_CALLBACK.get() {
            return;
        }
        // A panic here would be a bug in this function; the lock is never held while one can
        // happen, so poisoning cannot mean a half-set callback.
        let guard = SINK.read().unwrap_or_else(|e| e.into_inner());
        let Some(sink) = *guard else { return };
        let level = level_code(event.metadata().level());
        if level > MAX_LEVEL.load(Ordering::Relaxed) {
            return;
        }
        let mut text = EventText::default();
        event.record(&mut text);
        let message = CString::new(text.finish().replace('\0', "\\0")).unwrap_or_default();
        IN_CALLBACK.set(true);
        // SAFETY: lethe_set_log_callback's contract.
        unsafe { (sink.callback)(sink.user_data, lethe_log_level(level), message.as_ptr()) };
        IN_CALLBACK.set(false);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// An event as one line: its message, then its other fields as `name=value`.
#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
}

impl EventText {
    fn finish(self) -> String {
        self.message + &self.fields
    }
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// Installs [`CallbackLog`] as the global subscriber, once per process.
fn install_log() -> Outcome {
    let installed = INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(CallbackLog).map_err(|e| e.to_string())
    });
    installed.clone().map_err(|why| {
        Failure::new(
            LETHE_ERROR_LIMIT,
            format!(
                "this process already has a global tracing subscriber ({why}): a Rust program \
                 that links Lethe and installs its own receives Lethe's events there"
            ),
        )
    })
}

/// The version of the library as MAJOR * 1000000 + MINOR * 1000 + PATCH. Compare with
/// LETHE_VERSION_NUMBER to check that the header matches the library at run time.
///
/// Thread-safe: may run at any time, concurrently with anything. Cannot fail.
#[no_mangle]
pub extern "C" fn lethe_version_number() -> u32 {
    infallible!(LETHE_VERSION_NUMBER, { LETHE_VERSION_NUMBER })
}

/// The version of the library as a static string, e.g. "0.2.0". Never NULL; do not free.
///
/// Thread-safe: may run at any time, concurrently with anything. Cannot fail.
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
/// Thread-safe: may run at any time, concurrently with anything (also inside the log
/// callback). Cannot fail; does not change lethe_last_error().
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
        LETHE_ERROR_POISONED => c"head unusable after an internal error",
        LETHE_ERROR_KEY => c"wrong, missing or unexpected state dir key",
        _ => c"unknown status",
    }
}

/// The message of the last call on this thread that returned a lethe_status: "" if it
/// succeeded, else what went wrong (with the function's name, paths, sizes). Never NULL; do
/// not free.
///
/// The string belongs to this thread and stays valid until its next call of a function that
/// returns a lethe_status; copy it to keep it. Other threads' calls do not change it.
///
/// Thread-safe: may run at any time, concurrently with anything.
#[no_mangle]
pub extern "C" fn lethe_last_error() -> *const c_char {
    infallible!(c"".as_ptr(), { LAST_ERROR.with(|e| e.borrow().as_ptr()) })
}

/// Sends Lethe's log messages of `max_level` and more severe (LETHE_LOG_WARN is a good choice)
/// to `callback`, with `user_data` passed through; a NULL `callback` stops logging. Without a
/// callback Lethe logs nothing. Warnings include a fallback from the GPU to the CPU and a state
/// dir recovered after a crash; errors include a failed background re-solve. ONNX Runtime's own
/// messages come through too.
///
/// The callback is called on the thread that logs: any thread that calls Lethe, and Lethe's own
/// background threads, possibly on several threads at once, so it must be thread-safe. It may
/// run while Lethe holds internal locks, so it must not call Lethe functions other than
/// lethe_status_str, lethe_version and lethe_version_number (lethe_set_log_callback() called
/// from inside it returns LETHE_ERROR_INVALID_ARGUMENT, and what Lethe logs on that thread while
/// the callback runs is dropped). It must return normally: a C++ exception leaving it aborts
/// the process, and a longjmp out of it is undefined behaviour.
///
/// Thread-safe: may run concurrently with any call. When it returns, calls of the previous
/// callback have finished and no new ones start, so its user_data may be freed.
///
/// Returns LETHE_OK; LETHE_ERROR_INVALID_ARGUMENT (`max_level` not a LETHE_LOG_* value with a
/// callback, or called from inside the callback); LETHE_ERROR_LIMIT (only in a Rust program
/// that installed its own global tracing subscriber, which then receives Lethe's events).
///
/// The behaviour is undefined unless `callback` is NULL or a function of this type that may be
/// called with `user_data` from any thread until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn lethe_set_log_callback(
    callback: lethe_log_callback,
    user_data: *mut c_void,
    max_level: lethe_log_level,
) -> lethe_status {
    boundary!("lethe_set_log_callback", [], {
        if IN_CALLBACK.get() {
            return Err(Failure::invalid(
                "called from inside the log callback, which it would wait for",
            ));
        }
        let sink = match callback {
            Some(callback) if (LETHE_LOG_ERROR..=LETHE_LOG_TRACE).contains(&max_level) => {
                install_log()?;
                Some(Sink {
                    callback,
                    user_data,
                })
            }
            Some(_) => {
                return Err(Failure::invalid(format!(
                    "max_level {} is not a LETHE_LOG_* value",
                    max_level.0
                )))
            }
            None => None,
        };
        // A single assignment under the lock: poisoning cannot leave it half-done.
        let mut current = SINK.write().unwrap_or_else(|e| e.into_inner());
        *current = sink;
        MAX_LEVEL.store(sink.map_or(0, |_| max_level.0), Ordering::Relaxed);
        drop(current);
        // Recomputes tracing's global level filter from CallbackLog::max_level_hint.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    })
}

/// Fills `*options` with the defaults: ONNX Runtime found by the documented search, ONNX
/// Runtime's default threads, LETHE_BACKEND_CPU, the bundle's default features, lambda and
/// target scale, and struct_size = `options_size`. Call it before setting fields: future
/// versions may add fields.
///
/// `options_size` must be sizeof(lethe_options) (write exactly that): it tells the library which
/// version of the struct the caller's lethe.h declares, so that it writes no more than that.
///
/// Thread-safe: may run concurrently with any call.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_ARGUMENT (an
/// `options_size` that no lethe.h has had; nothing is written).
///
/// The behaviour is undefined unless `options` is NULL or points to `options_size` writable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn lethe_options_default(
    options: *mut lethe_options,
    options_size: usize,
) -> lethe_status {
    boundary!("lethe_options_default", [options], {
        check_slice(options.cast_const(), 1, "options")?;
        let size = known_size("options_size", options_size as u64, &OPTIONS_SIZES)?;
        let defaults = lethe_options {
            struct_size: size as u64,
            ..default_options()
        };
        write_prefix(options, &defaults, size);
        Ok(())
    })
}

/// Opens the bundle in the folder `bundle_dir` (manifest.json + core.onnx), checks it (the
/// manifest, the core's sha256, the ONNX graph) and loads its core into ONNX Runtime, loading
/// ONNX Runtime itself on first use. `options` may be NULL for the defaults; this call reads
/// its struct_size, ort_library, intra_threads, backend, require_gpu and cuda_device fields.
///
/// Ownership: on success `*out` is a new core handle owned by the caller, to be released with
/// lethe_core_close(). Heads opened over it keep what they need, so it may be closed before
/// them. On failure `*out` is not written.
///
/// Thread-safe: may run concurrently with any call; any number of cores may be open.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (bundle_dir, out); LETHE_ERROR_INVALID_ARGUMENT
/// (struct_size or an option value); LETHE_ERROR_IO (a missing or unreadable file);
/// LETHE_ERROR_BUNDLE; LETHE_ERROR_ORT_LIBRARY; LETHE_ERROR_ORT;
/// LETHE_ERROR_BACKEND_UNAVAILABLE (require_gpu without a usable GPU).
///
/// The behaviour is undefined unless `bundle_dir` is a NUL-terminated path, `options` is NULL or
/// points to a lethe_options whose struct_size bytes are readable and whose strings are NULL or
/// NUL-terminated, and `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_core_open(
    bundle_dir: *const c_char,
    options: *const lethe_options,
    out: *mut *mut lethe_core,
) -> lethe_status {
    boundary!("lethe_core_open", [bundle_dir, out], {
        let dir = path_arg(bundle_dir);
        let core_options = core_options(&options_arg(options, &OPTIONS_SIZES)?)?;
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
/// passed to learn and predict hold n times this many floats, sample after sample. A core that
/// does not take one float32 input of fixed shape (several inputs, integer inputs, dynamic
/// axes: e.g. a text bundle's) gives 0: use lethe_head_learn_tensors and
/// lethe_head_predict_tensors (or the _text calls) with it.
///
/// Thread-safe: may run concurrently with any call. Returns LETHE_OK,
/// LETHE_ERROR_NULL_ARGUMENT or LETHE_ERROR_INVALID_HANDLE.
///
/// The behaviour is undefined unless `out` is writable.
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
/// Thread-safe: may run concurrently with any call. Returns LETHE_OK,
/// LETHE_ERROR_NULL_ARGUMENT or LETHE_ERROR_INVALID_HANDLE.
///
/// The behaviour is undefined unless `out` is writable.
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

/// Writes to `*out` the dimension d of the core's features output named `features` (UTF-8;
/// several joined by '+': the sum of their dimensions), or of the bundle's default features
/// when `features` is NULL.
///
/// Thread-safe: may run concurrently with any call. Returns LETHE_OK,
/// LETHE_ERROR_NULL_ARGUMENT, LETHE_ERROR_INVALID_HANDLE, or LETHE_ERROR_INVALID_ARGUMENT when
/// the bundle has no such features output.
///
/// The behaviour is undefined unless `features` is NULL or NUL-terminated and `out` is
/// writable.
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
/// Thread-safe: may run concurrently with any call. Returns LETHE_OK,
/// LETHE_ERROR_NULL_ARGUMENT or LETHE_ERROR_INVALID_HANDLE.
///
/// The behaviour is undefined unless `out` is writable.
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
/// call reads its struct_size, features, lambda and target_scale fields. An existing state dir
/// keeps the settings it was created with; asking for others is LETHE_ERROR_STATE.
///
/// Ownership: on success `*out` is a new head handle owned by the caller, to be released with
/// lethe_head_close() (which persists it). The head keeps the core alive. A state dir can be
/// open in one head at a time, across processes. On failure `*out` is not written.
///
/// Thread-safe: may run concurrently with any call; heads over one core may be opened and used
/// from any threads.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (core, state_dir, out);
/// LETHE_ERROR_INVALID_HANDLE (core); LETHE_ERROR_INVALID_ARGUMENT (struct_size, an option
/// value or unknown features); LETHE_ERROR_STATE (corrupt, another bundle's, other settings,
/// or open elsewhere); LETHE_ERROR_KEY (options->key missing, wrong, unexpected or not 32
/// bytes); LETHE_ERROR_IO; LETHE_ERROR_LIMIT.
///
/// The behaviour is undefined unless `state_dir` is a NUL-terminated path, `options` is NULL or
/// points to a lethe_options whose struct_size bytes are readable and whose strings are NULL or
/// NUL-terminated, `options->key` is NULL or points to `options->key_len` readable bytes, and
/// `out` is writable.
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
        let head_options = head_options(&options_arg(options, &OPTIONS_SIZES)?)?;
        let head = Head::open(core, &dir, &head_options)?;
        let slot = HeadSlot {
            head: RwLock::new(Some(head)),
            poisoned: OnceLock::new(),
        };
        let token = register(Handle::Head(Arc::new(slot)))?;
        out.write(std::ptr::without_provenance_mut(token));
        Ok(())
    })
}

/// Closes a head: finishes pending work, writes its canonical state to the state dir and
/// releases the state dir. NULL is a harmless no-op.
///
/// Ownership: the handle is released whatever the result, also when persisting fails (an
/// exception to "a failed call changes nothing": the state dir may already be half rewritten
/// and cannot be trusted for a retry in this process). Closing it again returns
/// LETHE_ERROR_INVALID_HANDLE. Nothing acknowledged is lost: every learn and forget that
/// returned LETHE_OK is durable without a close, and opening the state dir again recovers it;
/// a successful close makes the state dir canonical and quick to open.
///
/// Thread-safe, also while other threads use the head: it waits for their calls in progress
/// to finish; calls made after it started return LETHE_ERROR_INVALID_HANDLE.
///
/// Returns LETHE_OK; LETHE_ERROR_INVALID_HANDLE (not an open head); LETHE_ERROR_IO,
/// LETHE_ERROR_STATE or LETHE_ERROR_LIMIT if persisting failed; LETHE_ERROR_POISONED if the
/// head was poisoned (it is released, and persisted only if the panic left its state intact:
/// lethe_last_error() says which).
#[no_mangle]
pub extern "C" fn lethe_head_close(head: *mut lethe_head) -> lethe_status {
    boundary!("lethe_head_close", [], {
        if head.is_null() {
            return Ok(());
        }
        let (head, poisoned) = release_head(head)?;
        let closed = head.close();
        match (poisoned, closed) {
            (None, closed) => Ok(closed?),
            (Some(why), Ok(())) => Err(Failure::new(
                LETHE_ERROR_POISONED,
                format!(
                    "closed and persisted: the internal error in an earlier call ({why}) left \
                     the head's state intact"
                ),
            )),
            (Some(why), Err(e)) => Err(Failure::new(
                LETHE_ERROR_POISONED,
                format!("closed after an internal error in an earlier call ({why}): {e}"),
            )),
        }
    })
}

/// Unregisters an open head's handle and takes the head out of its slot (also on a poisoned
/// lock: the head is released either way), with what poisoned it, if a call did: for
/// lethe_head_close and lethe_head_erase.
fn release_head(head: *mut lethe_head) -> Result<(Head, Option<String>), Failure> {
    let slot = unregister(head.addr(), "lethe_head", |h| match h {
        Handle::Head(slot) => Some(slot.clone()),
        Handle::Core(_) => None,
    })?;
    let taken = slot.head.write().unwrap_or_else(|e| e.into_inner()).take();
    let head = taken.ok_or_else(|| unknown_handle("lethe_head"))?;
    Ok((head, slot.poisoned.get().cloned()))
}

/// Erases a head's state dir instead of closing it, as lethe_state_erase does (every file of
/// Lethe's overwritten with zeros, synced and removed, then the folder if it is left empty),
/// while the head still holds the state dir: no other head or process can open it in between.
/// For an application that created a state dir and wants nothing of it left after a failure.
/// NULL is a harmless no-op.
///
/// Ownership: the handle is released whatever the result. If erasing fails, the state dir is
/// released as it is (erase it with lethe_state_erase).
///
/// Thread-safe, also while other threads use the head, as lethe_head_close.
///
/// Returns LETHE_OK; LETHE_ERROR_INVALID_HANDLE (not an open head); LETHE_ERROR_IO or
/// LETHE_ERROR_STATE if erasing failed; LETHE_ERROR_POISONED if the head was poisoned (it is
/// released; lethe_last_error() says whether the state dir was erased).
#[no_mangle]
pub extern "C" fn lethe_head_erase(head: *mut lethe_head) -> lethe_status {
    boundary!("lethe_head_erase", [], {
        if head.is_null() {
            return Ok(());
        }
        let (head, poisoned) = release_head(head)?;
        let erased = head.erase();
        match (poisoned, erased) {
            (None, erased) => {
                erased?;
                Ok(())
            }
            (Some(why), Ok(_)) => Err(Failure::new(
                LETHE_ERROR_POISONED,
                format!("erased after an internal error in an earlier call ({why})"),
            )),
            (Some(why), Err(e)) => Err(Failure::new(
                LETHE_ERROR_POISONED,
                format!(
                    "released, not erased, after an internal error in an earlier call ({why}): \
                     {e}"
                ),
            )),
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
/// call, never a mix) or read the head; learn/forget/forget_all calls on one head run one at a
/// time.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, a NaN or infinite input, a label >= C, features out of
/// the bundle's range); LETHE_ERROR_SAMPLE_ID (an id already learned or repeated);
/// LETHE_ERROR_IO; LETHE_ERROR_ORT; LETHE_ERROR_LIMIT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `ids` and `labels` point to n readable values and `inputs`
/// to n * L readable floats, none of which change during the call.
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
/// LETHE_ERROR_LIMIT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `ids` points to n readable values.
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
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE; LETHE_ERROR_IO;
/// LETHE_ERROR_POISONED.
#[no_mangle]
pub extern "C" fn lethe_head_forget_all(head: *mut lethe_head) -> lethe_status {
    boundary!("lethe_head_forget_all", [head], {
        with_head(head, |h| Ok(h.forget_all()?))
    })
}

/// Replaces the key of the head's encrypted state dir by `new_key` (new_key_len = 32 bytes):
/// every sample and statistic it holds is sealed again under a new data key, which only
/// `new_key` unwraps; the old key opens nothing in the state dir afterwards. Takes time and
/// space in proportion to the samples held (it rewrites them). Durable when it returns
/// LETHE_OK; on an error nothing changed and the old key stays in effect, unless the head
/// then refuses changes because the outcome is unknown (LETHE_ERROR_STATE saying so): after
/// reopening, exactly one of the two keys opens the state dir.
///
/// Keys: open the state dir with `new_key` from now on; once this returned LETHE_OK (and
/// after any forget or forget-all whose data must be unrecoverable even from blocks the
/// storage kept), destroy the old key in your key store: then nothing ever written under it
/// can be read. Lethe copies `new_key`; wipe your buffer when you no longer need it.
///
/// Thread-safe: as lethe_head_learn.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (head, new_key); LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_KEY (new_key_len is not 32, or the state dir is not encrypted);
/// LETHE_ERROR_STATE; LETHE_ERROR_IO; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `new_key` points to `new_key_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_rekey(
    head: *mut lethe_head,
    new_key: *const u8,
    new_key_len: usize,
) -> lethe_status {
    boundary!("lethe_head_rekey", [head, new_key], {
        let key = key_arg(new_key, new_key_len as u64, "new_key")?.expect("not NULL");
        with_head(head, |h| Ok(h.rekey(&key)?))
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
/// holds `logits_len` floats (at least n * C). Inputs as for lethe_head_learn. `inputs` and
/// `logits` must not overlap. If `logits_needed` is not NULL, `*logits_needed` receives n * C on
/// LETHE_OK and on LETHE_ERROR_BUFFER_TOO_SMALL.
///
/// Writes nothing else on error.
///
/// Thread-safe: any number of threads may predict on one head, also while another learns,
/// forgets or reads it; each call uses one snapshot of the weights for all n samples.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, a NaN or infinite input, overlapping arrays);
/// LETHE_ERROR_BUFFER_TOO_SMALL (logits_len < n * C); LETHE_ERROR_ORT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `inputs` points to n * L readable floats that do not
/// change during the call, `logits` to `logits_len` writable floats, and `logits_needed` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_predict(
    head: *const lethe_head,
    inputs: *const f32,
    n: usize,
    logits: *mut f32,
    logits_len: usize,
    logits_needed: *mut usize,
) -> lethe_status {
    boundary!("lethe_head_predict", [head, inputs, logits], {
        positive_n(n)?;
        with_head(head, |h| {
            let per = h.core().map_or(0, |c| c.input_len());
            let c = h.spec().num_classes();
            let need = values_of(n, c, "logits")?;
            let inputs_len = values_of(n, per, "inputs")?;
            disjoint(&[
                region("inputs", inputs, inputs_len),
                region("logits", logits, logits_len),
                region("logits_needed", logits_needed, 1),
            ])?;
            let what = format!("{n} samples x {c} classes");
            let needed = [(logits_needed, "logits_needed", need)];
            need_buffer("logits", logits_len, need, &what, &needed)?;
            let inputs = input(inputs, inputs_len, "inputs")?;
            let logits = output(logits, logits_len, "logits")?;
            let predicted = h.predict(inputs, n)?;
            let predicted = predicted.as_standard_layout();
            let values = predicted.as_slice().expect("standard layout");
            logits[..values.len()].copy_from_slice(values);
            write_optional(logits_needed, "logits_needed", need)
        })
    })
}

/// Learns n samples from named tensors, one per core input: `inputs` holds `num_inputs`
/// lethe_tensor structs, each with n rows on its batch axis (the first). Sample i has the id
/// `ids[i]`, row i of every input, and the class `labels[i]` < C. Otherwise as
/// lethe_head_learn, which is the shorthand for a core with one float32 input.
///
/// Every input the core takes must be given once, with the manifest's name, element type and
/// number of axes, the same n on every batch axis, the manifest's fixed sizes, the same size on
/// every axis of one name (e.g. "seq"), and byte_len equal to the shape's product times the
/// element size; floats must be finite and booleans 0 or 1. Anything else is
/// LETHE_ERROR_INVALID_ARGUMENT, with lethe_last_error() naming the input and what differs.
///
/// All or nothing: on any error nothing is learned and the head is unchanged.
///
/// Thread-safe: as lethe_head_learn.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (also a NULL name or shape, or a NULL data with
/// a positive byte_len); LETHE_ERROR_INVALID_HANDLE; LETHE_ERROR_INVALID_ARGUMENT (n = 0,
/// num_inputs = 0, a struct_size no lethe.h has had or that differs between elements, a tensor
/// that does not match the core's inputs, a label >= C, features out of the bundle's range);
/// LETHE_ERROR_SAMPLE_ID; LETHE_ERROR_IO; LETHE_ERROR_ORT; LETHE_ERROR_LIMIT;
/// LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `ids` and `labels` point to n readable values and `inputs`
/// to `num_inputs` lethe_tensor structs of struct_size bytes whose names are NUL-terminated and
/// whose shape and data point to rank values and byte_len bytes, none of which change during
/// the call.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_learn_tensors(
    head: *mut lethe_head,
    ids: *const u64,
    inputs: *const lethe_tensor,
    num_inputs: usize,
    n: usize,
    labels: *const u32,
) -> lethe_status {
    boundary!("lethe_head_learn_tensors", [head, ids, inputs, labels], {
        positive_n(n)?;
        let (tensors, _) = tensors_arg(inputs, num_inputs)?;
        let ids = input(ids, n, "ids")?;
        let labels = input(labels, n, "labels")?;
        with_head(head, |h| Ok(h.learn_tensors(ids, &tensors, labels)?))
    })
}

/// Predicts n samples from named tensors (as for lethe_head_learn_tensors; n must be their
/// batch size): writes their logits, n rows of C floats, to `logits`, which holds `logits_len`
/// floats (at least n * C). `logits` and `logits_needed` must not overlap any of the inputs'
/// memory (the array, names, shapes, data). Otherwise as lethe_head_predict, which is the
/// shorthand for a core with one float32 input.
///
/// Writes nothing else on error.
///
/// Thread-safe: as lethe_head_predict.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, num_inputs = 0, a tensor that does not match the
/// core's inputs or n, overlapping arrays); LETHE_ERROR_BUFFER_TOO_SMALL (logits_len < n * C);
/// LETHE_ERROR_ORT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `inputs` is as for lethe_head_learn_tensors, `logits`
/// points to `logits_len` writable floats, and `logits_needed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_predict_tensors(
    head: *const lethe_head,
    inputs: *const lethe_tensor,
    num_inputs: usize,
    n: usize,
    logits: *mut f32,
    logits_len: usize,
    logits_needed: *mut usize,
) -> lethe_status {
    boundary!("lethe_head_predict_tensors", [head, inputs, logits], {
        positive_n(n)?;
        let (tensors, regions) = tensors_arg(inputs, num_inputs)?;
        with_head(head, |h| {
            let core = h
                .core()
                .ok_or_else(|| Failure::invalid("the head has no core"))?;
            let batch = core.bundle().check_inputs(&tensors)?;
            if batch != n {
                return Err(Failure::invalid(format!(
                    "the inputs hold {batch} samples, n is {n}"
                )));
            }
            let c = h.spec().num_classes();
            write_logits(n, c, &regions, logits, logits_len, logits_needed, || {
                h.predict_tensors(&tensors)
            })
        })
    })
}

/// Learns n samples from UTF-8 texts, for a bundle that ships a tokenizer (its manifest
/// declares text preprocessing): sample i is the NUL-terminated text `texts[i]`, tokenized,
/// truncated and padded as the manifest says, with the id `ids[i]` and the class `labels[i]`.
/// Otherwise as lethe_head_learn_tensors.
///
/// All or nothing: on any error nothing is learned and the head is unchanged.
///
/// Thread-safe: as lethe_head_learn.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (also a NULL text); LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, a text that is not UTF-8, a bundle without a
/// tokenizer, a label >= C); LETHE_ERROR_SAMPLE_ID; LETHE_ERROR_IO; LETHE_ERROR_ORT;
/// LETHE_ERROR_LIMIT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `ids` and `labels` point to n readable values and `texts`
/// to n pointers to NUL-terminated strings, none of which change during the call.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_learn_text(
    head: *mut lethe_head,
    ids: *const u64,
    texts: *const *const c_char,
    n: usize,
    labels: *const u32,
) -> lethe_status {
    boundary!("lethe_head_learn_text", [head, ids, texts, labels], {
        positive_n(n)?;
        let (texts, _) = texts_arg(texts, n)?;
        let ids = input(ids, n, "ids")?;
        let labels = input(labels, n, "labels")?;
        with_head(head, |h| Ok(h.learn_text(ids, &texts, labels)?))
    })
}

/// Predicts n UTF-8 texts (as for lethe_head_learn_text): writes their logits, n rows of C
/// floats, to `logits`, which holds `logits_len` floats (at least n * C). `logits` and
/// `logits_needed` must not overlap `texts` or the strings. Otherwise as lethe_head_predict.
///
/// Writes nothing else on error.
///
/// Thread-safe: as lethe_head_predict.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, a text that is not UTF-8, a bundle without a
/// tokenizer, overlapping arrays); LETHE_ERROR_BUFFER_TOO_SMALL (logits_len < n * C);
/// LETHE_ERROR_ORT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `texts` points to n pointers to NUL-terminated strings
/// that do not change during the call, `logits` to `logits_len` writable floats, and
/// `logits_needed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_predict_text(
    head: *const lethe_head,
    texts: *const *const c_char,
    n: usize,
    logits: *mut f32,
    logits_len: usize,
    logits_needed: *mut usize,
) -> lethe_status {
    boundary!("lethe_head_predict_text", [head, texts, logits], {
        positive_n(n)?;
        let (texts, regions) = texts_arg(texts, n)?;
        with_head(head, |h| {
            let c = h.spec().num_classes();
            write_logits(n, c, &regions, logits, logits_len, logits_needed, || {
                h.predict_text(&texts)
            })
        })
    })
}

/// The caller's `n` image files (`files[i]`: `file_lens[i]` bytes) and the memory they occupy
/// (the two arrays and each file).
///
/// # Safety
/// `files` and `file_lens` must point to `n` values each, and each `files[i]` to
/// `file_lens[i]` readable bytes (or be NULL), unchanged for `'a`.
unsafe fn files_arg<'a>(
    files: *const *const u8,
    file_lens: *const usize,
    n: usize,
) -> Result<(Vec<&'a [u8]>, Vec<Region>), Failure> {
    let pointers = input(files, n, "files")?;
    let lens = input(file_lens, n, "file_lens")?;
    let mut regions = vec![region("files", files, n), region("file_lens", file_lens, n)];
    let mut out = Vec::with_capacity(n);
    for (i, (&p, &len)) in pointers.iter().zip(lens).enumerate() {
        if p.is_null() {
            return Err(Failure::new(
                LETHE_ERROR_NULL_ARGUMENT,
                format!("`files[{i}]` is NULL"),
            ));
        }
        out.push(input(p, len, &format!("files[{i}]"))?);
        regions.push(region(format!("files[{i}]"), p, len));
    }
    Ok((out, regions))
}

/// Learns n samples from image files, for a bundle that declares its image preprocessing
/// (`preprocessing.image` in its manifest): sample i is the PNG or JPEG file of `file_lens[i]`
/// bytes at `files[i]`, decoded, resized, cropped and normalized as the manifest says, with
/// the id `ids[i]` and the class `labels[i]`. Otherwise as lethe_head_learn_tensors.
///
/// All or nothing: on any error nothing is learned and the head is unchanged.
///
/// Thread-safe: as lethe_head_learn.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (also a NULL file); LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, a file that is not a PNG or JPEG image or does not
/// decode, an image smaller than the input with no resize, a bundle without image
/// preprocessing, a label >= C); LETHE_ERROR_SAMPLE_ID; LETHE_ERROR_IO; LETHE_ERROR_ORT;
/// LETHE_ERROR_LIMIT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `ids`, `labels`, `files` and `file_lens` point to n
/// readable values each and every `files[i]` to `file_lens[i]` readable bytes, none of which
/// change during the call.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_learn_images(
    head: *mut lethe_head,
    ids: *const u64,
    files: *const *const u8,
    file_lens: *const usize,
    n: usize,
    labels: *const u32,
) -> lethe_status {
    boundary!(
        "lethe_head_learn_images",
        [head, ids, files, file_lens, labels],
        {
            positive_n(n)?;
            let (files, _) = files_arg(files, file_lens, n)?;
            let ids = input(ids, n, "ids")?;
            let labels = input(labels, n, "labels")?;
            with_head(head, |h| Ok(h.learn_images(ids, &files, labels)?))
        }
    )
}

/// Predicts n image files (as for lethe_head_learn_images): writes their logits, n rows of C
/// floats, to `logits`, which holds `logits_len` floats (at least n * C). `logits` and
/// `logits_needed` must not overlap `files`, `file_lens` or the files. Otherwise as
/// lethe_head_predict.
///
/// Writes nothing else on error.
///
/// Thread-safe: as lethe_head_predict.
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (n = 0, a file that is not a PNG or JPEG image or does not
/// decode, a bundle without image preprocessing, overlapping arrays);
/// LETHE_ERROR_BUFFER_TOO_SMALL (logits_len < n * C); LETHE_ERROR_ORT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `files` and `file_lens` point to n values each, every
/// `files[i]` to `file_lens[i]` readable bytes that do not change during the call, `logits`
/// to `logits_len` writable floats, and `logits_needed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_predict_images(
    head: *const lethe_head,
    files: *const *const u8,
    file_lens: *const usize,
    n: usize,
    logits: *mut f32,
    logits_len: usize,
    logits_needed: *mut usize,
) -> lethe_status {
    boundary!(
        "lethe_head_predict_images",
        [head, files, file_lens, logits],
        {
            positive_n(n)?;
            let (files, regions) = files_arg(files, file_lens, n)?;
            with_head(head, |h| {
                let c = h.spec().num_classes();
                write_logits(n, c, &regions, logits, logits_len, logits_needed, || {
                    h.predict_images(&files)
                })
            })
        }
    )
}

/// Writes the head's canonical weights in double precision: W (C x d, row-major) to `w`, which
/// holds `w_len` doubles (at least C * d), and b (C) to `b`, which holds `b_len` doubles (at
/// least C); `w` and `b` must not overlap. Canonical means bit-identical to a fresh head that
/// learned only the current samples; if a background re-solve is pending, this call finishes
/// it first. If not NULL, `*w_needed` receives C * d and `*b_needed` C, on LETHE_OK and on
/// LETHE_ERROR_BUFFER_TOO_SMALL (both, whichever buffer is too small).
///
/// Writes nothing else on error.
///
/// Thread-safe: may run while other threads predict, learn, forget or read the head (it sees
/// the head between two changes).
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (overlapping arrays); LETHE_ERROR_BUFFER_TOO_SMALL;
/// LETHE_ERROR_LIMIT; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `w` points to `w_len` and `b` to `b_len` writable doubles,
/// and `w_needed` and `b_needed` are each NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_weights(
    head: *const lethe_head,
    w: *mut f64,
    w_len: usize,
    b: *mut f64,
    b_len: usize,
    w_needed: *mut usize,
    b_needed: *mut usize,
) -> lethe_status {
    boundary!("lethe_head_weights", [head, w, b], {
        with_head(head, |h| {
            let (c, d) = (h.spec().num_classes(), h.spec().dim);
            let w_need = values_of(c, d, "w")?;
            disjoint(&[
                region("w", w, w_len),
                region("b", b, b_len),
                region("w_needed", w_needed, 1),
                region("b_needed", b_needed, 1),
            ])?;
            let needed = [(w_needed, "w_needed", w_need), (b_needed, "b_needed", c)];
            need_buffer("w", w_len, w_need, &format!("W ({c} x {d})"), &needed)?;
            need_buffer("b", b_len, c, &format!("b ({c} classes)"), &needed)?;
            let w = output(w, w_len, "w")?;
            let b = output(b, b_len, "b")?;
            let weights = h.weights()?;
            let w_rows = weights.w.as_standard_layout();
            let w_values = w_rows.as_slice().expect("standard layout");
            w[..w_values.len()].copy_from_slice(w_values);
            b[..weights.b.len()].copy_from_slice(&weights.b);
            write_optional(w_needed, "w_needed", w_need)?;
            write_optional(b_needed, "b_needed", c)
        })
    })
}

/// Writes a summary of the head to `*out`: samples learned, classes, feature dimension, the
/// lambda and target scale in effect, and the backend that runs it. `out_size` must be
/// sizeof(lethe_head_summary) (write exactly that): a program built with an older lethe.h gets
/// the fields its struct has.
///
/// Thread-safe: may run concurrently with any call (it sees the head between two changes).
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (an `out_size` no lethe.h has had); LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `out` points to `out_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_info(
    head: *const lethe_head,
    out: *mut lethe_head_summary,
    out_size: usize,
) -> lethe_status {
    boundary!("lethe_head_info", [head, out], {
        check_slice(out.cast_const(), 1, "out")?;
        let size = known_size("out_size", out_size as u64, &SUMMARY_SIZES)?;
        let summary = with_head(head, |h| {
            let info = h.info();
            Ok(lethe_head_summary {
                samples: info.samples,
                num_classes: info.spec.num_classes() as u64,
                feature_dim: info.spec.dim as u64,
                lambda: info.spec.lambda,
                target_scale: info.spec.target_scale,
                backend: backend_code(&info.backend.head),
            })
        })?;
        write_prefix(out, &summary, size);
        Ok(())
    })
}

/// Writes the receipt of the head's state to `*out` (G8): the digest a fresh head that learned
/// only the head's current samples has, on any machine. Taken right after a learn, forget or
/// forget-all, it is that call's receipt (unless another thread changed the head in between).
/// If a background re-solve is pending, this call finishes it first. `out_size` must be
/// sizeof(lethe_receipt) (see lethe_head_info).
///
/// Writes nothing on error.
///
/// Thread-safe: may run concurrently with any call (it sees the head between two changes).
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT; LETHE_ERROR_INVALID_HANDLE;
/// LETHE_ERROR_INVALID_ARGUMENT (an `out_size` no lethe.h has had); LETHE_ERROR_LIMIT;
/// LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `out` points to `out_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_receipt(
    head: *const lethe_head,
    out: *mut lethe_receipt,
    out_size: usize,
) -> lethe_status {
    boundary!("lethe_head_receipt", [head, out], {
        check_slice(out.cast_const(), 1, "out")?;
        let size = known_size("out_size", out_size as u64, &RECEIPT_SIZES)?;
        let receipt = with_head(head, |h| {
            let r = h.receipt()?;
            Ok(lethe_receipt {
                receipt_version: r.receipt_version,
                algorithm_version: r.algorithm_version,
                samples: r.samples,
                ids_digest: r.ids_digest,
                digest: r.digest,
            })
        })?;
        write_prefix(out, &receipt, size);
        Ok(())
    })
}

/// Writes the ids of the learned samples, in increasing order, to `ids`, which holds `ids_len`
/// values, and their number to `*count`. `ids` may be NULL when `ids_len` is 0, to ask for the
/// number only. On LETHE_ERROR_BUFFER_TOO_SMALL, `*count` receives the number of ids (the one
/// out-parameter a failed call writes): allocate that many and call again (a concurrent learn
/// may make it grow in between). `ids` and `count` must not overlap.
///
/// Writes nothing else on error.
///
/// Thread-safe: may run concurrently with any call (it sees the head between two changes).
///
/// Returns LETHE_OK; LETHE_ERROR_NULL_ARGUMENT (head, count, or ids with ids_len > 0);
/// LETHE_ERROR_INVALID_HANDLE; LETHE_ERROR_INVALID_ARGUMENT (overlapping arrays);
/// LETHE_ERROR_BUFFER_TOO_SMALL; LETHE_ERROR_POISONED.
///
/// The behaviour is undefined unless `ids` is NULL or points to `ids_len` writable values and
/// `count` is writable.
#[no_mangle]
pub unsafe extern "C" fn lethe_head_ids(
    head: *const lethe_head,
    ids: *mut u64,
    ids_len: usize,
    count: *mut usize,
) -> lethe_status {
    boundary!("lethe_head_ids", [head, count], {
        if ids.is_null() && ids_len > 0 {
            return Err(Failure::new(
                LETHE_ERROR_NULL_ARGUMENT,
                format!("`ids` is NULL but `ids_len` is {ids_len}"),
            ));
        }
        with_head(head, |h| {
            disjoint(&[region("ids", ids, ids_len), region("count", count, 1)])?;
            check_slice(count.cast_const(), 1, "count")?;
            let learned = h.ids();
            let what = format!("{} learned samples", learned.len());
            let needed = [(count, "count", learned.len())];
            need_buffer("ids", ids_len, learned.len(), &what, &needed)?;
            if !learned.is_empty() {
                output(ids, ids_len, "ids")?[..learned.len()].copy_from_slice(&learned);
            }
            count.write(learned.len());
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::math::fixed::FixedPoint;
    use crate::math::spec::HeadSpec;

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

    fn last_error() -> String {
        unsafe { CStr::from_ptr(lethe_last_error()) }
            .to_str()
            .unwrap()
            .to_string()
    }

    /// A head with no core and no state dir, registered as a C handle.
    fn detached_handle() -> *mut lethe_head {
        let spec = HeadSpec {
            features: "features".into(),
            dim: 3,
            classes: vec!["a".into(), "b".into()],
            core_logits: None,
            lambda: 1.0,
            target_scale: 1.0,
            fixed: FixedPoint {
                frac_bits: 16,
                feature_max_abs: 8.0,
                target_max_abs: 16.0,
            },
        };
        let head = Head::detached(spec, &HeadOptions::default()).unwrap();
        let slot = HeadSlot {
            head: RwLock::new(Some(head)),
            poisoned: OnceLock::new(),
        };
        std::ptr::without_provenance_mut(register(Handle::Head(Arc::new(slot))).unwrap())
    }

    /// No C call can make Lethe panic (that would be a bug), so the panic is injected where the
    /// C functions run their bodies; every call after it, close included, is refused.
    #[test]
    fn a_panic_poisons_the_head() {
        let head = detached_handle();
        let mut summary = std::mem::MaybeUninit::<lethe_head_summary>::uninit();
        let size = size_of::<lethe_head_summary>();
        assert_eq!(
            unsafe { lethe_head_info(head, summary.as_mut_ptr(), size) },
            LETHE_OK
        );
        let status = finish(
            "lethe_head_learn",
            catch_unwind(|| with_head(head, |_| -> Outcome { panic!("injected") })),
        );
        assert_eq!(status, LETHE_ERROR_INTERNAL);
        assert!(last_error().contains("injected"), "{}", last_error());

        let status = unsafe { lethe_head_info(head, summary.as_mut_ptr(), size) };
        assert_eq!(status, LETHE_ERROR_POISONED);
        assert!(last_error().contains("injected"), "{}", last_error());
        assert_eq!(lethe_head_forget_all(head), LETHE_ERROR_POISONED);
        let mut count = 0usize;
        let status = unsafe { lethe_head_ids(head, std::ptr::null_mut(), 0, &mut count) };
        assert_eq!((status, count), (LETHE_ERROR_POISONED, 0));
        // Close releases it, and says that the head was poisoned.
        assert_eq!(lethe_head_close(head), LETHE_ERROR_POISONED);
        assert!(last_error().contains("intact"), "{}", last_error());
        assert_eq!(lethe_head_close(head), LETHE_ERROR_INVALID_HANDLE);

        // Other heads are not affected.
        let other = detached_handle();
        assert_eq!(lethe_head_forget_all(other), LETHE_OK);
        assert_eq!(lethe_head_close(other), LETHE_OK);
    }

    /// An older caller's struct is a prefix of today's: the fields it has are read, the ones it
    /// lacks take their defaults and are never read.
    #[test]
    fn an_older_options_struct_gives_the_fields_it_has() {
        let older = std::mem::offset_of!(lethe_options, features) as u64;
        let sizes = [older, size_of::<lethe_options>() as u64];
        let options = lethe_options {
            struct_size: older,
            intra_threads: 3,
            cuda_device: 2,
            lambda: 5.0,
            features: c"beyond the older struct".as_ptr(),
            ..default_options()
        };
        let read = unsafe { options_arg(&options, &sizes) }.unwrap();
        assert_eq!((read.intra_threads, read.cuda_device), (3, 2));
        assert!(read.features.is_null());
        assert_eq!(read.lambda, 0.0);

        for size in [0, older - 8, older + 8, 1 << 40] {
            let options = lethe_options {
                struct_size: size,
                ..default_options()
            };
            let failure = unsafe { options_arg(&options, &sizes) }.unwrap_err();
            assert_eq!(failure.status, LETHE_ERROR_INVALID_ARGUMENT);
            assert!(
                failure.message.contains("struct_size"),
                "{}",
                failure.message
            );
        }
    }

    /// What the callback received: user_data, level, message, and what replacing the callback
    /// from inside it returned.
    type Logged = (usize, u32, String, lethe_status);
    static LOGGED: Mutex<Vec<Logged>> = Mutex::new(Vec::new());

    // Records only: a panic here could not unwind into Lethe.
    unsafe extern "C" fn collect(
        user_data: *mut c_void,
        level: lethe_log_level,
        message: *const c_char,
    ) {
        let message = CStr::from_ptr(message).to_string_lossy().into_owned();
        let status = lethe_set_log_callback(None, std::ptr::null_mut(), LETHE_LOG_ERROR);
        if let Ok(mut logged) = LOGGED.lock() {
            logged.push((user_data.addr(), level.0, message, status));
        }
    }

    /// Events at the level asked for and more severe reach the callback as one line each; the
    /// callback cannot replace itself; after a NULL callback nothing arrives.
    #[test]
    fn log_events_reach_the_callback() {
        let user_data = std::ptr::without_provenance_mut(42);
        let status = unsafe { lethe_set_log_callback(Some(collect), user_data, LETHE_LOG_WARN) };
        assert_eq!(status, LETHE_OK);
        tracing::warn!(samples = 3, "ffi log test: a warning");
        tracing::info!("ffi log test: an info");
        tracing::error!("ffi log test: an error");
        let status =
            unsafe { lethe_set_log_callback(Some(collect), user_data, lethe_log_level(0)) };
        assert_eq!(status, LETHE_ERROR_INVALID_ARGUMENT);
        let status = unsafe { lethe_set_log_callback(None, std::ptr::null_mut(), LETHE_LOG_WARN) };
        assert_eq!(status, LETHE_OK);
        tracing::error!("ffi log test: after removal");
        let mine: Vec<Logged> = LOGGED
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, m, _)| m.starts_with("ffi log test"))
            .cloned()
            .collect();
        let refused = LETHE_ERROR_INVALID_ARGUMENT;
        assert_eq!(
            mine,
            [
                (42, 2, "ffi log test: a warning samples=3".into(), refused),
                (42, 1, "ffi log test: an error".into(), refused),
            ]
        );
    }
}
