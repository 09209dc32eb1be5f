//! Backend selection and reporting: cpu by default; auto and cuda use the GPU when they can
//! and otherwise run on the CPU and say why; require_gpu turns that into an error, never a
//! panic. These run everywhere: the expected outcome is what this machine has.

mod cuda_common;

use std::sync::Arc;

use lethe::device::cuda;
use lethe::placement::{Backend, BackendOptions, CpuReason, Placement};
use lethe::FixedPoint;
use lethe::{Core, CoreOptions, Error, Head, HeadOptions, HeadSpec};
use ndarray::Array2;

fn spec(dim: usize, classes: usize) -> HeadSpec {
    HeadSpec {
        features: "f".into(),
        dim,
        classes: (0..classes).map(|i| i.to_string()).collect(),
        core_logits: None,
        lambda: 1.0,
        target_scale: 1.0,
        fixed: FixedPoint {
            frac_bits: 16,
            feature_max_abs: 4.0,
            target_max_abs: 2.0,
        },
    }
}

fn on(backend: Backend, require_gpu: bool) -> BackendOptions {
    BackendOptions {
        backend,
        require_gpu,
        device: 0,
    }
}

fn head_options(backend: Backend, require_gpu: bool) -> HeadOptions {
    HeadOptions {
        backend: Some(on(backend, require_gpu)),
        synchronous_resolve: true,
        ..Default::default()
    }
}

fn mnist_core(options: &BackendOptions) -> lethe::Result<Core> {
    let dir = cuda_common::repo_root().join("models/mnist-core");
    Core::open(
        dir,
        &CoreOptions {
            backend: options.clone(),
            ..Default::default()
        },
    )
}

/// Under LETHE_REQUIRE_GPU=1 the outcomes below must be the GPU ones.
#[test]
fn the_gpu_is_usable_when_required() {
    match cuda::open_device(0) {
        Ok(device) => eprintln!("GPU: {}", device.describe()),
        Err(reason) => cuda_common::skip("the_gpu_is_usable_when_required", reason),
    }
}

#[test]
fn the_cpu_is_the_default() {
    let head = Head::detached(spec(4, 3), &HeadOptions::default()).unwrap();
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
fn auto_uses_the_gpu_or_says_why_not() {
    let head = Head::detached(spec(4, 3), &head_options(Backend::Auto, false)).unwrap();
    let report = head.info().backend;
    eprintln!("{report}");
    match cuda::open_device(0) {
        Ok(device) => {
            assert!(report.head.is_gpu(), "a usable GPU, but {report}");
            assert!(report.to_string().contains(&device.name), "{report}");
        }
        Err(reason) => {
            assert_ne!(reason, CpuReason::Requested);
            assert_eq!(report.head, Placement::Cpu(reason));
            if !cuda::driver_present() {
                assert_eq!(report.head, Placement::Cpu(CpuReason::NoDriver));
                assert!(report.to_string().contains("no CUDA driver"), "{report}");
            }
        }
    }
    // Whatever runs it, the head predicts z + φWᵀ + b.
    let (phi, z) = (Array2::<f32>::ones((2, 4)), Array2::<f32>::ones((2, 3)));
    assert_eq!(head.predict_features(&phi, &z).unwrap(), z);
}

#[test]
fn cuda_without_a_gpu_falls_back_to_the_cpu() {
    let head = Head::detached(spec(4, 3), &head_options(Backend::Cuda, false)).unwrap();
    let report = head.info().backend;
    match cuda::open_device(0) {
        Ok(_) => assert!(report.head.is_gpu(), "{report}"),
        Err(reason) => assert_eq!(report.head, Placement::Cpu(reason)),
    }
}

#[test]
fn require_gpu_without_a_gpu_is_a_clear_error() {
    for backend in [Backend::Cuda, Backend::Auto] {
        let result = Head::detached(spec(4, 3), &head_options(backend, true));
        match (cuda::open_device(0), result) {
            (Ok(_), Ok(head)) => assert!(head.info().backend.head.is_gpu()),
            (Err(reason), Err(Error::Backend(message))) => {
                assert!(
                    message.contains("head") && message.contains(&reason.to_string()),
                    "the error should say what cannot run on the GPU and why: {message}"
                );
            }
            (expected, got) => panic!(
                "{backend}: GPU {:?}, but creating the head gave {:?}",
                expected.map(|d| d.describe()),
                got.map(|h| h.info().backend)
            ),
        }
    }
}

#[test]
fn require_gpu_with_the_cpu_backend_is_invalid() {
    let result = Head::detached(spec(4, 3), &head_options(Backend::Cpu, true));
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
fn a_core_and_its_head_report_where_they_run() {
    let core = Arc::new(mnist_core(&on(Backend::Auto, false)).unwrap());
    let placement = core.placement().clone();
    eprintln!("core on {placement}");
    if !cuda::driver_present() {
        assert_eq!(placement, Placement::Cpu(CpuReason::NoDriver));
    } else if let Placement::Cpu(reason) = &placement {
        assert_ne!(*reason, CpuReason::Requested);
    }
    // A head without backend options follows its core's.
    let head = Head::in_memory(core.clone(), &HeadOptions::default()).unwrap();
    let report = head.info().backend;
    assert_eq!(report.core, Some(placement));
    match cuda::open_device(0) {
        Ok(_) => assert!(report.head.is_gpu(), "{report}"),
        Err(reason) => assert_eq!(report.head, Placement::Cpu(reason)),
    }
    assert!(report.to_string().contains("; core on "), "{report}");
    let logits = head.predict(&vec![0.0; 2 * core.input_len()], 2).unwrap();
    assert_eq!(logits.dim(), (2, head.spec().num_classes()));
}

#[test]
fn a_core_with_require_gpu_fails_cleanly_without_cuda() {
    match mnist_core(&on(Backend::Cuda, true)) {
        Ok(core) => assert!(core.placement().is_gpu(), "{}", core.placement()),
        Err(Error::Backend(message)) => {
            assert!(message.contains("core"), "{message}");
            if !cuda::driver_present() {
                assert!(message.contains("no CUDA driver"), "{message}");
            }
        }
        Err(other) => panic!("expected a backend error, got {other}"),
    }
}
