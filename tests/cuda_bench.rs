//! The GPU benchmark (`#[ignore]`d: scripts/gpu-check.sh runs it on a GPU machine):
//!
//! 1. the device's yardsticks, measured: memory bandwidth (device-to-device copy) and f32 FMA
//!    throughput (kernels/bench.cu);
//! 2. the head's forward kernel at batch 1/64/1024 for d = 128/1280/2048 and C = 10/100/1000,
//!    as a share of the measured bandwidth (what bounds batch 1) and compute (what bounds large
//!    batches), next to the whole GPU call (copies included) and the CPU head;
//! 3. core + head against the core alone, for the mobilenetv2-imagenet bundle, wherever its core
//!    runs (ONNX Runtime's CUDA EP when the loaded library has it, else the CPU).
//!
//! The table goes to stdout and, with LETHE_BENCH_OUT=DIR, to DIR/gpu-bench.md. Compare timings
//! only within one run: they depend on the card (its name heads the table).

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::uniform;
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use lethe::device::cpu;
use lethe::device::cuda::{CudaHead, ForwardKernel, GpuDevice};
use lethe::device::nvrtc;
use lethe::ServedWeights;
use lethe::{Backend, BackendOptions};
use lethe::{Core, CoreOptions, Head, HeadOptions};
use ndarray::Array2;
use rand::Rng;

const BATCHES: [usize; 3] = [1, 64, 1024];
const DIMS: [usize; 3] = [128, 1280, 2048];
const CLASSES: [usize; 3] = [10, 100, 1000];
/// Each GPU measurement repeats until it has run at least this long.
const MIN_GPU_TIME: Duration = Duration::from_millis(50);
/// The CPU head and the core are timed for at least this long (they are slower).
const MIN_HOST_TIME: Duration = Duration::from_millis(200);

/// Seconds per run of `run`, repeated until `min` has passed (after one warm-up run).
fn time_host(min: Duration, mut run: impl FnMut()) -> f64 {
    run();
    let start = Instant::now();
    let mut reps = 0u32;
    while start.elapsed() < min || reps < 3 {
        run();
        reps += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(reps)
}

/// Seconds per run of `enqueue` on `stream`, by CUDA events around a batch of runs.
fn time_device(stream: &Arc<CudaStream>, mut enqueue: impl FnMut()) -> f64 {
    let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
    enqueue();
    stream.synchronize().unwrap();
    let mut batch = 1u32;
    loop {
        let start = stream.record_event(timed).unwrap();
        for _ in 0..batch {
            enqueue();
        }
        let end = stream.record_event(timed).unwrap();
        end.synchronize().unwrap();
        let ms = f64::from(start.elapsed_ms(&end).unwrap());
        if ms >= MIN_GPU_TIME.as_secs_f64() * 1e3 || batch >= 1 << 16 {
            return ms * 1e-3 / f64::from(batch);
        }
        batch *= 4;
    }
}

/// Device-to-device copy bandwidth in bytes/s (read + write).
fn measured_bandwidth(stream: &Arc<CudaStream>) -> f64 {
    const BYTES: usize = 512 << 20;
    let src = stream.alloc_zeros::<u8>(BYTES).unwrap();
    let mut dst = stream.alloc_zeros::<u8>(BYTES).unwrap();
    let seconds = time_device(stream, || stream.memcpy_dtod(&src, &mut dst).unwrap());
    2.0 * BYTES as f64 / seconds
}

/// f32 FMA throughput in flop/s.
fn measured_compute(device: &GpuDevice, stream: &Arc<CudaStream>) -> f64 {
    const ITERS: u32 = 1 << 14;
    const THREADS: u32 = 256;
    let image = nvrtc::compile(nvrtc::BENCH.file, nvrtc::BENCH.source, device.target).unwrap();
    let module = device
        .context()
        .load_module(cudarc::nvrtc::Ptx::from_binary(image))
        .unwrap();
    let fma = module.load_function("fma_peak_f32").unwrap();
    let sms = device
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .unwrap() as u32;
    let blocks = sms * 16;
    let mut out = stream
        .alloc_zeros::<f32>((blocks * THREADS) as usize)
        .unwrap();
    let config = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let seconds = time_device(stream, || {
        // SAFETY: fma_peak_f32(float* out, u32 iters) writes one value per thread into `out`.
        unsafe {
            stream
                .launch_builder(&fma)
                .arg(&mut out)
                .arg(&ITERS)
                .launch(config)
        }
        .unwrap();
    });
    16.0 * f64::from(ITERS) * f64::from(blocks * THREADS) / seconds
}

fn micros(seconds: f64) -> String {
    format!("{:.1}", seconds * 1e6)
}

#[test]
#[ignore = "a benchmark: scripts/gpu-check.sh runs it on a GPU machine"]
fn gpu_benchmark() {
    let device = common::cuda::gpu();
    let stream = device.context().new_stream().unwrap();
    let bandwidth = measured_bandwidth(&stream);
    let compute = measured_compute(&device, &stream);
    let mut table = String::new();
    writeln!(table, "## Lethe GPU benchmark: {}\n", device.describe()).unwrap();
    writeln!(
        table,
        "Measured on this card: {:.0} GB/s device-to-device copy, {:.1} TFLOP/s f32 FMA.\n",
        bandwidth / 1e9,
        compute / 1e12
    )
    .unwrap();
    writeln!(
        table,
        "Each kernel alone (features already on the device): `gemv` = head_forward_f32, \
         `tiled` = head_forward_tiled_f32; the head picks the one marked *. Its throughput as a \
         share of the card's, then the whole GPU call `CudaHead::logits` (host copies \
         included) and the CPU head (`cpu::logits`) at the same size:\n"
    )
    .unwrap();
    writeln!(
        table,
        "| n | d | C | gemv µs | tiled µs | GB/s | % of copy BW | TFLOP/s | % of FMA peak | \
         GPU call µs | CPU head µs |"
    )
    .unwrap();
    writeln!(table, "|---|---|---|---|---|---|---|---|---|---|---|").unwrap();
    let mut rng = common::rng(7);
    for d in DIMS {
        for c in CLASSES {
            let head = CudaHead::new(device.clone(), d, c, None).unwrap();
            let weights = ServedWeights {
                w: uniform(&mut rng, c, d, 1.0),
                b: (0..c).map(|_| rng.random_range(-1.0..1.0)).collect(),
            };
            head.publish(&weights).unwrap();
            for n in BATCHES {
                let phi = uniform(&mut rng, n, d, 1.0);
                let z = Array2::<f32>::zeros((n, c));
                let phi_dev = stream.clone_htod(phi.as_slice().unwrap()).unwrap();
                let mut out = stream.alloc_zeros::<f32>(n * c).unwrap();
                stream.synchronize().unwrap();
                let (phi_ptr, _) = phi_dev.device_ptr(&stream);
                let mut time_kernel = |kernel: ForwardKernel| {
                    let mut in_flight = Vec::new();
                    let seconds = time_device(&stream, || {
                        // SAFETY: phi_dev holds n × d values and outlives this loop body.
                        let run = unsafe {
                            head.forward_on_device(&stream, kernel, phi_ptr, None, n, &mut out)
                        };
                        in_flight.push(run.unwrap());
                    });
                    drop(in_flight);
                    seconds
                };
                let gemv = time_kernel(ForwardKernel::Gemv);
                let tiled = time_kernel(ForwardKernel::Tiled);
                let chosen = head.kernel_for(n);
                let kernel = match chosen {
                    ForwardKernel::Gemv => gemv,
                    ForwardKernel::Tiled => tiled,
                };
                let mark = |k: ForwardKernel| if k == chosen { "*" } else { "" };
                let call = time_host(MIN_GPU_TIME, || {
                    head.logits(phi.view(), z.view()).unwrap();
                });
                let on_cpu = time_host(MIN_HOST_TIME, || {
                    cpu::logits(&phi, &z, &weights);
                });
                let bytes = 4.0 * (c * d + c + n * d + n * c) as f64;
                let flops = 2.0 * (n * d * c) as f64;
                writeln!(
                    table,
                    "| {n} | {d} | {c} | {}{} | {}{} | {:.0} | {:.0}% | {:.2} | {:.0}% | {} | {} |",
                    micros(gemv),
                    mark(ForwardKernel::Gemv),
                    micros(tiled),
                    mark(ForwardKernel::Tiled),
                    bytes / kernel / 1e9,
                    100.0 * bytes / kernel / bandwidth,
                    flops / kernel / 1e12,
                    100.0 * flops / kernel / compute,
                    micros(call),
                    micros(on_cpu),
                )
                .unwrap();
            }
        }
    }
    writeln!(table).unwrap();
    table.push_str(&core_and_head());
    println!("\n{table}");
    if let Some(dir) = std::env::var_os("LETHE_BENCH_OUT") {
        let path = PathBuf::from(dir).join("gpu-bench.md");
        std::fs::write(&path, &table).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Core + head against the core alone (mobilenetv2-imagenet, d = 1280, C = 10).
fn core_and_head() -> String {
    let dir = common::repo_root().join("models/mobilenetv2-imagenet");
    let options = CoreOptions {
        backend: BackendOptions {
            backend: Backend::Auto,
            ..Default::default()
        },
        ..Default::default()
    };
    let core = match Core::open(&dir, &options) {
        Ok(core) => Arc::new(core),
        Err(e) => return format!("Core + head: skipped, the core did not open: {e}\n"),
    };
    let head = Head::in_memory(
        core.clone(),
        &HeadOptions {
            backend: Some(BackendOptions {
                backend: Backend::Cuda,
                require_gpu: true,
                device: 0,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let mut out = format!(
        "Core + head ({}): {}\n\n| n | core alone ms | core + head ms | ratio |\n|---|---|---|---|\n",
        core.bundle().manifest.name,
        head.info().backend
    );
    let mut rng = common::rng(8);
    let features = head.spec().features.clone();
    for n in [1, 64] {
        let inputs: Vec<f32> = (0..n * core.input_len())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let alone = time_host(MIN_HOST_TIME, || {
            core.run(&inputs, n, &[features.as_str()]).unwrap();
        });
        let both = time_host(MIN_HOST_TIME, || {
            head.predict(&inputs, n).unwrap();
        });
        writeln!(
            out,
            "| {n} | {:.3} | {:.3} | {:.3} |",
            alone * 1e3,
            both * 1e3,
            both / alone
        )
        .unwrap();
    }
    out
}
