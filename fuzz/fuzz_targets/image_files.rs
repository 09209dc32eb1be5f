//! Arbitrary bytes as image files (`preprocessing.image`, DESIGN.md G5): decoding and
//! preprocessing must never panic, run away or exhaust memory; they succeed or return an error.
//!
//! The first byte picks a real image of tests/data (a PNG photo, a JPEG photo, an RGBA PNG, a
//! gray digit) and whether the rest replaces it or is XORed onto it (so the fuzzer starts from
//! valid files and explores near them); the second picks the bundle: the RGB photo recipe of
//! `mobilenetv2-imagenet` (resize 256, crop 224) or a gray 28x28 one without a resize.

#![no_main]

use std::sync::OnceLock;

use lethe::core::image::ImageEncoder;
use lethe::Bundle;
use libfuzzer_sys::fuzz_target;

const TEMPLATES: [&[u8]; 4] = [
    include_bytes!("../../tests/data/photo_china.png"),
    include_bytes!("../../tests/data/photo_flower.jpg"),
    include_bytes!("../../tests/data/photo_china_rgba.png"),
    include_bytes!("../../tests/data/digit_7.png"),
];
const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");

struct Fixture {
    _root: tempfile::TempDir,
    rgb: ImageEncoder,
    gray: ImageEncoder,
}

/// `mnist-core` with its preprocessing declared as gray images (manifest version 2).
fn gray_bundle(dir: &std::path::Path) -> Bundle {
    let src = std::path::Path::new(MODELS).join("mnist-core");
    std::fs::copy(src.join("core.onnx"), dir.join("core.onnx")).unwrap();
    let manifest = std::fs::read_to_string(src.join("manifest.json")).unwrap();
    let start = manifest.find("\"preprocessing\": \"").unwrap();
    let end = start + manifest[start..].find("\",\n").unwrap() + 2;
    let declared = r#""preprocessing": {"description": "gray digits", "image": {"input": "image", "channels": "gray", "divide_by": 256.0, "resize_shorter_side": null, "filter": "bilinear", "mean": [0.0], "std": [1.0]}},"#;
    let manifest = format!("{}{declared}{}", &manifest[..start], &manifest[end..])
        .replacen("\"version\": 1", "\"version\": 2", 1);
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    Bundle::open(dir).unwrap()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let rgb = Bundle::open(std::path::Path::new(MODELS).join("mobilenetv2-imagenet")).unwrap();
        let gray = gray_bundle(root.path());
        Fixture {
            rgb: ImageEncoder::open(&rgb).unwrap(),
            gray: ImageEncoder::open(&gray).unwrap(),
            _root: root,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [select, bundle, bytes @ ..] = data else {
        return;
    };
    let f = fixture();
    let file = match TEMPLATES.get((select & 0x7f) as usize % (TEMPLATES.len() + 1)) {
        Some(template) if select & 0x80 != 0 => {
            let mut out = template.to_vec();
            for (o, b) in out.iter_mut().zip(bytes) {
                *o ^= b;
            }
            out
        }
        Some(template) => {
            let mut out = template.to_vec();
            let at = bytes.first().map_or(0, |&b| usize::from(b) * out.len() / 256);
            out.truncate(at.max(1));
            out.extend_from_slice(bytes.get(1..).unwrap_or_default());
            out
        }
        None => bytes.to_vec(),
    };
    let encoder = if bundle & 1 == 0 { &f.rgb } else { &f.gray };
    if let Ok(values) = encoder.values(&file) {
        assert_eq!(values.len(), encoder.sample_len());
    }
});
