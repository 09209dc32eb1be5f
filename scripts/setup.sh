#!/usr/bin/env bash
# Installs what Lethe's demo and tests need into the project-local `.lethe/` folder:
#   .lethe/venv            Python with numpy, scikit-learn, onnxruntime, tokenizers and Pillow
#                          (reference tests) and onnx (the synthetic core of `lethe bench`)
#   .lethe/ort/            libonnxruntime.so from the `onnxruntime` wheel (loaded at run time)
#   .lethe/nvrtc/          NVRTC from the `nvidia-cuda-nvrtc` wheel (scripts/setup-nvrtc.sh), so
#                          the tests compile every CUDA kernel even without a GPU
# Everything comes from PyPI, except cmake and pkg-config for the C/C++ package tests, which
# come from the system's packages (installed with apt-get when missing and run as root).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null || ! command -v pkg-config >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "lethe setup: installing cmake and pkg-config (apt-get)"
    apt-get update -qq && apt-get install -y -qq cmake pkg-config >/dev/null
  else
    echo "lethe setup: the C/C++ tests need cmake and pkg-config; install them (e.g. apt-get install cmake pkg-config)" >&2
  fi
fi
ORT_VERSION=1.31.1
ONNX_VERSION=1.23.2
# The Python side of the Rust `tokenizers` crate Lethe uses (tests/py/text_reference.py).
TOKENIZERS_VERSION=0.22.2
# The reference image preprocessing (tests/py/image_reference.py).
PILLOW_VERSION=13.0.0
venv=.lethe/venv
# Named after the pinned versions, so that a set-up made before a pin changed runs again.
stamp=.lethe/setup-$ORT_VERSION-onnx-$ONNX_VERSION-tokenizers-$TOKENIZERS_VERSION-pillow-$PILLOW_VERSION.done
if [ -f "$stamp" ] && [ -x "$venv/bin/python" ]; then
  exec scripts/setup-nvrtc.sh
fi
echo "lethe setup: installing Python packages and ONNX Runtime $ORT_VERSION into .lethe/ (from PyPI)"
mkdir -p .lethe/ort
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" \
  "tokenizers==$TOKENIZERS_VERSION" "pillow==$PILLOW_VERSION" "numpy>=2" "scikit-learn>=1.5"
capi=$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
lib=$(ls "$capi"/libonnxruntime.so.* | head -n 1)
cp -f "$lib" .lethe/ort/
ln -sf "$(basename "$lib")" .lethe/ort/libonnxruntime.so
touch "$stamp"
echo "lethe setup: done (ONNX Runtime at .lethe/ort/libonnxruntime.so)"
exec scripts/setup-nvrtc.sh
