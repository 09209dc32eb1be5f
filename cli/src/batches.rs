//! The samples a command reads (a float32 array, named tensors, lines of text or image files),
//! and running a core over many of them in chunks, with a progress bar.

use std::path::{Path, PathBuf};

use clap::Args;
use ndarray::{s, Array2, ArrayD, IxDyn};

use lethe::bundle::tensor::{DType, Tensor};
use lethe::bundle::FEATURES_JOIN;
use lethe::core::image::about;
use lethe::math::secret::Zeroizing;
use lethe::{data, Bundle, Core, Error, Head, Result};

/// Samples per core run.
const CHUNK: usize = 256;

/// Where a command's samples come from.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// Inputs as .npy, first axis = samples: FILE (float32, preprocessed as the bundle's
    /// manifest says) for a core with one float32 input, or NAME=FILE once per core input
    /// (the manifest's input names and element types), or FILE.npz holding one array per core
    /// input, named as the input (numpy's savez or savez_compressed).
    #[arg(
        long = "input",
        value_name = "[NAME=]FILE",
        required_unless_present_any = ["text", "image"]
    )]
    pub input: Vec<String>,
    /// UTF-8 text, one sample per line, for a bundle that ships a tokenizer (tokenized as its
    /// manifest says).
    #[arg(long, value_name = "FILE", conflicts_with = "input")]
    pub text: Option<PathBuf>,
    /// Image files (PNG or JPEG), one sample each, in order, for a bundle that declares its
    /// image preprocessing (decoded, resized, cropped and normalized as its manifest says).
    #[arg(
        long = "image",
        value_name = "FILE",
        num_args = 1..,
        conflicts_with_all = ["input", "text"]
    )]
    pub image: Vec<PathBuf>,
}

/// A command's samples, read and checked against the bundle.
pub enum Samples {
    /// n samples of a core with one float32 input, row-major.
    Floats(usize, Vec<f32>),
    /// n samples as named tensors, one per core input.
    Tensors(usize, Vec<Tensor<'static>>),
    /// One sample per text.
    Texts(Zeroizing<Vec<String>>),
    /// One sample per image file, read when its chunk runs.
    Images(Vec<PathBuf>),
}

impl Samples {
    /// Reads the samples `args` names and checks them against `bundle`'s inputs.
    pub fn read(bundle: &Bundle, args: &InputArgs) -> Result<Samples> {
        if let Some(path) = &args.text {
            if bundle.manifest.preprocessing.text().is_none() {
                return Err(bundle.does_not_take("text", "text"));
            }
            return Ok(Samples::Texts(data::read_lines(path)?));
        }
        if !args.image.is_empty() {
            if bundle.manifest.preprocessing.image().is_none() {
                return Err(bundle.does_not_take("image files", "image"));
            }
            return Ok(Samples::Images(args.image.clone()));
        }
        match args.input.as_slice() {
            [one] if !one.contains('=') && !is_npz(one) => {
                bundle.single_input()?;
                let (n, x) = inputs_of(bundle, data::read_f32(Path::new(one))?)?;
                Ok(Samples::Floats(n, x))
            }
            named => {
                let mut tensors = Vec::new();
                for arg in named {
                    if is_npz(arg) {
                        tensors.extend(npz_inputs(Path::new(arg))?);
                    } else {
                        tensors.push(named_input(bundle, arg)?);
                    }
                }
                let n = bundle.check_inputs(&tensors)?;
                Ok(Samples::Tensors(n, tensors))
            }
        }
    }

    /// The number of samples.
    pub fn count(&self) -> usize {
        match self {
            Samples::Floats(n, _) | Samples::Tensors(n, _) => *n,
            Samples::Texts(texts) => texts.len(),
            Samples::Images(paths) => paths.len(),
        }
    }

    /// Samples `start..start + k` as the core's named inputs.
    fn chunk<'a>(&'a self, core: &'a Core, start: usize, k: usize) -> Result<Vec<Tensor<'a>>> {
        let bundle = core.bundle();
        Ok(match self {
            Samples::Floats(_, x) => {
                let per = bundle.input_len();
                vec![Tensor::from_slice(
                    bundle.single_input()?.name.as_str(),
                    &bundle.input_shape(k),
                    &x[start * per..(start + k) * per],
                )]
            }
            Samples::Tensors(_, tensors) => tensors.iter().map(|t| t.rows(start, k)).collect(),
            Samples::Texts(texts) => {
                let chunk: Vec<&str> = texts[start..start + k].iter().map(String::as_str).collect();
                core.encode_text(&chunk)?
            }
            Samples::Images(paths) => {
                let encoder = core.image_encoder()?;
                let images = paths[start..start + k]
                    .iter()
                    .map(|path| {
                        let file =
                            Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
                        encoder
                            .values(&file)
                            .map_err(|e| about(e, &path.display().to_string()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                vec![encoder.batch(&images)]
            }
        })
    }
}

/// An `--input` naming an `.npz` file rather than `NAME=FILE`.
fn is_npz(arg: &str) -> bool {
    !arg.contains('=') && Path::new(arg).extension().is_some_and(|e| e == "npz")
}

/// The arrays of an `.npz` file as core inputs, one per array, named as the array (the
/// bundle checks the names, element types and shapes).
fn npz_inputs(path: &Path) -> Result<Vec<Tensor<'static>>> {
    data::read_npz(path)?
        .into_iter()
        .map(|(name, mut values)| {
            let dtype =
                DType::from_name(values.dtype).expect("read_npz returns core element types");
            Ok(Tensor::owned(
                name,
                dtype,
                &values.shape,
                std::mem::take(&mut *values.bytes),
            ))
        })
        .collect()
}

/// `NAME=FILE`: the core input NAME, read from FILE as the manifest's element type.
fn named_input(bundle: &Bundle, arg: &str) -> Result<Tensor<'static>> {
    let Some((name, file)) = arg.split_once('=') else {
        return Err(Error::InvalidInput(format!(
            "--input {arg}: give NAME=FILE for each input of bundle {}'s core: {}",
            bundle.manifest.name,
            bundle.describe_inputs()
        )));
    };
    let Some(spec) = bundle.manifest.inputs.iter().find(|i| i.name == name) else {
        return Err(Error::InvalidInput(format!(
            "--input {arg}: bundle {} has no input {name:?}; its core takes {}",
            bundle.manifest.name,
            bundle.describe_inputs()
        )));
    };
    let path = Path::new(file);
    if spec.dtype() == DType::Float32 {
        // float64 files are narrowed, as for the float32 shorthand.
        let a = data::read_f32(path)?;
        let bytes: Vec<u8> = a.iter().flat_map(|v| v.to_ne_bytes()).collect();
        return Ok(Tensor::owned(
            name.to_string(),
            DType::Float32,
            a.shape(),
            bytes,
        ));
    }
    let mut values = data::read_values(path)?;
    let dtype = DType::from_name(values.dtype).expect("read_values returns core element types");
    Ok(Tensor::owned(
        name.to_string(),
        dtype,
        &values.shape,
        std::mem::take(&mut *values.bytes),
    ))
}

/// The inputs in `a` as `n` rows for `bundle`'s core, after checking that `a` has exactly the
/// manifest's shape `[n, …]` or the flat form `[n, input_len]` (never silently reshaped).
pub fn inputs_of(bundle: &Bundle, a: ArrayD<f32>) -> Result<(usize, Vec<f32>)> {
    let n = bundle.input_count(a.shape())?;
    let rows = if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().copied().collect()
    };
    Ok((n, rows))
}

/// One output of `core` (by name; features joined by `+` are concatenated) over the samples,
/// as [n, width].
pub fn core_output(core: &Core, samples: &Samples, name: &str) -> Result<ArrayD<f32>> {
    let n = samples.count();
    let bar = crate::progress::bar(n as u64, "running the core");
    let mut rows = Vec::new();
    let mut width = 0;
    for start in (0..n).step_by(CHUNK) {
        let k = CHUNK.min(n - start);
        let parts: Vec<&str> = name.split(FEATURES_JOIN).collect();
        let mut out = core.run_tensors(&samples.chunk(core, start, k)?, &parts)?;
        let a = out.take_features(name).expect("requested");
        width = a.ncols();
        rows.extend(a.iter().copied());
        bar.inc(k as u64);
    }
    bar.finish_and_clear();
    Ok(ArrayD::from_shape_vec(IxDyn(&[n, width]), rows).expect("sizes"))
}

/// A head's core over the samples: (features, core logits mapped onto the head's classes).
pub fn core_features(h: &Head, samples: &Samples) -> Result<(Array2<f32>, Array2<f32>)> {
    let spec = h.spec();
    let core = h
        .core()
        .ok_or_else(|| Error::InvalidInput("head has no core".into()))?;
    let n = samples.count();
    let bar = crate::progress::bar(n as u64, "running the core");
    let mut phi = Array2::<f32>::zeros((n, spec.dim));
    let mut z = Array2::<f32>::zeros((n, spec.num_classes()));
    for start in (0..n).step_by(CHUNK) {
        let k = CHUNK.min(n - start);
        let (p, zz) = h.core_features_tensors(&samples.chunk(core, start, k)?)?;
        phi.slice_mut(s![start..start + k, ..]).assign(&p);
        z.slice_mut(s![start..start + k, ..]).assign(&zz);
        bar.inc(k as u64);
    }
    bar.finish_and_clear();
    Ok((phi, z))
}

/// Class labels from an integer `.npy` file.
pub fn read_labels(path: &Path) -> Result<Vec<u32>> {
    data::read_ids(path)?
        .into_iter()
        .map(|l| {
            u32::try_from(l).map_err(|_| Error::InvalidInput(format!("label {l} is out of range")))
        })
        .collect()
}

/// A learn's samples, labels and ids come in equal numbers.
pub fn check_counts(n: usize, labels: usize, ids: usize) -> Result<()> {
    if labels != n || ids != n {
        return Err(Error::InvalidInput(format!(
            "{n} inputs, {labels} labels, {ids} ids: they must match"
        )));
    }
    Ok(())
}
