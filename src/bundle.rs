//! Model bundles: a folder with `core.onnx`, `manifest.json` and a README (and, for a text
//! bundle, its tokenizer file).
//!
//! The manifest is versioned and strict (unknown fields are rejected). Version 1 declares one
//! float32 input of fixed shape and its preprocessing in words; version 2 declares any number of
//! named, typed inputs with named dynamic axes, and its preprocessing as an object that may
//! include the text tokenization Lethe applies itself (see `models/minilm-l6-sentiment/README.md`
//! for the fields). Opening a bundle checks every field, the sha256 of `core.onnx` (and of the
//! tokenizer file), and the fixed-point limits the head relies on; the check against the ONNX
//! graph itself happens when the core is opened (see [`crate::core`]).

pub mod tensor;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use tensor::{f16_is_finite, DType, Tensor};

/// The manifest's `format` value.
pub const MANIFEST_FORMAT: &str = "lethe-bundle";
/// The newest manifest version this build reads (it reads 1 and 2).
pub const MANIFEST_VERSION: u32 = 2;
/// The manifest versions this build reads.
pub const MANIFEST_VERSIONS: [u32; 2] = [1, 2];
/// Joins the names of features outputs whose columns a head concatenates
/// ([`Bundle::features`]).
pub const FEATURES_JOIN: char = '+';

/// The most tokens a text bundle may keep per text (`preprocessing.text.max_length`).
pub const MAX_TEXT_LENGTH: usize = 1 << 16;
/// Fixed-point values (features and targets) must satisfy `|q| <= QUANT_LIMIT`; the exact
/// statistics rely on it (see [`crate::math::fixed`]).
pub const QUANT_LIMIT: f64 = (1u64 << 24) as f64;

/// `manifest.json`, as written by the scripts in `models/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub name: String,
    pub description: String,
    pub core: CoreFile,
    pub inputs: Vec<InputSpec>,
    /// What the caller (or, for text, Lethe) must do to raw data before handing it to the core.
    pub preprocessing: Preprocessing,
    /// The outputs a head may be linearized at; one is chosen when the head is created.
    pub features: Vec<FeaturesSpec>,
    /// The `output` name of the features used when a head does not choose.
    pub default_features: String,
    /// The core's own logits, if any, and the head classes they cover.
    pub core_logits: Option<CoreLogitsSpec>,
    /// The head's class labels.
    pub classes: Vec<String>,
    pub head: HeadDefaults,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoreFile {
    pub file: String,
    pub sha256: String,
    pub opset: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// An element type name (see [`DType`]); checked by [`Bundle::open`].
    pub dtype: String,
    /// One entry per axis; the first is the batch axis.
    pub shape: Vec<Dim>,
}

impl InputSpec {
    /// The element type (valid in an opened bundle).
    pub fn dtype(&self) -> DType {
        DType::from_name(&self.dtype).expect("checked when the bundle was opened")
    }

    /// The shape as the manifest writes it, e.g. `[n, seq]` or `[n, 1, 28, 28]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// One axis of an input's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// `null`: the batch axis (the first), the same size n for every input of a call.
    Batch,
    /// A fixed size.
    Fixed(u64),
    /// A named dynamic axis (version 2): inputs naming the same axis have the same size on it
    /// in every call.
    Named(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("n"),
            Dim::Fixed(k) => write!(f, "{k}"),
            Dim::Named(name) => f.write_str(name),
        }
    }
}

/// Version 1's `shape` entries were `null` or a number: they compare as `None` and `Some`.
impl PartialEq<Option<u64>> for Dim {
    fn eq(&self, other: &Option<u64>) -> bool {
        match (self, other) {
            (Dim::Batch, None) => true,
            (Dim::Fixed(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for Dim {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Dim::Batch => s.serialize_none(),
            Dim::Fixed(k) => s.serialize_u64(*k),
            Dim::Named(name) => s.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Dim, D::Error> {
        struct DimVisitor;
        impl Visitor<'_> for DimVisitor {
            type Value = Dim;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null (the batch axis), a size or an axis name")
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Dim, E> {
                Ok(Dim::Batch)
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<Dim, E> {
                Ok(Dim::Batch)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Dim, E> {
                Ok(Dim::Fixed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Dim, E> {
                Ok(Dim::Named(v.to_string()))
            }
        }
        d.deserialize_any(DimVisitor)
    }
}

/// The manifest's `preprocessing`: words (version 1), or an object (version 2).
#[derive(Debug, Clone, PartialEq)]
pub enum Preprocessing {
    Described(String),
    Declared(PreprocessingSpec),
}

impl Preprocessing {
    /// The preprocessing in words.
    pub fn description(&self) -> &str {
        match self {
            Preprocessing::Described(s) => s,
            Preprocessing::Declared(spec) => &spec.description,
        }
    }

    /// The text tokenization, for a text bundle.
    pub fn text(&self) -> Option<&TextSpec> {
        match self {
            Preprocessing::Described(_) => None,
            Preprocessing::Declared(spec) => spec.text.as_ref(),
        }
    }

    /// The image decoding and transforms, for an image bundle that declares them.
    pub fn image(&self) -> Option<&ImageSpec> {
        match self {
            Preprocessing::Described(_) => None,
            Preprocessing::Declared(spec) => spec.image.as_ref(),
        }
    }
}

impl Serialize for Preprocessing {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Preprocessing::Described(text) => s.serialize_str(text),
            Preprocessing::Declared(spec) => spec.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Preprocessing {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Preprocessing, D::Error> {
        // An object's errors name its fields (serde's untagged enums would hide them).
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(text) => Ok(Preprocessing::Described(text)),
            value @ serde_json::Value::Object(_) => serde_json::from_value(value)
                .map(Preprocessing::Declared)
                .map_err(|e| de::Error::custom(format!("preprocessing: {e}"))),
            other => Err(de::Error::custom(format!(
                "preprocessing: expected a string (version 1) or an object (version 2), found \
                 {other}"
            ))),
        }
    }
}

/// Version 2's `preprocessing` object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreprocessingSpec {
    /// The preprocessing in words, for people.
    pub description: String,
    /// Present when the core takes tokenized text: Lethe then accepts raw UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
    /// Present when the core takes images: Lethe then accepts PNG and JPEG files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
}

/// How Lethe turns an image file into an image bundle's input (`preprocessing.image`), in this
/// order: decode (PNG or JPEG, 8 bits per channel; alpha dropped; gray replicated into each
/// channel of an RGB input, RGB to gray by ITU-R 601-2 luma `L = R·299/1000 + G·587/1000 +
/// B·114/1000` for a gray input); `v = p / divide_by` in f32; resize so that the shorter side is
/// `resize_shorter_side` and the longer side `floor(shorter_side · long / short)`, with
/// `filter`; crop the input's height × width from the centre (offsets `round((size − crop) /
/// 2)`, halves to even); `(v − mean[c]) / std[c]` per channel, in f32; layout
/// `[n, channels, height, width]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// The core input that receives the image: float32 `[null, channels, height, width]`.
    pub input: String,
    /// The input's channels: `rgb` (3, in the order R, G, B) or `gray` (1).
    pub channels: ImageChannels,
    /// Pixel bytes are divided by this (255 maps 0..255 to 0..1).
    pub divide_by: f32,
    /// The shorter side after resizing; `null` keeps the decoded size (the image must then be
    /// at least the input's height and width).
    pub resize_shorter_side: Option<u32>,
    /// The resampling filter of the resize.
    pub filter: ResizeFilter,
    /// Per channel, subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per channel, divides after the mean is subtracted.
    pub std: Vec<f32>,
}

/// The channels of an image input.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImageChannels {
    Rgb,
    Gray,
}

impl ImageChannels {
    /// The number of channels.
    pub fn count(self) -> usize {
        match self {
            ImageChannels::Rgb => 3,
            ImageChannels::Gray => 1,
        }
    }
}

/// The resampling filter of an image resize.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    /// Separable triangle (bilinear) filter whose support widens by the scale factor when
    /// shrinking (antialiasing), pixel centres at half-integers, weights normalized over the
    /// pixels inside the image; rows first, then columns, each pass summed in f64 and stored in
    /// f32. This is Pillow's `BILINEAR` resampling of a float image, which torchvision's
    /// `resize(..., antialias=True)` follows.
    Bilinear,
}

/// How Lethe turns UTF-8 texts into a text bundle's inputs (`preprocessing.text`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// A Hugging Face `tokenizers` JSON file in the bundle (a plain file name).
    pub tokenizer: String,
    /// Its sha256, checked when the bundle is opened.
    pub tokenizer_sha256: String,
    /// Whether the tokenizer's post-processor adds its special tokens.
    pub add_special_tokens: bool,
    /// Each text keeps at most this many tokens, special tokens included (longest first,
    /// stride 0, from the right). Replaces the tokenizer file's own truncation.
    pub max_length: usize,
    /// How a batch is padded (on the right). Replaces the tokenizer file's own padding.
    pub padding: Padding,
    /// The padding token's id (type id 0, mask 0).
    pub pad_id: u32,
    /// Every core input, mapped to the encoding field it receives.
    pub inputs: BTreeMap<String, EncodingField>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Each batch to its longest text.
    Longest,
    /// Every text to `max_length`.
    MaxLength,
}

/// A field of a tokenizer's encoding.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncodingField {
    /// The token ids.
    Ids,
    /// 1 for a token, 0 for padding.
    AttentionMask,
    /// The token type (segment) ids.
    TypeIds,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSpec {
    pub output: String,
    pub dim: usize,
    /// The largest |feature| the head accepts; larger values are an error, never clamped.
    pub max_abs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoreLogitsSpec {
    pub output: String,
    /// `classes[j]` is the index into [`Manifest::classes`] of core logit column `j`.
    pub classes: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadDefaults {
    /// Ridge strength λ > 0.
    pub lambda: f64,
    /// Target scale s: a sample of class c has target s·e_c − z(x).
    pub target_scale: f64,
    /// Fixed point: a value v is stored as round(v · 2^frac_bits).
    pub frac_bits: u32,
    /// The largest |s·y − z(x)| the head accepts.
    pub target_max_abs: f64,
}

/// An opened, verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads and checks `DIR/manifest.json` and the sha256 of the core file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join("manifest.json");
        let text = fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| Error::Manifest {
            path: manifest_path.clone(),
            field: "manifest.json".into(),
            message: e.to_string(),
        })?;
        manifest
            .validate()
            .map_err(|(field, message)| Error::Manifest {
                path: manifest_path.clone(),
                field,
                message,
            })?;
        let bundle = Bundle { dir, manifest };
        let actual = sha256_file(&bundle.core_path())?;
        if actual != bundle.manifest.core.sha256 {
            return Err(Error::Manifest {
                path: bundle.core_path(),
                field: "core.sha256".into(),
                message: format!(
                    "the file's sha256 is {actual}, the manifest says {}",
                    bundle.manifest.core.sha256
                ),
            });
        }
        if let Some(text) = bundle.manifest.preprocessing.text() {
            let path = bundle.dir.join(&text.tokenizer);
            bundle.check_tokenizer_sha256(&path, &sha256_file(&path)?)?;
        }
        Ok(bundle)
    }

    /// Refuses a tokenizer file whose sha256 is not the manifest's.
    pub fn check_tokenizer_sha256(&self, path: &Path, actual: &str) -> Result<()> {
        let text = self.manifest.preprocessing.text();
        match text {
            Some(t) if t.tokenizer_sha256 == actual => Ok(()),
            _ => Err(Error::Manifest {
                path: path.to_path_buf(),
                field: "preprocessing.text.tokenizer_sha256".into(),
                message: format!(
                    "the file's sha256 is {actual}, the manifest says {}",
                    text.map_or("(no tokenizer)", |t| t.tokenizer_sha256.as_str())
                ),
            }),
        }
    }

    /// The path of the ONNX core.
    pub fn core_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.core.file)
    }

    /// The sha256 of `core.onnx` (verified when the bundle was opened).
    pub fn core_sha256(&self) -> &str {
        &self.manifest.core.sha256
    }

    /// The features a head over this bundle is linear in: `name` (or the manifest's default
    /// when `None`) is one features output, or several joined by `+` (e.g.
    /// `features+conv_features`), whose columns are concatenated in that order: dimension the
    /// sum of theirs, accepted magnitude the largest of theirs.
    pub fn features(&self, name: Option<&str>) -> Result<FeaturesSpec> {
        let name = name.unwrap_or(&self.manifest.default_features);
        self.manifest
            .joined_features(name)
            .map_err(|why| Error::InvalidInput(format!("bundle {}: {why}", self.manifest.name)))
    }

    /// The core's one float32 input of fixed sample shape, for the single-input shorthands
    /// (`Core::run`, `Head::learn`, `Head::predict`); an error naming the inputs a core with
    /// other inputs takes.
    pub fn single_input(&self) -> Result<&InputSpec> {
        let inputs = &self.manifest.inputs;
        match inputs.as_slice() {
            [only]
                if only.dtype() == DType::Float32
                    && only.shape[1..].iter().all(|d| matches!(d, Dim::Fixed(_))) =>
            {
                Ok(only)
            }
            _ => Err(Error::InvalidInput(format!(
                "bundle {} does not take one float32 array: its core takes {}; pass named \
                 tensors{}",
                self.manifest.name,
                self.describe_inputs(),
                if self.manifest.preprocessing.text().is_some() {
                    " or text"
                } else {
                    ""
                }
            ))),
        }
    }

    /// The error for raw inputs (`what`: "text", "image files") given to a bundle whose
    /// manifest declares no `kind` preprocessing for them ("text", "image").
    pub fn does_not_take(&self, what: &str, kind: &str) -> Error {
        Error::InvalidInput(format!(
            "bundle {} does not take {what} (its manifest declares no {kind} preprocessing); \
             its core takes {}",
            self.manifest.name,
            self.describe_inputs()
        ))
    }

    /// The core's inputs in words, e.g. `input_ids (int64 [n, seq]), attention_mask (…)`.
    pub fn describe_inputs(&self) -> String {
        let all: Vec<String> = self
            .manifest
            .inputs
            .iter()
            .map(|i| format!("{} ({} {})", i.name, i.dtype, i.shape_text()))
            .collect();
        all.join(", ")
    }

    /// The number of f32 values in one sample of a core that takes one float32 input of fixed
    /// shape (see [`Bundle::single_input`]); 0 for a core with other inputs, which the
    /// single-input calls refuse.
    pub fn input_len(&self) -> usize {
        match self.single_input() {
            Ok(_) => self.input_shape(1).iter().product(),
            Err(_) => 0,
        }
    }

    /// The shape of a batch of `n` inputs of a single-input core: `[n, …]`.
    pub fn input_shape(&self, n: usize) -> Vec<usize> {
        let sample = self.manifest.inputs[0].shape.iter().skip(1);
        std::iter::once(n)
            .chain(sample.map(|d| match d {
                Dim::Fixed(k) => *k as usize,
                Dim::Batch | Dim::Named(_) => 1,
            }))
            .collect()
    }

    /// The number of samples in an input array of shape `shape` for a single-input core: the
    /// manifest's input shape `[n, …]` exactly, or its flat form `[n, input_len]`. Any other
    /// shape is refused even when its number of values agrees: an array in another layout
    /// (NHWC for an NCHW core) or with other axes would be read as scrambled samples.
    pub fn input_count(&self, shape: &[usize]) -> Result<usize> {
        let input = self.single_input()?;
        let n = shape.first().copied().unwrap_or(0);
        let exact = self.input_shape(n);
        if !shape.is_empty() && (shape == exact || shape == [n, self.input_len()]) {
            return Ok(n);
        }
        let sample: Vec<String> = exact[1..].iter().map(usize::to_string).collect();
        Err(Error::InvalidInput(format!(
            "inputs of shape {shape:?}: bundle {} takes [n, {}] (its input {:?}), or the flat \
             form [n, {}]; preprocessing: {}",
            self.manifest.name,
            sample.join(", "),
            input.name,
            self.input_len(),
            self.manifest.preprocessing.description()
        )))
    }

    /// Checks a set of named tensors against the core's inputs and returns the batch size n:
    /// every input exactly once and nothing else, each with the manifest's element type and
    /// rank, the same n on every batch axis, the fixed sizes, the same size on every axis of
    /// one name (at least 1 when n ≥ 1), exactly as many bytes as the shape needs, and finite
    /// floats and booleans that are 0 or 1.
    pub fn check_inputs(&self, tensors: &[Tensor<'_>]) -> Result<usize> {
        let m = &self.manifest;
        let fail = |message: String| Err(Error::InvalidInput(message));
        let expected = || self.describe_inputs();
        let mut seen = vec![false; m.inputs.len()];
        for t in tensors {
            let Some(i) = m.inputs.iter().position(|i| i.name == t.name()) else {
                return fail(format!(
                    "bundle {} has no input {:?}: its core takes {}",
                    m.name,
                    t.name(),
                    expected()
                ));
            };
            if std::mem::replace(&mut seen[i], true) {
                return fail(format!("input {:?} is given twice", t.name()));
            }
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return fail(format!(
                "input {:?} is missing: bundle {}'s core takes {}",
                m.inputs[i].name,
                m.name,
                expected()
            ));
        }
        let mut n: Option<(usize, &str)> = None;
        let mut axes: HashMap<&str, (usize, &str)> = HashMap::new();
        for t in tensors {
            let spec = m
                .inputs
                .iter()
                .find(|i| i.name == t.name())
                .expect("checked above");
            let name = t.name();
            if t.dtype() != spec.dtype() {
                return fail(format!(
                    "input {name:?} is {}, the core takes {}",
                    t.dtype(),
                    spec.dtype
                ));
            }
            let shape = t.shape();
            if shape.len() != spec.shape.len() {
                return fail(format!(
                    "input {name:?} has shape {shape:?}, the core takes {} ({} axes)",
                    spec.shape_text(),
                    spec.shape.len()
                ));
            }
            match n {
                Some((n, other)) if n != shape[0] => {
                    return fail(format!(
                        "input {name:?} has {} samples (shape {shape:?}), input {other:?} has \
                         {n}: every input has the same batch size",
                        shape[0]
                    ))
                }
                _ => n = Some((shape[0], name)),
            }
            for (axis, (dim, &size)) in spec.shape.iter().zip(shape).enumerate().skip(1) {
                match dim {
                    Dim::Fixed(k) if *k != size as u64 => {
                        return fail(format!(
                            "input {name:?} has shape {shape:?}, the core takes {}: axis \
                             {axis} must be {k}",
                            spec.shape_text()
                        ))
                    }
                    Dim::Named(axis_name) => {
                        if size == 0 && shape[0] > 0 {
                            return fail(format!(
                                "input {name:?} has shape {shape:?}: axis {axis_name:?} must \
                                 be at least 1"
                            ));
                        }
                        match axes.get(axis_name.as_str()) {
                            Some(&(len, other)) if len != size => {
                                return fail(format!(
                                    "input {name:?} has {axis_name} = {size} (shape {shape:?}), \
                                     input {other:?} has {axis_name} = {len}: inputs that name \
                                     the axis {axis_name:?} have the same size on it"
                                ))
                            }
                            _ => {
                                axes.insert(axis_name, (size, name));
                            }
                        }
                    }
                    _ => {}
                }
            }
            let len = shape
                .iter()
                .try_fold(t.dtype().size(), |acc, &d| acc.checked_mul(d));
            if len != Some(t.bytes().len()) {
                return fail(format!(
                    "input {name:?}: shape {shape:?} of {} needs {} bytes, got {}",
                    t.dtype(),
                    len.map_or("over 2^64".into(), |l| l.to_string()),
                    t.bytes().len()
                ));
            }
            check_values(t)?;
        }
        Ok(n.map_or(0, |(n, _)| n))
    }
}

/// Finite floats, booleans that are 0 or 1.
/// The index of the first f32 (native byte order) in `bytes` that is NaN or infinite. Blocks
/// without one are checked branch-free, which the compiler vectorizes.
fn first_not_finite_f32(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    let finite =
        |b: &[u8]| u32::from_ne_bytes(b.try_into().expect("4 bytes")) & 0x7fff_ffff < 0x7f80_0000;
    bytes
        .chunks(4 * BLOCK)
        .enumerate()
        .find(|(_, block)| !block.chunks_exact(4).fold(true, |ok, b| ok & finite(b)))
        .and_then(|(k, block)| {
            let i = block.chunks_exact(4).position(|b| !finite(b))?;
            Some(k * BLOCK + i)
        })
}

fn check_values(t: &Tensor<'_>) -> Result<()> {
    let per = t.shape()[1..].iter().product::<usize>().max(1);
    let bad = |i: usize, value: String| {
        Err(Error::InvalidInput(format!(
            "input {:?}: value {i} (sample {}) is {value}",
            t.name(),
            i / per
        )))
    };
    let bytes = t.bytes();
    match t.dtype() {
        DType::Float32 => {
            if let Some(i) = first_not_finite_f32(bytes) {
                let v = f32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
                return bad(i, v.to_string());
            }
        }
        DType::Float16 => {
            for (i, b) in bytes.chunks_exact(2).enumerate() {
                let bits = u16::from_ne_bytes(b.try_into().expect("2 bytes"));
                if !f16_is_finite(bits) {
                    return bad(i, format!("not finite (float16 bits {bits:#06x})"));
                }
            }
        }
        DType::Bool => {
            if let Some(i) = bytes.iter().position(|&b| b > 1) {
                return bad(i, format!("byte {}, not a bool (0 or 1)", bytes[i]));
            }
        }
        DType::Int64 | DType::Int32 | DType::Uint8 => {}
    }
    Ok(())
}

impl Manifest {
    /// The features output `name`, or several joined by [`FEATURES_JOIN`] (each once), as one:
    /// dimension the sum of theirs, accepted magnitude the largest of theirs.
    fn joined_features(&self, name: &str) -> std::result::Result<FeaturesSpec, String> {
        let parts: Vec<&str> = name.split(FEATURES_JOIN).collect();
        let mut spec = FeaturesSpec {
            output: name.to_string(),
            dim: 0,
            max_abs: 0.0,
        };
        for (i, part) in parts.iter().enumerate() {
            if parts[..i].contains(part) {
                return Err(format!("features {name:?} name {part:?} twice"));
            }
            let one = self
                .features
                .iter()
                .find(|f| f.output == *part)
                .ok_or_else(|| {
                    let known: Vec<_> = self.features.iter().map(|f| &f.output).collect();
                    format!(
                        "no features output {part:?} (there are {known:?}; join several with \
                         {FEATURES_JOIN:?} to concatenate them)"
                    )
                })?;
            spec.dim += one.dim;
            spec.max_abs = spec.max_abs.max(one.max_abs);
        }
        Ok(spec)
    }

    /// Version 1: exactly one float32 input of fixed shape, preprocessing in words.
    fn validate_v1_inputs(&self) -> std::result::Result<(), (String, String)> {
        let fail = |field: &str, message: String| Err((field.to_string(), message));
        if self.inputs.len() != 1 {
            return fail(
                "inputs",
                format!(
                    "version 1 supports exactly one input tensor, found {}",
                    self.inputs.len()
                ),
            );
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if input.name.is_empty() {
                return fail(&format!("inputs[{i}].name"), "must not be empty".into());
            }
            if input.dtype != "float32" {
                return fail(
                    &format!("inputs[{i}].dtype"),
                    format!(
                        "version 1 supports only \"float32\", found {:?}",
                        input.dtype
                    ),
                );
            }
            if input.shape.first() != Some(&Dim::Batch) {
                return fail(
                    &format!("inputs[{i}].shape"),
                    "the first axis must be the dynamic batch axis (null)".into(),
                );
            }
            if input
                .shape
                .iter()
                .skip(1)
                .any(|d| !matches!(d, Dim::Fixed(k) if *k > 0))
            {
                return fail(
                    &format!("inputs[{i}].shape"),
                    "in version 1 only the first (batch) axis may be dynamic, and no axis may \
                     be 0"
                        .into(),
                );
            }
        }
        if !matches!(self.preprocessing, Preprocessing::Described(_)) {
            return fail(
                "preprocessing",
                "version 1 describes the preprocessing in words (a string)".into(),
            );
        }
        Ok(())
    }

    /// Version 2: named, typed inputs with named dynamic axes; preprocessing as an object.
    fn validate_v2_inputs(&self) -> std::result::Result<(), (String, String)> {
        let fail = |field: &str, message: String| Err((field.to_string(), message));
        if self.inputs.is_empty() {
            return fail("inputs", "at least one input is required".into());
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if input.name.is_empty() {
                return fail(&format!("inputs[{i}].name"), "must not be empty".into());
            }
            if self.inputs[..i].iter().any(|o| o.name == input.name) {
                return fail(
                    &format!("inputs[{i}].name"),
                    format!("{:?} is listed twice", input.name),
                );
            }
            if DType::from_name(&input.dtype).is_none() {
                let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
                return fail(
                    &format!("inputs[{i}].dtype"),
                    format!("must be one of {names:?}, found {:?}", input.dtype),
                );
            }
            let field = format!("inputs[{i}].shape");
            if input.shape.first() != Some(&Dim::Batch) {
                return fail(
                    &field,
                    "the first axis must be the dynamic batch axis (null)".into(),
                );
            }
            for dim in &input.shape[1..] {
                match dim {
                    Dim::Batch => {
                        return fail(
                            &field,
                            "only the first axis is the batch axis (null); name other dynamic \
                             axes"
                                .into(),
                        )
                    }
                    Dim::Fixed(0) => return fail(&field, "no axis may be 0".into()),
                    Dim::Named(name) if !is_axis_name(name) => {
                        return fail(
                            &field,
                            format!(
                                "an axis name is [a-z][a-z0-9_]* and not \"batch\", found \
                                 {name:?}"
                            ),
                        )
                    }
                    _ => {}
                }
            }
        }
        let Preprocessing::Declared(spec) = &self.preprocessing else {
            return fail(
                "preprocessing",
                "version 2 declares the preprocessing as an object with a description".into(),
            );
        };
        if spec.description.is_empty() {
            return fail("preprocessing.description", "must not be empty".into());
        }
        if spec.text.is_some() && spec.image.is_some() {
            return fail(
                "preprocessing",
                "declares both text and image: a core takes one or the other".into(),
            );
        }
        if let Some(text) = &spec.text {
            self.validate_text(text)?;
        }
        if let Some(image) = &spec.image {
            self.validate_image(image)?;
        }
        Ok(())
    }

    fn validate_image(&self, image: &ImageSpec) -> std::result::Result<(), (String, String)> {
        let fail =
            |field: &str, message: String| Err((format!("preprocessing.image.{field}"), message));
        let [input] = self.inputs.as_slice() else {
            return fail(
                "input",
                format!(
                    "an image bundle's core takes exactly one input, found {}",
                    self.inputs.len()
                ),
            );
        };
        if image.input != input.name {
            return fail(
                "input",
                format!(
                    "{:?} is not the core's input (it is {:?})",
                    image.input, input.name
                ),
            );
        }
        let channels = image.channels.count();
        let fixed = |d: &Dim| match d {
            Dim::Fixed(k) => Some(*k),
            Dim::Batch | Dim::Named(_) => None,
        };
        let shape: Option<Vec<u64>> = input.shape[1..].iter().map(fixed).collect();
        match (input.dtype.as_str(), shape.as_deref()) {
            ("float32", Some([c, h, w])) if *c == channels as u64 && *h > 0 && *w > 0 => {
                if let Some(side) = image.resize_shorter_side {
                    if u64::from(side) < (*h).max(*w) {
                        return fail(
                            "resize_shorter_side",
                            format!(
                                "{side} is smaller than the {h}x{w} crop: it must be at least \
                                 {}",
                                (*h).max(*w)
                            ),
                        );
                    }
                }
            }
            _ => {
                return fail(
                    "input",
                    format!(
                        "the core input {:?} must be float32 [null, {channels}, height, width] \
                         for {:?} images, found {} {}",
                        input.name,
                        image.channels,
                        input.dtype,
                        input.shape_text()
                    ),
                )
            }
        }
        if !(image.divide_by.is_finite() && image.divide_by > 0.0) {
            return fail(
                "divide_by",
                format!("must be finite and > 0, found {}", image.divide_by),
            );
        }
        if image.resize_shorter_side == Some(0) {
            return fail("resize_shorter_side", "must be > 0 or null".into());
        }
        for (field, values) in [("mean", &image.mean), ("std", &image.std)] {
            if values.len() != channels {
                return fail(
                    field,
                    format!(
                        "needs one value per channel ({channels}), found {}",
                        values.len()
                    ),
                );
            }
            if values.iter().any(|v| !v.is_finite()) {
                return fail(field, format!("must be finite, found {values:?}"));
            }
        }
        if image.std.iter().any(|v| *v <= 0.0) {
            return fail("std", format!("must be > 0, found {:?}", image.std));
        }
        Ok(())
    }

    fn validate_text(&self, text: &TextSpec) -> std::result::Result<(), (String, String)> {
        let fail =
            |field: &str, message: String| Err((format!("preprocessing.text.{field}"), message));
        if !is_plain_file_name(&text.tokenizer) {
            return fail(
                "tokenizer",
                format!(
                    "must be a file name inside the bundle, found {:?}",
                    text.tokenizer
                ),
            );
        }
        if text.tokenizer == self.core.file {
            return fail("tokenizer", "is the core file".into());
        }
        if !is_sha256(&text.tokenizer_sha256) {
            return fail(
                "tokenizer_sha256",
                format!(
                    "must be 64 lowercase hex digits, found {:?}",
                    text.tokenizer_sha256
                ),
            );
        }
        if !(1..=MAX_TEXT_LENGTH).contains(&text.max_length) {
            return fail(
                "max_length",
                format!(
                    "must be in 1..={MAX_TEXT_LENGTH}, found {}",
                    text.max_length
                ),
            );
        }
        let mut axis: Option<&str> = None;
        for input in &self.inputs {
            let Some(field) = text.inputs.get(&input.name) else {
                return fail(
                    "inputs",
                    format!(
                        "core input {:?} is not mapped to an encoding field",
                        input.name
                    ),
                );
            };
            if !matches!(input.dtype.as_str(), "int64" | "int32") {
                return fail(
                    "inputs",
                    format!(
                        "core input {:?} receives {field:?} but is {}, not int64 or int32",
                        input.name, input.dtype
                    ),
                );
            }
            let name = match input.shape.as_slice() {
                [Dim::Batch, Dim::Named(name)] => name.as_str(),
                _ => {
                    return fail(
                        "inputs",
                        format!(
                            "core input {:?} receives text, so its shape must be [null, AXIS], \
                             found {}",
                            input.name,
                            input.shape_text()
                        ),
                    )
                }
            };
            if axis.is_some_and(|a| a != name) {
                return fail(
                    "inputs",
                    format!(
                        "every input that receives text has the same sequence axis, found {:?} \
                         and {name:?}",
                        axis.unwrap_or_default()
                    ),
                );
            }
            axis = Some(name);
        }
        for (name, field) in &text.inputs {
            if !self.inputs.iter().any(|i| &i.name == name) {
                return fail(
                    "inputs",
                    format!("{name:?} is not a core input (it is mapped to {field:?})"),
                );
            }
            if text.inputs.values().filter(|f| *f == field).count() > 1 {
                return fail("inputs", format!("{field:?} is mapped to two inputs"));
            }
        }
        if !text.inputs.values().any(|f| *f == EncodingField::Ids) {
            return fail("inputs", "no core input receives the token ids".into());
        }
        Ok(())
    }

    /// Checks every field; on failure returns (field, message).
    fn validate(&self) -> std::result::Result<(), (String, String)> {
        let fail = |field: &str, message: String| Err((field.to_string(), message));
        if self.format != MANIFEST_FORMAT {
            return fail(
                "format",
                format!("expected {MANIFEST_FORMAT:?}, found {:?}", self.format),
            );
        }
        if !MANIFEST_VERSIONS.contains(&self.version) {
            return fail(
                "version",
                format!(
                    "this build reads versions {MANIFEST_VERSIONS:?}, found {}",
                    self.version
                ),
            );
        }
        if !is_plain_file_name(&self.core.file) {
            return fail(
                "core.file",
                format!(
                    "must be a file name inside the bundle, found {:?}",
                    self.core.file
                ),
            );
        }
        if !is_sha256(&self.core.sha256) {
            return fail(
                "core.sha256",
                format!(
                    "must be 64 lowercase hex digits, found {:?}",
                    self.core.sha256
                ),
            );
        }
        if self.version == 1 {
            self.validate_v1_inputs()?;
        } else {
            self.validate_v2_inputs()?;
        }
        if self.features.is_empty() {
            return fail(
                "features",
                "at least one features output is required".into(),
            );
        }
        let h = &self.head;
        if !(h.frac_bits >= 1 && h.frac_bits <= 24) {
            return fail(
                "head.frac_bits",
                format!("must be in 1..=24, found {}", h.frac_bits),
            );
        }
        let scale = (h.frac_bits as f64).exp2();
        for (i, f) in self.features.iter().enumerate() {
            if f.output.is_empty() || f.output.contains(FEATURES_JOIN) {
                return fail(
                    &format!("features[{i}].output"),
                    format!("must be a non-empty name without {FEATURES_JOIN:?}"),
                );
            }
            if f.dim == 0 {
                return fail(&format!("features[{i}].dim"), "must be positive".into());
            }
            if !(f.max_abs.is_finite() && f.max_abs > 0.0 && f.max_abs * scale <= QUANT_LIMIT) {
                return fail(
                    &format!("features[{i}].max_abs"),
                    format!(
                        "must be positive with max_abs·2^frac_bits ≤ 2^24, found {}",
                        f.max_abs
                    ),
                );
            }
            if self.features[..i].iter().any(|g| g.output == f.output) {
                return fail(
                    &format!("features[{i}].output"),
                    format!("{:?} is listed twice", f.output),
                );
            }
        }
        if let Err(why) = self.joined_features(&self.default_features) {
            return fail("default_features", why);
        }
        if self.classes.is_empty() {
            return fail("classes", "at least one class is required".into());
        }
        for (i, c) in self.classes.iter().enumerate() {
            if c.is_empty() {
                return fail(&format!("classes[{i}]"), "must not be empty".into());
            }
            if self.classes[..i].contains(c) {
                return fail(&format!("classes[{i}]"), format!("{c:?} is listed twice"));
            }
        }
        if let Some(cl) = &self.core_logits {
            if cl.output.is_empty() {
                return fail("core_logits.output", "must not be empty".into());
            }
            if self.features.iter().any(|f| f.output == cl.output) {
                return fail(
                    "core_logits.output",
                    format!("{:?} is also a features output", cl.output),
                );
            }
            if cl.classes.is_empty() {
                return fail("core_logits.classes", "must not be empty".into());
            }
            for (j, &c) in cl.classes.iter().enumerate() {
                if c >= self.classes.len() {
                    return fail(
                        &format!("core_logits.classes[{j}]"),
                        format!(
                            "{c} is not a class index (there are {})",
                            self.classes.len()
                        ),
                    );
                }
                if cl.classes[..j].contains(&c) {
                    return fail(
                        &format!("core_logits.classes[{j}]"),
                        format!("class {c} is listed twice"),
                    );
                }
            }
        }
        if !(h.lambda.is_finite() && h.lambda > 0.0) {
            return fail(
                "head.lambda",
                format!("must be finite and > 0, found {}", h.lambda),
            );
        }
        if !(h.target_scale.is_finite() && h.target_scale > 0.0) {
            return fail(
                "head.target_scale",
                format!("must be finite and > 0, found {}", h.target_scale),
            );
        }
        if !(h.target_max_abs.is_finite()
            && h.target_max_abs >= h.target_scale
            && h.target_max_abs * scale <= QUANT_LIMIT)
        {
            return fail(
                "head.target_max_abs",
                format!(
                    "must be ≥ target_scale with target_max_abs·2^frac_bits ≤ 2^24, found {}",
                    h.target_max_abs
                ),
            );
        }
        Ok(())
    }
}

/// A file name inside the bundle: one normal path component, no slash.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(std::path::Component::Normal(_)))
        && parts.next().is_none()
        && !name.contains('/')
}

/// 64 lowercase hex digits.
fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A named dynamic axis: `[a-z][a-z0-9_]*`, not `batch`.
fn is_axis_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name != "batch"
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

/// The sha256 of bytes, as lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
