# fashionstream — the two commands a newcomer needs:
#   make demo   set up and run the end-to-end demo on the embedded broker
#   make test   set up, start Kafka + the Pub/Sub emulator if needed, run every test, stop what was started
# The environment lives in .venv at the repository root.
# The serving image: `make image` (Docker or Podman; docs/deployment.md).

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint image base-image gpu-prepare gpu-smoke services-start services-stop services-status clean help

help:
	@echo "make demo    set up and run the demo (embedded broker, shipped model)"
	@echo "make test    set up, start Kafka + Pub/Sub emulator if not running, run all tests, stop what was started"
	@echo "make lint    ruff + mypy only"
	@echo "make image   build deploy/Dockerfile with docker or podman (IMAGE=name:tag, BASE_IMAGE=image to start from)"
	@echo "make base-image   build fashionstream-base:bookworm from Debian packages, for machines without a registry"
	@echo "make gpu-prepare, make gpu-smoke   stage and CPU-check the GPU training runs (bench/gpu_runs.sh)"

# Serving needs no torch: the demo environment installs only what serving needs.
$(BIN)/.serve-installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fashionstream needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[serve,kafka,gcp]'
	touch $@

# Tests need everything, including torch for training/export tests (several GB, cached by pip after the first time).
$(BIN)/.all-installed: pyproject.toml $(BIN)/.serve-installed
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $@

demo: $(BIN)/.serve-installed
	$(BIN)/fashionstream demo

test: $(BIN)/.all-installed
	scripts/test

lint: $(BIN)/.all-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The serving image. scripts/container holds the defaults (IMAGE=fashionstream:<version>,
# BASE_IMAGE=python:3.11-slim) and picks the engine; without a registry: make image BASE_IMAGE=fashionstream-base:bookworm
image:
	scripts/container build $(if $(IMAGE),--image $(IMAGE)) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))
base-image:
	scripts/container base

# The GPU training runs (docs/benchmarks.md): stage wheels and data into .gpu/, then run it all for 3 steps on the CPU.
gpu-prepare: $(BIN)/.all-installed
	bench/gpu_runs.sh prepare
gpu-smoke: $(BIN)/.all-installed
	bench/gpu_runs.sh smoke

services-start:
	scripts/services start
services-stop:
	scripts/services stop
services-status:
	scripts/services status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
