//! The shared libraries Lethe loads at run time: finding a project-local install
//! ([`find_local`], shared with NVRTC's lookup in [`crate::device`]), and finding and loading
//! ONNX Runtime.
//!
//! Lethe never downloads ONNX Runtime: it loads `libonnxruntime.so` from the PyPI wheel
//! `onnxruntime` (or `onnxruntime-gpu`). The library is looked up in this order:
//!
//! 1. the explicit path passed by the caller (`CoreOptions::ort_library`, `--ort-library`);
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. the project-local install made by `scripts/setup.sh`: `.lethe/ort/libonnxruntime.so` in
//!    the current directory or any of its parents, then next to the running executable or any
//!    of its parents;
//! 4. `libonnxruntime.so` on the system loader path.
//!
//! The first library loaded stays loaded for the life of the process (ONNX Runtime has one
//! environment per process).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// The environment variable naming the library, as ort's own convention.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// The project-local install, relative to a project root.
pub const LOCAL_ORT: &str = ".lethe/ort/libonnxruntime.so";
/// The ONNX Runtime version the setup step installs.
pub const ORT_VERSION: &str = "1.31.1";

/// What a user should do when the library is missing.
fn how_to_get() -> String {
    format!(
        "ONNX Runtime comes from the PyPI wheel `onnxruntime`: run `scripts/setup.sh` in the Lethe \
         source tree (it installs it into .lethe/ort/), or `pip install onnxruntime=={ORT_VERSION}` \
         and set {ORT_DYLIB_ENV} to `<site-packages>/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}`"
    )
}

/// The library path Lethe would load, following the documented search order.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return existing(path, "the explicit ONNX Runtime path");
    }
    if let Some(value) = std::env::var_os(ORT_DYLIB_ENV) {
        if !value.is_empty() {
            return existing(Path::new(&value), ORT_DYLIB_ENV);
        }
    }
    Ok(find_local(LOCAL_ORT).unwrap_or_else(|| PathBuf::from("libonnxruntime.so")))
}

/// The project-local file `relative` (e.g. `.lethe/ort/libonnxruntime.so`, made by
/// `scripts/setup.sh`): under the current directory or one of its parents, then under the
/// running executable's directory or one of its parents.
pub fn find_local(relative: &str) -> Option<PathBuf> {
    let roots = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf)),
    ];
    roots
        .into_iter()
        .flatten()
        .flat_map(|root| {
            root.ancestors()
                .map(|dir| dir.join(relative))
                .collect::<Vec<_>>()
        })
        .find(|candidate| candidate.is_file())
}

fn existing(path: &Path, source: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(Error::OrtLibrary(format!(
            "ONNX Runtime library not found at {} (from {source}). {}",
            path.display(),
            how_to_get()
        )))
    }
}

/// ONNX Runtime, loaded: the library's path and the process's environment.
pub struct Runtime {
    pub library: PathBuf,
    pub env: ort::environment::Environment,
}

static LOADED: OnceLock<Runtime> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime once per process; later calls return the runtime already loaded.
pub fn ensure_loaded(explicit: Option<&Path>) -> Result<&'static Runtime> {
    if let Some(rt) = LOADED.get() {
        return Ok(rt);
    }
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = LOADED.get() {
        return Ok(rt);
    }
    let path = find_library(explicit)?;
    let builder = ort::init_from(&path).map_err(|e| {
        Error::OrtLibrary(format!(
            "could not load ONNX Runtime from {}: {e}. {}",
            path.display(),
            how_to_get()
        ))
    })?;
    let env = builder.with_name("lethe").with_telemetry(false).build()?;
    tracing::info!(library = %path.display(), "loaded ONNX Runtime");
    Ok(LOADED.get_or_init(|| Runtime { library: path, env }))
}
