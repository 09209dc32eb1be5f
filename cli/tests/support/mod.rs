//! Running the `lethe` binary from the command line's tests (from the repository root, whose
//! relative paths its defaults name), and reading the numbers it prints.
//!
//! Each test crate uses a subset of these, so unused ones are not dead code.
#![allow(dead_code)]

use std::process::{Command, Output};

use crate::common;

/// `lethe ARGS` run in the repository root.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(args)
        .current_dir(common::repo_root())
        .output()
        .expect("run lethe")
}

/// `lethe ARGS`, which must succeed; its stdout and stderr.
pub fn lethe(args: &[&str]) -> String {
    let out = run(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lethe {args:?} failed:\n{text}");
    text
}

/// `lethe ARGS`, which must fail; its stderr.
pub fn lethe_fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "lethe {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The numbers that follow `label` on each line of `out` (`label 1.5e-3 ...` → 1.5e-3).
pub fn numbers_after(out: &str, label: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|line| line.split_once(label))
        .map(|(_, rest)| {
            let word = rest.split_whitespace().next().unwrap_or("");
            word.parse()
                .unwrap_or_else(|_| panic!("{label} is followed by {word:?}, not a number"))
        })
        .collect()
}
