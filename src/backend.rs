//! Where the core and the head run — the CPU or a CUDA GPU — and why.
//!
//! Both parts are chosen with [`BackendOptions`]: `cpu` (the default and the reference), `cuda`
//! (use the GPU, and warn when it cannot be used) or `auto` (use the GPU when there is one).
//! When the GPU cannot be used — no driver, no device, no CUDA execution provider in the loaded
//! ONNX Runtime (core), NVRTC missing (head) — that part runs on the CPU and Lethe says so once
//! in the log and in [`crate::HeadInfo::backend`]; with `require_gpu` it is an error instead.
//!
//! The core's GPU path is ONNX Runtime's CUDA execution provider; the head's is Lethe's own
//! kernels ([`crate::head::cuda`]). Each is chosen on its own: a head can run on the GPU over a
//! core on the CPU (an ONNX Runtime without CUDA) and vice versa.
//!
//! One binary serves both cases: the CUDA libraries are loaded at run time, and each is checked
//! before its first call, so a machine without CUDA gets a reason, never a crash.
//!
//! ```
//! use lethe::backend::{Backend, BackendOptions};
//!
//! let options = BackendOptions { backend: "auto".parse()?, ..Default::default() };
//! assert_eq!(options.backend, Backend::Auto);
//! # Ok::<(), lethe::Error>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ndarray::Array2;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::head::cuda::{self, CudaHead, DeviceCoreLogits};
use crate::head::{cpu, HeadSpec, ServedWeights};
use crate::runtime::Runtime;

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
    fn check(&self) -> Result<()> {
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
fn announce(part: &str, placement: &Placement, asked: Backend) {
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
fn allow_cpu(part: &str, options: &BackendOptions, reason: &CpuReason) -> Result<()> {
    if options.require_gpu {
        return Err(Error::Backend(format!(
            "the {part} cannot run on CUDA device {}: {reason}",
            options.device
        )));
    }
    Ok(())
}

/// Where a core runs: the CUDA EP's device ordinal, or why not.
pub(crate) struct CoreBackend {
    pub placement: Placement,
    pub cuda_device: Option<usize>,
}

impl CoreBackend {
    /// Chooses the core's backend for the ONNX Runtime `rt`. Nothing is logged yet: the
    /// caller may still fall back when the CUDA EP does not start ([`CoreBackend::fall_back`]),
    /// and then [`CoreBackend::announce`]s.
    pub fn choose(options: &BackendOptions, rt: &Runtime) -> Result<CoreBackend> {
        options.check()?;
        if options.backend == Backend::Cpu {
            return Ok(CoreBackend {
                placement: Placement::Cpu(CpuReason::Requested),
                cuda_device: None,
            });
        }
        Ok(match core_device(options.device, rt) {
            Ok(name) => CoreBackend {
                placement: Placement::Cuda(format!(
                    "ONNX Runtime's CUDA execution provider on {name} (device {})",
                    options.device
                )),
                cuda_device: Some(options.device),
            },
            Err(reason) => {
                allow_cpu("core", options, &reason)?;
                CoreBackend {
                    placement: Placement::Cpu(reason),
                    cuda_device: None,
                }
            }
        })
    }

    /// The CUDA EP did not start (`why`): the CPU then, unless the GPU is required.
    pub fn fall_back(&mut self, options: &BackendOptions, why: String) -> Result<()> {
        let reason = CpuReason::Failed(format!(
            "ONNX Runtime's CUDA execution provider failed: {why}"
        ));
        allow_cpu("core", options, &reason)?;
        self.placement = Placement::Cpu(reason);
        self.cuda_device = None;
        Ok(())
    }

    pub fn announce(&self, options: &BackendOptions) {
        announce("core", &self.placement, options.backend);
    }
}

/// The name of CUDA device `ordinal` if the core can use it through the loaded ONNX Runtime.
fn core_device(ordinal: usize, rt: &Runtime) -> std::result::Result<String, CpuReason> {
    let count = cuda::device_count()?;
    if ordinal >= count {
        return Err(CpuReason::NoDevice(format!(
            "device {ordinal} was requested, the driver sees {count}"
        )));
    }
    use ort::ep::ExecutionProvider;
    match ort::ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            return Err(CpuReason::NoCudaEp(format!(
                "the loaded ONNX Runtime ({}) is a CPU build; the onnxruntime-gpu wheel has it",
                rt.library.display()
            )))
        }
        Err(e) => return Err(CpuReason::NoCudaEp(e.to_string())),
    }
    let name = cudarc::driver::result::device::get(ordinal as i32)
        .and_then(cudarc::driver::result::device::get_name)
        .unwrap_or_else(|_| "an unnamed device".into());
    Ok(name)
}

/// A head's backend: its placement and, on the GPU, its device weights and kernels. The CPU
/// weights ([`ServedWeights`]) stay the reference: when the GPU fails after creation the head
/// predicts on the CPU (or fails, with `require_gpu`) and never serves stale device weights.
pub(crate) struct HeadBackend {
    gpu: Option<CudaHead>,
    /// The core outputs the head reads: its features, then its core logits if it has any.
    outputs: Vec<String>,
    dim: usize,
    placement: Placement,
    options: BackendOptions,
    /// Why the GPU stopped serving, after it failed at run time.
    failure: Mutex<Option<String>>,
}

impl HeadBackend {
    /// Chooses where a head of `spec` runs: `options`, or its core's when `None`.
    pub fn choose(
        spec: &HeadSpec,
        options: Option<&BackendOptions>,
        core_options: Option<&BackendOptions>,
    ) -> Result<HeadBackend> {
        let options = options.or(core_options).cloned().unwrap_or_default();
        options.check()?;
        let chosen = if options.backend == Backend::Cpu {
            Err(CpuReason::Requested)
        } else {
            cuda::open_device(options.device).and_then(|device| {
                let columns = spec.core_logits.as_ref().map(|(_, cols)| cols.as_slice());
                let description = device.describe();
                CudaHead::new(device, spec.dim, spec.num_classes(), columns)
                    .map(|head| (head, description))
                    .map_err(|e| CpuReason::Failed(format!("the head's GPU weights: {e}")))
            })
        };
        let (gpu, placement) = match chosen {
            Ok((head, description)) => (Some(head), Placement::Cuda(description)),
            Err(CpuReason::Requested) => (None, Placement::Cpu(CpuReason::Requested)),
            Err(reason) => {
                allow_cpu("head", &options, &reason)?;
                (None, Placement::Cpu(reason))
            }
        };
        announce("head", &placement, options.backend);
        let mut outputs = vec![spec.features.clone()];
        outputs.extend(spec.core_logits.as_ref().map(|(name, _)| name.clone()));
        Ok(HeadBackend {
            gpu,
            outputs,
            dim: spec.dim,
            placement,
            options,
            failure: Mutex::new(None),
        })
    }

    /// Where the head runs now.
    pub fn placement(&self) -> Placement {
        match self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            Some(why) => Placement::Cpu(CpuReason::Failed(why.clone())),
            None => self.placement.clone(),
        }
    }

    /// Publishes new weights to the device (nothing on the CPU backend).
    pub fn publish(&self, weights: &ServedWeights) {
        let Some(gpu) = &self.gpu else { return };
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match gpu.publish(weights) {
            Ok(()) => *failure = None,
            Err(e) => {
                let why = format!("updating the weights on the GPU failed: {e}");
                tracing::error!("lethe: {why}; predictions use the CPU until an update succeeds");
                *failure = Some(why);
            }
        }
    }

    /// Logits `[n, C]` = z + φ Wᵀ + b, on the GPU when the head is there, else on the CPU with
    /// the weights `cpu_weights` returns.
    pub fn logits(
        &self,
        phi: &Array2<f32>,
        z: &Array2<f32>,
        cpu_weights: impl FnOnce() -> Arc<ServedWeights>,
    ) -> Result<Array2<f32>> {
        if let Some(gpu) = &self.gpu {
            match gpu.logits(phi.view(), z.view()) {
                Ok(logits) => return Ok(logits),
                Err(e) if self.options.require_gpu => return Err(e.into()),
                Err(e) => announce(
                    "head",
                    &Placement::Cpu(CpuReason::Failed(format!(
                        "a GPU prediction failed, this one ran on the CPU: {e}"
                    ))),
                    Backend::Cuda,
                ),
            }
        }
        Ok(cpu::logits(phi, z, &cpu_weights()))
    }

    /// Logits `[n, C]` for raw inputs when both the core and the head run on the same GPU: the
    /// core's features (and logits) stay in device memory and go straight into the head's
    /// kernel. `None` when they do not both run there; then use the host path.
    pub fn predict_on_device(
        &self,
        core: &Core,
        inputs: &[f32],
        n: usize,
    ) -> Result<Option<Array2<f32>>> {
        let Some(gpu) = &self.gpu else {
            return Ok(None);
        };
        let same_device = core.backend_device() == Some(gpu.device().ordinal);
        let failed = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !same_device || failed {
            return Ok(None);
        }
        let names: Vec<&str> = self.outputs.iter().map(String::as_str).collect();
        let result = core.run_on_device(inputs, n, &names, |outputs| {
            let phi = outputs[0];
            if phi.width != self.dim {
                return Err(Error::Ort(format!(
                    "features {:?} are {} wide, the head expects {}",
                    names[0], phi.width, self.dim
                )));
            }
            let z = outputs.get(1).map(|z| DeviceCoreLogits {
                ptr: z.ptr,
                width: z.width,
            });
            // SAFETY: ONNX Runtime's outputs are n × width f32 values in the primary context of
            // this device, complete, and alive until this closure returns.
            Ok(unsafe { gpu.logits_on_device(phi.ptr, z, n) }?)
        });
        match result {
            Err(e) if !self.options.require_gpu && !matches!(e, Error::InvalidInput(_)) => {
                let why = format!("the core-to-head device path failed, using the host path: {e}");
                announce(
                    "head",
                    &Placement::Cpu(CpuReason::Failed(why)),
                    Backend::Cuda,
                );
                Ok(None)
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
