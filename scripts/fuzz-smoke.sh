#!/usr/bin/env bash
# A short, bounded fuzz run of the state-file and manifest parsers and of image decoding and
# preprocessing (fuzz/fuzz_targets), for CI.
# cargo-fuzz needs unstable compiler flags; RUSTC_BOOTSTRAP=1 enables them on the stable
# toolchain. Longer runs: LETHE_FUZZ_SECONDS=600 scripts/fuzz-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${LETHE_FUZZ_SECONDS:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# -timeout: an input that runs longer than this is a hang, reported as a failure at once.
RUSTC_BOOTSTRAP=1 cargo fuzz run state_files -- -max_total_time="$seconds" -max_len=4096 \
  -timeout=60
# A decode is capped at 512 MiB (src/core/image.rs): libFuzzer's default limit of 2 GB of
# memory is a failure well above it.
RUSTC_BOOTSTRAP=1 cargo fuzz run image_files -- -max_total_time="$seconds" -max_len=4096 \
  -timeout=60
