# rlvsdistill: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The torch pin lives in pyproject.toml; installing it first keeps pip from pulling a CUDA build for the CPU env.
TORCH_PIN := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
# Set TORCH_INDEX=https://download.pytorch.org/whl/cpu on a laptop whose PyPI would serve the CUDA wheel.
TORCH_INDEX ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_PIN)
	$(PIP) install --quiet -e '.[train,cluster,report,test]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create the CPU environment in .venv (torch CPU wheel first, then the pinned set)

.PHONY: test
test: $(VENV)/.installed ## run the test suite on CPU (installs what it needs)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: $(VENV)/.installed ## the suite without the slow multi-process training tests
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

.PHONY: bench-grading
bench-grading: $(VENV)/.installed ## grader speed vs the plain serial baseline (prints ratios)
	$(PY) tests/benchmarks/bench_grading.py

.PHONY: bench-eval
bench-eval: $(VENV)/.installed ## evaluation pipeline overhead vs generate alone (prints the ratio)
	$(PY) tests/benchmarks/bench_eval.py
	$(PY) tests/benchmarks/bench_eval.py --extract free

.PHONY: clean
clean: ## remove the environment and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info
