//! Feeding the MNIST digits of `tests/data` to the bundled cores, as each manifest says.

use ndarray::{s, Array2};

use lethe::data::Digits;
use lethe::{Bundle, Error, Head, Result};

pub const MNIST: &str = "mnist-core";
pub const MOBILENET: &str = "mobilenetv2-imagenet";
/// Digits per core run.
const CHUNK: usize = 64;
/// ImageNet normalization (mobilenetv2-imagenet's manifest).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The inputs of `bundle` for the given digits, preprocessed as its manifest says.
pub fn digit_inputs(bundle: &Bundle, digits: &Digits, rows: &[usize]) -> Result<Vec<f32>> {
    match bundle.manifest.name.as_str() {
        MNIST => Ok(digits.inputs(rows)),
        MOBILENET => {
            // 8×8 pixel repetition to 224×224, gray into R, G, B, /255, ImageNet mean/std.
            let mut out = Vec::with_capacity(rows.len() * 3 * 224 * 224);
            for &r in rows {
                let image = &digits.images[r * 784..(r + 1) * 784];
                for (mean, std) in IMAGENET_MEAN.iter().zip(&IMAGENET_STD) {
                    for y in 0..224 {
                        for x in 0..224 {
                            let p = image[(y / 8) * 28 + x / 8] as f32 / 255.0;
                            out.push((p - mean) / std);
                        }
                    }
                }
            }
            Ok(out)
        }
        other => Err(Error::InvalidInput(format!(
            "lethe knows how to feed digits to {MNIST} and {MOBILENET}, not to {other}"
        ))),
    }
}

/// Runs the head's core over the given digits in chunks: (features, mapped core logits).
pub fn digit_features(
    head: &Head,
    digits: &Digits,
    rows: &[usize],
) -> Result<(Array2<f32>, Array2<f32>)> {
    let core = head
        .core()
        .ok_or_else(|| Error::InvalidInput("head has no core".into()))?;
    let spec = head.spec();
    let mut phi = Array2::<f32>::zeros((rows.len(), spec.dim));
    let mut z = Array2::<f32>::zeros((rows.len(), spec.num_classes()));
    let bar = crate::progress::bar(rows.len() as u64, "running the core");
    for (i, chunk) in rows.chunks(CHUNK).enumerate() {
        let input = digit_inputs(core.bundle(), digits, chunk)?;
        let (p, zz) = head.core_features(&input, chunk.len())?;
        let at = i * CHUNK;
        phi.slice_mut(s![at..at + chunk.len(), ..]).assign(&p);
        z.slice_mut(s![at..at + chunk.len(), ..]).assign(&zz);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((phi, z))
}
