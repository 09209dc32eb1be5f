//! The options every command takes.

use std::path::PathBuf;

use clap::Args;

use lethe::{Backend, BackendOptions, CoreOptions};

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// ONNX Runtime library to load (default: ORT_DYLIB_PATH, then .lethe/ort/ from scripts/setup.sh).
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0 = ONNX Runtime's default).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// Where the core and head run: cpu, cuda or auto (the GPU when usable, else the CPU).
    #[arg(long, global = true, default_value = "cpu")]
    pub backend: Backend,
    /// Fail instead of falling back to the CPU when the GPU cannot be used.
    #[arg(long, global = true)]
    pub require_gpu: bool,
}

impl Global {
    pub fn core_options(&self) -> CoreOptions {
        CoreOptions {
            ort_library: self.ort_library.clone(),
            intra_threads: self.threads,
            backend: BackendOptions {
                backend: self.backend,
                require_gpu: self.require_gpu,
                ..Default::default()
            },
        }
    }
}
