//! The benchmarks' synthetic workloads: features and labels drawn from a seed, and bundles
//! whose core passes its input through as the features.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use lethe::bundle::{
    hex, CoreFile, FeaturesSpec, HeadDefaults, InputSpec, Manifest, MANIFEST_FORMAT,
    MANIFEST_VERSION,
};
use lethe::{Error, Result};

/// The synthetic bundle's head: features in [0, 4), as post-ReLU6 features are.
const SYNTHETIC_FEATURE_MAX: f32 = 4.0;
pub const SYNTHETIC_LAMBDA: f64 = 1.0;

/// Synthetic sample `id`'s feature `j`, uniform in [0, SYNTHETIC_FEATURE_MAX).
pub fn synthetic_feature(seed: u64, id: u64, j: usize) -> f32 {
    let h = splitmix(seed ^ splitmix(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ j as u64));
    (h >> 40) as f32 / (1u64 << 24) as f32 * SYNTHETIC_FEATURE_MAX
}

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
/// Written under `work`; the head over it is the head of any real bundle with this d and C.
pub fn synthetic_bundle(work: &Path, d: usize, c: usize) -> Result<PathBuf> {
    let dir = work.join(format!("identity-d{d}-c{c}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let onnx = onnx::identity_model(d as u64);
    let core_path = dir.join("core.onnx");
    std::fs::write(&core_path, &onnx).map_err(|e| Error::io(&core_path, e))?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        name: format!("bench-identity-d{d}-c{c}"),
        description: "lethe bench: an Identity core, so that the features are the input".into(),
        core: CoreFile {
            file: "core.onnx".into(),
            sha256: hex(&Sha256::digest(&onnx)),
            opset: onnx::OPSET as u32,
        },
        inputs: vec![InputSpec {
            name: "image".into(),
            dtype: "float32".into(),
            shape: vec![None, Some(d as u64)],
        }],
        preprocessing: "none: the input is the features".into(),
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

/// The protocol-buffer encoding of the few ONNX messages an `Identity` model needs
/// (onnx.proto3: ModelProto, GraphProto, NodeProto, ValueInfoProto, TypeProto).
mod onnx {
    pub const OPSET: u64 = 17;
    const IR_VERSION: u64 = 8;
    const FLOAT: u64 = 1;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn int_field(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }

    fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint((field << 3) | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// ValueInfoProto of a float tensor [batch, d].
    fn tensor_info(name: &str, d: u64) -> Vec<u8> {
        let mut batch = Vec::new();
        bytes_field(2, b"batch", &mut batch); // Dimension.dim_param
        let mut width = Vec::new();
        int_field(1, d, &mut width); // Dimension.dim_value
        let mut shape = Vec::new();
        bytes_field(1, &batch, &mut shape); // TensorShapeProto.dim
        bytes_field(1, &width, &mut shape);
        let mut tensor = Vec::new();
        int_field(1, FLOAT, &mut tensor); // TypeProto.Tensor.elem_type
        bytes_field(2, &shape, &mut tensor); // TypeProto.Tensor.shape
        let mut ty = Vec::new();
        bytes_field(1, &tensor, &mut ty); // TypeProto.tensor_type
        let mut info = Vec::new();
        bytes_field(1, name.as_bytes(), &mut info); // ValueInfoProto.name
        bytes_field(2, &ty, &mut info); // ValueInfoProto.type
        info
    }

    /// A model computing `features = Identity(image)` for float tensors [batch, d].
    pub fn identity_model(d: u64) -> Vec<u8> {
        let mut node = Vec::new();
        bytes_field(1, b"image", &mut node); // NodeProto.input
        bytes_field(2, b"features", &mut node); // NodeProto.output
        bytes_field(3, b"identity", &mut node); // NodeProto.name
        bytes_field(4, b"Identity", &mut node); // NodeProto.op_type
        let mut graph = Vec::new();
        bytes_field(1, &node, &mut graph); // GraphProto.node
        bytes_field(2, b"identity", &mut graph); // GraphProto.name
        bytes_field(11, &tensor_info("image", d), &mut graph); // GraphProto.input
        bytes_field(12, &tensor_info("features", d), &mut graph); // GraphProto.output
        let mut opset = Vec::new();
        int_field(2, OPSET, &mut opset); // OperatorSetIdProto.version (domain "" = ONNX)
        let mut model = Vec::new();
        int_field(1, IR_VERSION, &mut model); // ModelProto.ir_version
        bytes_field(2, b"lethe bench", &mut model); // ModelProto.producer_name
        bytes_field(7, &graph, &mut model); // ModelProto.graph
        bytes_field(8, &opset, &mut model); // ModelProto.opset_import
        model
    }
}
