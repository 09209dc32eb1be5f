//! Where a head's forward pass runs, and the path that runs the core and then the head on one
//! GPU: [`HeadBackend`] chooses the CPU or a CUDA device for a head, publishes its weights
//! there, and computes logits on it, falling back to the CPU (or failing, with `require_gpu`).

use std::sync::{Arc, Mutex};

use ndarray::Array2;

use crate::bundle::FEATURES_JOIN;
use crate::core::Core;
use crate::device::cpu;
use crate::device::cuda::{self, CudaHead, DeviceCoreLogits};
use crate::error::{Error, Result};
use crate::math::spec::HeadSpec;
use crate::math::weights::ServedWeights;
use crate::placement::{self, Backend, BackendOptions, CpuReason, Placement};

/// A head's backend: its placement and, on the GPU, its device weights and kernels. The CPU
/// weights ([`ServedWeights`]) stay the reference: when the GPU fails after creation the head
/// predicts on the CPU (or fails, with `require_gpu`) and never serves stale device weights.
pub(super) struct HeadBackend {
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
                placement::allow_cpu("head", &options, &reason)?;
                (None, Placement::Cpu(reason))
            }
        };
        placement::announce("head", &placement, options.backend);
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
                Err(e) => placement::announce(
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
        if self.outputs[0].contains(FEATURES_JOIN) {
            // Concatenated features are joined in host memory (`CoreOutputs::take_features`).
            return Ok(None);
        }
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
                placement::announce(
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
