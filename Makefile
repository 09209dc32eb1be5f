# Lethe's two commands: `make demo` and `make test`. Each does its own set-up (scripts/setup.sh).
# The C/C++ package: `make install PREFIX=...` (see ffi/README.md).
CARGO ?= cargo
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
# The cbindgen that generates ffi/lethe.h (CI installs it: .ci/run).
CBINDGEN ?= cbindgen
CBINDGEN_VERSION := 0.29.4

.PHONY: setup demo test test-ffi lint install header check-header

setup:
	@scripts/setup.sh

demo: setup
	$(CARGO) run --release --quiet -p lethe-cli -- demo

# Tests that need a GPU are #[ignore]d (they show as ignored, not passed). LETHE_REQUIRE_GPU=1
# runs them too, and those that also need ONNX Runtime's CUDA EP (named *cuda_ep*) with
# LETHE_REQUIRE_CUDA_EP=1; the GPU benchmark runs only in scripts/gpu-check.sh.
GPU_TESTS := $(if $(filter 1,$(LETHE_REQUIRE_GPU)),-- --include-ignored --skip gpu_benchmark $(if $(filter 1,$(LETHE_REQUIRE_CUDA_EP)),,--skip cuda_ep))

test: setup
	$(CARGO) test --workspace --all-targets $(GPU_TESTS)
	$(CARGO) test --workspace --doc
	ffi/tests/run.sh

# The C and C++ tests alone: C API under ASan/UBSan, threads, C++ wrapper, installed package.
test-ffi: setup
	ffi/tests/run.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# lethe.h, lethe.hpp, liblethe.so, liblethe.a, lethe.pc, lethe-config.cmake (DESTDIR honoured).
install:
	$(CARGO) build --release --lib
	ffi/install.sh $(TARGET_DIR)/release $(PREFIX) $(LIBDIR) $(INCLUDEDIR)

# Regenerates ffi/lethe.h from src/ffi.rs with the pinned cbindgen.
header:
	@$(CBINDGEN) --version | grep -qx "cbindgen $(CBINDGEN_VERSION)" || { echo "make header needs cbindgen $(CBINDGEN_VERSION): cargo install cbindgen --version $(CBINDGEN_VERSION) --locked" >&2; exit 1; }
	$(CBINDGEN) --quiet --config cbindgen.toml --output ffi/lethe.h src/ffi.rs

# Fails if the committed ffi/lethe.h is not what src/ffi.rs generates.
check-header:
	@$(CBINDGEN) --version | grep -qx "cbindgen $(CBINDGEN_VERSION)" || { echo "make check-header needs cbindgen $(CBINDGEN_VERSION): cargo install cbindgen --version $(CBINDGEN_VERSION) --locked" >&2; exit 1; }
	@mkdir -p $(TARGET_DIR)
	$(CBINDGEN) --quiet --config cbindgen.toml --output $(TARGET_DIR)/lethe.h.generated src/ffi.rs
	@diff -u ffi/lethe.h $(TARGET_DIR)/lethe.h.generated || { echo "ffi/lethe.h is out of date: run make header" >&2; exit 1; }
