//! The benchmarks' synthetic workloads: features and labels drawn from a seed, and bundles
//! whose core passes its input through as the features.

use std::path::{Path, PathBuf};

use crate::python::run_script;
use lethe::bundle::{
    sha256_file, CoreFile, Dim, FeaturesSpec, HeadDefaults, InputSpec, Manifest, Preprocessing,
    PreprocessingSpec, MANIFEST_FORMAT, MANIFEST_VERSION,
};
use lethe::{Error, Result};

/// Writes the synthetic bundles' core (with the `onnx` package), relative to the source tree
/// like the other default paths.
const IDENTITY_SCRIPT: &str = "scripts/make_identity_core.py";
/// The ONNX opset that script writes.
const IDENTITY_OPSET: u32 = 17;

/// The synthetic bundle's head: features in [0, 4), as post-ReLU6 features are.
const SYNTHETIC_FEATURE_MAX: f32 = 4.0;
pub const SYNTHETIC_LAMBDA: f64 = 1.0;

/// Synthetic sample `id`'s feature `j`, uniform in [0, SYNTHETIC_FEATURE_MAX).
pub fn synthetic_feature(seed: u64, id: u64, j: usize) -> f32 {
    let h = splitmix(seed ^ splitmix(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j as u64));
    (h >> 40) as f32 / (1u64 << 24) as f32 * SYNTHETIC_FEATURE_MAX
}

/// Synthetic sample `id`'s label among `classes`.
pub fn synthetic_label(seed: u64, id: u64, classes: usize) -> u32 {
    (splitmix(seed.wrapping_add(id) ^ 0xA5A5_A5A5) % classes as u64) as u32
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A bundle whose core is an ONNX `Identity` graph: input `image` [batch, d] is the features.
/// Written under `work` (its core by `python`); the head over it is the head of any real
/// bundle with this d and C.
pub fn synthetic_bundle(python: &Path, work: &Path, d: usize, c: usize) -> Result<PathBuf> {
    let dir = work.join(format!("identity-d{d}-c{c}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let core_path = dir.join("core.onnx");
    let dim = d.to_string();
    run_script(
        python,
        IDENTITY_SCRIPT,
        &[
            "--dim".as_ref(),
            dim.as_ref(),
            "--out".as_ref(),
            core_path.as_os_str(),
        ],
    )?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        name: format!("bench-identity-d{d}-c{c}"),
        description: "lethe bench: an Identity core, so that the features are the input".into(),
        core: CoreFile {
            file: "core.onnx".into(),
            sha256: sha256_file(&core_path)?,
            opset: IDENTITY_OPSET,
        },
        inputs: vec![InputSpec {
            name: "image".into(),
            dtype: "float32".into(),
            shape: vec![Dim::Batch, Dim::Fixed(d as u64)],
        }],
        preprocessing: Preprocessing::Declared(PreprocessingSpec {
            description: "none: the input is the features".into(),
            text: None,
            image: None,
        }),
        features: vec![FeaturesSpec {
            output: "features".into(),
            dim: d,
            max_abs: 8.0,
        }],
        default_features: "features".into(),
        core_logits: None,
        classes: (0..c).map(|k| k.to_string()).collect(),
        head: HeadDefaults {
            lambda: SYNTHETIC_LAMBDA,
            target_scale: 1.0,
            frac_bits: 21,
            target_max_abs: 4.0,
        },
    };
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(dir)
}
