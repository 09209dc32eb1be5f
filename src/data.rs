//! Reading and writing `.npy` arrays for the CLI, the demo and the tests.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WritableElement, WriteNpyExt};

use crate::error::{Error, Result};

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

fn npy_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}: {e}", path.display()))
}

/// An f32 array of any shape (float64 and uint8 files are converted; uint8 is not rescaled).
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    if let Ok(a) = ArrayD::<f32>::read_npy(open(path)?) {
        return Ok(a);
    }
    if let Ok(a) = ArrayD::<f64>::read_npy(open(path)?) {
        return Ok(a.mapv(|v| v as f32));
    }
    ArrayD::<u8>::read_npy(open(path)?)
        .map(|a| a.mapv(|v| v as f32))
        .map_err(|e| {
            npy_err(
                path,
                format!("expected a float32, float64 or uint8 array: {e}"),
            )
        })
}

/// A 1-d integer array as u64 (any of the common integer dtypes; negatives are an error).
pub fn read_ids(path: &Path) -> Result<Vec<u64>> {
    macro_rules! try_dtype {
        ($($t:ty),*) => {$(
            if let Ok(a) = ArrayD::<$t>::read_npy(open(path)?) {
                return a
                    .iter()
                    .map(|&v| u64::try_from(v).map_err(|_| npy_err(path, format!("value {v} is not a valid id or label"))))
                    .collect();
            }
        )*};
    }
    try_dtype!(u64, i64, u32, i32, u16, i16, u8, i8);
    Err(npy_err(path, "expected an integer array"))
}

/// Writes an array as `.npy`.
pub fn write<T: WritableElement>(path: &Path, a: &ArrayD<T>) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    a.write_npy(std::io::BufWriter::new(f))
        .map_err(|e| npy_err(path, e))
}

/// Reshapes to `[n, rest]`: the first axis is the sample axis.
pub fn samples_of(a: ArrayD<f32>) -> (usize, Vec<f32>) {
    let n = a.shape().first().copied().unwrap_or(0);
    let flat = if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().copied().collect()
    };
    (n, flat)
}

/// An owned array from a shape and data.
pub fn array(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches data")
}

/// A labelled MNIST subset as bundled in `tests/data` (uint8 images `[n, 28, 28]`).
#[derive(Debug, Clone)]
pub struct Digits {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
}

impl Digits {
    /// Reads `<dir>/<split>_images.npy` and `<dir>/<split>_labels.npy`.
    pub fn read(dir: &Path, split: &str) -> Result<Digits> {
        let images_path = dir.join(format!("{split}_images.npy"));
        let images =
            ArrayD::<u8>::read_npy(open(&images_path)?).map_err(|e| npy_err(&images_path, e))?;
        let labels: Vec<u32> = read_ids(&dir.join(format!("{split}_labels.npy")))?
            .into_iter()
            .map(|l| l as u32)
            .collect();
        if images.shape().len() != 3 || images.shape()[0] != labels.len() {
            return Err(npy_err(
                &images_path,
                format!(
                    "expected [n, 28, 28] images for {} labels, got {:?}",
                    labels.len(),
                    images.shape()
                ),
            ));
        }
        Ok(Digits {
            images: images.iter().copied().collect(),
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The mnist-core input for the given rows: pixel k becomes k / 256 (bit-exactly the
    /// floats of the MNIST pickle the core was trained on).
    pub fn inputs(&self, rows: &[usize]) -> Vec<f32> {
        let per = self.images.len() / self.len().max(1);
        rows.iter()
            .flat_map(|&r| self.images[r * per..(r + 1) * per].iter())
            .map(|&k| k as f32 / 256.0)
            .collect()
    }
}
