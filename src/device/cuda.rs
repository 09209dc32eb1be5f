//! The head on a CUDA GPU: f32 weights resident on the device and the forward pass in Lethe's
//! own kernels (`kernels/*.cu`, compiled at run time by NVRTC for the device's architecture).
//!
//! The exact statistics and the solve stay on the CPU (`stats`, `solver`); after each change
//! the head publishes the new f32 weights — the same [`ServedWeights`] the CPU head serves — to
//! the device. The weights are versioned: a publish fills a buffer no prediction is reading
//! (the previous version when it is free, else a new one), waits for the copy to finish, then
//! swaps it in under a short lock. A prediction holds the version it started with until its
//! kernel is done, so it sees the old or the new weights, never a mix, and publishing never
//! waits for predictions. Forget-all zeroes a buffer on the device instead of copying zeros.
//!
//! Nothing here panics without CUDA: [`open_device`] checks that the driver and NVRTC load
//! before calling into them (see [`crate::placement`] for how a part's placement is reported).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use ndarray::{Array2, ArrayView2};

use super::nvrtc::{self, Target};
use crate::error::CudaError;
use crate::math::weights::ServedWeights;
use crate::placement::CpuReason;

/// Batches up to this many samples always use the bandwidth-bound kernel (`head_forward_f32`);
/// larger ones use the tiled one (`head_forward_tiled_f32`) when it has enough tiles (see
/// [`CudaHead::kernel_for`]).
pub const GEMV_MAX_ROWS: usize = 16;
/// `head_forward_f32`: warps per block and samples per warp (HEAD_GEMV_WARPS, HEAD_GEMV_ROWS).
const GEMV_WARPS: u32 = 4;
const GEMV_ROWS: u32 = 4;
/// `head_forward_tiled_f32`: the output tile edge and threads per block.
const TILE: u32 = 64;
const TILE_THREADS: u32 = 256;
/// The largest grid y dimension CUDA allows (`head_forward_f32` puts row groups there).
const MAX_GRID_Y: usize = 65535;
/// Predictions are run in chunks whose features, core logits and logits take at most this much
/// device memory (and whose row groups fit one launch of either kernel).
const MAX_CHUNK_BYTES: usize = 256 << 20;

/// A CUDA device opened for Lethe: its context and the kernels compiled for it.
pub struct GpuDevice {
    /// The device ordinal.
    pub ordinal: usize,
    /// The device's name, as the driver reports it.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (u32, u32),
    /// What the kernels were compiled to.
    pub target: Target,
    /// The NVRTC that compiled them.
    pub nvrtc: &'static nvrtc::Nvrtc,
    /// Its number of streaming multiprocessors.
    pub multiprocessors: usize,
    ctx: Arc<CudaContext>,
    kernels: Kernels,
}

struct Kernels {
    forward: CudaFunction,
    forward_tiled: CudaFunction,
    zero: CudaFunction,
}

impl GpuDevice {
    /// "NVIDIA H100 80GB HBM3 (device 0, sm_90, kernels by NVRTC 13.0 (source))".
    pub fn describe(&self) -> String {
        format!(
            "{} (device {}, {}, kernels by {})",
            self.name,
            self.ordinal,
            self.target.arch(),
            self.nvrtc.describe()
        )
    }

    /// The device's context (the driver's primary context, which ONNX Runtime's CUDA EP uses
    /// too, so device pointers pass between them).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

type Opened = Result<Arc<GpuDevice>, CpuReason>;
static DEVICES: OnceLock<Mutex<HashMap<usize, Opened>>> = OnceLock::new();

/// Opens device `ordinal` once per process: checks the driver, the device and NVRTC, creates
/// the context and compiles the kernels. The outcome (or why the GPU cannot be used) is cached.
pub fn open_device(ordinal: usize) -> Opened {
    let devices = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut devices = devices.lock().unwrap_or_else(|e| e.into_inner());
    devices
        .entry(ordinal)
        .or_insert_with(|| open_uncached(ordinal).map(Arc::new))
        .clone()
}

/// Whether the CUDA driver library (libcuda) loads; without it no CUDA call may be made.
pub fn driver_present() -> bool {
    // SAFETY: only tries to load the library (running its initializers), as any dlopen does.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices the driver sees, or why there is none.
pub fn device_count() -> Result<usize, CpuReason> {
    use cudarc::driver::sys::CUresult;
    if !driver_present() {
        return Err(CpuReason::NoDriver);
    }
    match cudarc::driver::result::init() {
        Ok(()) => {}
        Err(e) if e.0 == CUresult::CUDA_ERROR_NO_DEVICE => {
            return Err(CpuReason::NoDevice("the driver sees no CUDA device".into()))
        }
        Err(e) => {
            return Err(CpuReason::NoDevice(format!(
                "the CUDA driver did not initialize: {e}"
            )))
        }
    }
    match CudaContext::device_count() {
        Ok(0) => Err(CpuReason::NoDevice("the driver sees no CUDA device".into())),
        Ok(n) => Ok(n as usize),
        Err(e) => Err(CpuReason::NoDevice(format!(
            "cannot count CUDA devices: {e}"
        ))),
    }
}

fn open_uncached(ordinal: usize) -> Result<GpuDevice, CpuReason> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(CpuReason::NoDevice(format!(
            "device {ordinal} was requested, the driver sees {count}"
        )));
    }
    let nvrtc = nvrtc::nvrtc().map_err(|e| CpuReason::NoNvrtc(e.to_string()))?;
    let failed = |what: &str, e: CudaError| CpuReason::Failed(format!("{what}: {e}"));
    let ctx = CudaContext::new(ordinal)
        .map_err(|e| failed(&format!("creating a context on device {ordinal}"), e.into()))?;
    let name = ctx
        .name()
        .map_err(|e| failed("reading the device name", e.into()))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| failed("reading the compute capability", e.into()))?;
    let (major, minor) = (major as u32, minor as u32);
    let multiprocessors = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| failed("reading the multiprocessor count", e.into()))?;
    let target = nvrtc::target_for(nvrtc, major, minor).map_err(|e| failed(&name, e))?;
    let kernels = load_kernels(&ctx, target).map_err(|e| failed("preparing the kernels", e))?;
    Ok(GpuDevice {
        ordinal,
        name,
        compute_capability: (major, minor),
        target,
        nvrtc,
        multiprocessors: multiprocessors.max(1) as usize,
        ctx,
        kernels,
    })
}

fn load_kernels(ctx: &Arc<CudaContext>, target: Target) -> Result<Kernels, CudaError> {
    let image = nvrtc::compile(nvrtc::HEAD.file, nvrtc::HEAD.source, target)?;
    let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image))?;
    Ok(Kernels {
        forward: module.load_function("head_forward_f32")?,
        forward_tiled: module.load_function("head_forward_tiled_f32")?,
        zero: module.load_function("zero_f32")?,
    })
}

/// One version of the weights on the device.
struct DeviceWeights {
    /// W, C × d row-major.
    w: CudaSlice<f32>,
    /// b, C.
    b: CudaSlice<f32>,
}

/// The weights version a forward pass enqueued by [`CudaHead::forward_on_device`] reads: hold
/// it until the stream has run the kernel, so that a concurrent publish does not refill that
/// version's buffer under the kernel.
#[must_use = "drop it only after the stream has run the kernel"]
pub struct InFlight {
    _weights: Arc<DeviceWeights>,
}

/// The head's two forward kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardKernel {
    /// `head_forward_f32`: a warp per class and 4 rows; bandwidth-bound on W at small batches.
    Gemv,
    /// `head_forward_tiled_f32`: 64 × 64 output tiles from shared memory; for large batches.
    Tiled,
}

impl ForwardKernel {
    pub fn name(&self) -> &'static str {
        match self {
            ForwardKernel::Gemv => "head_forward_f32",
            ForwardKernel::Tiled => "head_forward_tiled_f32",
        }
    }
}

/// Core logits already on the device, for [`CudaHead::logits_on_device`].
#[derive(Debug, Clone, Copy)]
pub struct DeviceCoreLogits {
    /// The core's logits `[n, width]` (a device pointer).
    pub ptr: u64,
    pub width: usize,
}

/// A head's weights on one GPU and its forward pass there.
pub struct CudaHead {
    device: Arc<GpuDevice>,
    dim: usize,
    classes: usize,
    /// The version predictions use; `None` after a failed publish, so that stale weights are
    /// never used.
    served: RwLock<Option<Arc<DeviceWeights>>>,
    /// The previous version, refilled by the next publish when no prediction holds it. Its lock
    /// also serializes publishes.
    spare: Mutex<Option<Arc<DeviceWeights>>>,
    /// Uploads run here, apart from predictions.
    upload: Arc<CudaStream>,
    /// Idle streams for predictions: concurrent predictions each take one.
    idle: Mutex<Vec<Arc<CudaStream>>>,
    /// For each head class, the core logits column it takes (or -1), for features computed on
    /// the device; `None` when the head has no core logits.
    core_columns: Option<CudaSlice<i32>>,
}

impl CudaHead {
    /// A head of `classes` × `dim` weights on `device`, all zero until the first publish.
    /// `core_columns[j]` is the head class of the core's logits column j, if the core has any.
    pub fn new(
        device: Arc<GpuDevice>,
        dim: usize,
        classes: usize,
        core_columns: Option<&[usize]>,
    ) -> Result<CudaHead, CudaError> {
        if u32::try_from(dim.max(classes)).is_err() || dim == 0 || classes == 0 {
            return Err(CudaError::Library(format!(
                "a head of {classes} classes × {dim} features does not fit the kernels"
            )));
        }
        let upload = device.ctx.new_stream()?;
        let core_columns = match core_columns {
            Some(columns) => {
                let mut by_class = vec![-1i32; classes];
                for (j, &c) in columns.iter().enumerate() {
                    let slot = by_class.get_mut(c).ok_or_else(|| {
                        CudaError::Library(format!("core logit {j} feeds class {c} of {classes}"))
                    })?;
                    *slot = j as i32;
                }
                Some(upload.clone_htod(&by_class)?)
            }
            None => None,
        };
        let first = DeviceWeights {
            w: upload.alloc_zeros(classes * dim)?,
            b: upload.alloc_zeros(classes)?,
        };
        upload.synchronize()?;
        Ok(CudaHead {
            device,
            dim,
            classes,
            served: RwLock::new(Some(Arc::new(first))),
            spare: Mutex::new(None),
            upload,
            idle: Mutex::new(Vec::new()),
            core_columns,
        })
    }

    pub fn device(&self) -> &Arc<GpuDevice> {
        &self.device
    }

    /// Makes `weights` the version predictions use. On failure no version is served any more
    /// (predictions then fail rather than use stale weights) until a publish succeeds.
    pub fn publish(&self, weights: &ServedWeights) -> Result<(), CudaError> {
        let mut spare = lock(&self.spare);
        let filled = self.fill(spare.take(), weights);
        let mut served = self.served.write().unwrap_or_else(|e| e.into_inner());
        match filled {
            Ok(next) => {
                *spare = served.replace(Arc::new(next));
                Ok(())
            }
            Err(e) => {
                *served = None;
                Err(e)
            }
        }
    }

    /// Writes `weights` into the spare buffer if no prediction holds it, else into a new one.
    fn fill(
        &self,
        spare: Option<Arc<DeviceWeights>>,
        weights: &ServedWeights,
    ) -> Result<DeviceWeights, CudaError> {
        let (c, d) = (self.classes, self.dim);
        if weights.w.dim() != (c, d) || weights.b.len() != c {
            return Err(CudaError::Library(format!(
                "weights of shape {:?} and {} biases for a {c} × {d} head",
                weights.w.dim(),
                weights.b.len()
            )));
        }
        let stream = &self.upload;
        let mut buffer = match spare.map(Arc::try_unwrap) {
            Some(Ok(free)) => free,
            _ => DeviceWeights {
                // SAFETY: every element is written below before the buffer is served.
                w: unsafe { stream.alloc::<f32>(c * d) }?,
                b: unsafe { stream.alloc::<f32>(c) }?,
            },
        };
        let all_zero = weights.b.iter().chain(weights.w.iter()).all(|&v| v == 0.0);
        if all_zero {
            self.zero(stream, &mut buffer.w)?;
            self.zero(stream, &mut buffer.b)?;
        } else {
            let w = weights.w.as_standard_layout();
            let w = w.as_slice().expect("standard layout is contiguous");
            stream.memcpy_htod(w, &mut buffer.w)?;
            stream.memcpy_htod(&weights.b, &mut buffer.b)?;
        }
        stream.synchronize()?;
        Ok(buffer)
    }

    fn zero(&self, stream: &Arc<CudaStream>, x: &mut CudaSlice<f32>) -> Result<(), CudaError> {
        let len = x.len() as u64;
        let blocks = len.div_ceil(256).clamp(1, 4096) as u32;
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: zero_f32(float* x, u64 len) writes x[0..len), which `x` holds.
        unsafe {
            stream
                .launch_builder(&self.device.kernels.zero)
                .arg(x)
                .arg(&len)
                .launch(config)
        }?;
        Ok(())
    }

    /// The weights the device serves now, copied back (for tests and checks).
    pub fn served_weights(&self) -> Result<ServedWeights, CudaError> {
        let current = self.current()?;
        let w = self.upload.clone_dtoh(&current.w)?;
        let b = self.upload.clone_dtoh(&current.b)?;
        let w = Array2::from_shape_vec((self.classes, self.dim), w)
            .map_err(|e| CudaError::Library(e.to_string()))?;
        Ok(ServedWeights { w, b })
    }

    fn current(&self) -> Result<Arc<DeviceWeights>, CudaError> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                CudaError::Stale("the last weight update did not reach the device".into())
            })
    }

    /// The kernel for a batch of `n`: the tiled one once its 64 × 64 tiles fill the GPU's
    /// multiprocessors, else the GEMV one (which re-reads W from cache every 4 rows).
    pub fn kernel_for(&self, n: usize) -> ForwardKernel {
        let tiles = n.div_ceil(TILE as usize) * self.classes.div_ceil(TILE as usize);
        let gemv_fits = n.div_ceil(GEMV_ROWS as usize) <= MAX_GRID_Y;
        if gemv_fits && (n <= GEMV_MAX_ROWS || tiles < self.device.multiprocessors) {
            ForwardKernel::Gemv
        } else {
            ForwardKernel::Tiled
        }
    }

    /// Logits `[n, C]` = z + φ Wᵀ + b for features `phi` `[n, d]` and mapped core logits `z`
    /// `[n, C]` in host memory.
    pub fn logits(
        &self,
        phi: ArrayView2<'_, f32>,
        z: ArrayView2<'_, f32>,
    ) -> Result<Array2<f32>, CudaError> {
        self.logits_with(phi, z, None)
    }

    /// [`CudaHead::logits`] with the kernel chosen by the caller (`None`: by
    /// [`CudaHead::kernel_for`]), to test and time each.
    pub fn logits_with(
        &self,
        phi: ArrayView2<'_, f32>,
        z: ArrayView2<'_, f32>,
        kernel: Option<ForwardKernel>,
    ) -> Result<Array2<f32>, CudaError> {
        let (n, d, c) = (phi.nrows(), self.dim, self.classes);
        if phi.ncols() != d || z.dim() != (n, c) {
            return Err(CudaError::Library(format!(
                "features {:?} and core logits {:?} for a {c} × {d} head",
                phi.dim(),
                z.dim()
            )));
        }
        let weights = self.current()?;
        let phi = phi.as_standard_layout();
        let z = z.as_standard_layout();
        let phi = phi.as_slice().expect("standard layout is contiguous");
        let z = z.as_slice().expect("standard layout is contiguous");
        // All-zero core logits (heads without any) need not cross the bus.
        let z_zero = z.iter().all(|&v| v == 0.0);
        let mut out = vec![0f32; n * c];
        let stream = self.take_stream()?;
        let result = (|| -> Result<(), CudaError> {
            for (start, rows) in chunks(n, d + 2 * c) {
                let phi_dev = stream.clone_htod(&phi[start * d..(start + rows) * d])?;
                let z_dev = if z_zero {
                    None
                } else {
                    Some(stream.clone_htod(&z[start * c..(start + rows) * c])?)
                };
                // SAFETY: every element is written by the kernel.
                let mut out_dev = unsafe { stream.alloc::<f32>(rows * c) }?;
                let phi_ptr = device_ptr(&phi_dev, &stream);
                let z_ptr = z_dev.as_ref().map(|z| device_ptr(z, &stream)).unwrap_or(0);
                let kernel = kernel.unwrap_or_else(|| self.kernel_for(rows));
                // SAFETY: phi_dev and z_dev hold rows × d and rows × C values and outlive the
                // kernel: copying `out_dev` back below waits for it.
                unsafe {
                    self.launch(
                        &stream,
                        kernel,
                        phi_ptr,
                        z_ptr,
                        None,
                        c,
                        &weights,
                        &mut out_dev,
                        rows,
                    )
                }?;
                stream.memcpy_dtoh(&out_dev, &mut out[start * c..(start + rows) * c])?;
            }
            Ok(())
        })();
        self.put_back(stream);
        result?;
        Array2::from_shape_vec((n, c), out).map_err(|e| CudaError::Library(e.to_string()))
    }

    /// Logits `[n, C]` for features already on the device (`phi`: a device pointer to `[n, d]`
    /// f32, e.g. the core's output bound to device memory) and, if the head has core logits,
    /// the core's raw logits on the device (mapped onto the head's classes in the kernel).
    ///
    /// # Safety
    /// `phi` (and `z.ptr`) must point to at least n × d (n × `z.width`) f32 values in this
    /// device's primary context that stay valid and unchanged until this returns, and the work
    /// writing them must be complete.
    pub unsafe fn logits_on_device(
        &self,
        phi: u64,
        z: Option<DeviceCoreLogits>,
        n: usize,
    ) -> Result<Array2<f32>, CudaError> {
        let c = self.classes;
        if n == 0 {
            return Ok(Array2::zeros((0, c)));
        }
        let stream = self.take_stream()?;
        let result = (|| -> Result<Vec<f32>, CudaError> {
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { stream.alloc::<f32>(n * c) }?;
            let kernel = self.kernel_for(n);
            // SAFETY: the caller vouches for phi and z.
            let in_flight =
                unsafe { self.forward_on_device(&stream, kernel, phi, z, n, &mut out) }?;
            // Copying back waits for the kernel; only then may its weights version be reused.
            let logits = stream.clone_dtoh(&out)?;
            drop(in_flight);
            Ok(logits)
        })();
        self.put_back(stream);
        Array2::from_shape_vec((n, c), result?).map_err(|e| CudaError::Library(e.to_string()))
    }

    /// Enqueues the forward pass with `kernel` on `stream` into `out` (`[n, C]` on the device)
    /// with the current weights. Nothing is copied back.
    ///
    /// # Safety
    /// As for [`CudaHead::logits_on_device`], and the inputs must stay valid until `stream`
    /// has run the kernel.
    pub unsafe fn forward_on_device(
        &self,
        stream: &Arc<CudaStream>,
        kernel: ForwardKernel,
        phi: u64,
        z: Option<DeviceCoreLogits>,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<InFlight, CudaError> {
        let weights = self.current()?;
        let (z_ptr, z_width, z_cols) = match (z, &self.core_columns) {
            (Some(z), Some(cols)) => (z.ptr, z.width, Some(cols)),
            _ => (0, self.classes, None),
        };
        // SAFETY: the caller vouches for phi and z; the weights stay alive in the InFlight.
        unsafe {
            self.launch(
                stream, kernel, phi, z_ptr, z_cols, z_width, &weights, out, n,
            )
        }?;
        Ok(InFlight { _weights: weights })
    }

    /// Launches `kernel` on `stream`: out = z + φ Wᵀ + b for n rows.
    ///
    /// # Safety
    /// `phi` points to n × d f32 values and `z` (unless 0) to n × `z_width`, both valid until
    /// the kernel completes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch(
        &self,
        stream: &Arc<CudaStream>,
        kernel: ForwardKernel,
        phi: u64,
        z: u64,
        z_cols: Option<&CudaSlice<i32>>,
        z_width: usize,
        weights: &DeviceWeights,
        out: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        let (d, c) = (self.dim as u32, self.classes as u32);
        let too_large = || CudaError::Library(format!("{n} rows are too many for one launch"));
        let n32 = u32::try_from(n).map_err(|_| too_large())?;
        if out.len() < n * self.classes {
            return Err(CudaError::Library(format!(
                "an output of {} values for {n} × {c} logits",
                out.len()
            )));
        }
        let (function, config) = match kernel {
            ForwardKernel::Gemv => {
                let rows = n32.div_ceil(GEMV_ROWS);
                if rows as usize > MAX_GRID_Y {
                    return Err(too_large());
                }
                let config = LaunchConfig {
                    grid_dim: (c.div_ceil(GEMV_WARPS), rows, 1),
                    block_dim: (32 * GEMV_WARPS, 1, 1),
                    shared_mem_bytes: 0,
                };
                (&self.device.kernels.forward, config)
            }
            ForwardKernel::Tiled => {
                let config = LaunchConfig {
                    grid_dim: (n32.div_ceil(TILE), c.div_ceil(TILE), 1),
                    block_dim: (TILE_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                (&self.device.kernels.forward_tiled, config)
            }
        };
        let z_width = z_width as u32;
        let mut launch = stream.launch_builder(function);
        launch.arg(&phi).arg(&z);
        match z_cols {
            Some(cols) => launch.arg(cols),
            None => launch.arg(&0u64),
        };
        launch
            .arg(&z_width)
            .arg(&weights.w)
            .arg(&weights.b)
            .arg(out)
            .arg(&n32)
            .arg(&d)
            .arg(&c);
        // SAFETY: the argument list matches the kernels' signature (phi, z, z_cols, z_width, w,
        // b, out, n, d, c); w, b and out hold C × d, C and n × C values; the caller vouches
        // for phi and z.
        unsafe { launch.launch(config) }?;
        Ok(())
    }

    /// A stream for one prediction (from the pool, or a new one); give it back with
    /// [`CudaHead::put_back`].
    fn take_stream(&self) -> Result<Arc<CudaStream>, CudaError> {
        match lock(&self.idle).pop() {
            Some(stream) => Ok(stream),
            None => Ok(self.device.ctx.new_stream()?),
        }
    }

    fn put_back(&self, stream: Arc<CudaStream>) {
        lock(&self.idle).push(stream);
    }
}

/// The raw device pointer of `slice`, for kernels that also take pointers from elsewhere.
fn device_ptr<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    use cudarc::driver::DevicePtr;
    let (ptr, _sync) = slice.device_ptr(stream);
    ptr
}

/// Splits n rows into chunks of at most MAX_CHUNK_BYTES for rows of `width` f32 values.
fn chunks(n: usize, width: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = (MAX_CHUNK_BYTES / (4 * width.max(1))).clamp(1, MAX_GRID_Y * GEMV_ROWS as usize);
    (0..n)
        .step_by(step)
        .map(move |start| (start, step.min(n - start)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
