#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, prints nvidia-smi, runs Lethe's
# CUDA tests including those #[ignore]d for needing a GPU (each fails when the GPU path does not
# run) and the GPU benchmark, and writes a table and the logs to a folder; the table is printed
# last.
#
#   scripts/gpu-check.sh --build   where cargo is (GPU machines have no Rust toolchain): builds
#                                  the CUDA test binaries (release, stripped) into
#                                  .lethe/gpu-check/, the folder to bring to the GPU machine
#   scripts/gpu-check.sh OUT_DIR   on the GPU machine: runs them (building them first if they
#                                  are missing and cargo is there) and writes OUT_DIR/
#                                  nvidia-smi.txt, environment.txt, <suite>.log, gpu-bench.md
#                                  and summary.md
#
# Optional environment: ORT_DYLIB_PATH (the ONNX Runtime library; onnxruntime-gpu's puts the
# core on the CUDA EP, otherwise the machine's onnxruntime wheel or .lethe/ort is used),
# LETHE_NVRTC (the NVRTC library; otherwise the loader path, a CUDA toolkit or the Python
# nvidia-cuda-nvrtc wheel), LETHE_REQUIRE_CUDA_EP=1 (also run the tests that need ONNX Runtime's
# CUDA EP, named *cuda_ep*: they fail when the loaded ONNX Runtime has none; otherwise they are
# filtered out), LETHE_GPU_CHECK_BIN (where the binaries are), LETHE_GPU_CHECK_TIMEOUT (seconds
# per suite, default 300).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
suites=(cuda_kernels cuda_backend cuda_parity head_concurrency)
bench=cuda_bench
bin_dir=${LETHE_GPU_CHECK_BIN:-$repo/.lethe/gpu-check}
limit=${LETHE_GPU_CHECK_TIMEOUT:-300}

build() {
  mkdir -p "$bin_dir"
  local args=()
  for suite in "${suites[@]}" "$bench"; do args+=(--test "$suite"); done
  echo "gpu-check: building ${suites[*]} $bench (release)"
  cargo test --release --no-run --message-format=json "${args[@]}" >"$bin_dir/build.json" || return 1
  python3 - "$bin_dir" <<'PY' || return 1
import json, shutil, subprocess, sys
out = sys.argv[1]
for line in open(f"{out}/build.json"):
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["kind"] == ["test"]:
        dest = f"{out}/{msg['target']['name']}"
        shutil.copyfile(msg["executable"], dest)
        subprocess.run(["strip", dest], check=False)
        subprocess.run(["chmod", "+x", dest], check=True)
PY
  rm -f "$bin_dir/build.json"
  # The commit the binaries were built from (the GPU machine's copy of the repo may not say).
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tests kernels Cargo.toml || echo '+changes')" \
    >"$bin_dir/commit"
  du -sh "$bin_dir"
  echo "gpu-check: bring $bin_dir (relative: ${bin_dir#"$repo"/}) to the GPU machine"
}

if [ "${1:-}" = "--build" ]; then
  build
  exit $?
fi
if [ $# -ne 1 ]; then
  echo "usage: $0 --build | $0 OUT_DIR" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)

# 1. The card.
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"
card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
card=${card:-"no GPU seen by nvidia-smi"}

# 2. The libraries Lethe loads at run time.
python=$(command -v python3 || true)
if [ -z "${ORT_DYLIB_PATH:-}" ] && [ ! -e .lethe/ort/libonnxruntime.so ] && [ -n "$python" ]; then
  ORT_DYLIB_PATH=$("$python" - <<'PY' 2>/dev/null
import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
print(libs[0] if libs else "")
PY
)
  [ -n "$ORT_DYLIB_PATH" ] && export ORT_DYLIB_PATH
fi
if [ -z "${LETHE_NVRTC:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.13 '; then
  for candidate in /usr/local/cuda/lib64/libnvrtc.so.13 /usr/local/cuda-13*/lib64/libnvrtc.so.13; do
    if [ -f "$candidate" ]; then LETHE_NVRTC=$candidate; break; fi
  done
  if [ -z "${LETHE_NVRTC:-}" ] && [ -n "$python" ]; then
    LETHE_NVRTC=$("$python" - <<'PY' 2>/dev/null
import glob, site, sys
for root in site.getsitepackages() + [site.getusersitepackages()] + sys.path:
    hits = glob.glob(f"{root}/nvidia/cu13/lib/libnvrtc.so.13") + glob.glob(f"{root}/nvidia/cuda_nvrtc/lib/libnvrtc.so.13")
    if hits:
        print(hits[0]); break
PY
)
  fi
  if [ -z "${LETHE_NVRTC:-}" ]; then
    LETHE_NVRTC=$(find / -name 'libnvrtc.so.13' -not -path '/proc/*' 2>/dev/null | head -n 1)
  fi
  [ -n "${LETHE_NVRTC:-}" ] && export LETHE_NVRTC
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "card: $card"
  echo "repo: $repo ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "ORT_DYLIB_PATH: ${ORT_DYLIB_PATH:-(unset: .lethe/ort or the loader path)}"
  echo "LETHE_NVRTC: ${LETHE_NVRTC:-(unset: the loader path or .lethe/nvrtc)}"
  echo "binaries: $bin_dir, built at commit $(cat "$bin_dir/commit" 2>/dev/null || echo '(not recorded)')"
} | tee "$out/environment.txt"

# 3. The binaries.
missing=0
for suite in "${suites[@]}" "$bench"; do [ -x "$bin_dir/$suite" ] || missing=1; done
if [ $missing = 1 ]; then
  if command -v cargo >/dev/null; then
    build || { echo "gpu-check: the build failed" >&2; exit 1; }
  else
    echo "gpu-check: no binaries in $bin_dir and no cargo here: run '$0 --build' where cargo is and bring $bin_dir" >&2
    exit 1
  fi
fi

# 4. The tests, then the benchmark. Binaries run from the repo root, which they find through
# CARGO_MANIFEST_DIR (their build path is another machine's).
export CARGO_MANIFEST_DIR=$repo
test_args=(--include-ignored --nocapture)
if [ "${LETHE_REQUIRE_CUDA_EP:-}" != 1 ]; then test_args+=(--skip cuda_ep); fi
rows=()
failed=0
for suite in "${suites[@]}"; do
  echo "gpu-check: $suite"
  if timeout "$limit" "$bin_dir/$suite" "${test_args[@]}" >"$out/$suite.log" 2>&1; then
    result=pass
  else
    result="FAIL (exit $?)"
    failed=1
  fi
  rows+=("| $suite | $result | $(grep -E '^test result:' "$out/$suite.log" | tail -n 1) |")
done
echo "gpu-check: $bench"
if LETHE_BENCH_OUT=$out timeout "$limit" "$bin_dir/$bench" --ignored --nocapture >"$out/$bench.log" 2>&1 \
  && [ -s "$out/gpu-bench.md" ]; then
  result=pass
else
  result=FAIL
  failed=1
fi
rows+=("| $bench | $result | see gpu-bench.md |")

# 5. The summary, printed last.
{
  echo "# Lethe GPU check: $card"
  echo
  echo "$(date -u +%Y-%m-%d), binaries built at commit $(cat "$bin_dir/commit" 2>/dev/null || echo '(not recorded)'); logs in $out"
  echo
  echo "| suite | result | tests (filtered out: the CUDA EP tests, see LETHE_REQUIRE_CUDA_EP) |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  if [ -s "$out/gpu-bench.md" ]; then cat "$out/gpu-bench.md"; else echo "(no benchmark table: see $bench.log)"; fi
} >"$out/summary.md"
echo
cat "$out/summary.md"
exit $failed
