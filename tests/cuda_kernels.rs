//! Every kernel in `kernels/` compiles with NVRTC, GPU or not: scripts/setup.sh installs NVRTC
//! into .lethe/nvrtc/ from PyPI (elsewhere LETHE_NVRTC names it), so these tests need no GPU
//! and fail when NVRTC does not load.

use std::collections::BTreeSet;

use lethe::device::nvrtc::{self, Nvrtc, Target};
use lethe::error::CudaError;

/// NVRTC; panics when it does not load.
fn nvrtc_for(test: &str) -> &'static Nvrtc {
    let nvrtc = nvrtc::nvrtc().unwrap_or_else(|e| {
        panic!(
            "NVRTC does not load (scripts/setup.sh installs it into {}): {e}",
            nvrtc::LOCAL_NVRTC
        )
    });
    eprintln!("{test}: {}", nvrtc.describe());
    nvrtc
}

/// The targets to build: PTX for the oldest architecture this NVRTC knows (what any newer GPU
/// can JIT), and machine code for the GPU machines' H100/H200 (sm_90) and for sm_80.
fn targets(nvrtc: &Nvrtc) -> Vec<Target> {
    let oldest = *nvrtc
        .archs
        .iter()
        .min()
        .expect("NVRTC lists its architectures");
    let mut targets = vec![Target::Ptx {
        major: oldest / 10,
        minor: oldest % 10,
    }];
    for arch in [80, 90] {
        if nvrtc.archs.contains(&arch) {
            targets.push(Target::Cubin {
                major: arch / 10,
                minor: arch % 10,
            });
        }
    }
    targets
}

/// The `.entry` names of a PTX text.
fn ptx_entries(ptx: &str) -> BTreeSet<String> {
    ptx.lines()
        .filter_map(|line| line.split(".entry").nth(1))
        .map(|rest| {
            rest.trim()
                .split(|c: char| c == '(' || c.is_whitespace())
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    let nvrtc = nvrtc_for("every_kernel_compiles_with_nvrtc");
    for source in nvrtc::SOURCES {
        for target in targets(nvrtc) {
            let image = nvrtc::compile(source.file, source.source, target)
                .unwrap_or_else(|e| panic!("kernels/{}: {e}", source.file));
            let listed: BTreeSet<String> = source.kernels.iter().map(|k| k.to_string()).collect();
            match target {
                Target::Ptx { .. } => {
                    let ptx = std::str::from_utf8(&image)
                        .expect("PTX is text")
                        .trim_end_matches('\0');
                    assert_eq!(
                        ptx_entries(ptx),
                        listed,
                        "kernels/{}: the entry points in the PTX are not the ones listed in \
                         src/head/cuda/nvrtc.rs",
                        source.file
                    );
                }
                Target::Cubin { .. } => {
                    assert_eq!(&image[..4], b"\x7fELF", "a CUBIN is an ELF image");
                    for kernel in source.kernels {
                        assert!(
                            image.windows(kernel.len()).any(|w| w == kernel.as_bytes()),
                            "kernels/{} for {}: no symbol {kernel}",
                            source.file,
                            target.arch()
                        );
                    }
                }
            }
            eprintln!(
                "kernels/{} -> {} ({} bytes)",
                source.file,
                target.arch(),
                image.len()
            );
        }
    }
}

/// Kernel entry points are named `extern "C" __global__ <op>_<dtype>`, so a name says its type.
#[test]
fn kernel_names_say_their_dtype() {
    for source in nvrtc::SOURCES {
        for kernel in source.kernels {
            let (op, dtype) = kernel.rsplit_once('_').expect("<op>_<dtype>");
            assert!(
                !op.is_empty() && ["f32", "f16", "bf16", "f64", "i32", "u32"].contains(&dtype),
                "kernels/{}: {kernel} is not named <op>_<dtype>",
                source.file
            );
            assert!(
                source.source.contains(&format!("{kernel}(")),
                "kernels/{}: no kernel {kernel}",
                source.file
            );
        }
    }
}

#[test]
fn a_failed_compile_returns_nvrtc_log() {
    let nvrtc = nvrtc_for("a_failed_compile_returns_nvrtc_log");
    let broken = "#include \"common.cuh\"\n\
                  extern \"C\" __global__ void broken_f32(float* x) { x[0] = undeclared_value; }\n";
    let target = targets(nvrtc)[0];
    match nvrtc::compile("broken.cu", broken, target) {
        Err(CudaError::Compile {
            file, arch, log, ..
        }) => {
            assert_eq!(file, "broken.cu");
            assert_eq!(arch, target.arch());
            assert!(
                log.contains("undeclared_value"),
                "NVRTC's log should name the error: {log}"
            );
        }
        other => panic!("expected a compile error with NVRTC's log, got {other:?}"),
    }
}
