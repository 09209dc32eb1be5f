//! The core: a bundle's ONNX network, run in ONNX Runtime.
//!
//! The core maps a batch of inputs to features φ(x) (one of the bundle's features outputs) and,
//! optionally, core logits z(x). It is shared by every head opened over it.
//!
//! ONNX Runtime sessions are run through `&mut`, so the core keeps a small pool of sessions:
//! concurrent callers each take one (a new one is created when all are busy) and put it back.
//!
//! On the host, ONNX Runtime reads the inputs where the caller holds them (an input it cannot
//! read in place is copied into a buffer of Lethe's first) and writes the outputs into buffers
//! Lethe preallocated; those buffers are zeroized after every run (G4). What ONNX Runtime keeps
//! in its own memory (its arena of intermediate tensors) is outside G4.
//!
//! The core runs on ONNX Runtime's CPU execution provider unless [`CoreOptions::backend`] asks
//! for CUDA and the loaded ONNX Runtime has the CUDA execution provider (the `onnxruntime-gpu`
//! wheel); see [`crate::placement`].
//!
//! A core takes named, typed tensors ([`Core::run_tensors`]; [`Core::run`] is the shorthand
//! for a core with one float32 input); a text bundle's core also takes UTF-8 texts, tokenized
//! as its manifest says ([`text`]), and an image bundle's PNG and JPEG files ([`image`]).

pub mod image;
pub mod text;

use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

use ndarray::{s, Array2, ArrayViewD};
use ort::memory::Allocator;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{
    DynTensor, DynTensorValueType, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType,
};
use zeroize::Zeroize;

use self::image::ImageEncoder;
use crate::bundle::tensor::{DType, Tensor};
use crate::bundle::{Bundle, Dim, FEATURES_JOIN};
use crate::device::cuda;
use crate::error::{Error, Result};
use crate::math::secret::{zeroize_bytes, Rows, SecretArray};
use crate::placement::{self, Backend, BackendOptions, CpuReason, Placement};
use crate::runtime::{self, Runtime};
use text::TextEncoder;

/// How to open a core.
#[derive(Debug, Clone, Default)]
pub struct CoreOptions {
    /// An explicit ONNX Runtime library; `None` follows the search order of [`crate::runtime`].
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    /// Where the core runs (the CPU by default); heads over this core follow it unless their
    /// own options say otherwise.
    pub backend: BackendOptions,
}

/// An opened core, ready to run.
pub struct Core {
    bundle: Bundle,
    options: CoreOptions,
    backend: CoreBackend,
    /// Sessions not in use, each with the input and output buffers of its last run (zeroed).
    idle: Mutex<Vec<Idle>>,
    /// The tokenizer, for a bundle that takes text.
    text: Option<TextEncoder>,
    /// The image preprocessing, for a bundle that declares it.
    image: Option<ImageEncoder>,
}

/// One output of [`Core::run_on_device`]: `[n, width]` f32 in the CUDA device's memory.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOutput {
    /// The device pointer.
    pub ptr: u64,
    pub width: usize,
}

/// The named outputs of one run, each `[n, width]`, zeroized when dropped.
#[derive(Debug, Clone)]
pub struct CoreOutputs {
    outputs: Vec<(String, SecretArray)>,
}

impl CoreOutputs {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Option<&Array2<f32>> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| &**a)
    }

    /// Takes the output called `name` out.
    pub fn take(&mut self, name: &str) -> Option<SecretArray> {
        let i = self.outputs.iter().position(|(n, _)| n == name)?;
        Some(self.outputs.swap_remove(i).1)
    }

    /// Takes the features `name` out: one output, or several joined by
    /// [`FEATURES_JOIN`], their columns concatenated in that order.
    pub fn take_features(&mut self, name: &str) -> Option<SecretArray> {
        if !name.contains(FEATURES_JOIN) {
            return self.take(name);
        }
        let parts = name
            .split(FEATURES_JOIN)
            .map(|part| self.take(part))
            .collect::<Option<Vec<_>>>()?;
        let rows = parts[0].nrows();
        let width = parts.iter().map(|p| p.ncols()).sum();
        let mut joined = SecretArray::zeros((rows, width));
        let mut at = 0;
        for part in &parts {
            joined
                .slice_mut(s![.., at..at + part.ncols()])
                .assign(&**part);
            at += part.ncols();
        }
        Some(joined)
    }
}

impl Core {
    /// Opens the bundle at `dir` and its core.
    pub fn open(dir: impl AsRef<Path>, options: &CoreOptions) -> Result<Core> {
        Core::from_bundle(Bundle::open(dir)?, options)
    }

    /// Opens the core of an already-opened bundle and checks its graph against the manifest.
    pub fn from_bundle(bundle: Bundle, options: &CoreOptions) -> Result<Core> {
        let rt = runtime::ensure_loaded(options.ort_library.as_deref())?;
        let text = TextEncoder::open(&bundle)?;
        let image = ImageEncoder::open(&bundle);
        let mut core = Core {
            bundle,
            options: options.clone(),
            backend: CoreBackend::choose(&options.backend, rt)?,
            idle: Mutex::new(Vec::new()),
            text,
            image,
        };
        let session = match core.new_session() {
            // The CUDA EP loads its own libraries (cuBLAS, cuDNN) only now.
            Err(e) if core.backend.cuda_device.is_some() => {
                core.backend.fall_back(&options.backend, e.to_string())?;
                core.new_session()?
            }
            other => other?,
        };
        core.backend.announce(&options.backend);
        core.check_graph(&session)?;
        core.put_back(Idle::new(session));
        Ok(core)
    }

    /// The bundle this core came from.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Where the core runs, and why.
    pub fn placement(&self) -> &Placement {
        &self.backend.placement
    }

    /// The CUDA device the core runs on, if any.
    pub fn backend_device(&self) -> Option<usize> {
        self.backend.cuda_device
    }

    /// The options the core was opened with.
    pub fn options(&self) -> &CoreOptions {
        &self.options
    }

    /// The number of f32 values of one sample's input, for a core that takes one float32
    /// input (0 otherwise; see [`Bundle::input_len`]).
    pub fn input_len(&self) -> usize {
        self.bundle.input_len()
    }

    /// The tokenizer of a bundle that takes text.
    pub fn text(&self) -> Option<&TextEncoder> {
        self.text.as_ref()
    }

    /// The core's inputs for UTF-8 `texts`, tokenized and padded as the manifest says; an
    /// error for a bundle that does not take text.
    pub fn encode_text(&self, texts: &[&str]) -> Result<Vec<Tensor<'static>>> {
        match &self.text {
            Some(encoder) => encoder.encode(texts),
            None => Err(self.bundle.does_not_take("text", "text")),
        }
    }

    /// [`Core::run_tensors`] on UTF-8 texts (see [`Core::encode_text`]).
    pub fn run_text(&self, texts: &[&str], names: &[&str]) -> Result<CoreOutputs> {
        self.run_tensors(&self.encode_text(texts)?, names)
    }

    /// The image preprocessing of a bundle that declares it.
    pub fn image(&self) -> Option<&ImageEncoder> {
        self.image.as_ref()
    }

    /// The image preprocessing, or an error for a bundle that declares none.
    pub fn image_encoder(&self) -> Result<&ImageEncoder> {
        self.image
            .as_ref()
            .ok_or_else(|| self.bundle.does_not_take("image files", "image"))
    }

    /// The core's input for PNG or JPEG `files`, preprocessed as the manifest says; an error
    /// for a bundle that declares no image preprocessing.
    pub fn encode_images(&self, files: &[&[u8]]) -> Result<Vec<Tensor<'static>>> {
        self.image_encoder()?.encode(files)
    }

    /// [`Core::run_tensors`] on PNG or JPEG files (see [`Core::encode_images`]).
    pub fn run_images(&self, files: &[&[u8]], names: &[&str]) -> Result<CoreOutputs> {
        self.run_tensors(&self.encode_images(files)?, names)
    }

    fn new_session(&self) -> Result<Session> {
        let rt = runtime::ensure_loaded(self.options.ort_library.as_deref())?;
        let mut builder = Session::builder(&rt.env)?;
        if self.options.intra_threads > 0 {
            builder = builder
                .with_intra_threads(self.options.intra_threads)
                .map_err(ort::Error::from)?;
        }
        if let Some(device) = self.backend.cuda_device {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(device as i32)
                .build()
                .error_on_failure();
            builder = builder
                .with_execution_providers([cuda])
                .map_err(ort::Error::from)?;
        }
        Ok(builder.commit_from_file(self.bundle.core_path())?)
    }

    /// An idle session, or a new one.
    fn take_session(&self) -> Result<Idle> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(idle) => Ok(idle),
            None => Ok(Idle::new(self.new_session()?)),
        }
    }

    /// An idle session with `inputs` copied into its input buffers (see
    /// [`Idle::copy_inputs`]). On error the session goes back to the pool.
    fn take_session_with(&self, inputs: &[Tensor<'_>]) -> Result<Idle> {
        let mut idle = self.take_session()?;
        match idle.copy_inputs(inputs) {
            Ok(()) => Ok(idle),
            Err(e) => {
                self.put_back(idle);
                Err(e)
            }
        }
    }

    /// Returns a session to the pool with the input and output buffers of its run, zeroed
    /// (G4).
    fn put_back(&self, mut idle: Idle) {
        for input in &mut idle.inputs {
            input.wipe();
        }
        if let Some(preallocated) = &mut idle.preallocated {
            preallocated.wipe();
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(idle);
    }

    fn mismatch(&self, field: &str, message: String) -> Error {
        Error::Manifest {
            path: self.bundle.core_path(),
            field: field.to_string(),
            message,
        }
    }

    /// Checks that the ONNX graph's inputs and outputs are what the manifest says.
    fn check_graph(&self, session: &Session) -> Result<()> {
        let m = &self.bundle.manifest;
        let graph_inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        if session.inputs().len() != m.inputs.len() {
            return Err(self.mismatch(
                "inputs",
                format!(
                    "the graph has {} inputs {graph_inputs:?}, the manifest lists {}",
                    session.inputs().len(),
                    m.inputs.len()
                ),
            ));
        }
        for (i, input) in m.inputs.iter().enumerate() {
            let outlet = session
                .inputs()
                .iter()
                .find(|o| o.name() == input.name)
                .ok_or_else(|| {
                    self.mismatch(
                        &format!("inputs[{i}].name"),
                        format!(
                            "the graph has no input {:?} (it has {graph_inputs:?})",
                            input.name
                        ),
                    )
                })?;
            let (dtype, dims) = tensor_type(outlet.dtype()).ok_or_else(|| {
                self.mismatch(
                    &format!("inputs[{i}]"),
                    "the graph's input is not a tensor".into(),
                )
            })?;
            if dtype != ort_type(input.dtype()) {
                return Err(self.mismatch(
                    &format!("inputs[{i}].dtype"),
                    format!("the graph's input is {dtype:?}, not {}", input.dtype),
                ));
            }
            if !input_shape_matches(&dims, &input.shape) {
                return Err(self.mismatch(
                    &format!("inputs[{i}].shape"),
                    format!(
                        "the graph's input has shape {dims:?} (-1: dynamic), the manifest says \
                         {}",
                        input.shape_text()
                    ),
                ));
            }
        }
        let mut wanted: Vec<(String, String, usize)> = m
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("features[{i}]"), f.output.clone(), f.dim))
            .collect();
        if let Some(cl) = &m.core_logits {
            wanted.push(("core_logits".into(), cl.output.clone(), cl.classes.len()));
        }
        for (field, name, width) in wanted {
            let width_field = if field == "core_logits" {
                "core_logits.classes".to_string()
            } else {
                format!("{field}.dim")
            };
            let outlet = session
                .outputs()
                .iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| {
                    self.mismatch(
                        &format!("{field}.output"),
                        format!("the graph has no output {name:?}"),
                    )
                })?;
            let (dtype, dims) = tensor_type(outlet.dtype())
                .ok_or_else(|| self.mismatch(&field, format!("output {name:?} is not a tensor")))?;
            if dtype != TensorElementType::Float32 {
                return Err(
                    self.mismatch(&field, format!("output {name:?} is {dtype:?}, not float32"))
                );
            }
            if !shape_matches(&dims, &[None, Some(width as u64)]) {
                return Err(self.mismatch(
                    &width_field,
                    format!("output {name:?} has shape {dims:?}, expected [batch, {width}]"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the shape of an input array and returns its number of samples and its values,
    /// row-major. The shape must be the manifest's input shape `[n, …]` exactly or its flat
    /// form `[n, input_len]` (see [`Bundle::input_count`]): an array in another layout (NHWC for
    /// an NCHW core) or with other axes is refused even when its number of values agrees.
    pub fn input_rows<'a>(&self, input: ArrayViewD<'a, f32>) -> Result<(usize, Rows<'a>)> {
        let n = self.bundle.input_count(input.shape())?;
        Ok((n, Rows::of(input)))
    }

    /// [`Core::run`] for an input array, its shape checked by [`Core::input_rows`].
    pub fn run_array(&self, input: ArrayViewD<'_, f32>, names: &[&str]) -> Result<CoreOutputs> {
        let (n, rows) = self.input_rows(input)?;
        self.run(&rows, n, names)
    }

    /// Runs the core on `n` samples (`input` holds n × [`Core::input_len`] f32 values, row-major)
    /// and returns the outputs named in `names`, each `[n, width]`: the shorthand of
    /// [`Core::run_tensors`] for a core with one float32 input.
    pub fn run(&self, input: &[f32], n: usize, names: &[&str]) -> Result<CoreOutputs> {
        self.check_input_len(input, n)?;
        let shape = self.bundle.input_shape(n);
        let name = self.bundle.manifest.inputs[0].name.as_str();
        self.run_tensors(&[Tensor::from_slice(name, &shape, input)], names)
    }

    /// Runs the core on named tensors, one per core input (checked by
    /// [`Bundle::check_inputs`]), and returns the outputs named in `names`, each `[n, width]`.
    pub fn run_tensors(&self, inputs: &[Tensor<'_>], names: &[&str]) -> Result<CoreOutputs> {
        let n = self.bundle.check_inputs(inputs)?;
        let mut outputs = names
            .iter()
            .map(|&name| {
                let width = self.output_width(name)?;
                Ok((name.to_string(), SecretArray::zeros((n, width))))
            })
            .collect::<Result<Vec<_>>>()?;
        if n == 0 {
            return Ok(CoreOutputs { outputs });
        }
        let mut idle = self.take_session()?;
        let in_place: Vec<Option<InPlace<'_>>> = inputs.iter().map(InPlace::of).collect();
        // The inputs are handed to ONNX Runtime as they are (views of the caller's memory),
        // except those it cannot take in place, which are copied into the session's input
        // buffers; ONNX Runtime writes each output into a buffer preallocated with the
        // session's run options, copied into `outputs` once the run's results are dropped,
        // then zeroized.
        let result = (|| -> Result<()> {
            let copied = inputs.iter().zip(&in_place).filter(|(_, p)| p.is_none());
            idle.copy_inputs(copied.map(|(t, _)| t))?;
            let Idle {
                session,
                inputs: buffers,
                preallocated,
            } = &mut idle;
            if !preallocated.as_ref().is_some_and(|p| p.fits(n, &outputs)) {
                // The old buffers are freed before the new ones are allocated.
                *preallocated = None;
                *preallocated = Some(Preallocated::new(n, &outputs)?);
            }
            let preallocated = preallocated.as_mut().expect("made above");
            let mut copies = buffers.iter();
            let values = inputs
                .iter()
                .zip(in_place)
                .map(|(t, in_place)| {
                    let value = match in_place {
                        Some(values) => values.value(t.shape())?,
                        None => {
                            let copy = copies.next().expect("a copy of each input not in place");
                            SessionInputValue::from(&copy.value)
                        }
                    };
                    Ok((t.name(), value))
                })
                .collect::<Result<Vec<_>>>()?;
            let produced = session.run_with_options(values, &preallocated.options)?;
            for &name in names {
                let written = produced
                    .get(name)
                    .and_then(|v| v.view().downcast::<DynTensorValueType>().ok())
                    .map(|t| t.data_ptr().cast::<f32>());
                if written != Some(preallocated.buffer(name)) {
                    return Err(Error::Ort(format!(
                        "the core did not write output {name:?} into its buffer"
                    )));
                }
            }
            drop(produced);
            preallocated.copy_to(&mut outputs);
            Ok(())
        })();
        self.put_back(idle);
        result.map(|()| CoreOutputs { outputs })
    }

    /// Runs the core on the GPU with the outputs named in `names` left in device memory (I/O
    /// binding) and calls `use_outputs` with them while they are alive. `None` when the core
    /// does not run on CUDA or `n` is 0: then use [`Core::run`].
    pub fn run_on_device<R>(
        &self,
        input: &[f32],
        n: usize,
        names: &[&str],
        use_outputs: impl FnOnce(&[DeviceOutput]) -> Result<R>,
    ) -> Result<Option<R>> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        use ort::value::DynTensorValueType;
        let Some(device) = self.backend.cuda_device else {
            return Ok(None);
        };
        self.check_input_len(input, n)?;
        if n == 0 {
            return Ok(None);
        }
        let shape = self.bundle.input_shape(n);
        let name = self.bundle.manifest.inputs[0].name.as_str();
        let tensor = Tensor::from_slice(name, &shape, input);
        self.bundle.check_inputs(std::slice::from_ref(&tensor))?;
        let mut idle = self.take_session_with(std::slice::from_ref(&tensor))?;
        let result = (|| -> Result<R> {
            let Idle {
                session,
                inputs: values,
                ..
            } = &mut idle;
            let on_gpu = MemoryInfo::new(
                AllocationDevice::CUDA,
                device as i32,
                AllocatorType::Device,
                MemoryType::Default,
            )?;
            let mut binding = session.create_binding()?;
            for v in values.iter() {
                binding.bind_input(v.name.as_str(), &v.value)?;
            }
            for &name in names {
                binding.bind_output_to_device(name, &on_gpu)?;
            }
            let outputs = session.run_binding(&binding)?;
            // The outputs must be complete before kernels on other streams read them.
            binding.synchronize_outputs()?;
            let mut bound = Vec::with_capacity(names.len());
            for &name in names {
                let value = outputs
                    .get(name)
                    .ok_or_else(|| Error::Ort(format!("the core produced no output {name:?}")))?;
                let tensor = value.view().downcast::<DynTensorValueType>()?;
                if tensor.memory_info().allocation_device() != AllocationDevice::CUDA {
                    return Err(Error::Ort(format!("output {name:?} is not in CUDA memory")));
                }
                let len: i64 = tensor.shape().iter().product();
                bound.push(DeviceOutput {
                    ptr: tensor.data_ptr() as u64,
                    width: len as usize / n,
                });
            }
            use_outputs(&bound)
        })();
        self.put_back(idle);
        result.map(Some)
    }

    /// Checks that `input` holds n samples of a single-input core (its values are checked
    /// with the tensor they make, by [`Bundle::check_inputs`]).
    fn check_input_len(&self, input: &[f32], n: usize) -> Result<()> {
        self.bundle.single_input()?;
        let per = self.input_len();
        let expected = n
            .checked_mul(per)
            .ok_or_else(|| Error::InvalidInput(format!("{n} samples of {per} values overflow")))?;
        if input.len() != expected {
            return Err(Error::InvalidInput(format!(
                "expected {n} samples × {per} values = {expected} f32 values, got {}",
                input.len()
            )));
        }
        Ok(())
    }

    fn output_width(&self, name: &str) -> Result<usize> {
        let m = &self.bundle.manifest;
        if let Some(f) = m.features.iter().find(|f| f.output == name) {
            return Ok(f.dim);
        }
        match &m.core_logits {
            Some(cl) if cl.output == name => Ok(cl.classes.len()),
            _ => Err(Error::InvalidInput(format!(
                "bundle {} has no output {name:?}",
                m.name
            ))),
        }
    }
}

fn tensor_type(t: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match t {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

/// Whether an input's ONNX dims (-1 for dynamic) agree with the manifest's shape: the batch
/// axis and named axes are dynamic in the graph; a fixed size is that size there, or dynamic.
fn input_shape_matches(dims: &[i64], shape: &[Dim]) -> bool {
    dims.len() == shape.len()
        && dims.iter().zip(shape).all(|(&d, dim)| match dim {
            Dim::Batch | Dim::Named(_) => d < 0,
            Dim::Fixed(k) => d < 0 || d == *k as i64,
        })
}

/// ONNX Runtime's element type for a manifest's.
fn ort_type(dtype: DType) -> TensorElementType {
    match dtype {
        DType::Float32 => TensorElementType::Float32,
        DType::Float16 => TensorElementType::Float16,
        DType::Int64 => TensorElementType::Int64,
        DType::Int32 => TensorElementType::Int32,
        DType::Uint8 => TensorElementType::Uint8,
        DType::Bool => TensorElementType::Bool,
    }
}

/// A session of the pool and the buffers of its last run, zeroed: the copies of the inputs
/// ONNX Runtime could not read in place (on the GPU path, every input), which the next run
/// with the same input shapes copies into rather than into fresh memory, whose every page
/// would fault in (38 MB for a batch of 64 mobilenet images); and the run options of its last
/// run on the host, with their output buffers. They stay allocated while the core is open.
struct Idle {
    session: Session,
    inputs: Vec<InputValue>,
    preallocated: Option<Preallocated>,
}

impl Idle {
    fn new(session: Session) -> Idle {
        Idle {
            session,
            inputs: Vec::new(),
            preallocated: None,
        }
    }

    /// Copies `inputs` into the session's input buffers: those of its last run where they
    /// fit (the others are dropped, zeroized), else new ones.
    fn copy_inputs<'t, 'a: 't>(
        &mut self,
        inputs: impl IntoIterator<Item = &'t Tensor<'a>>,
    ) -> Result<()> {
        let mut spare = std::mem::take(&mut self.inputs);
        for t in inputs {
            self.inputs.push(InputValue::reuse_or_copy(&mut spare, t)?);
        }
        Ok(())
    }
}

/// A session's run options for a batch of n, with a buffer of its own preallocated for each
/// output (an ONNX Runtime tensor), kept for the next run of the same outputs and batch: with
/// the I/O binding these replaced, a new binding and new outputs each run took about 4 µs more
/// per run (mnist-core at batch 1, whose run takes about 80 µs, on a 2-core Xeon). A run's outputs are copied out and the buffers zeroized before
/// the session goes back to the pool (G4).
struct Preallocated {
    options: RunOptions<HasSelectedOutputs>,
    n: usize,
    outputs: Vec<OutputBuffer>,
}

/// One output's buffer, owned by the run options that hold its tensor.
struct OutputBuffer {
    name: String,
    width: usize,
    data: NonNull<f32>,
}

// SAFETY: `data` points into a tensor owned by the same `Preallocated`'s run options, which
// own it wherever they are moved; it is read and written only through `&self`/`&mut self` of
// that `Preallocated`.
unsafe impl Send for Preallocated {}

impl Preallocated {
    fn new(n: usize, outputs: &[(String, SecretArray)]) -> Result<Preallocated> {
        let mut selector = OutputSelector::no_default();
        let mut buffers = Vec::with_capacity(outputs.len());
        for (name, array) in outputs {
            let mut tensor = OrtTensor::<f32>::new(&Allocator::default(), [n, array.ncols()])?;
            let data = NonNull::new(tensor.data_ptr_mut().cast::<f32>())
                .ok_or_else(|| Error::Ort(format!("no buffer for output {name:?}")))?;
            buffers.push(OutputBuffer {
                name: name.clone(),
                width: array.ncols(),
                data,
            });
            selector = selector
                .with(name.as_str())
                .preallocate(name.as_str(), tensor);
        }
        Ok(Preallocated {
            options: RunOptions::new()?.with_outputs(selector),
            n,
            outputs: buffers,
        })
    }

    /// Whether it preallocates exactly these outputs for a batch of n.
    fn fits(&self, n: usize, outputs: &[(String, SecretArray)]) -> bool {
        self.n == n
            && self.outputs.len() == outputs.len()
            && self
                .outputs
                .iter()
                .zip(outputs)
                .all(|(buffer, (name, array))| {
                    &buffer.name == name && buffer.width == array.ncols()
                })
    }

    /// Where the output `name` is written (null if it is not preallocated).
    fn buffer(&self, name: &str) -> *const f32 {
        self.outputs
            .iter()
            .find(|b| b.name == name)
            .map_or(std::ptr::null(), |b| b.data.as_ptr().cast_const())
    }

    fn values(&mut self, buffer: usize) -> &mut [f32] {
        let b = &self.outputs[buffer];
        // SAFETY: `data` is the start of the n × width f32 tensor that `options` owns (see
        // `new`), alive as long as `self`; `&mut self` makes this the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(b.data.as_ptr(), self.n * b.width) }
    }

    /// Copies each output of the last run into its array.
    fn copy_to(&mut self, outputs: &mut [(String, SecretArray)]) {
        for (i, (_, array)) in outputs.iter_mut().enumerate() {
            array
                .as_slice_mut()
                .expect("a new array is contiguous")
                .copy_from_slice(self.values(i));
        }
    }

    /// Zeroes the outputs of the last run (G4).
    fn wipe(&mut self) {
        for i in 0..self.outputs.len() {
            self.values(i).zeroize();
        }
    }
}

/// The values of an input that ONNX Runtime reads where they are, typed.
enum InPlace<'t> {
    Float32(&'t [f32]),
    Int64(&'t [i64]),
    Int32(&'t [i32]),
    Uint8(&'t [u8]),
}

impl<'t> InPlace<'t> {
    /// `t`'s values, or `None` if they must be copied first: half floats and booleans (not
    /// among the element types read in place here), and values not aligned for their type.
    fn of(t: &'t Tensor<'_>) -> Option<InPlace<'t>> {
        let bytes = t.bytes();
        // SAFETY (each `align_to`): every bit pattern is a valid f32, i64 and i32, and
        // `align_to` returns in its middle part only whole values at aligned addresses.
        match t.dtype() {
            DType::Float32 => match unsafe { bytes.align_to::<f32>() } {
                ([], values, []) => Some(InPlace::Float32(values)),
                _ => None,
            },
            DType::Int64 => match unsafe { bytes.align_to::<i64>() } {
                ([], values, []) => Some(InPlace::Int64(values)),
                _ => None,
            },
            DType::Int32 => match unsafe { bytes.align_to::<i32>() } {
                ([], values, []) => Some(InPlace::Int32(values)),
                _ => None,
            },
            DType::Uint8 => Some(InPlace::Uint8(bytes)),
            DType::Float16 | DType::Bool => None,
        }
    }

    /// A view of the values with `shape`, for a run.
    fn value(self, shape: &[usize]) -> Result<SessionInputValue<'t>> {
        let shape = shape.to_vec();
        Ok(match self {
            InPlace::Float32(v) => TensorRef::from_array_view((shape, v))?.into(),
            InPlace::Int64(v) => TensorRef::from_array_view((shape, v))?.into(),
            InPlace::Int32(v) => TensorRef::from_array_view((shape, v))?.into(),
            InPlace::Uint8(v) => TensorRef::from_array_view((shape, v))?.into(),
        })
    }
}

/// A checked input copied into an ONNX Runtime tensor of its own: on the host, one that ONNX
/// Runtime cannot read in place (see [`InPlace::of`]); on the GPU path every input, for the I/O
/// binding (ort copies a borrowed one through a session of its own, which deadlocks). Zeroized
/// after each run and when dropped.
struct InputValue {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    value: DynTensor,
    /// Holds an input (not zeroed yet).
    filled: bool,
}

impl InputValue {
    /// `t` copied into one of `buffers` of its name, type and shape (taken out of it), or
    /// into a new tensor.
    fn reuse_or_copy(buffers: &mut Vec<InputValue>, t: &Tensor<'_>) -> Result<InputValue> {
        let fits =
            |b: &InputValue| b.name == t.name() && b.dtype == t.dtype() && b.shape == t.shape();
        let mut value = match buffers.iter().position(fits) {
            Some(i) => buffers.swap_remove(i),
            None => {
                let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
                InputValue {
                    name: t.name().to_string(),
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                    value: DynTensor::new(&Allocator::default(), ort_type(t.dtype()), shape)?,
                    filled: false,
                }
            }
        };
        let bytes = t.bytes();
        if !bytes.is_empty() {
            // SAFETY: the tensor was allocated on the CPU for this shape and type, which
            // `Bundle::check_inputs` checked is exactly `bytes.len()` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    value.value.data_ptr_mut().cast::<u8>(),
                    bytes.len(),
                )
            };
            value.filled = true;
        }
        Ok(value)
    }

    /// Zeroes the input it holds (G4).
    fn wipe(&mut self) {
        if self.filled {
            let len = self.shape.iter().product::<usize>() * self.dtype.size();
            // SAFETY: as in `reuse_or_copy`: `len` bytes of CPU memory owned by `value`.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(self.value.data_ptr_mut().cast::<u8>(), len)
            };
            zeroize_bytes(bytes);
            self.filled = false;
        }
    }
}

impl Drop for InputValue {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// Whether ONNX dims (-1 or a symbolic name for dynamic) agree with a manifest shape.
fn shape_matches(dims: &[i64], expected: &[Option<u64>]) -> bool {
    dims.len() == expected.len()
        && dims.iter().zip(expected).all(|(&d, e)| match e {
            None => d < 0,
            Some(e) => d == *e as i64,
        })
}

/// Where a core runs: the CUDA EP's device ordinal, or why not.
struct CoreBackend {
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
                placement::allow_cpu("core", options, &reason)?;
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
        placement::allow_cpu("core", options, &reason)?;
        self.placement = Placement::Cpu(reason);
        self.cuda_device = None;
        Ok(())
    }

    pub fn announce(&self, options: &BackendOptions) {
        placement::announce("core", &self.placement, options.backend);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mnist() -> Core {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mnist-core");
        Core::open(dir, &CoreOptions::default()).unwrap()
    }

    fn inputs(core: &Core, n: usize) -> Vec<f32> {
        (0..n * core.input_len())
            .map(|i| 0.25 + (i % 7) as f32 / 8.0)
            .collect()
    }

    /// The same values `shift` bytes into a buffer of bytes (not aligned for f32 when `shift`
    /// is not a multiple of 4).
    fn shifted(x: &[f32], shift: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; shift];
        bytes.extend(x.iter().flat_map(|v| v.to_ne_bytes()));
        bytes
    }

    /// G4: the buffers an idle session keeps for its next run hold zeros, not the last run's
    /// inputs or outputs: the copy of an input not aligned for its type, and the outputs.
    #[test]
    fn pooled_buffers_hold_zeros_between_runs() {
        let core = mnist();
        let n = 3;
        let x = inputs(&core, n);
        let bytes = shifted(&x, 1);
        let shape = core.bundle().input_shape(n);
        let name = core.bundle().manifest.inputs[0].name.clone();
        let input = Tensor::from_bytes(name.as_str(), DType::Float32, &shape, &bytes[1..]);
        core.run_tensors(&[input], &["features"]).unwrap();
        let mut idle = core.idle.lock().unwrap();
        let idle = &mut idle[0];
        assert_eq!(idle.inputs.len(), 1, "the run's input copy was not kept");
        for b in &mut idle.inputs {
            assert!(!b.filled);
            let len = b.shape.iter().product::<usize>() * b.dtype.size();
            assert_eq!(len, x.len() * 4);
            // SAFETY: `len` bytes of CPU memory owned by the tensor, as in `InputValue::wipe`.
            let bytes =
                unsafe { std::slice::from_raw_parts(b.value.data_ptr_mut().cast::<u8>(), len) };
            assert!(bytes.iter().all(|&v| v == 0), "an idle buffer holds inputs");
        }
        let outputs = idle.preallocated.as_mut().expect("the outputs were kept");
        assert_eq!(outputs.outputs.len(), 1);
        assert!(
            outputs.values(0).iter().all(|&v| v == 0.0),
            "an idle buffer holds outputs"
        );
    }

    /// An input in the caller's memory is read in place, not copied, and gives the same outputs,
    /// bit for bit, as a copy of it that is not aligned for f32 (read through a copy).
    #[test]
    fn aligned_inputs_are_read_in_place() {
        let core = mnist();
        let n = 2;
        let x = inputs(&core, n);
        let in_place = core.run(&x, n, &["features", "logits"]).unwrap();
        assert!(
            core.idle.lock().unwrap()[0].inputs.is_empty(),
            "an aligned input was copied"
        );
        let bytes = shifted(&x, 3);
        let shape = core.bundle().input_shape(n);
        let name = core.bundle().manifest.inputs[0].name.clone();
        let input = Tensor::from_bytes(name.as_str(), DType::Float32, &shape, &bytes[3..]);
        let copied = core.run_tensors(&[input], &["features", "logits"]).unwrap();
        for name in ["features", "logits"] {
            let (a, b) = (in_place.get(name).unwrap(), copied.get(name).unwrap());
            assert!(a.iter().any(|&v| v != 0.0), "{name} is all zeros");
            assert!(
                a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{name}"
            );
        }
    }
}
