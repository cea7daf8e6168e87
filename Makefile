# Quickstart targets (see README.md). Everything installs into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch release the project is tested with; TORCH_SPEC=... picks another (e.g. a CUDA build).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/sdlgm train --config experiments/configs/mnist.toml --overwrite

test: setup
	$(BIN)/python -m pytest

# Performance and scale benchmark (not part of the tests): writes benchmarks/results/.
# BENCH_ARGS, e.g. "--quick" or "--device cuda"; see benchmarks/README.md.
bench: setup
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
