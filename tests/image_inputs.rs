//! Image files as inputs: Lethe's preprocessing (`preprocessing.image`, src/core/image.rs)
//! against an independent reference, Pillow (tests/py/image_reference.py), on real photos and a
//! real MNIST digit; the core's features on them against Python ONNX Runtime; a gray bundle;
//! and hostile or unusable files, each a clear error.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array2, Array3, ArrayD};
use ndarray_npy::read_npy;
use serde_json::{json, Value};

use lethe::bundle::ImageChannels;
use lethe::core::image::{decode, resized_size, ImageEncoder, Pixels};
use lethe::{Bundle, Core};

/// Lethe vs Pillow on the same pixels: max abs difference of the preprocessed values.
const PREPROCESS_TOL: f32 = 1e-6;
/// Rust vs Python ONNX Runtime: max abs difference / max abs reference value.
const PARITY_REL_TOL: f64 = 1e-5;

const MOBILENET: &str = "mobilenetv2-imagenet";
const JPEG: &str = "photo_flower.jpg";
const PNGS: [&str; 3] = ["photo_china.png", "photo_china_rgba.png", "digit_7.png"];

fn data(name: &str) -> PathBuf {
    common::repo_root().join("tests/data").join(name)
}

/// What Pillow made of `files` for the bundle at `bundle`.
struct Reference {
    _dir: tempfile::TempDir,
    pixels: Vec<Array3<u8>>,
    inputs: Vec<Array3<f32>>,
    features: Option<Array2<f32>>,
}

fn reference(bundle: &Path, files: &[PathBuf], features: Option<&str>) -> Reference {
    let dir = common::temp_dir();
    let mut cmd = Command::new(common::python());
    cmd.arg(common::repo_root().join("tests/py/image_reference.py"))
        .arg("--bundle")
        .arg(bundle)
        .arg("--out-dir")
        .arg(dir.path());
    if let Some(name) = features {
        cmd.args(["--features", name]);
    }
    let out = cmd.args(files).output().expect("run python");
    assert!(
        out.status.success(),
        "image_reference.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: String| dir.path().join(name);
    Reference {
        pixels: (0..files.len())
            .map(|i| read_npy(read(format!("pixels_{i}.npy"))).unwrap())
            .collect(),
        inputs: (0..files.len())
            .map(|i| read_npy(read(format!("input_{i}.npy"))).unwrap())
            .collect(),
        features: features.map(|_| read_npy(read("features.npy".into())).unwrap()),
        _dir: dir,
    }
}

fn pixels_of(array: &Array3<u8>) -> Pixels {
    let (h, w, c) = array.dim();
    Pixels {
        width: w,
        height: h,
        channels: c,
        data: array.iter().copied().collect::<Vec<u8>>().into(),
    }
}

fn max_abs_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Decoded pixels: PNG bit for bit equal to Pillow's; JPEG within what two decoders (the
/// `image` crate's and Pillow's libjpeg-turbo) are allowed to differ by.
#[test]
fn decoded_pixels_match_pillow() {
    let bundle = common::bundle_dir(MOBILENET);
    let files: Vec<PathBuf> = PNGS.iter().chain([&JPEG]).map(|f| data(f)).collect();
    let theirs = reference(&bundle, &files, None);
    for (path, reference) in files.iter().zip(&theirs.pixels) {
        let ours = decode(&fs::read(path).unwrap(), ImageChannels::Rgb).unwrap();
        let (h, w, c) = reference.dim();
        assert_eq!(
            (ours.height, ours.width, ours.channels),
            (h, w, c),
            "{path:?}"
        );
        let reference = reference.as_slice().unwrap();
        if path.extension().unwrap() == "png" {
            assert!(
                *ours.data == reference,
                "{path:?}: pixels differ from Pillow's"
            );
        } else {
            let diffs: Vec<u32> = ours
                .data
                .iter()
                .zip(reference)
                .map(|(a, b)| u32::from(a.abs_diff(*b)))
                .collect();
            let max = diffs.iter().max().copied().unwrap();
            let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
            println!("{path:?}: JPEG decoders differ by max {max}, mean {mean:.3} levels");
            assert!(mean <= 0.05 && max <= 4, "{path:?}: max {max}, mean {mean}");
        }
    }
}

/// From the same decoded pixels, Lethe's preprocessing equals Pillow's BILINEAR resampling
/// of float images (downscaling the JPEG photo, upscaling the PNG photos and the digit); from
/// the PNG files themselves too; and the core's features on the PNG files equal Python ONNX
/// Runtime's on Pillow's inputs.
#[test]
fn preprocessing_and_features_match_pillow_and_onnx_runtime() {
    let bundle = common::bundle_dir(MOBILENET);
    let files: Vec<PathBuf> = PNGS.iter().chain([&JPEG]).map(|f| data(f)).collect();
    let theirs = reference(&bundle, &files, Some("features"));
    let core = Core::open(&bundle, &Default::default()).unwrap();
    let encoder = core
        .image()
        .expect("the bundle declares its image preprocessing");
    for (i, path) in files.iter().enumerate() {
        let ours = encoder.preprocess(&pixels_of(&theirs.pixels[i])).unwrap();
        let reference = theirs.inputs[i].as_slice().unwrap();
        let diff = max_abs_diff(&ours, reference);
        println!("{path:?}: {diff:e} from Pillow");
        assert!(diff <= PREPROCESS_TOL, "{path:?}: {diff:e} from Pillow");
        if path.extension().unwrap() == "png" {
            let ours = encoder.values(&fs::read(path).unwrap()).unwrap();
            let diff = max_abs_diff(&ours, reference);
            assert!(diff <= PREPROCESS_TOL, "{path:?} as a file: {diff:e}");
        }
    }
    let pngs: Vec<Vec<u8>> = files[..PNGS.len()]
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    let refs: Vec<&[u8]> = pngs.iter().map(Vec::as_slice).collect();
    let out = core.run_images(&refs, &["features"]).unwrap();
    let features = theirs.features.unwrap();
    let rel = common::max_rel_diff(
        out.get("features").unwrap().view(),
        features.slice(ndarray::s![..PNGS.len(), ..]),
    );
    assert!(rel <= PARITY_REL_TOL, "features vs Python: {rel:e}");
}

/// `mnist-core` given declared gray preprocessing (manifest version 2, byte / 256, no resize):
/// a real digit's PNG gives exactly the test set's input; a color photo is reduced to
/// Pillow's luma, centre-cropped, and (with a resize) downscaled as Pillow does.
#[test]
fn a_gray_bundle_takes_digits_and_photos() {
    let dir = common::temp_dir();
    let gray = gray_mnist_bundle(dir.path(), None);
    let core = Core::open(&gray, &Default::default()).unwrap();
    let encoder = core.image().unwrap();

    let digit = encoder
        .values(&fs::read(data("digit_7.png")).unwrap())
        .unwrap();
    let labels: ArrayD<u8> = read_npy(data("test_labels.npy")).unwrap();
    let seven = labels.iter().position(|&l| l == 7).unwrap();
    let inputs = common::mnist_core_input(seven + 1);
    let expected = inputs.index_axis(ndarray::Axis(0), seven);
    assert_eq!(
        digit.as_slice(),
        expected.as_slice().unwrap(),
        "digit_7.png is not byte / 256 of the test set's digit"
    );

    let photo = data("photo_china.png");
    let theirs = reference(&gray, std::slice::from_ref(&photo), None);
    let ours = decode(&fs::read(&photo).unwrap(), ImageChannels::Gray).unwrap();
    assert!(
        *ours.data == theirs.pixels[0].as_slice().unwrap(),
        "luma differs from Pillow's"
    );
    let values = encoder.values(&fs::read(&photo).unwrap()).unwrap();
    assert!(max_abs_diff(&values, theirs.inputs[0].as_slice().unwrap()) <= PREPROCESS_TOL);

    let resized = gray_mnist_bundle(&dir.path().join("resized"), Some(28));
    let theirs = reference(&resized, std::slice::from_ref(&photo), None);
    let core = Core::open(&resized, &Default::default()).unwrap();
    let values = core
        .image()
        .unwrap()
        .values(&fs::read(&photo).unwrap())
        .unwrap();
    let diff = max_abs_diff(&values, theirs.inputs[0].as_slice().unwrap());
    assert!(diff <= PREPROCESS_TOL, "a 6.4x downscale: {diff:e}");
}

/// A copy of `mnist-core` whose manifest (version 2) declares gray image preprocessing.
fn gray_mnist_bundle(dst: &Path, resize: Option<u32>) -> PathBuf {
    fs::create_dir_all(dst).unwrap();
    let src = common::bundle_dir("mnist-core");
    fs::copy(src.join("core.onnx"), dst.join("core.onnx")).unwrap();
    let mut m: Value =
        serde_json::from_str(&fs::read_to_string(src.join("manifest.json")).unwrap()).unwrap();
    m["version"] = json!(2);
    m["preprocessing"] = json!({
        "description": "gray 28x28 digit, byte / 256",
        "image": {
            "input": "image",
            "channels": "gray",
            "divide_by": 256.0,
            "resize_shorter_side": resize,
            "filter": "bilinear",
            "mean": [0.0],
            "std": [1.0]
        }
    });
    fs::write(
        dst.join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    dst.to_path_buf()
}

/// A PNG of `width × height` 8-bit RGB whose header is valid and whose data is absent.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

/// CRC-32 (ISO-HDLC), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Files that are not usable images: each an invalid-input error that says why, never a panic
/// or an exhausted machine; in a batch, the error names the image.
#[test]
fn unusable_image_files_are_clear_errors() {
    let core = Core::open(common::bundle_dir(MOBILENET), &Default::default()).unwrap();
    let encoder = core.image().unwrap();
    let png = fs::read(data("photo_china.png")).unwrap();
    let jpeg = fs::read(data(JPEG)).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("an empty file", vec![], "not a PNG or JPEG"),
        ("text", b"hello, world\n".to_vec(), "not a PNG or JPEG"),
        (
            "a GIF",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
            "PNG and JPEG files only",
        ),
        (
            "a BMP",
            b"BM\x1e\x00\x00\x00\x00\x00\x00\x00".to_vec(),
            "PNG and JPEG files only",
        ),
        ("a truncated PNG", png[..png.len() / 2].to_vec(), "decoding"),
        ("a PNG header alone", png[..33].to_vec(), "decoding"),
        (
            "a PNG over the side limit",
            png_header(40_000, 8),
            "decoding",
        ),
        (
            "a PNG over the memory limit",
            png_header(30_000, 30_000),
            "decoding",
        ),
        ("a JPEG header alone", jpeg[..20].to_vec(), "decoding"),
    ];
    for (what, bytes, says) in &cases {
        let message = common::invalid_input(encoder.values(bytes), what);
        assert!(message.contains(says), "{what}: {message:?} lacks {says:?}");
    }
    // Damaged JPEG data may still decode (JPEG decoders conceal errors): never a panic.
    for at in [jpeg.len() / 3, jpeg.len() / 2, jpeg.len() - 10] {
        let mut damaged = jpeg.clone();
        damaged[at..at + 8].fill(0xFF);
        let _ = encoder.values(&damaged);
        let _ = encoder.values(&jpeg[..at]);
    }
    // Strips resize to billions of pixels (1 x 20 000 to 256 x 5 120 000): only the crop is
    // computed, fast and in little memory, and it is the strip's middle, scaled up.
    for (w, h) in [(1, 20_000), (20_000, 1)] {
        let strip = image_png(w, h);
        let values = encoder.values(&strip).unwrap();
        assert_eq!(values.len(), 3 * 224 * 224);
        assert!(values.iter().all(|v| v.is_finite()), "{w}x{h}");
    }
    let message = common::invalid_input(core.encode_images(&[&png, b"GIF89a"]), "a batch");
    assert!(message.starts_with("image 1: "), "{message}");

    let dir = common::temp_dir();
    let gray = Core::open(gray_mnist_bundle(dir.path(), None), &Default::default()).unwrap();
    let small = image_png(20, 20);
    let message = common::invalid_input(gray.image().unwrap().values(&small), "a 20x20 image");
    assert!(
        message.contains("smaller than the 28x28 input"),
        "{message}"
    );

    let mnist = Core::open(common::bundle_dir("mnist-core"), &Default::default()).unwrap();
    let message = common::invalid_input(mnist.encode_images(&[&png]), "a bundle without images");
    assert!(message.contains("does not take image files"), "{message}");
    assert!(mnist.image().is_none());
}

/// A valid gray PNG of `width × height`, encoded by the `image` crate's own dependency-free
/// path: a stored (uncompressed) zlib stream.
fn image_png(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0);
        raw.extend((0..width).map(|x| ((x * 7 + y * 3) % 256) as u8));
    }
    let mut zlib = vec![0x78, 0x01, 1];
    let len = raw.len() as u16;
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(&raw);
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], body: &[u8]| {
        png.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend_from_slice(body);
        png.extend_from_slice(&typed);
        png.extend_from_slice(&crc32(&typed).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &zlib);
    chunk(b"IEND", &[]);
    png
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// torchvision's output size: the shorter side becomes `side`, the longer one is truncated.
#[test]
fn resized_sizes_follow_torchvision() {
    assert_eq!(resized_size(640, 427, 256), (383, 256));
    assert_eq!(resized_size(427, 640, 256), (256, 383));
    assert_eq!(resized_size(240, 180, 256), (341, 256));
    assert_eq!(resized_size(300, 300, 256), (256, 256));
    assert_eq!(resized_size(28, 28, 256), (256, 256));
}

/// The shipped image bundle declares its preprocessing; bundle checks accept it.
#[test]
fn the_image_bundle_declares_its_preprocessing() {
    let bundle = Bundle::open(common::bundle_dir(MOBILENET)).unwrap();
    let spec = bundle.manifest.preprocessing.image().unwrap();
    assert_eq!(spec.resize_shorter_side, Some(256));
    assert_eq!(spec.channels, ImageChannels::Rgb);
    let encoder = ImageEncoder::open(&bundle).unwrap();
    assert_eq!(encoder.sample_len(), 3 * 224 * 224);
}
