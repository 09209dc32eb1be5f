//! Smoke test of `lethe bench --quick` and `lethe eval --quick`: both complete, write their
//! reports, and say sane things. No timing thresholds beyond orders of magnitude.

use std::sync::Mutex;

use clap::Parser;
use lethe_cli::commands::{Cli, Command};

#[path = "../../tests/common/mod.rs"]
mod common;

/// The two runs time things: keep them from running at once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The arguments parsed as `lethe ARGS` run from the repository root, whose relative paths
/// (models/, tests/data, .lethe/) the defaults name.
fn cli(args: &[&str]) -> Cli {
    std::env::set_current_dir(common::repo_root()).expect("cd to the repository root");
    Cli::try_parse_from(std::iter::once("lethe").chain(args.iter().copied()))
        .expect("valid arguments")
}

#[test]
fn quick_bench_completes_and_is_sane() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("BENCHMARKS.md");
    let cli = cli(&["bench", "--quick", "--out", out.to_str().unwrap()]);
    let Command::Bench(args) = &cli.command else {
        panic!("parsed as another command")
    };
    let report = lethe_cli::bench::run(&cli.global, args).expect("bench --quick runs");

    assert!(!report.predict.is_empty());
    for r in &report.predict {
        assert!(r.bare > 0.0 && r.lethe > 0.0, "{r:?}");
    }
    assert!(!report.forget.is_empty());
    for r in &report.forget {
        assert!(
            r.forget > 0.0 && r.canonical >= r.forget && r.refit > 0.0,
            "{r:?}"
        );
    }
    // The baseline solves the same ridge problem as the head (up to fixed-point quantization).
    assert!(
        report.baseline_agreement < 1e-4,
        "refit baseline disagrees with the head: {}",
        report.baseline_agreement
    );
    // At the largest quick size the refit is O(n·d²) and an in-memory forget O(d²): two orders
    // of magnitude apart, so this holds on any machine.
    let largest = report
        .forget
        .iter()
        .filter(|r| r.k == 1 && r.memory.is_some())
        .max_by_key(|r| r.n)
        .expect("a k = 1 row with an in-memory time");
    assert!(
        largest.memory.unwrap() < largest.refit,
        "forget slower than refit: {largest:?}"
    );
    assert_eq!(report.open.n, largest.n);

    let md = std::fs::read_to_string(&out).expect("report written");
    for heading in [
        "# Benchmarks",
        "## Targets",
        "## Predict",
        "## Forget",
        "## Learn",
        "## Open",
    ] {
        assert!(md.contains(heading), "no {heading:?} in the report");
    }
    let png = std::fs::read(tmp.path().join("forget-latency.png")).expect("plot written");
    assert!(png.starts_with(b"\x89PNG"), "the plot is not a PNG");
}

#[test]
fn quick_eval_forgets_exactly() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("EVALUATION.md");
    let cli = cli(&["eval", "--quick", "--out", out.to_str().unwrap()]);
    let Command::Eval(args) = &cli.command else {
        panic!("parsed as another command")
    };
    let report = lethe_cli::eval::run(&cli.global, args).expect("eval --quick runs");

    assert!(!report.setups.is_empty());
    for u in &report.setups {
        let name = format!("{} {}", u.bundle, u.features);
        assert!(u.head_test > 80.0, "{name}: head accuracy {}", u.head_test);
        assert!(
            u.logreg_test > 80.0,
            "{name}: logistic regression {}",
            u.logreg_test
        );
        assert!(
            u.head_test > u.core_test,
            "{name}: the head learned nothing"
        );
        assert_eq!(u.scenarios.len(), 2, "{name}");
        for sc in &u.scenarios {
            assert_eq!(
                sc.lethe, sc.retrained,
                "{name} {}: accuracies differ",
                sc.title
            );
            assert_eq!(sc.max_weight_diff, 0.0, "{name} {}", sc.title);
            assert!(sc.logits_identical, "{name} {}: logits differ", sc.title);
            assert_eq!(sc.attack.lethe, sc.attack.retrained, "{name} {}", sc.title);
            if let Some(probes) = &sc.probes {
                for trio in probes {
                    assert_eq!(trio.lethe, trio.retrained, "{name} {}: probes", sc.title);
                }
            }
        }
        // The forgotten class is (all but) no longer recognised.
        let class = &u.scenarios[1];
        assert!(class.probes.is_some(), "{name}: no probe for the class");
        assert!(
            class.lethe.forgotten < 10.0,
            "{name}: forgotten class still recognised: {}",
            class.lethe.forgotten
        );
        let (after, core, diff) = u.forget_all;
        assert_eq!(after, core, "{name}: forget-all is not the core");
        assert_eq!(
            diff, 0.0,
            "{name}: forget-all logits differ from the core's"
        );
    }

    let md = std::fs::read_to_string(&out).expect("report written");
    for heading in [
        "# Evaluation",
        "## Accuracy",
        "## Forgetting vs retraining",
        "## Membership inference",
        "## Representation-level audit",
        "## Forget-all",
        "## The linearization point",
    ] {
        assert!(md.contains(heading), "no {heading:?} in the report");
    }
}
