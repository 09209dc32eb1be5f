//! NVRTC, NVIDIA's run-time CUDA compiler: finding the library and compiling `kernels/`.
//!
//! The kernel sources are embedded in the binary and compiled when a GPU head is created, for
//! that GPU's architecture, so Lethe needs no CUDA toolkit at build time. The library is looked
//! up in this order (the first that loads wins, once per process):
//!
//! 1. the file named by `LETHE_NVRTC` (e.g. `…/nvidia/cu13/lib/libnvrtc.so.13`);
//! 2. `libnvrtc.so*` on the system loader path (a CUDA toolkit, `LD_LIBRARY_PATH`);
//! 3. the project-local install of `scripts/setup-nvrtc.sh`, `.lethe/nvrtc/libnvrtc.so.13`, in the
//!    current directory or one of its parents, then next to the executable or one of its parents.
//!
//! NVRTC works without a GPU, so CI compiles every kernel (tests/cuda_kernels.rs).

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::{result, sys};

use crate::error::CudaError;
use crate::runtime;

/// The environment variable naming an NVRTC library file.
pub const NVRTC_ENV: &str = "LETHE_NVRTC";
/// The project-local install made by `scripts/setup-nvrtc.sh`, relative to a project root.
pub const LOCAL_NVRTC: &str = ".lethe/nvrtc/libnvrtc.so.13";

/// One source file under `kernels/`, embedded.
#[derive(Debug)]
pub struct KernelSource {
    /// The file name under `kernels/`.
    pub file: &'static str,
    pub source: &'static str,
    /// Its entry points (`extern "C" __global__ <op>_<dtype>`).
    pub kernels: &'static [&'static str],
}

/// The head's kernels, compiled when a GPU head is created.
pub const HEAD: KernelSource = KernelSource {
    file: "head.cu",
    source: include_str!("../../kernels/head.cu"),
    kernels: &["head_forward_f32", "head_forward_tiled_f32", "zero_f32"],
};

/// The benchmark's yardsticks (tests/cuda_bench.rs).
pub const BENCH: KernelSource = KernelSource {
    file: "bench.cu",
    source: include_str!("../../kernels/bench.cu"),
    kernels: &["fma_peak_f32"],
};

/// Every kernel source.
pub const SOURCES: &[KernelSource] = &[HEAD, BENCH];

/// The shared header, handed to NVRTC by the name the sources include it as.
const HEADERS: &[(&str, &str)] = &[("common.cuh", include_str!("../../kernels/common.cuh"))];

/// What NVRTC produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// PTX for a virtual architecture (`compute_XY`), JIT-compiled by the driver. Needs a driver
    /// at least as new as the NVRTC that made it.
    Ptx { major: u32, minor: u32 },
    /// A CUBIN (machine code) for a real architecture (`sm_XY`): no JIT, and loads on any driver
    /// of the same CUDA major version.
    Cubin { major: u32, minor: u32 },
}

impl Target {
    /// The `--gpu-architecture` value.
    pub fn arch(&self) -> String {
        match *self {
            Target::Ptx { major, minor } => format!("compute_{major}{minor}"),
            Target::Cubin { major, minor } => format!("sm_{major}{minor}"),
        }
    }
}

/// The NVRTC library in use.
#[derive(Debug)]
pub struct Nvrtc {
    /// Where it came from, for reports: a path, or "the system loader path".
    pub source: String,
    /// Its version (major, minor).
    pub version: (u32, u32),
    /// The real architectures it can compile for, as 10 × major + minor.
    pub archs: Vec<u32>,
    /// Libraries loaded by path, kept loaded for the life of the process: cudarc finds them by
    /// their soname (libnvrtc.so.13, libnvrtc-builtins.so.13.x) once they are loaded.
    _preloaded: Vec<libloading::Library>,
}

impl Nvrtc {
    /// "NVRTC 13.0 (source)".
    pub fn describe(&self) -> String {
        format!(
            "NVRTC {}.{} ({})",
            self.version.0, self.version.1, self.source
        )
    }
}

static NVRTC: OnceLock<Result<Nvrtc, String>> = OnceLock::new();

/// Loads NVRTC once per process, following the search order above.
pub fn nvrtc() -> Result<&'static Nvrtc, CudaError> {
    NVRTC
        .get_or_init(load)
        .as_ref()
        .map_err(|e| CudaError::Library(e.clone()))
}

fn load() -> Result<Nvrtc, String> {
    let (source, preloaded) = if let Some(path) = std::env::var_os(NVRTC_ENV) {
        let path = PathBuf::from(path);
        let libs = preload(&path).map_err(|e| format!("{e} (from {NVRTC_ENV})"))?;
        (path.display().to_string(), libs)
    } else if present() {
        ("the system loader path".to_string(), Vec::new())
    } else if let Some(path) = runtime::find_local(LOCAL_NVRTC) {
        let libs = preload(&path)?;
        (path.display().to_string(), libs)
    } else {
        return Err(format!(
            "NVRTC (libnvrtc.so.13) not found: set {NVRTC_ENV} to the library, put a CUDA \
             toolkit's lib64 on LD_LIBRARY_PATH, or run scripts/setup-nvrtc.sh (PyPI wheel \
             nvidia-cuda-nvrtc into {LOCAL_NVRTC})"
        ));
    };
    if !present() {
        return Err(format!(
            "{source} loaded, but not under a name NVRTC's bindings look for (libnvrtc.so.13)"
        ));
    }
    let version = version().map_err(|e| format!("NVRTC from {source}: {e}"))?;
    let archs = supported_archs().map_err(|e| format!("NVRTC from {source}: {e}"))?;
    Ok(Nvrtc {
        source,
        version,
        archs,
        _preloaded: preloaded,
    })
}

/// Whether cudarc can load NVRTC by name now.
fn present() -> bool {
    // SAFETY: only tries to load the library (running its initializers), as any dlopen does.
    unsafe { sys::is_culib_present() }
}

/// Loads NVRTC from `path`, and first the builtins library beside it, which NVRTC itself opens
/// by name and would not find outside the loader path.
fn preload(path: &Path) -> Result<Vec<libloading::Library>, String> {
    if !path.is_file() {
        return Err(format!("NVRTC library {} does not exist", path.display()));
    }
    let mut libs = Vec::new();
    let dir = path.parent().unwrap_or(Path::new("."));
    let builtins = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so.") && !n.contains(".alt."))
        });
    for lib in builtins.chain(std::iter::once(path.to_path_buf())) {
        // SAFETY: loading NVIDIA's library runs its initializers, which have no preconditions.
        let loaded = unsafe { libloading::Library::new(&lib) }
            .map_err(|e| format!("cannot load {}: {e}", lib.display()))?;
        libs.push(loaded);
    }
    Ok(libs)
}

fn version() -> Result<(u32, u32), CudaError> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: NVRTC is loaded (checked by the caller); the pointers are valid for the call.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result()?;
    Ok((major as u32, minor as u32))
}

fn supported_archs() -> Result<Vec<u32>, CudaError> {
    let mut count: c_int = 0;
    // SAFETY: as above; the buffer holds `count` entries, as NVRTC requires.
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut count) }.result()?;
    let mut archs: Vec<c_int> = vec![0; count.max(0) as usize];
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }.result()?;
    Ok(archs.into_iter().map(|a| a as u32).collect())
}

/// The target to build for a device of compute capability `major.minor`: machine code when
/// this NVRTC knows the architecture, else PTX for the newest one it knows below it (the
/// driver JIT-compiles that).
pub fn target_for(nvrtc: &Nvrtc, major: u32, minor: u32) -> Result<Target, CudaError> {
    let wanted = major * 10 + minor;
    if nvrtc.archs.contains(&wanted) {
        return Ok(Target::Cubin { major, minor });
    }
    match nvrtc.archs.iter().copied().filter(|&a| a <= wanted).max() {
        Some(a) => Ok(Target::Ptx {
            major: a / 10,
            minor: a % 10,
        }),
        None => Err(CudaError::Library(format!(
            "{} cannot compile for compute capability {major}.{minor} (it supports {:?})",
            nvrtc.describe(),
            nvrtc.archs
        ))),
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiles a kernel source (`file` names it in messages) to `target`; returns the PTX text
/// (NUL-terminated) or the CUBIN, ready for `cuModuleLoadData`. A failed compile returns
/// NVRTC's log.
pub fn compile(file: &str, source: &str, target: Target) -> Result<Vec<u8>, CudaError> {
    nvrtc()?;
    let arch = target.arch();
    let c_source = cstring(source)?;
    let c_name = cstring(file)?;
    let header_sources = HEADERS
        .iter()
        .map(|(_, s)| cstring(s))
        .collect::<Result<Vec<_>, _>>()?;
    let header_names = HEADERS
        .iter()
        .map(|(n, _)| cstring(n))
        .collect::<Result<Vec<_>, _>>()?;
    let source_ptrs: Vec<*const c_char> = header_sources.iter().map(|s| s.as_ptr()).collect();
    let name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
    let mut raw = std::ptr::null_mut();
    // SAFETY: every pointer is a NUL-terminated string that outlives the program (they are
    // dropped at the end of this function, after `program`), and the arrays hold HEADERS.len()
    // entries.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            c_source.as_ptr(),
            c_name.as_ptr(),
            HEADERS.len() as c_int,
            source_ptrs.as_ptr(),
            name_ptrs.as_ptr(),
        )
    }
    .result()?;
    let program = Program(raw);
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--extra-device-vectorization".to_string(),
    ];
    // SAFETY: `program` is a live program.
    if let Err(status) = unsafe { result::compile_program(program.0, &options) } {
        let log = unsafe { result::get_program_log(program.0) }
            .map(|log| c_chars_to_string(&log))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        return Err(CudaError::Compile {
            file: file.to_string(),
            arch,
            status: status.to_string(),
            log,
        });
    }
    // SAFETY: `program` compiled; the buffers are sized by NVRTC's own size queries.
    unsafe {
        match target {
            Target::Ptx { .. } => {
                let ptx = result::get_ptx(program.0)?;
                Ok(ptx.into_iter().map(|c| c as u8).collect())
            }
            Target::Cubin { .. } => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(program.0, &mut size).result()?;
                let mut cubin = vec![0u8; size];
                sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()).result()?;
                Ok(cubin)
            }
        }
    }
}

fn cstring(s: &str) -> Result<CString, CudaError> {
    CString::new(s).map_err(|_| CudaError::Library("a kernel source contains a NUL byte".into()))
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).collect();
    CStr::from_bytes_until_nul(&bytes)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned())
}
