//! Bundles: the two shipped bundles open and match their graphs; every manifest field that
//! `Bundle::open` validates is rejected with an error naming that field; a core file that does
//! not match its sha256, or a graph that does not match the manifest, is rejected too (G5).

mod common;

use std::fs;
use std::path::Path;

use lethe::{Bundle, Core, CoreOptions, Error};
use serde_json::{json, Value};

/// The `field` that serde parse errors (unknown, missing, mistyped fields) are reported under.
const PARSE_FIELD: &str = "manifest.json";

/// Copies a bundle's `core.onnx` and `manifest.json` into `dst`.
fn copy_bundle(name: &str, dst: &Path) {
    let src = common::bundle_dir(name);
    for file in ["core.onnx", "manifest.json"] {
        fs::copy(src.join(file), dst.join(file)).expect("copy the bundle");
    }
}

fn read_manifest(dir: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest(dir: &Path, manifest: &Value) {
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(manifest).unwrap(),
    )
    .unwrap();
}

/// The (field, message) of an `Error::Manifest`; panics on success or any other error.
fn manifest_error<T>(result: lethe::Result<T>, what: &str) -> (String, String) {
    match result {
        Ok(_) => panic!("{what}: accepted, expected a manifest error"),
        Err(Error::Manifest { field, message, .. }) => (field, message),
        Err(e) => panic!("{what}: expected Error::Manifest, got {e:?}"),
    }
}

fn object(value: &mut Value) -> &mut serde_json::Map<String, Value> {
    value.as_object_mut().expect("a JSON object")
}

#[test]
fn shipped_bundles_open_and_match_their_graphs() {
    let mnist = Core::open(common::bundle_dir("mnist-core"), &CoreOptions::default())
        .expect("mnist-core opens");
    let b = mnist.bundle();
    let m = &b.manifest;
    assert_eq!(m.name, "mnist-core");
    assert_eq!(m.inputs[0].name, "image");
    assert_eq!(m.inputs[0].shape, vec![None, Some(1), Some(28), Some(28)]);
    assert_eq!(b.input_len(), 28 * 28);
    assert_eq!(mnist.input_len(), 28 * 28);
    assert_eq!(m.default_features, "features");
    let default = b.features(None).unwrap();
    assert_eq!((default.output.as_str(), default.dim), ("features", 128));
    let conv = b.features(Some("conv_features")).unwrap();
    assert_eq!(conv.dim, 3136);
    let logits = m.core_logits.as_ref().expect("mnist-core has core logits");
    assert_eq!(logits.output, "logits");
    assert_eq!(logits.classes, vec![0, 1, 2, 3, 4]);
    assert_eq!(m.classes.len(), 10);
    assert_eq!(
        (m.head.lambda, m.head.target_scale, m.head.frac_bits),
        (10.0, 16.0, 15)
    );
    assert!(matches!(
        b.features(Some("logits")),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(
        b.core_sha256(),
        "1701680c16a8e3f7b71125d742109b682429f35f31f3317ad1400ba24a41e216"
    );

    let mobilenet = Core::open(
        common::bundle_dir("mobilenetv2-imagenet"),
        &CoreOptions::default(),
    )
    .expect("mobilenetv2-imagenet opens");
    let b = mobilenet.bundle();
    let m = &b.manifest;
    assert_eq!(m.name, "mobilenetv2-imagenet");
    assert_eq!(m.inputs[0].shape, vec![None, Some(3), Some(224), Some(224)]);
    assert_eq!(b.input_len(), 3 * 224 * 224);
    assert_eq!(m.default_features, "features");
    assert_eq!(b.features(None).unwrap().dim, 1280);
    assert_eq!(m.features.len(), 1);
    assert!(m.core_logits.is_none());
    assert_eq!(m.classes.len(), 10);
    assert_eq!(
        (m.head.lambda, m.head.target_scale, m.head.frac_bits),
        (1.0, 1.0, 21)
    );
}

/// An edit of a manifest's JSON.
type Edit = fn(&mut Value);

/// One manifest edit and the field its error must name (`mentions`: a substring of the message).
struct Case {
    what: &'static str,
    edit: Edit,
    field: &'static str,
    mentions: Option<&'static str>,
}

const fn case(what: &'static str, edit: Edit, field: &'static str) -> Case {
    Case {
        what,
        edit,
        field,
        mentions: None,
    }
}

const fn parse_case(what: &'static str, edit: Edit, mentions: &'static str) -> Case {
    Case {
        what,
        edit,
        field: PARSE_FIELD,
        mentions: Some(mentions),
    }
}

fn invalid_manifests() -> Vec<Case> {
    vec![
        case(
            "wrong format",
            |m| m["format"] = json!("onnx-bundle"),
            "format",
        ),
        case("version 3", |m| m["version"] = json!(3), "version"),
        case(
            "version 2 with a version-1 preprocessing string",
            |m| m["version"] = json!(2),
            "preprocessing",
        ),
        case(
            "a version-2 preprocessing object in version 1",
            |m| m["preprocessing"] = json!({"description": "pixels / 256"}),
            "preprocessing",
        ),
        case(
            "a named axis in version 1",
            |m| m["inputs"][0]["shape"] = json!([null, 1, "height", 28]),
            "inputs[0].shape",
        ),
        case(
            "an int64 input in version 1",
            |m| m["inputs"][0]["dtype"] = json!("int64"),
            "inputs[0].dtype",
        ),
        case("version 0", |m| m["version"] = json!(0), "version"),
        case(
            "empty core.file",
            |m| m["core"]["file"] = json!(""),
            "core.file",
        ),
        case(
            "core.file outside the bundle",
            |m| m["core"]["file"] = json!("../mnist-core/core.onnx"),
            "core.file",
        ),
        case(
            "absolute core.file",
            |m| m["core"]["file"] = json!("/tmp/core.onnx"),
            "core.file",
        ),
        case(
            "core.file ..",
            |m| m["core"]["file"] = json!(".."),
            "core.file",
        ),
        case(
            "core.file .",
            |m| m["core"]["file"] = json!("."),
            "core.file",
        ),
        case(
            "core.file with a trailing slash",
            |m| m["core"]["file"] = json!("core.onnx/"),
            "core.file",
        ),
        case(
            "an empty class name",
            |m| m["classes"][3] = json!(""),
            "classes[3]",
        ),
        case(
            "a class listed twice",
            |m| m["classes"][4] = json!("1"),
            "classes[4]",
        ),
        case(
            "core.file in a subfolder",
            |m| m["core"]["file"] = json!("sub/core.onnx"),
            "core.file",
        ),
        case(
            "uppercase sha256",
            |m| {
                let upper = m["core"]["sha256"].as_str().unwrap().to_uppercase();
                m["core"]["sha256"] = json!(upper);
            },
            "core.sha256",
        ),
        case(
            "short sha256",
            |m| m["core"]["sha256"] = json!("1701680c16a8e3f7"),
            "core.sha256",
        ),
        case(
            "non-hex sha256",
            |m| m["core"]["sha256"] = json!("g".repeat(64)),
            "core.sha256",
        ),
        case("no inputs", |m| m["inputs"] = json!([]), "inputs"),
        case(
            "two inputs",
            |m| {
                let input = m["inputs"][0].clone();
                m["inputs"].as_array_mut().unwrap().push(input);
            },
            "inputs",
        ),
        case(
            "empty input name",
            |m| m["inputs"][0]["name"] = json!(""),
            "inputs[0].name",
        ),
        case(
            "float64 input",
            |m| m["inputs"][0]["dtype"] = json!("float64"),
            "inputs[0].dtype",
        ),
        case(
            "fixed batch axis",
            |m| m["inputs"][0]["shape"] = json!([1, 1, 28, 28]),
            "inputs[0].shape",
        ),
        case(
            "empty shape",
            |m| m["inputs"][0]["shape"] = json!([]),
            "inputs[0].shape",
        ),
        case(
            "second dynamic axis",
            |m| m["inputs"][0]["shape"] = json!([null, 1, null, 28]),
            "inputs[0].shape",
        ),
        case(
            "zero axis",
            |m| m["inputs"][0]["shape"] = json!([null, 1, 0, 28]),
            "inputs[0].shape",
        ),
        case("no features", |m| m["features"] = json!([]), "features"),
        case(
            "empty features output",
            |m| m["features"][0]["output"] = json!(""),
            "features[0].output",
        ),
        case(
            "zero features dim",
            |m| m["features"][1]["dim"] = json!(0),
            "features[1].dim",
        ),
        case(
            "zero max_abs",
            |m| m["features"][0]["max_abs"] = json!(0.0),
            "features[0].max_abs",
        ),
        case(
            "negative max_abs",
            |m| m["features"][1]["max_abs"] = json!(-1.0),
            "features[1].max_abs",
        ),
        case(
            // 512 · 2^15 = 2^24 is the limit; 1024 · 2^15 = 2^25 is beyond it.
            "max_abs beyond the fixed-point range",
            |m| m["features"][0]["max_abs"] = json!(1024.0),
            "features[0].max_abs",
        ),
        case(
            "features listed twice",
            |m| m["features"][1]["output"] = json!("features"),
            "features[1].output",
        ),
        case(
            "unknown default_features",
            |m| m["default_features"] = json!("pooled"),
            "default_features",
        ),
        case(
            "default_features joining an unknown output",
            |m| m["default_features"] = json!("features+pooled"),
            "default_features",
        ),
        case(
            "default_features joining one output twice",
            |m| m["default_features"] = json!("features+features"),
            "default_features",
        ),
        case(
            "a features output whose name has the joining +",
            |m| m["features"][0]["output"] = json!("features+conv_features"),
            "features[0].output",
        ),
        case(
            "default_features naming the core logits",
            |m| m["default_features"] = json!("logits"),
            "default_features",
        ),
        case("no classes", |m| m["classes"] = json!([]), "classes"),
        case(
            "empty core_logits output",
            |m| m["core_logits"]["output"] = json!(""),
            "core_logits.output",
        ),
        case(
            "core_logits output that is also a features output",
            |m| m["core_logits"]["output"] = json!("conv_features"),
            "core_logits.output",
        ),
        case(
            "no core_logits classes",
            |m| m["core_logits"]["classes"] = json!([]),
            "core_logits.classes",
        ),
        case(
            "core_logits class out of range",
            |m| m["core_logits"]["classes"] = json!([0, 1, 2, 3, 10]),
            "core_logits.classes[4]",
        ),
        case(
            "core_logits class listed twice",
            |m| m["core_logits"]["classes"] = json!([0, 1, 1, 3, 4]),
            "core_logits.classes[2]",
        ),
        case(
            "zero lambda",
            |m| m["head"]["lambda"] = json!(0.0),
            "head.lambda",
        ),
        case(
            "negative lambda",
            |m| m["head"]["lambda"] = json!(-10.0),
            "head.lambda",
        ),
        case(
            "zero target_scale",
            |m| m["head"]["target_scale"] = json!(0.0),
            "head.target_scale",
        ),
        case(
            "negative target_scale",
            |m| m["head"]["target_scale"] = json!(-1.0),
            "head.target_scale",
        ),
        case(
            "zero frac_bits",
            |m| m["head"]["frac_bits"] = json!(0),
            "head.frac_bits",
        ),
        case(
            "frac_bits 25",
            |m| m["head"]["frac_bits"] = json!(25),
            "head.frac_bits",
        ),
        case(
            // 128 · 2^18 = 2^25 > 2^24.
            "frac_bits too large for max_abs",
            |m| m["head"]["frac_bits"] = json!(18),
            "features[0].max_abs",
        ),
        case(
            "target_max_abs below target_scale",
            |m| m["head"]["target_max_abs"] = json!(8.0),
            "head.target_max_abs",
        ),
        case(
            // 1024 · 2^15 = 2^25 > 2^24.
            "target_max_abs beyond the fixed-point range",
            |m| m["head"]["target_max_abs"] = json!(1024.0),
            "head.target_max_abs",
        ),
        parse_case(
            "unknown top-level field",
            |m| {
                object(m).insert("labels".into(), json!([]));
            },
            "labels",
        ),
        parse_case(
            "unknown field in head",
            |m| {
                object(&mut m["head"]).insert("momentum".into(), json!(0.9));
            },
            "momentum",
        ),
        parse_case(
            "missing name",
            |m| {
                object(m).remove("name");
            },
            "name",
        ),
        parse_case(
            "missing head.lambda",
            |m| {
                object(&mut m["head"]).remove("lambda");
            },
            "lambda",
        ),
        parse_case(
            "missing features dim",
            |m| {
                object(&mut m["features"][0]).remove("dim");
            },
            "dim",
        ),
        parse_case(
            "version as a string",
            |m| m["version"] = json!("1"),
            "invalid type",
        ),
        parse_case(
            "negative features dim",
            |m| m["features"][0]["dim"] = json!(-128),
            "invalid value",
        ),
    ]
}

#[test]
fn every_validated_manifest_field_is_rejected_by_name() {
    let dir = common::temp_dir();
    copy_bundle("mnist-core", dir.path());
    check_cases(dir.path(), &invalid_manifests());
}

/// The text bundle in `dst`: its manifest and tokenizer copied, its core linked (45 MB).
fn link_text_bundle(dst: &Path) {
    let src = common::bundle_dir(TEXT);
    for file in ["manifest.json", "tokenizer.json"] {
        fs::copy(src.join(file), dst.join(file)).expect("copy the bundle");
    }
    std::os::unix::fs::symlink(src.join("core.onnx"), dst.join("core.onnx")).unwrap();
}

const TEXT: &str = "minilm-l6-sentiment";

/// Version-2 fields, on the text bundle's manifest.
fn invalid_v2_manifests() -> Vec<Case> {
    vec![
        case("no inputs", |m| m["inputs"] = json!([]), "inputs"),
        case(
            "an input listed twice",
            |m| m["inputs"][1]["name"] = json!("input_ids"),
            "inputs[1].name",
        ),
        case(
            "an empty input name",
            |m| m["inputs"][0]["name"] = json!(""),
            "inputs[0].name",
        ),
        case(
            "float64",
            |m| m["inputs"][0]["dtype"] = json!("float64"),
            "inputs[0].dtype",
        ),
        case(
            "a named first axis",
            |m| m["inputs"][0]["shape"] = json!(["seq", "seq"]),
            "inputs[0].shape",
        ),
        case(
            "a second batch axis",
            |m| m["inputs"][1]["shape"] = json!([null, null]),
            "inputs[1].shape",
        ),
        case(
            "an axis of 0",
            |m| m["inputs"][0]["shape"] = json!([null, 0]),
            "inputs[0].shape",
        ),
        case(
            "an uppercase axis name",
            |m| m["inputs"][0]["shape"] = json!([null, "Seq"]),
            "inputs[0].shape",
        ),
        case(
            "an axis named batch",
            |m| m["inputs"][0]["shape"] = json!([null, "batch"]),
            "inputs[0].shape",
        ),
        case(
            "preprocessing as a string",
            |m| m["preprocessing"] = json!("tokenize"),
            "preprocessing",
        ),
        case(
            "an empty description",
            |m| m["preprocessing"]["description"] = json!(""),
            "preprocessing.description",
        ),
        case(
            "a tokenizer outside the bundle",
            |m| m["preprocessing"]["text"]["tokenizer"] = json!("../tokenizer.json"),
            "preprocessing.text.tokenizer",
        ),
        case(
            "the core as the tokenizer",
            |m| m["preprocessing"]["text"]["tokenizer"] = json!("core.onnx"),
            "preprocessing.text.tokenizer",
        ),
        case(
            "a short tokenizer sha256",
            |m| m["preprocessing"]["text"]["tokenizer_sha256"] = json!("be50c362"),
            "preprocessing.text.tokenizer_sha256",
        ),
        case(
            "another file's tokenizer sha256",
            |m| m["preprocessing"]["text"]["tokenizer_sha256"] = json!("0".repeat(64)),
            "preprocessing.text.tokenizer_sha256",
        ),
        case(
            "max_length 0",
            |m| m["preprocessing"]["text"]["max_length"] = json!(0),
            "preprocessing.text.max_length",
        ),
        case(
            "an unmapped core input",
            |m| {
                object(&mut m["preprocessing"]["text"]["inputs"]).remove("attention_mask");
            },
            "preprocessing.text.inputs",
        ),
        case(
            "a mapping for no core input",
            |m| m["preprocessing"]["text"]["inputs"]["token_type_ids"] = json!("type_ids"),
            "preprocessing.text.inputs",
        ),
        case(
            "ids mapped twice",
            |m| m["preprocessing"]["text"]["inputs"]["attention_mask"] = json!("ids"),
            "preprocessing.text.inputs",
        ),
        case(
            "no input receives the ids",
            |m| m["preprocessing"]["text"]["inputs"]["input_ids"] = json!("type_ids"),
            "preprocessing.text.inputs",
        ),
        case(
            "a text input of float32",
            |m| m["inputs"][1]["dtype"] = json!("float32"),
            "preprocessing.text.inputs",
        ),
        case(
            "a text input of fixed length",
            |m| m["inputs"][0]["shape"] = json!([null, 128]),
            "preprocessing.text.inputs",
        ),
        case(
            "text inputs on two axes",
            |m| m["inputs"][1]["shape"] = json!([null, "len"]),
            "preprocessing.text.inputs",
        ),
        parse_case(
            "an unknown padding",
            |m| m["preprocessing"]["text"]["padding"] = json!("left"),
            "max_length",
        ),
        parse_case(
            "an unknown encoding field",
            |m| m["preprocessing"]["text"]["inputs"]["input_ids"] = json!("tokens"),
            "attention_mask",
        ),
        parse_case(
            "an unknown field in text",
            |m| m["preprocessing"]["text"]["lowercase"] = json!(true),
            "lowercase",
        ),
        parse_case(
            "a negative pad_id",
            |m| m["preprocessing"]["text"]["pad_id"] = json!(-1),
            "expected u32",
        ),
        parse_case(
            "a shape entry that is a float",
            |m| m["inputs"][0]["shape"] = json!([null, 1.5]),
            "axis name",
        ),
    ]
}

#[test]
fn every_validated_v2_field_is_rejected_by_name() {
    let dir = common::temp_dir();
    link_text_bundle(dir.path());
    check_cases(dir.path(), &invalid_v2_manifests());
}

/// `preprocessing.image` fields, on the image bundle's manifest.
fn invalid_image_manifests() -> Vec<Case> {
    fn image(m: &mut Value) -> &mut Value {
        &mut m["preprocessing"]["image"]
    }
    vec![
        case(
            "an image input that is not the core's",
            |m| image(m)["input"] = json!("pixels"),
            "preprocessing.image.input",
        ),
        case(
            "gray images for a 3-channel input",
            |m| image(m)["channels"] = json!("gray"),
            "preprocessing.image.input",
        ),
        case(
            "an image input of another type",
            |m| m["inputs"][0]["dtype"] = json!("float16"),
            "preprocessing.image.input",
        ),
        case(
            "an image input with a named axis",
            |m| m["inputs"][0]["shape"] = json!([null, 3, "height", 224]),
            "preprocessing.image.input",
        ),
        case(
            "divide_by 0",
            |m| image(m)["divide_by"] = json!(0.0),
            "preprocessing.image.divide_by",
        ),
        case(
            "a negative divide_by",
            |m| image(m)["divide_by"] = json!(-255.0),
            "preprocessing.image.divide_by",
        ),
        case(
            "a shorter side smaller than the crop",
            |m| image(m)["resize_shorter_side"] = json!(223),
            "preprocessing.image.resize_shorter_side",
        ),
        case(
            "a shorter side of 0",
            |m| image(m)["resize_shorter_side"] = json!(0),
            "preprocessing.image.resize_shorter_side",
        ),
        case(
            "two means for three channels",
            |m| image(m)["mean"] = json!([0.5, 0.5]),
            "preprocessing.image.mean",
        ),
        case(
            "a std of 0",
            |m| image(m)["std"] = json!([0.229, 0.0, 0.225]),
            "preprocessing.image.std",
        ),
        case(
            "a negative std",
            |m| image(m)["std"] = json!([0.229, -0.224, 0.225]),
            "preprocessing.image.std",
        ),
        case(
            "a second input beside the image",
            |m| {
                let second = json!({"name": "mask", "dtype": "float32", "shape": [null, 1]});
                m["inputs"].as_array_mut().unwrap().push(second);
            },
            "preprocessing.image.input",
        ),
        case(
            "text and images together",
            |m| {
                m["preprocessing"]["text"] = json!({
                    "tokenizer": "tokenizer.json",
                    "tokenizer_sha256": "0".repeat(64),
                    "add_special_tokens": true,
                    "max_length": 8,
                    "padding": "longest",
                    "pad_id": 0,
                    "inputs": {"image": "ids"}
                })
            },
            "preprocessing",
        ),
        parse_case(
            "an unknown filter",
            |m| image(m)["filter"] = json!("bicubic"),
            "bilinear",
        ),
        parse_case(
            "unknown channels",
            |m| image(m)["channels"] = json!("bgr"),
            "rgb",
        ),
        parse_case(
            "an unknown image field",
            |m| image(m)["crop"] = json!("center"),
            "crop",
        ),
    ]
}

#[test]
fn every_validated_image_field_is_rejected_by_name() {
    let dir = common::temp_dir();
    copy_bundle("mobilenetv2-imagenet", dir.path());
    check_cases(dir.path(), &invalid_image_manifests());
}

/// A bundle folder whose files are not what the manifest says: Core::open refuses it.
#[test]
fn text_bundle_files_and_graph_are_checked() {
    let dir = common::temp_dir();
    link_text_bundle(dir.path());
    let original = read_manifest(dir.path());
    Bundle::open(dir.path()).expect("the unmodified copy opens");

    // A tokenizer file changed after the manifest was written.
    let tokenizer = dir.path().join("tokenizer.json");
    let good = fs::read(&tokenizer).unwrap();
    fs::write(&tokenizer, [&good[..], b" "].concat()).unwrap();
    let (field, _) = manifest_error(Bundle::open(dir.path()), "a changed tokenizer");
    assert_eq!(field, "preprocessing.text.tokenizer_sha256");
    // A file with the right sha256 that is not a tokenizer, and a pad id it does not have.
    fs::write(&tokenizer, b"{}").unwrap();
    let mut manifest = original.clone();
    manifest["preprocessing"]["text"]["tokenizer_sha256"] =
        json!(lethe::bundle::sha256_bytes(b"{}"));
    write_manifest(dir.path(), &manifest);
    let (field, _) = manifest_error(
        Core::open(dir.path(), &CoreOptions::default()),
        "not a tokenizer",
    );
    assert_eq!(field, "preprocessing.text.tokenizer");
    fs::write(&tokenizer, &good).unwrap();
    let mut manifest = original.clone();
    manifest["preprocessing"]["text"]["pad_id"] = json!(1_000_000);
    write_manifest(dir.path(), &manifest);
    let (field, _) = manifest_error(
        Core::open(dir.path(), &CoreOptions::default()),
        "a pad id beyond the vocabulary",
    );
    assert_eq!(field, "preprocessing.text.pad_id");

    // Manifests that are valid alone but disagree with the graph.
    let cases: [(&str, Edit, &str); 3] = [
        (
            "int32 inputs (the graph takes int64)",
            |m| {
                m["inputs"][0]["dtype"] = json!("int32");
                m["inputs"][1]["dtype"] = json!("int32");
            },
            "inputs[0].dtype",
        ),
        (
            "an input the graph does not have",
            |m| {
                m["inputs"][1]["name"] = json!("mask");
                object(&mut m["preprocessing"]["text"]["inputs"]).remove("attention_mask");
                m["preprocessing"]["text"]["inputs"]["mask"] = json!("attention_mask");
            },
            "inputs[1].name",
        ),
        (
            "a third input",
            |m| {
                let mut third = m["inputs"][1].clone();
                third["name"] = json!("token_type_ids");
                m["inputs"].as_array_mut().unwrap().push(third);
                m["preprocessing"]["text"]["inputs"]["token_type_ids"] = json!("type_ids");
            },
            "inputs",
        ),
    ];
    for (what, edit, expected) in cases {
        let mut manifest = original.clone();
        edit(&mut manifest);
        write_manifest(dir.path(), &manifest);
        Bundle::open(dir.path())
            .unwrap_or_else(|e| panic!("{what}: the manifest alone is valid, got {e}"));
        let (field, message) =
            manifest_error(Core::open(dir.path(), &CoreOptions::default()), what);
        assert_eq!(field, expected, "{what}: {message}");
    }
}

/// Opens the bundle in `dir` with each case's manifest; each must fail naming its field.
fn check_cases(dir: &Path, cases: &[Case]) {
    let original = read_manifest(dir);
    Bundle::open(dir).expect("the unmodified copy opens");

    let mut failures = Vec::new();
    for case in cases {
        let mut manifest = original.clone();
        (case.edit)(&mut manifest);
        assert_ne!(
            manifest, original,
            "{}: the edit changed nothing",
            case.what
        );
        write_manifest(dir, &manifest);
        match Bundle::open(dir) {
            Err(Error::Manifest { field, message, .. }) => {
                if field != case.field {
                    failures.push(format!(
                        "{}: field {field:?} ({message}), expected {:?}",
                        case.what, case.field
                    ));
                } else if let Some(s) = case.mentions {
                    if !message.contains(s) {
                        failures.push(format!("{}: message {message:?} lacks {s:?}", case.what));
                    }
                }
            }
            Err(e) => failures.push(format!("{}: not a manifest error: {e:?}", case.what)),
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn limits_are_inclusive() {
    let dir = common::temp_dir();
    copy_bundle("mnist-core", dir.path());
    let original = read_manifest(dir.path());
    let accepted: [(&str, Edit); 5] = [
        // features max_abs 128 · 2^17 = 2^24 and target_max_abs 128 · 2^17 = 2^24: at the limit.
        ("max_abs · 2^frac_bits = 2^24", |m| {
            m["head"]["frac_bits"] = json!(17);
            m["head"]["target_max_abs"] = json!(128.0);
        }),
        ("frac_bits 24", |m| {
            m["head"]["frac_bits"] = json!(24);
            m["features"][0]["max_abs"] = json!(1.0);
            m["features"][1]["max_abs"] = json!(0.5);
            m["head"]["target_scale"] = json!(1.0);
            m["head"]["target_max_abs"] = json!(1.0);
        }),
        ("frac_bits 1", |m| m["head"]["frac_bits"] = json!(1)),
        ("target_max_abs = target_scale", |m| {
            m["head"]["target_max_abs"] = json!(16.0)
        }),
        ("no core logits", |m| m["core_logits"] = Value::Null),
    ];
    for (what, edit) in accepted {
        let mut manifest = original.clone();
        edit(&mut manifest);
        write_manifest(dir.path(), &manifest);
        let bundle = Bundle::open(dir.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            serde_json::to_value(&bundle.manifest).unwrap(),
            manifest,
            "{what}: the manifest did not round-trip"
        );
    }
}

#[test]
fn core_file_that_does_not_match_its_sha256_is_rejected() {
    let dir = common::temp_dir();
    copy_bundle("mnist-core", dir.path());
    let core = dir.path().join("core.onnx");
    let mut bytes = fs::read(&core).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&core, &bytes).unwrap();
    let (field, message) = manifest_error(Bundle::open(dir.path()), "one flipped byte");
    assert_eq!(field, "core.sha256", "{message}");
    let (field, _) = manifest_error(
        Core::open(dir.path(), &CoreOptions::default()),
        "one flipped byte, Core::open",
    );
    assert_eq!(field, "core.sha256");

    // A well-formed hash of some other file is caught the same way.
    copy_bundle("mnist-core", dir.path());
    let mut manifest = read_manifest(dir.path());
    manifest["core"]["sha256"] = json!("0".repeat(64));
    write_manifest(dir.path(), &manifest);
    let (field, _) = manifest_error(Bundle::open(dir.path()), "sha256 of another file");
    assert_eq!(field, "core.sha256");
}

#[test]
fn missing_files_are_io_errors() {
    let dir = common::temp_dir();
    assert!(matches!(Bundle::open(dir.path()), Err(Error::Io { .. })));
    copy_bundle("mnist-core", dir.path());
    fs::remove_file(dir.path().join("core.onnx")).unwrap();
    assert!(matches!(Bundle::open(dir.path()), Err(Error::Io { .. })));
    fs::write(dir.path().join("manifest.json"), "{ not json").unwrap();
    let (field, _) = manifest_error(Bundle::open(dir.path()), "not JSON");
    assert_eq!(field, PARSE_FIELD);
}

/// A manifest that passes validation but disagrees with the ONNX graph is caught by `Core::open`.
#[test]
fn graph_mismatches_are_rejected_by_core_open() {
    // (bundle, what, edit, the fields the error may name)
    type GraphCase = (&'static str, &'static str, Edit, &'static [&'static str]);
    let cases: [GraphCase; 9] = [
        (
            "mnist-core",
            "features dim 127 (the graph has 128)",
            |m| m["features"][0]["dim"] = json!(127),
            &["features[0].dim"],
        ),
        (
            "mnist-core",
            "conv_features dim 64",
            |m| m["features"][1]["dim"] = json!(64),
            &["features[1].dim"],
        ),
        (
            "mnist-core",
            "a features output the graph lacks",
            |m| m["features"][1]["output"] = json!("pooled"),
            &["features[1].output"],
        ),
        (
            "mnist-core",
            "wrong input name",
            |m| m["inputs"][0]["name"] = json!("pixels"),
            &["inputs[0].name"],
        ),
        (
            "mnist-core",
            "wrong input shape",
            |m| m["inputs"][0]["shape"] = json!([null, 1, 28, 29]),
            &["inputs[0].shape"],
        ),
        (
            "mnist-core",
            "wrong input rank",
            |m| m["inputs"][0]["shape"] = json!([null, 784]),
            &["inputs[0].shape"],
        ),
        (
            "mnist-core",
            "core logits for 4 classes (the graph has 5)",
            |m| m["core_logits"]["classes"] = json!([0, 1, 2, 3]),
            &["core_logits.classes"],
        ),
        (
            "mnist-core",
            "core logits output the graph lacks",
            |m| m["core_logits"]["output"] = json!("scores"),
            &["core_logits.output"],
        ),
        (
            "mobilenetv2-imagenet",
            "features dim 1000 (the graph has 1280)",
            |m| m["features"][0]["dim"] = json!(1000),
            &["features[0].dim"],
        ),
    ];
    let mobilenet = common::temp_dir();
    copy_bundle("mobilenetv2-imagenet", mobilenet.path());
    let mnist = common::temp_dir();
    copy_bundle("mnist-core", mnist.path());
    for (bundle, what, edit, fields) in cases {
        let dir = if bundle == "mnist-core" {
            mnist.path()
        } else {
            mobilenet.path()
        };
        let mut manifest = read_manifest(&common::bundle_dir(bundle));
        edit(&mut manifest);
        write_manifest(dir, &manifest);
        Bundle::open(dir)
            .unwrap_or_else(|e| panic!("{bundle}, {what}: the manifest alone is valid, got {e}"));
        let (field, message) = manifest_error(Core::open(dir, &CoreOptions::default()), what);
        assert!(
            fields.contains(&field.as_str()),
            "{bundle}, {what}: field {field:?} ({message}), expected one of {fields:?}"
        );
    }
}
