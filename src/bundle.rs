//! Model bundles: a folder with `core.onnx`, `manifest.json` and a README.
//!
//! The manifest is versioned and strict (unknown fields are rejected). Opening a bundle checks
//! every field, the sha256 of `core.onnx`, and the fixed-point limits the head relies on; the
//! check against the ONNX graph itself happens when the core is opened (see [`crate::core`]).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The manifest's `format` value.
pub const MANIFEST_FORMAT: &str = "lethe-bundle";
/// The manifest version this build reads.
pub const MANIFEST_VERSION: u32 = 1;
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
    /// What the caller must do to raw data before handing it to the core.
    pub preprocessing: String,
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
    pub dtype: String,
    /// `null` marks the dynamic batch axis (which must be the first).
    pub shape: Vec<Option<u64>>,
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
        Ok(bundle)
    }

    /// The path of the ONNX core.
    pub fn core_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.core.file)
    }

    /// The sha256 of `core.onnx` (verified when the bundle was opened).
    pub fn core_sha256(&self) -> &str {
        &self.manifest.core.sha256
    }

    /// The features output named `name`, or the default one when `None`.
    pub fn features(&self, name: Option<&str>) -> Result<&FeaturesSpec> {
        let name = name.unwrap_or(&self.manifest.default_features);
        self.manifest
            .features
            .iter()
            .find(|f| f.output == name)
            .ok_or_else(|| {
                let known: Vec<_> = self.manifest.features.iter().map(|f| &f.output).collect();
                Error::InvalidInput(format!(
                    "bundle {} has no features output {name:?} (it has {known:?})",
                    self.manifest.name
                ))
            })
    }

    /// The number of f32 values in one sample of the (single) input.
    pub fn input_len(&self) -> usize {
        self.input_shape(1).iter().product()
    }

    /// The shape of a batch of `n` inputs: the manifest's input shape `[n, …]`.
    pub fn input_shape(&self, n: usize) -> Vec<usize> {
        let sample = self.manifest.inputs[0].shape.iter().skip(1);
        std::iter::once(n)
            .chain(sample.map(|d| d.unwrap_or(1) as usize))
            .collect()
    }

    /// The number of samples in an input array of shape `shape`: the manifest's input shape
    /// `[n, …]` exactly, or its flat form `[n, input_len]`. Any other shape is refused even
    /// when its number of values agrees: an array in another layout (NHWC for an NCHW core) or
    /// with other axes would be read as scrambled samples.
    pub fn input_count(&self, shape: &[usize]) -> Result<usize> {
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
            self.manifest.inputs[0].name,
            self.input_len(),
            self.manifest.preprocessing
        )))
    }
}

impl Manifest {
    /// Checks every field; on failure returns (field, message).
    fn validate(&self) -> std::result::Result<(), (String, String)> {
        let fail = |field: &str, message: String| Err((field.to_string(), message));
        if self.format != MANIFEST_FORMAT {
            return fail(
                "format",
                format!("expected {MANIFEST_FORMAT:?}, found {:?}", self.format),
            );
        }
        if self.version != MANIFEST_VERSION {
            return fail(
                "version",
                format!(
                    "this build reads version {MANIFEST_VERSION}, found {}",
                    self.version
                ),
            );
        }
        let mut parts = Path::new(&self.core.file).components();
        let plain_name = matches!(parts.next(), Some(std::path::Component::Normal(_)))
            && parts.next().is_none()
            && !self.core.file.contains('/');
        if !plain_name {
            return fail(
                "core.file",
                format!(
                    "must be a file name inside the bundle, found {:?}",
                    self.core.file
                ),
            );
        }
        if self.core.sha256.len() != 64
            || !self
                .core
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return fail(
                "core.sha256",
                format!(
                    "must be 64 lowercase hex digits, found {:?}",
                    self.core.sha256
                ),
            );
        }
        if self.inputs.len() != 1 {
            return fail(
                "inputs",
                format!(
                    "this version supports exactly one input tensor, found {}",
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
                    format!("only \"float32\" is supported, found {:?}", input.dtype),
                );
            }
            if input.shape.first() != Some(&None) {
                return fail(
                    &format!("inputs[{i}].shape"),
                    "the first axis must be the dynamic batch axis (null)".into(),
                );
            }
            if input
                .shape
                .iter()
                .skip(1)
                .any(|d| matches!(d, None | Some(0)))
            {
                return fail(
                    &format!("inputs[{i}].shape"),
                    "only the first (batch) axis may be dynamic, and no axis may be 0".into(),
                );
            }
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
            if f.output.is_empty() {
                return fail(&format!("features[{i}].output"), "must not be empty".into());
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
        if !self
            .features
            .iter()
            .any(|f| f.output == self.default_features)
        {
            return fail(
                "default_features",
                format!(
                    "{:?} is not one of the features outputs",
                    self.default_features
                ),
            );
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

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
