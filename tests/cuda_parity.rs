//! The GPU head against the CPU head (the reference): every kernel on random shapes including
//! 0, 1 and sizes that are not multiples of the kernels' blocks (4 rows and 4 warps for
//! head_forward_f32, 64 × 64 tiles for head_forward_tiled_f32, float4 loads), weight updates
//! through learn/forget, forget-all, and concurrent predictions during updates.
//!
//! They need a GPU: `#[ignore]`d, run with `--include-ignored` (see tests/common/cuda.rs).

mod common;

use std::sync::Arc;

use common::cuda::{assert_logits_close, gpu};
use common::uniform;
use cudarc::driver::DevicePtr;
use lethe::device::cpu;
use lethe::device::cuda::{CudaHead, DeviceCoreLogits, ForwardKernel, GEMV_MAX_ROWS};
use lethe::ServedWeights;
use lethe::{Backend, BackendOptions};
use lethe::{Core, CoreOptions, Head, HeadOptions};
use ndarray::{s, Array2};
use rand::rngs::StdRng;
use rand::Rng;

/// Threads predicting while weights are published.
const READERS: usize = 3;
/// Batch sizes around the kernels' boundaries: 4-row groups, the GEMV/tiled switch, 64-row tiles.
const BATCHES: &[usize] = &[0, 1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 130, 1000];
/// (d, C): odd and even, below and above the 4-wide vector loads, the 32-lane warps and the
/// 64-wide tiles, and the benchmark's sizes.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (3, 2),
    (4, 10),
    (5, 33),
    (17, 3),
    (127, 65),
    (128, 64),
    (1280, 10),
    (1280, 1000),
    (2048, 100),
    (2048, 1000),
];

fn random_weights(rng: &mut StdRng, c: usize, d: usize) -> ServedWeights {
    ServedWeights {
        w: uniform(rng, c, d, 1.0),
        b: (0..c).map(|_| rng.random_range(-1.0..1.0)).collect(),
    }
}

#[test]
#[ignore = "needs a GPU"]
fn forward_matches_the_cpu_head() {
    let device = gpu();
    let mut rng = common::rng(1);
    for &(d, c) in SHAPES {
        let head = CudaHead::new(device.clone(), d, c, None).unwrap();
        let weights = random_weights(&mut rng, c, d);
        head.publish(&weights).unwrap();
        for &n in BATCHES {
            let phi = uniform(&mut rng, n, d, 1.0);
            // Every other batch without core logits: the kernels then read no z at all.
            let z = if n % 2 == 0 {
                uniform(&mut rng, n, c, 1.0)
            } else {
                Array2::zeros((n, c))
            };
            let want = cpu::logits(&phi, &z, &weights);
            // Each kernel on every shape, and the one the head picks.
            for kernel in [Some(ForwardKernel::Gemv), Some(ForwardKernel::Tiled), None] {
                let got = head.logits_with(phi.view(), z.view(), kernel).unwrap();
                let what = format!("{kernel:?}, n = {n}, d = {d}, C = {c}");
                assert_logits_close(&got, &want, &phi, &z, &weights.w, &weights.b, &what);
            }
        }
    }
}

#[test]
#[ignore = "needs a GPU"]
fn strided_inputs_are_read_correctly() {
    let device = gpu();
    let mut rng = common::rng(2);
    let (n, d, c) = (7, 12, 5);
    let head = CudaHead::new(device, d, c, None).unwrap();
    let weights = random_weights(&mut rng, c, d);
    head.publish(&weights).unwrap();
    // Column views and transposes are not contiguous: the head copies them into row-major.
    let wide = uniform(&mut rng, n, 2 * d, 1.0);
    let phi = wide.slice(s![.., ..;2]).to_owned();
    let zt = uniform(&mut rng, c, n, 1.0);
    let got = head.logits(wide.slice(s![.., ..;2]), zt.t()).unwrap();
    let z = zt.t().to_owned();
    let want = cpu::logits(&phi, &z, &weights);
    assert_logits_close(&got, &want, &phi, &z, &weights.w, &weights.b, "strided");
}

#[test]
#[ignore = "needs a GPU"]
fn features_on_the_device_with_core_logits_mapped_in_the_kernel() {
    let device = gpu();
    let mut rng = common::rng(3);
    let (d, c, k) = (130, 12, 7);
    // Core logits column j feeds head class columns[j]; classes 1, 4, 6, 8, 11 get none.
    let columns = [0, 2, 3, 5, 7, 9, 10];
    assert_eq!(columns.len(), k);
    let head = CudaHead::new(device.clone(), d, c, Some(&columns)).unwrap();
    let weights = random_weights(&mut rng, c, d);
    head.publish(&weights).unwrap();
    let stream = device.context().new_stream().unwrap();
    for n in [1, 4, 5, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 100] {
        let phi = uniform(&mut rng, n, d, 1.0);
        let raw_z = uniform(&mut rng, n, k, 1.0);
        let mut z = Array2::<f32>::zeros((n, c));
        for (j, &class) in columns.iter().enumerate() {
            z.column_mut(class).assign(&raw_z.column(j));
        }
        let phi_dev = stream.clone_htod(phi.as_slice().unwrap()).unwrap();
        let z_dev = stream.clone_htod(raw_z.as_slice().unwrap()).unwrap();
        stream.synchronize().unwrap();
        let (phi_ptr, _) = phi_dev.device_ptr(&stream);
        let (z_ptr, _) = z_dev.device_ptr(&stream);
        // SAFETY: both buffers hold n × d and n × k values, written and synchronized above,
        // and live until the end of this iteration.
        let got = unsafe {
            head.logits_on_device(
                phi_ptr,
                Some(DeviceCoreLogits {
                    ptr: z_ptr,
                    width: k,
                }),
                n,
            )
        }
        .unwrap();
        let want = cpu::logits(&phi, &z, &weights);
        let what = format!("device features, n = {n}");
        assert_logits_close(&got, &want, &phi, &z, &weights.w, &weights.b, &what);
    }
}

#[test]
#[ignore = "needs a GPU"]
fn published_weights_reach_the_device_exactly_and_forget_all_zeroes_them() {
    let device = gpu();
    let mut rng = common::rng(4);
    for (d, c) in [(1, 1), (37, 5), (1280, 1000)] {
        let head = CudaHead::new(device.clone(), d, c, None).unwrap();
        for _ in 0..3 {
            let weights = random_weights(&mut rng, c, d);
            head.publish(&weights).unwrap();
            assert_eq!(head.served_weights().unwrap(), weights);
        }
        let zeros = ServedWeights {
            w: Array2::zeros((c, d)),
            b: vec![0.0; c],
        };
        head.publish(&zeros).unwrap();
        assert_eq!(head.served_weights().unwrap(), zeros);
        // With W = 0 and b = 0 the head adds exactly nothing to the core's logits.
        for n in [1, 40] {
            let phi = uniform(&mut rng, n, d, 1.0);
            let z = uniform(&mut rng, n, c, 1.0);
            assert_eq!(head.logits(phi.view(), z.view()).unwrap(), z);
        }
    }
}

/// Learn, forget and forget-all on a head whose forward pass runs on the GPU: after each
/// change its predictions agree with the CPU forward pass over the weights it serves.
#[test]
#[ignore = "needs a GPU"]
fn a_gpu_head_follows_learn_forget_and_forget_all() {
    gpu();
    let mut rng = common::rng(5);
    for synchronous_resolve in [true, false] {
        let (d, c) = (67, 9);
        let head = Head::detached(
            common::detached_spec(d, c, 0.5),
            &HeadOptions {
                backend: Some(BackendOptions {
                    backend: Backend::Cuda,
                    require_gpu: true,
                    device: 0,
                }),
                synchronous_resolve,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(head.info().backend.head.is_gpu());
        let probe = uniform(&mut rng, 33, d, 1.0);
        let z = uniform(&mut rng, 33, c, 1.0);
        let check = |what: &str| {
            // Finishes a background re-solve, so the served weights stay put while we compare.
            head.weights().unwrap();
            let served = head.served();
            let got = head.predict_features(&probe, &z).unwrap();
            let want = cpu::logits(&probe, &z, &served);
            assert_logits_close(&got, &want, &probe, &z, &served.w, &served.b, what);
        };
        check("empty");
        let mut next_id = 0u64;
        for round in 0..6 {
            let k = 1 + round * 3;
            let ids: Vec<u64> = (next_id..next_id + k as u64).collect();
            next_id += k as u64;
            let labels: Vec<u32> = ids.iter().map(|&i| (i % c as u64) as u32).collect();
            let phi = uniform(&mut rng, k, d, 1.0);
            head.learn_features(&ids, &phi, &Array2::zeros((k, c)), &labels)
                .unwrap();
            check(&format!("after learning round {round}"));
            head.forget(&ids[..k / 2]).unwrap();
            check(&format!("after forgetting in round {round}"));
        }
        head.forget_all().unwrap();
        head.weights().unwrap();
        assert_eq!(head.predict_features(&probe, &z).unwrap(), z, "forget-all");
    }
}

/// Predictions running while new weights are published see one whole version each. The
/// kernels are deterministic, so each prediction must equal, bit for bit, the prediction of
/// one published version. After each publish the writer waits until each reader could have
/// started a prediction, so every version is seen.
#[test]
#[ignore = "needs a GPU"]
fn concurrent_predictions_see_whole_weights_on_the_gpu() {
    let device = gpu();
    let mut rng = common::rng(6);
    let (d, c, n) = (1280, 100, 3);
    let head = Arc::new(CudaHead::new(device, d, c, None).unwrap());
    let versions: Vec<ServedWeights> = (0..30).map(|_| random_weights(&mut rng, c, d)).collect();
    head.publish(&versions[0]).unwrap();
    let probe = uniform(&mut rng, n, d, 1.0);
    let z = Array2::<f32>::zeros((n, c));
    let (reader, reader_probe, reader_z) = (head.clone(), probe.clone(), z.clone());
    let readers = common::Readers::start(READERS, move || {
        reader.logits(reader_probe.view(), reader_z.view()).unwrap()
    });
    for round in 0..200 {
        head.publish(&versions[round % versions.len()]).unwrap();
        readers.wait_for_new_calls();
    }
    let seen = readers.finish();
    let expected: Vec<Array2<f32>> = versions
        .iter()
        .map(|w| {
            head.publish(w).unwrap();
            head.logits(probe.view(), z.view()).unwrap()
        })
        .collect();
    let mut distinct = std::collections::HashSet::new();
    for logits in &seen {
        let which = expected.iter().position(|e| e == logits);
        assert!(
            which.is_some(),
            "a prediction matches no published weights: a torn read"
        );
        distinct.insert(which);
    }
    eprintln!(
        "{} predictions saw {} of {} weight versions",
        seen.len(),
        distinct.len(),
        versions.len()
    );
    assert_eq!(distinct.len(), versions.len(), "versions never seen");
}

/// With the core on ONNX Runtime's CUDA EP, `Head::predict` feeds the core's features and
/// logits from device memory straight into the head's kernel; it must agree with the host path
/// (features copied to the host, then the CPU forward pass).
#[test]
#[ignore = "needs a GPU and the CUDA EP"]
fn a_core_on_the_cuda_ep_feeds_the_head_on_the_device() {
    gpu();
    let on_gpu = BackendOptions {
        backend: Backend::Cuda,
        require_gpu: false,
        device: 0,
    };
    let core = Core::open(
        common::repo_root().join("models/mnist-core"),
        &CoreOptions {
            backend: on_gpu.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        core.placement().is_gpu(),
        "this test needs the CUDA EP: the core runs on {}",
        core.placement()
    );
    let core = Arc::new(core);
    let head = Head::in_memory(
        core.clone(),
        &HeadOptions {
            backend: Some(BackendOptions {
                require_gpu: true,
                ..on_gpu
            }),
            synchronous_resolve: true,
            ..Default::default()
        },
    )
    .unwrap();
    let report = head.info().backend;
    assert!(
        report.head.is_gpu() && report.core.as_ref().is_some_and(|c| c.is_gpu()),
        "{report}"
    );
    let mut rng = common::rng(9);
    let mut pixels = |n: usize| -> Vec<f32> {
        (0..n * core.input_len())
            .map(|_| rng.random_range(0.0..1.0))
            .collect()
    };
    let train = pixels(30);
    let labels: Vec<u32> = (0..30).map(|i| i % 10).collect();
    let ids: Vec<u64> = (0..30).collect();
    head.learn(&ids, &train, &labels).unwrap();
    for n in [1, 5, GEMV_MAX_ROWS + 1, 64] {
        let inputs = pixels(n);
        let on_device = head.predict(&inputs, n).unwrap();
        let (phi, z) = head.core_features(&inputs, n).unwrap();
        let served = head.served();
        let on_host = cpu::logits(&phi, &z, &served);
        let what = format!("core on the CUDA EP, n = {n}");
        assert_logits_close(&on_device, &on_host, &phi, &z, &served.w, &served.b, &what);
    }
}
