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

# Cluster: `make submit-grpo IMAGE_TAG=... [CONFIG=...] [CLUSTER=...] [NAMESPACE=...]`
VERSION := $(shell grep -m1 '^version' pyproject.toml | cut -d'"' -f2)
GIT_SHA := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
REGISTRY ?=
IMAGE ?= $(if $(REGISTRY),$(REGISTRY)/)rlvsdistill
IMAGE_TAG ?= $(GIT_SHA)
CLUSTER ?= configs/cluster/single-node.yaml
NAMESPACE ?=
GRPO_CONFIG ?= configs/paper/grpo_qwen2.5_math_1.5b.yaml
SFT_CONFIG ?= configs/paper/sft_qwen2.5_math_1.5b.yaml
EVAL_CONFIG ?= configs/paper/eval_qwen2.5_math_1.5b_math500.yaml
CONFIG ?=
RUN ?=
CRD ?= $(wildcard ../shared/k8s/crds/kubeflow.org_pytorchjobs.yaml)
# Submitting needs only the `cluster` extra: the cluster targets use $(VENV) when it is installed, else a light
# venv without torch, TRL or DeepSpeed.
CLUSTER_VENV ?= .venv-cluster
SUBMIT_VENV := $(if $(wildcard $(VENV)/.installed),$(VENV),$(CLUSTER_VENV))
RLV := $(SUBMIT_VENV)/bin/rlvsdistill
CLUSTER_ARGS = --cluster $(CLUSTER) $(if $(NAMESPACE),--namespace $(NAMESPACE))
SUBMIT = $(RLV) submit $(1) --config $(or $(CONFIG),$(2)) --image-tag $(IMAGE_TAG) $(CLUSTER_ARGS) $(if $(CRD),--crd $(CRD))

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_PIN)
	$(PIP) install --quiet -e '.[train,cluster,report,test]'
	touch $@

$(CLUSTER_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CLUSTER_VENV)
	$(CLUSTER_VENV)/bin/pip install --quiet --upgrade pip
	$(CLUSTER_VENV)/bin/pip install --quiet -e '.[cluster]'
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create the CPU environment in .venv (torch CPU wheel first, then the pinned set)

.PHONY: demo
demo: $(VENV)/.installed ## the whole study in miniature on one CPU (DEMO_ARGS=--fresh to start over)
	$(VENV)/bin/rlvsdistill demo $(DEMO_ARGS)

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

.PHONY: image
image: ## build the CUDA image, tagged with the git commit and the VERSION (needs Docker)
	docker build -f images/Dockerfile --build-arg GIT_COMMIT=$(GIT_SHA) --build-arg VERSION=$(VERSION) \
	  -t $(IMAGE):$(GIT_SHA) -t $(IMAGE):$(VERSION) .

.PHONY: push
push: ## push the image to REGISTRY (REGISTRY=registry.example.org/team)
	@test -n "$(REGISTRY)" || { echo "set REGISTRY=<registry/namespace>"; exit 2; }
	docker push $(IMAGE):$(GIT_SHA)
	docker push $(IMAGE):$(VERSION)

.PHONY: lint-image
lint-image: $(VENV)/.installed ## lint images/Dockerfile with hadolint
	$(VENV)/bin/hadolint images/Dockerfile

.PHONY: check-image
check-image: $(VENV)/.installed ## check that the image's pinned set resolves for CUDA / CPython 3.12 (needs PyPI)
	$(PY) images/check_resolves.py

GENERATE_CONFIG ?= configs/paper/generate_qwq32b_math_train.yaml

.PHONY: submit-grpo submit-sft submit-eval submit-generate
submit-grpo: $(SUBMIT_VENV)/.installed ## submit a GRPO run (CONFIG, CLUSTER, IMAGE_TAG, NAMESPACE)
	$(call SUBMIT,grpo,$(GRPO_CONFIG))
submit-sft: $(SUBMIT_VENV)/.installed ## submit an SFT distillation run
	$(call SUBMIT,sft,$(SFT_CONFIG))
submit-eval: $(SUBMIT_VENV)/.installed ## submit an evaluation (indexed Job of shards + merge Job)
	$(call SUBMIT,eval,$(EVAL_CONFIG))
submit-generate: $(SUBMIT_VENV)/.installed ## submit teacher sampling for distillation data
	$(call SUBMIT,generate,$(GENERATE_CONFIG))

.PHONY: render-grpo render-sft render-eval render-generate
render-grpo: $(SUBMIT_VENV)/.installed ## print the GRPO run's YAML (validated, nothing sent)
	@$(call SUBMIT,grpo,$(GRPO_CONFIG)) --dry-run
render-sft: $(SUBMIT_VENV)/.installed ## print the SFT run's YAML
	@$(call SUBMIT,sft,$(SFT_CONFIG)) --dry-run
render-eval: $(SUBMIT_VENV)/.installed ## print the evaluation's YAML
	@$(call SUBMIT,eval,$(EVAL_CONFIG)) --dry-run
render-generate: $(SUBMIT_VENV)/.installed ## print the teacher sampling Job's YAML
	@$(call SUBMIT,generate,$(GENERATE_CONFIG)) --dry-run

# The kind is the config file's prefix: configs/paper/grpo_*.yaml -> grpo.
PREFETCH_CONFIG = $(or $(CONFIG),$(GRPO_CONFIG))
.PHONY: prefetch-model
prefetch-model: $(SUBMIT_VENV)/.installed ## download CONFIG's model and dataset into the cluster's model_cache_pvc (a Job)
	$(call SUBMIT,$(firstword $(subst _, ,$(notdir $(PREFETCH_CONFIG)))),$(PREFETCH_CONFIG)) --prefetch-model

.PHONY: status logs cancel
status: $(SUBMIT_VENV)/.installed ## show a run (RUN=name)
	$(RLV) status $(RUN) $(CLUSTER_ARGS)
logs: $(SUBMIT_VENV)/.installed ## follow a run's logs (RUN=name)
	$(RLV) logs $(RUN) -f $(CLUSTER_ARGS)
cancel: $(SUBMIT_VENV)/.installed ## delete a run's objects and pods (RUN=name)
	$(RLV) cancel $(RUN) $(CLUSTER_ARGS)

.PHONY: k8s-examples
k8s-examples: $(VENV)/.installed ## re-render the golden manifests in k8s/examples/ from configs/paper/
	$(PY) -m rlvsdistill.cluster.examples

.PHONY: clean
clean: ## remove the environment and caches
	rm -rf $(VENV) $(CLUSTER_VENV) .pytest_cache build *.egg-info
