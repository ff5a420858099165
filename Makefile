# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build by default (offline-safe here). GPU workers set TORCH_INDEX to PyTorch's
# CUDA wheel index (README "GPU install"); the same version is pinned either way.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
DEMO_DIR ?= runs/demo
# The torch pin is a constraint on every later resolver call, so no dependency can
# swap the CPU wheel for a newer (CUDA) build.
CONSTRAINTS := $(VENV)/torch-constraint.txt

.PHONY: install demo test test-fast bench stack stack-down clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	echo "torch==$(TORCH_VERSION)" > $(CONSTRAINTS)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev,stack]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/asft pipeline --artifact-root $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

# The team stack without Docker (README "Team setup"): PostgreSQL, S3, MLflow and Prefect
# servers, work pools, deployments and process workers on 127.0.0.1.
stack: install
	$(BIN)/asft stack up

stack-down: install
	$(BIN)/asft stack down

bench: install
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
