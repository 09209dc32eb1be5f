//! An image bundle's preprocessing: PNG and JPEG files to the core's input, as the manifest's
//! `preprocessing.image` says (see [`ImageSpec`] for each step and its exact arithmetic).
//!
//! Decoding uses the `image` crate (PNG and JPEG only, with limits on size and memory so that a
//! hostile file is an error, not an exhausted machine). The resize is Lethe's own, in f64 sums
//! of f32 values, so that its output is a documented function of the pixels: Pillow's
//! `BILINEAR` resampling of a float image computes the same function (tests/image_inputs.rs
//! compares them on real photos).
//!
//! Every buffer Lethe fills with pixels or values is zeroized when dropped (G4). What the
//! decoders allocate while they decode is freed without being zeroized, like ONNX Runtime's
//! arena: outside G4.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use zeroize::Zeroizing;

use crate::bundle::tensor::{DType, Tensor};
use crate::bundle::{Bundle, ImageChannels, ImageSpec, ResizeFilter};
use crate::error::{Error, Result};

/// The longest side of an image Lethe decodes.
pub const MAX_IMAGE_SIDE: u32 = 1 << 15;
/// The most memory a decoder may allocate for one image (a 50-megapixel RGB photo takes 150
/// MB). Preprocessing adds only the crop's rows: the resized image is never held.
pub const MAX_IMAGE_BYTES: u64 = 512 << 20;

/// Decoded 8-bit pixels, interleaved by channel (`height × width × channels`, row-major),
/// zeroized when dropped.
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    /// 1 (gray) or 3 (R, G, B).
    pub channels: usize,
    pub data: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Pixels {
    // Never the values: they are a user's data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pixels")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// The preprocessing of an image bundle, from its manifest.
#[derive(Debug, Clone)]
pub struct ImageEncoder {
    spec: ImageSpec,
    /// The input's height and width.
    height: usize,
    width: usize,
}

impl ImageEncoder {
    /// The preprocessing of `bundle`, or `None` when it declares none (its manifest was
    /// validated when it was opened: one float32 input `[null, channels, height, width]`).
    pub fn open(bundle: &Bundle) -> Option<ImageEncoder> {
        let spec = bundle.manifest.preprocessing.image()?.clone();
        let shape = bundle.input_shape(1);
        Some(ImageEncoder {
            spec,
            height: shape[2],
            width: shape[3],
        })
    }

    /// The number of f32 values of one preprocessed image (`channels × height × width`).
    pub fn sample_len(&self) -> usize {
        self.spec.channels.count() * self.height * self.width
    }

    /// The core's input for the encoded images `files` (PNG or JPEG bytes): one float32 tensor
    /// `[n, channels, height, width]`. An error names the image by its index.
    pub fn encode(&self, files: &[&[u8]]) -> Result<Vec<Tensor<'static>>> {
        let images = files
            .iter()
            .enumerate()
            .map(|(i, file)| {
                self.values(file)
                    .map_err(|e| about(e, &format!("image {i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(vec![self.batch(&images)])
    }

    /// The input tensor `[n, channels, height, width]` of n images' values (each from
    /// [`ImageEncoder::values`]).
    pub fn batch(&self, images: &[Zeroizing<Vec<f32>>]) -> Tensor<'static> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(images.len() * self.sample_len() * 4));
        for v in images.iter().flat_map(|values| values.iter()) {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        let shape = [
            images.len(),
            self.spec.channels.count(),
            self.height,
            self.width,
        ];
        Tensor::owned(
            self.spec.input.clone(),
            DType::Float32,
            &shape,
            std::mem::take(&mut *bytes),
        )
    }

    /// One image file's input values (`channels × height × width`, channel-major).
    pub fn values(&self, file: &[u8]) -> Result<Zeroizing<Vec<f32>>> {
        self.preprocess(&decode(file, self.spec.channels)?)
    }

    /// Decoded pixels to the input's values: scale, resize, centre crop, normalize.
    pub fn preprocess(&self, pixels: &Pixels) -> Result<Zeroizing<Vec<f32>>> {
        let channels = self.spec.channels.count();
        if pixels.channels != channels {
            return Err(Error::InvalidInput(format!(
                "pixels with {} channels for an input of {channels}",
                pixels.channels
            )));
        }
        let (w, h) = (pixels.width, pixels.height);
        let len = w.checked_mul(h).and_then(|p| p.checked_mul(channels));
        if w == 0 || h == 0 || len != Some(pixels.data.len()) {
            return Err(Error::InvalidInput(format!(
                "{} pixel bytes for a {w}x{h} image of {channels} channels",
                pixels.data.len()
            )));
        }
        let (rw, rh) = match self.spec.resize_shorter_side {
            Some(side) => resized_size(w, h, side as usize),
            None => (w, h),
        };
        if rw < self.width || rh < self.height {
            return Err(Error::InvalidInput(format!(
                "a {w}x{h} image{} is smaller than the {}x{} input",
                if (rw, rh) == (w, h) {
                    String::new()
                } else {
                    format!(" (resized to {rw}x{rh})")
                },
                self.width,
                self.height
            )));
        }
        let top = centre_offset(rh, self.height);
        let left = centre_offset(rw, self.width);
        // Only the crop is computed: the resized image itself can be far larger than the input
        // (a 1 x 30 000 strip becomes 256 x 7 680 000), and is never held.
        let (columns, rows) = match self.spec.filter {
            ResizeFilter::Bilinear => (
                Taps::bilinear(w, rw, left..left + self.width),
                Taps::bilinear(h, rh, top..top + self.height),
            ),
        };
        let divide_by = self.spec.divide_by;
        let (first_row, last_row) = rows.span();
        let mut out = Zeroizing::new(Vec::with_capacity(self.sample_len()));
        // The input rows the crop needs, each resampled to the crop's columns.
        let mut band = Zeroizing::new(vec![0f32; (last_row - first_row) * self.width]);
        for c in 0..channels {
            let value = |x: usize, y: usize| f32::from(pixels.data[(y * w + x) * channels + c]);
            for (y, row) in (first_row..last_row).zip(band.chunks_exact_mut(self.width)) {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = columns.apply(j, |x| value(x, y) / divide_by);
                }
            }
            let (mean, std) = (self.spec.mean[c], self.spec.std[c]);
            for i in 0..self.height {
                for j in 0..self.width {
                    let v = rows.apply(i, |y| band[(y - first_row) * self.width + j]);
                    out.push((v - mean) / std);
                }
            }
        }
        Ok(out)
    }
}

/// `e`, its message prefixed by `what` (e.g. the image's index or path) when it is about the
/// input.
pub fn about(e: Error, what: &str) -> Error {
    match e {
        Error::InvalidInput(message) => Error::InvalidInput(format!("{what}: {message}")),
        other => other,
    }
}

/// Decodes a PNG or JPEG file to 8-bit pixels with the channels of `channels`: alpha dropped,
/// gray replicated into R, G and B, or R, G, B reduced to ITU-R 601-2 luma with Pillow's
/// rounding, `(19595·R + 38470·G + 7471·B + 2^15) >> 16`. 16-bit images are reduced to 8 bits
/// by the `image` crate (rounding v · 255 / 65535).
pub fn decode(file: &[u8], channels: ImageChannels) -> Result<Pixels> {
    let bad = |message: String| Error::InvalidInput(message);
    let mut reader = ImageReader::new(Cursor::new(file))
        .with_guessed_format()
        .map_err(|e| bad(format!("reading the image failed: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(bad(format!(
                "a {other:?} image: Lethe decodes PNG and JPEG files only"
            )))
        }
        None => {
            return Err(bad(format!(
                "not a PNG or JPEG file (it starts with {:02x?})",
                &file[..file.len().min(8)]
            )))
        }
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| bad(format!("decoding the image failed: {e}")))?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    let gray_source = !image.color().has_color();
    let data = match (channels, gray_source) {
        (ImageChannels::Rgb, _) => Zeroizing::new(rgb8(image)),
        (ImageChannels::Gray, true) => Zeroizing::new(match image {
            DynamicImage::ImageLuma8(buffer) => buffer.into_raw(),
            other => converted(other, DynamicImage::to_luma8),
        }),
        (ImageChannels::Gray, false) => {
            let rgb = Zeroizing::new(rgb8(image));
            Zeroizing::new(rgb.chunks_exact(3).map(luma).collect())
        }
    };
    Ok(Pixels {
        width,
        height,
        channels: channels.count(),
        data,
    })
}

/// The image's R, G, B bytes: its own buffer when it is 8-bit RGB already (no copy), else a
/// conversion.
fn rgb8(image: DynamicImage) -> Vec<u8> {
    match image {
        DynamicImage::ImageRgb8(buffer) => buffer.into_raw(),
        other => converted(other, DynamicImage::to_rgb8),
    }
}

/// `convert(&image)`'s bytes; the decoded image's own bytes are zeroized.
fn converted<P: image::Pixel<Subpixel = u8>>(
    image: DynamicImage,
    convert: impl Fn(&DynamicImage) -> image::ImageBuffer<P, Vec<u8>>,
) -> Vec<u8> {
    let out = convert(&image).into_raw();
    drop(Zeroizing::new(image.into_bytes()));
    out
}

/// ITU-R 601-2 luma of an R, G, B pixel, rounded as Pillow rounds it.
fn luma(rgb: &[u8]) -> u8 {
    let l = 19595 * u32::from(rgb[0]) + 38470 * u32::from(rgb[1]) + 7471 * u32::from(rgb[2]);
    ((l + 0x8000) >> 16) as u8
}

/// The size after resizing `w × h` so that its shorter side is `side`: the longer side is
/// `floor(side · long / short)` (torchvision's rule; a square stays square).
pub fn resized_size(w: usize, h: usize, side: usize) -> (usize, usize) {
    let long =
        |long: usize, short: usize| (side.saturating_mul(long) as f64 / short as f64) as usize;
    if w <= h {
        (side, long(h, w))
    } else {
        (long(w, h), side)
    }
}

/// The offset of a centred crop of `crop` out of `size`: `round((size − crop) / 2)`, halves to
/// even (Python's `round`, which torchvision's centre crop uses).
fn centre_offset(size: usize, crop: usize) -> usize {
    ((size - crop) as f64 / 2.0).round_ties_even() as usize
}

/// One axis's resampling to the output pixels `range` of `n_out`: for the range's i-th output
/// pixel, the input pixels `start[i]..start[i] + len[i]` with their weights. When the size
/// does not change, each output pixel is its input pixel (the reference skips such a pass).
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `width` weights per output pixel (zero past `len`).
    weights: Vec<f64>,
    width: usize,
}

impl Taps {
    /// The triangle filter from `n_in` pixels to `n_out`, widened by the scale when shrinking,
    /// centres at half-integers, weights normalized over the taps inside the image.
    fn bilinear(n_in: usize, n_out: usize, range: std::ops::Range<usize>) -> Taps {
        if n_in == n_out {
            let start: Vec<usize> = range.collect();
            return Taps {
                len: vec![1; start.len()],
                weights: vec![1.0; start.len()],
                width: 1,
                start,
            };
        }
        let scale = n_in as f64 / n_out as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale;
        let inverse = 1.0 / filter_scale;
        let width = support.ceil() as usize * 2 + 1;
        let count = range.len();
        let mut taps = Taps {
            start: Vec::with_capacity(count),
            len: Vec::with_capacity(count),
            weights: vec![0.0; count * width],
            width,
        };
        for (k, i) in range.enumerate() {
            let centre = (i as f64 + 0.5) * scale;
            // Truncation toward zero, then clamping, as the reference does.
            let start = ((centre - support + 0.5) as i64).max(0) as usize;
            let end = ((centre + support + 0.5) as i64).min(n_in as i64) as usize;
            let len = end - start;
            let w = &mut taps.weights[k * width..k * width + len];
            let mut total = 0.0;
            for (j, w) in w.iter_mut().enumerate() {
                let x = (((start + j) as f64 - centre + 0.5) * inverse).abs();
                *w = if x < 1.0 { 1.0 - x } else { 0.0 };
                total += *w;
            }
            if total != 0.0 {
                w.iter_mut().for_each(|w| *w /= total);
            }
            taps.start.push(start);
            taps.len.push(len);
        }
        taps
    }

    /// The input pixels any output pixel reads: `first..last`.
    fn span(&self) -> (usize, usize) {
        let first = self.start.iter().copied().min().unwrap_or(0);
        let last = self
            .start
            .iter()
            .zip(&self.len)
            .map(|(s, l)| s + l)
            .max()
            .unwrap_or(0);
        (first, last)
    }

    /// Output pixel k (of the range) from the input read by `at(x)` for input pixel x: the
    /// weighted sum in f64, stored in f32 (a single weight of 1 gives the pixel exactly).
    fn apply(&self, k: usize, at: impl Fn(usize) -> f32) -> f32 {
        let start = self.start[k];
        let w = &self.weights[k * self.width..k * self.width + self.len[k]];
        let mut sum = 0.0f64;
        for (j, w) in w.iter().enumerate() {
            sum += f64::from(at(start + j)) * w;
        }
        sum as f32
    }
}
