# Lethe's two commands: `make demo` and `make test`. Each does its own set-up (scripts/setup.sh).
CARGO ?= cargo

.PHONY: setup demo test lint

setup:
	@scripts/setup.sh

demo: setup
	$(CARGO) run --release --quiet -- demo

test: setup
	$(CARGO) test --all-targets
	$(CARGO) test --doc

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
