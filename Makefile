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

.PHONY: uv help venv test test-runtime test-sdk lint compile run-local bench bench-model clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

uv:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"

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

test-sdk: $(VENV_SDK)/.synced
	$(RUN_SDK) -m pytest -m sdk tests/test_pipeline*.py $(PYTEST_ARGS)

lint: $(VENV)/.synced  ## ruff
	$(VENV)/bin/ruff check .

compile: $(VENV_SDK)/.synced  ## compile the pipeline package to pipeline.yaml
	$(RUN_SDK) pipeline.py --compile --output pipeline.yaml

$(SAMPLE): | $(VENV)/.synced
	$(RUN) -m components.datagen --rows $(ROWS) --seed $(SEED) --out $@

# Until the step images exist, the local run chains the steps' CLIs as plain processes; the
# data store and the model registry persist under local_runs/ between runs.
MODEL_NAME ?= cfpb-disputes
HPARAMS ?= {}
run-local: $(VENV)/.synced $(SAMPLE)  ## ingest, validate, transform, train, evaluate, push the sample
	@run=$(LOCAL)/runs/$$(date +%Y%m%d-%H%M%S); set -e; \
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
	ln -sfn $$(realpath $$run) $(LOCAL)/latest; \
	echo "run: $$run (latest: $(LOCAL)/latest)"; \
	echo "reports: $$run/validation/report.html $$run/evaluation/report.html"; \
	echo "registry: $(LOCAL)/registry/$(MODEL_NAME)/index.json"

bench: $(VENV)/.synced  ## ingest/validate figures on 1,000,000 rows (see bench/README.md)
	$(RUN) bench/bench_ingest_validate.py

bench-model: $(VENV)/.synced  ## training figures on 100,000 rows, AUC vs a TF-IDF baseline
	$(RUN) bench/bench_model.py

clean:  ## remove environments and local runs
	rm -rf $(VENV) $(VENV_SDK) $(LOCAL) pipeline.yaml
