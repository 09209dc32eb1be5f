#!/usr/bin/env bash
# Installs NVRTC, NVIDIA's run-time CUDA compiler, into the project-local `.lethe/nvrtc/` so that
# tests/cuda_kernels.rs compiles every kernel in kernels/ on machines without CUDA or a GPU:
#   .lethe/nvrtc/libnvrtc.so.13, .lethe/nvrtc/libnvrtc-builtins.so.13.*
# They come from the PyPI wheel nvidia-cuda-nvrtc; nothing else of the wheel is kept. Version
# 13.0 matches the CUDA 13.0 driver of the GPU machines (PTX from a newer NVRTC would be too new
# for that driver's JIT). Lethe finds this folder by itself (src/device/nvrtc.rs); elsewhere,
# point LETHE_NVRTC at the library. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
NVRTC_VERSION=13.0.88
dir=.lethe/nvrtc
stamp=.lethe/setup-nvrtc-$NVRTC_VERSION.done
if [ -f "$stamp" ] && [ -f "$dir/libnvrtc.so.13" ]; then
  exit 0
fi
echo "lethe setup: installing NVRTC $NVRTC_VERSION into $dir/ (PyPI wheel nvidia-cuda-nvrtc)"
python=python3
if [ -x .lethe/venv/bin/python ]; then
  python=.lethe/venv/bin/python
fi
mkdir -p .lethe
wheel=$(mktemp -d .lethe/nvrtc-wheel.XXXXXX)
trap 'rm -rf "$wheel"' EXIT
"$python" -m pip install -q --no-deps --target "$wheel" "nvidia-cuda-nvrtc==$NVRTC_VERSION"
lib="$wheel/nvidia/cu13/lib"
rm -rf "$dir"
mkdir -p "$dir"
cp "$lib/libnvrtc.so.13" "$dir/"
cp "$lib"/libnvrtc-builtins.so.13.* "$dir/"
rm -f "$dir"/*.alt.*
touch "$stamp"
echo "lethe setup: done (NVRTC at $dir/libnvrtc.so.13)"
