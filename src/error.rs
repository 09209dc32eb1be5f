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

    /// A documented limit was exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),

    /// The requested backend is not available.
    #[error("backend unavailable: {0}")]
    Backend(String),
}

/// Lethe's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn state(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::State {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Ort(e.to_string())
    }
}
