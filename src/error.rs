//! The one error type of Lethe. Every variant carries the context a caller needs to act on it.

use std::path::PathBuf;

/// Everything that can go wrong in Lethe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ONNX Runtime's shared library could not be found or loaded.
    #[error("{0}")]
    OrtLibrary(String),

    /// ONNX Runtime returned an error.
    #[error("ONNX Runtime: {0}")]
    Ort(String),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A bundle's manifest is malformed or disagrees with its core.
    #[error("bundle {path}: {field}: {message}")]
    Manifest {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// The caller passed input Lethe cannot accept (shape, dtype, NaN, range, ids).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A sample id was learned twice or forgotten while absent.
    #[error("{0}")]
    Id(String),

    /// A state dir is corrupt, belongs to another bundle, or is locked.
    #[error("state dir {path}: {message}")]
    State { path: PathBuf, message: String },

    /// A state dir's key is missing, wrong, or given for a state dir that is not encrypted.
    #[error("key: {0}")]
    Key(String),

    /// A documented limit was exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),

    /// The requested backend is not available.
    #[error("backend unavailable: {0}")]
    Backend(String),
}

/// A failure in the CUDA path (see [`crate::device`]). Lethe checks that the libraries load
/// before calling into them, so a missing driver or NVRTC is an error here, never a panic.
/// Callers see it as [`Error::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A shared library (the driver's libcuda or NVRTC's libnvrtc) is missing or unusable.
    #[error("{0}")]
    Library(String),

    /// The CUDA driver returned an error.
    #[error("driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),

    /// NVRTC failed outside compilation (creating a program, reading its output).
    #[error("NVRTC: {0}")]
    Nvrtc(#[from] cudarc::nvrtc::result::NvrtcError),

    /// NVRTC could not compile a kernel source; `log` is NVRTC's own log.
    #[error("NVRTC could not compile kernels/{file} for {arch}: {status}\n{log}")]
    Compile {
        file: String,
        arch: String,
        status: String,
        log: String,
    },

    /// The head's weights on the device are unusable after a failed update.
    #[error("the head's weights on the device are stale: {0}")]
    Stale(String),
}

/// Lethe's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A file could not be read or written.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A state dir is unusable, for the reason `message` gives.
    pub fn state(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::State {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<CudaError> for Error {
    fn from(e: CudaError) -> Self {
        Error::Backend(format!("CUDA: {e}"))
    }
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Ort(e.to_string())
    }
}
