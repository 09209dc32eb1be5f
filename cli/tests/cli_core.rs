//! The `lethe` binary: `bundle check`, `features`, the error when ONNX Runtime is missing,
//! `--help`, and the demo.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use support::numbers_after;

use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use lethe::{Core, CoreOptions};
use lethe_cli::commands::Cli;

/// `lethe features` vs `Core::run` in this process: same library, but the CLI runs the core in
/// chunks of 256 samples, so kernels may see other batch sizes.
const CLI_REL_TOL: f64 = 1e-5;
/// More samples than one CLI chunk (256), so the chunking is exercised.
const FEATURES_SAMPLES: usize = 300;

/// `lethe ARGS` run in the repository root (so relative bundle paths and `.lethe/` resolve).
fn lethe(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lethe"));
    cmd.args(args).current_dir(common::repo_root());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run the lethe binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and asserts success; returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs and asserts a clean failure (exit status 1: an error, not a panic or a signal);
/// returns stderr.
fn run_err(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{cmd:?}: expected exit status 1:\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// The `(output, dim)` pairs of the `features` lines that `bundle check` prints.
fn listed_features(stdout: &str) -> Vec<(String, usize)> {
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["features", name, "d", "=", dim, ..] => {
                    Some((name.to_string(), dim.parse().expect("a dim")))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn bundle_check_prints_the_features_outputs() {
    let out = run_ok(&mut lethe(&["bundle", "check", "models/mnist-core"]));
    assert!(out.contains("mnist-core ok"), "{out}");
    assert_eq!(
        listed_features(&out),
        vec![("features".into(), 128), ("conv_features".into(), 3136)],
        "{out}"
    );
    assert!(out.contains("(default)"), "{out}");
    assert!(
        out.contains("logits") && out.contains("[0, 1, 2, 3, 4]"),
        "{out}"
    );

    let out = run_ok(&mut lethe(&[
        "bundle",
        "check",
        "models/mobilenetv2-imagenet",
    ]));
    assert!(out.contains("mobilenetv2-imagenet ok"), "{out}");
    assert_eq!(
        listed_features(&out),
        vec![("features".into(), 1280)],
        "{out}"
    );
}

#[test]
fn bundle_check_rejects_a_tampered_core() {
    let dir = common::temp_dir();
    let src = common::bundle_dir("mnist-core");
    std::fs::copy(src.join("manifest.json"), dir.path().join("manifest.json")).unwrap();
    let mut core = std::fs::read(src.join("core.onnx")).unwrap();
    let last = core.len() - 1;
    core[last] ^= 0x80;
    std::fs::write(dir.path().join("core.onnx"), core).unwrap();
    let stderr = run_err(lethe(&["bundle", "check"]).arg(dir.path()));
    assert!(stderr.contains("core.sha256"), "{stderr}");
}

fn read_features(path: &Path) -> ndarray::Array2<f32> {
    common::read_npy_2d(path)
}

#[test]
fn features_writes_what_core_run_returns() {
    let dir = common::temp_dir();
    let input = common::mnist_core_input(FEATURES_SAMPLES);
    let input_path = dir.path().join("x.npy");
    common::write_npy(&input_path, &input);
    let core = Core::open(common::bundle_dir("mnist-core"), &CoreOptions::default()).unwrap();
    let expected = core
        .run(
            input.as_slice().unwrap(),
            FEATURES_SAMPLES,
            &["features", "conv_features", "logits"],
        )
        .unwrap();

    // (--features value, output name, width); None = the default features.
    let cases = [
        (None, "features", 128),
        (Some("features"), "features", 128),
        (Some("conv_features"), "conv_features", 3136),
        (Some("logits"), "logits", 5),
    ];
    for (choice, name, width) in cases {
        let out_path = dir.path().join(format!("{name}.npy"));
        let mut cmd = lethe(&["features", "--bundle", "models/mnist-core", "--input"]);
        cmd.arg(&input_path).arg("--out").arg(&out_path);
        if let Some(choice) = choice {
            cmd.args(["--features", choice]);
        }
        run_ok(&mut cmd);
        let written = read_features(&out_path);
        assert_eq!(written.shape(), &[FEATURES_SAMPLES, width], "{choice:?}");
        let rel = common::max_rel_diff(written.view(), expected.get(name).unwrap().view());
        assert!(
            rel <= CLI_REL_TOL,
            "{choice:?}: CLI vs Core::run relative difference {rel:e} > {CLI_REL_TOL:e}"
        );
        std::fs::remove_file(&out_path).unwrap();
    }

    let out_path = dir.path().join("none.npy");
    let stderr = run_err(
        lethe(&[
            "features",
            "--bundle",
            "models/mnist-core",
            "--features",
            "pooled",
        ])
        .arg("--input")
        .arg(&input_path)
        .arg("--out")
        .arg(&out_path),
    );
    assert!(stderr.contains("pooled"), "{stderr}");
    assert!(!out_path.exists(), "nothing is written on error");
}

#[test]
fn features_rejects_non_finite_input() {
    let dir = common::temp_dir();
    let mut input = common::mnist_core_input(4);
    input[[2, 0, 14, 14]] = f32::NAN;
    let input_path = dir.path().join("x.npy");
    common::write_npy(&input_path, &input);
    let out_path = dir.path().join("f.npy");
    let stderr = run_err(
        lethe(&["features", "--bundle", "models/mnist-core", "--input"])
            .arg(&input_path)
            .arg("--out")
            .arg(&out_path),
    );
    assert!(stderr.contains("NaN"), "{stderr}");
    assert!(!out_path.exists(), "nothing is written on error");
}

/// The documented advice when the ONNX Runtime library cannot be found or loaded.
fn assert_says_how_to_get_ort(stderr: &str) {
    for needle in ["scripts/setup.sh", "ORT_DYLIB_PATH", "onnxruntime"] {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
}

#[test]
fn missing_onnx_runtime_says_how_to_get_it() {
    let missing = "/nonexistent/libonnxruntime.so";
    let stderr =
        run_err(lethe(&["bundle", "check", "models/mnist-core"]).env("ORT_DYLIB_PATH", missing));
    assert_says_how_to_get_ort(&stderr);
    assert!(stderr.contains(missing), "{stderr}");

    let stderr = run_err(
        lethe(&[
            "bundle",
            "check",
            "models/mnist-core",
            "--ort-library",
            "/nonexistent.so",
        ])
        .env_remove("ORT_DYLIB_PATH"),
    );
    assert_says_how_to_get_ort(&stderr);
    assert!(stderr.contains("/nonexistent.so"), "{stderr}");

    // A file that exists but is not a shared library: an error, not a crash.
    let dir = common::temp_dir();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let stderr = run_err(
        lethe(&["bundle", "check", "models/mnist-core", "--ort-library"])
            .arg(&fake)
            .env_remove("ORT_DYLIB_PATH"),
    );
    assert_says_how_to_get_ort(&stderr);
}

/// The subcommands listed by `lethe --help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn help_works_for_every_subcommand() {
    let help = run_ok(&mut lethe(&["--help"]));
    let commands = subcommands(&help);
    for expected in ["demo", "features", "bundle", "learn", "forget", "predict"] {
        assert!(
            commands.iter().any(|c| c == expected),
            "--help does not list {expected}: {commands:?}\n{help}"
        );
    }
    for command in &commands {
        let out = run_ok(&mut lethe(&[command, "--help"]));
        assert!(out.contains("Usage:"), "{command} --help:\n{out}");
    }
    let out = run_ok(&mut lethe(&["bundle", "check", "--help"]));
    assert!(out.contains("Usage:"), "{out}");

    let version = run_ok(&mut lethe(&["--version"]));
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "--version: {version}"
    );
    assert_eq!(run(&mut lethe(&["no-such-command"])).status.code(), Some(2));
}

/// `path` and every subcommand below it, with their paths (`lethe bundle check`).
fn all_commands(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
    for sub in cmd.get_subcommands() {
        all_commands(sub, format!("{path} {}", sub.get_name()), out);
    }
    out.push((path, cmd.clone()));
}

#[test]
fn every_subcommand_and_argument_has_help() {
    let mut commands = Vec::new();
    all_commands(&Cli::command(), "lethe".into(), &mut commands);
    assert!(commands.len() > 10, "{} commands", commands.len());
    let mut missing = Vec::new();
    for (path, cmd) in &commands {
        if cmd.get_about().is_none() {
            missing.push(path.clone());
        }
        for arg in cmd.get_arguments() {
            let generated = ["help", "version"].contains(&arg.get_id().as_str());
            if !generated && arg.get_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
    }
    assert!(missing.is_empty(), "no help text: {missing:?}");
}

#[test]
fn demo_forgets_exactly() {
    let out = run_ok(&mut lethe(&["demo"]));
    // Each forget next to a head retrained from scratch: the canonical weights are the same.
    let weights = numbers_after(&out, "max |W − W_retrained| =");
    assert_eq!(weights, [0.0, 0.0], "{out}");
    // After forget-all, W = 0 and b = 0 exactly (the canonical solve of empty statistics), and
    // z + φ·0 + 0 = z in floating point for finite φ, with no rounding: the bound is exactly 0.
    let core = numbers_after(&out, "max |head logits − core logits| =");
    assert_eq!(core, [0.0], "{out}");
    assert!(
        !out.contains("differs") && !out.contains("DIFFER"),
        "the demo reports a difference:\n{out}"
    );
}
