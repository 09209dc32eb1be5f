//! Backend selection and reporting: cpu by default; auto and cuda use the GPU when they can
//! and otherwise run on the CPU and say why; require_gpu turns that into an error, never a
//! panic. The fallback is checked everywhere on a device that does not exist (ordinal 4096);
//! the GPU outcomes are `#[ignore = "needs a GPU"]` (run with `--include-ignored` on a GPU
//! machine, see tests/common/cuda.rs).

mod common;

use std::sync::Arc;

use lethe::device::cuda;
use lethe::placement::{Backend, BackendOptions, CpuReason, Placement};
use lethe::{Core, CoreOptions, Error, Head, HeadOptions};
use ndarray::Array2;

/// A CUDA device ordinal no machine has.
const MISSING_DEVICE: usize = 4096;

fn on(backend: Backend, require_gpu: bool, device: usize) -> BackendOptions {
    BackendOptions {
        backend,
        require_gpu,
        device,
    }
}

fn head_options(backend: BackendOptions) -> HeadOptions {
    HeadOptions {
        backend: Some(backend),
        synchronous_resolve: true,
        ..Default::default()
    }
}

fn detached(backend: BackendOptions) -> lethe::Result<Head> {
    Head::detached(common::detached_spec(4, 3, 1.0), &head_options(backend))
}

fn mnist_core(options: BackendOptions) -> lethe::Result<Core> {
    let dir = common::repo_root().join("models/mnist-core");
    Core::open(
        dir,
        &CoreOptions {
            backend: options,
            ..Default::default()
        },
    )
}

/// Whatever runs it, a head without samples predicts exactly the core's logits z.
fn assert_predicts_z(head: &Head) {
    let (phi, z) = (Array2::<f32>::ones((2, 4)), Array2::<f32>::ones((2, 3)));
    assert_eq!(head.predict_features(&phi, &z).unwrap(), z);
}

/// Why device [`MISSING_DEVICE`] cannot be used: no driver, or no such device.
fn assert_missing_device_reason(reason: &CpuReason) {
    if !cuda::driver_present() {
        assert_eq!(*reason, CpuReason::NoDriver);
    } else {
        assert!(matches!(reason, CpuReason::NoDevice(_)), "{reason:?}");
    }
}

#[test]
fn the_cpu_is_the_default() {
    let head = Head::detached(common::detached_spec(4, 3, 1.0), &HeadOptions::default()).unwrap();
    let info = head.info();
    assert_eq!(info.backend.head, Placement::Cpu(CpuReason::Requested));
    assert_eq!(info.backend.core, None);
    assert_eq!(info.backend.name(), "cpu");
    assert_eq!(
        info.backend.to_string(),
        "head on cpu (the CPU backend was requested)"
    );
}

#[test]
fn auto_and_cuda_without_the_device_run_on_the_cpu_and_say_why() {
    for backend in [Backend::Auto, Backend::Cuda] {
        let head = detached(on(backend, false, MISSING_DEVICE)).unwrap();
        let report = head.info().backend;
        eprintln!("{backend}: {report}");
        let Placement::Cpu(reason) = &report.head else {
            panic!("{backend}: device {MISSING_DEVICE} does not exist, but {report}");
        };
        assert_missing_device_reason(reason);
        assert!(report.to_string().contains(&reason.to_string()), "{report}");
        assert_predicts_z(&head);
    }
}

#[test]
fn require_gpu_without_the_device_is_a_clear_error() {
    for backend in [Backend::Cuda, Backend::Auto] {
        match detached(on(backend, true, MISSING_DEVICE)) {
            Err(Error::Backend(message)) => assert!(
                message.contains("head")
                    && (message.contains("no CUDA driver") || message.contains("no CUDA device")),
                "{backend}: the error should say what cannot run on the GPU and why: {message}"
            ),
            Err(other) => panic!("{backend}: expected a backend error, got {other}"),
            Ok(head) => panic!("{backend}: created on {}", head.info().backend),
        }
    }
}

#[test]
fn require_gpu_with_the_cpu_backend_is_invalid() {
    let result = detached(on(Backend::Cpu, true, 0));
    assert!(
        matches!(result, Err(Error::InvalidInput(_))),
        "{:?}",
        result.err()
    );
}

#[test]
fn backends_parse() {
    assert_eq!("auto".parse::<Backend>().unwrap(), Backend::Auto);
    assert_eq!("CPU".parse::<Backend>().unwrap(), Backend::Cpu);
    assert_eq!("cuda".parse::<Backend>().unwrap(), Backend::Cuda);
    assert_eq!(Backend::default(), Backend::Cpu);
    assert!(matches!(
        "tpu".parse::<Backend>(),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn a_core_without_the_device_runs_on_the_cpu_and_its_head_follows() {
    let core = Arc::new(mnist_core(on(Backend::Auto, false, MISSING_DEVICE)).unwrap());
    let placement = core.placement().clone();
    eprintln!("core on {placement}");
    let Placement::Cpu(reason) = &placement else {
        panic!("device {MISSING_DEVICE} does not exist, but the core runs on {placement}");
    };
    assert_missing_device_reason(reason);
    // A head without backend options follows its core's.
    let head = Head::in_memory(core.clone(), &HeadOptions::default()).unwrap();
    let report = head.info().backend;
    assert_eq!(report.core, Some(placement.clone()));
    let Placement::Cpu(reason) = &report.head else {
        panic!("the head should follow its core's options: {report}");
    };
    assert_missing_device_reason(reason);
    assert!(report.to_string().contains("; core on "), "{report}");
    let logits = head.predict(&vec![0.0; 2 * core.input_len()], 2).unwrap();
    assert_eq!(logits.dim(), (2, head.spec().num_classes()));
}

#[test]
fn a_core_with_require_gpu_without_the_device_fails_cleanly() {
    match mnist_core(on(Backend::Cuda, true, MISSING_DEVICE)) {
        Err(Error::Backend(message)) => assert!(
            message.contains("core")
                && (message.contains("no CUDA driver") || message.contains("no CUDA device")),
            "{message}"
        ),
        Err(other) => panic!("expected a backend error, got {other}"),
        Ok(core) => panic!("opened on {}", core.placement()),
    }
}

#[test]
#[ignore = "needs a GPU"]
fn the_gpu_opens() {
    let device = common::cuda::gpu();
    eprintln!("GPU: {}", device.describe());
    assert!(!device.name.is_empty());
}

#[test]
#[ignore = "needs a GPU"]
fn auto_and_cuda_put_the_head_on_the_gpu() {
    let device = common::cuda::gpu();
    for backend in [Backend::Auto, Backend::Cuda] {
        for require_gpu in [false, true] {
            let head = detached(on(backend, require_gpu, 0)).unwrap();
            let report = head.info().backend;
            assert!(report.head.is_gpu(), "{backend}: {report}");
            assert_eq!(report.name(), "cuda", "{report}");
            assert!(report.to_string().contains(&device.name), "{report}");
            assert_predicts_z(&head);
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn a_head_follows_its_core_onto_the_gpu() {
    let core = Arc::new(mnist_core(on(Backend::Auto, false, 0)).unwrap());
    eprintln!("core on {}", core.placement());
    let head = Head::in_memory(core.clone(), &HeadOptions::default()).unwrap();
    let report = head.info().backend;
    assert!(report.head.is_gpu(), "{report}");
    assert_eq!(report.core.as_ref(), Some(core.placement()));
    let logits = head.predict(&vec![0.0; 2 * core.input_len()], 2).unwrap();
    assert_eq!(logits.dim(), (2, head.spec().num_classes()));
}

#[test]
#[ignore = "needs a GPU and the CUDA EP"]
fn a_core_with_require_gpu_runs_on_the_cuda_ep() {
    let core = mnist_core(on(Backend::Cuda, true, 0))
        .unwrap_or_else(|e| panic!("this test needs a GPU and the CUDA EP: {e}"));
    assert!(core.placement().is_gpu(), "{}", core.placement());
}
