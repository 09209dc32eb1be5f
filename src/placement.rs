//! Where the core and the head run — the CPU or a CUDA GPU — and why.
//!
//! Both parts are chosen with [`BackendOptions`]: `cpu` (the default and the reference), `cuda`
//! (use the GPU, and warn when it cannot be used) or `auto` (use the GPU when there is one).
//! When the GPU cannot be used — no driver, no device, no CUDA execution provider in the loaded
//! ONNX Runtime (core), NVRTC missing (head) — that part runs on the CPU and Lethe says so once
//! in the log and in [`crate::HeadInfo::backend`]; with `require_gpu` it is an error instead.
//!
//! The core's GPU path is ONNX Runtime's CUDA execution provider (chosen in [`crate::core`]);
//! the head's is Lethe's own kernels ([`crate::device`], chosen in [`crate::head`]). Each is chosen on its own: a head can run on the GPU over a
//! core on the CPU (an ONNX Runtime without CUDA) and vice versa.
//!
//! One binary serves both cases: the CUDA libraries are loaded at run time, and each is checked
//! before its first call, so a machine without CUDA gets a reason, never a crash.
//!
//! ```
//! use lethe::placement::{Backend, BackendOptions};
//!
//! let options = BackendOptions { backend: "auto".parse()?, ..Default::default() };
//! assert_eq!(options.backend, Backend::Auto);
//! # Ok::<(), lethe::Error>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Which backend a part should run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The GPU when one is usable, else the CPU.
    Auto,
    /// The CPU.
    #[default]
    Cpu,
    /// The GPU; falling back to the CPU is a warning (an error with `require_gpu`).
    Cuda,
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Backend> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Backend::Auto),
            "cpu" => Ok(Backend::Cpu),
            "cuda" | "gpu" => Ok(Backend::Cuda),
            other => Err(Error::InvalidInput(format!(
                "unknown backend {other:?}: expected auto, cpu or cuda"
            ))),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        })
    }
}

/// How to choose the backend of a core or a head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendOptions {
    pub backend: Backend,
    /// Fail instead of falling back to the CPU when the GPU cannot be used.
    pub require_gpu: bool,
    /// The CUDA device ordinal.
    pub device: usize,
}

impl BackendOptions {
    /// Refuses contradictory choices (`require_gpu` with the CPU backend).
    pub(crate) fn check(&self) -> Result<()> {
        if self.require_gpu && self.backend == Backend::Cpu {
            return Err(Error::InvalidInput(
                "require_gpu asks for a GPU, but the backend is cpu: choose auto or cuda".into(),
            ));
        }
        Ok(())
    }
}

/// Why a part runs on the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuReason {
    /// The CPU was asked for.
    Requested,
    /// The CUDA driver library (libcuda.so) does not load.
    NoDriver,
    /// The driver sees no (such) device.
    NoDevice(String),
    /// NVRTC (to compile the head's kernels) does not load.
    NoNvrtc(String),
    /// The loaded ONNX Runtime has no CUDA execution provider (the core only).
    NoCudaEp(String),
    /// Something else failed on the way to the GPU.
    Failed(String),
}

impl fmt::Display for CpuReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuReason::Requested => f.write_str("the CPU backend was requested"),
            CpuReason::NoDriver => {
                f.write_str("no CUDA driver: libcuda.so does not load (no NVIDIA driver)")
            }
            CpuReason::NoDevice(why) => write!(f, "no CUDA device: {why}"),
            CpuReason::NoNvrtc(why) => write!(f, "no NVRTC to compile the head's kernels: {why}"),
            CpuReason::NoCudaEp(why) => write!(f, "no CUDA execution provider: {why}"),
            CpuReason::Failed(why) => f.write_str(why),
        }
    }
}

/// Where one part runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On the CPU, and why.
    Cpu(CpuReason),
    /// On a CUDA GPU: which one, and how.
    Cuda(String),
}

impl Placement {
    /// "cpu" or "cuda".
    pub fn name(&self) -> &'static str {
        match self {
            Placement::Cpu(_) => "cpu",
            Placement::Cuda(_) => "cuda",
        }
    }

    pub fn is_gpu(&self) -> bool {
        matches!(self, Placement::Cuda(_))
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Cpu(why) => write!(f, "cpu ({why})"),
            Placement::Cuda(what) => write!(f, "cuda ({what})"),
        }
    }
}

/// Where a head and its core run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReport {
    /// The head's forward pass.
    pub head: Placement,
    /// The core; `None` for a head without one.
    pub core: Option<Placement>,
}

impl BackendReport {
    /// The head's backend: "cpu" or "cuda".
    pub fn name(&self) -> &'static str {
        self.head.name()
    }
}

impl fmt::Display for BackendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "head on {}", self.head)?;
        if let Some(core) = &self.core {
            write!(f, "; core on {core}")?;
        }
        Ok(())
    }
}

/// Logs where `part` runs, once per process for each distinct outcome. Falling back from an
/// explicit `cuda` is a warning.
pub(crate) fn announce(part: &str, placement: &Placement, asked: Backend) {
    static SAID: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let message = format!("{part} on {placement}");
    let first = SAID
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(message.clone());
    if !first {
        return;
    }
    match placement {
        Placement::Cpu(reason) if asked == Backend::Cuda && *reason != CpuReason::Requested => {
            tracing::warn!("lethe: {message}")
        }
        _ => tracing::info!("lethe: {message}"),
    }
}

/// With `require_gpu`, running `part` on the CPU for `reason` is an error.
pub(crate) fn allow_cpu(part: &str, options: &BackendOptions, reason: &CpuReason) -> Result<()> {
    if options.require_gpu {
        return Err(Error::Backend(format!(
            "the {part} cannot run on CUDA device {}: {reason}",
            options.device
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_outcome_is_said_once() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let fallback = Placement::Cpu(CpuReason::NoDevice("unit test".into()));
            for _ in 0..3 {
                announce("unit-test part", &fallback, Backend::Cuda);
            }
            announce(
                "unit-test part",
                &Placement::Cuda("a GPU".into()),
                Backend::Auto,
            );
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let fallbacks: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("unit-test part on cpu (no CUDA device: unit test)"))
            .collect();
        assert_eq!(fallbacks.len(), 1, "{log}");
        assert!(fallbacks[0].contains("WARN"), "asked for cuda: {log}");
        assert_eq!(
            log.matches("unit-test part on cuda (a GPU)").count(),
            1,
            "{log}"
        );
    }

    #[test]
    fn reports_read_as_sentences() {
        let report = BackendReport {
            head: Placement::Cuda("NVIDIA H100 (device 0, sm_90)".into()),
            core: Some(Placement::Cpu(CpuReason::NoCudaEp("a CPU build".into()))),
        };
        assert_eq!(report.name(), "cuda");
        assert_eq!(
            report.to_string(),
            "head on cuda (NVIDIA H100 (device 0, sm_90)); core on cpu (no CUDA execution \
             provider: a CPU build)"
        );
    }
}
