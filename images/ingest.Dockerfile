# ingest: `python -m components.ingest` (components/ingest/component.yaml).
# Installs the `ingest` extra without TensorFlow or Beam (see below): about 270 MB of packages.
# Built by `make build-images` on images/base.Dockerfile (see images/README.md).
ARG BASE_IMAGE=local/cfpb-pipeline-base:latest
ARG BUILDER_IMAGE=local/cfpb-pipeline-builder:latest

FROM ${BUILDER_IMAGE} AS deps
# Depends on pyproject.toml and uv.lock only: a code-only change does not reinstall.
WORKDIR /src
COPY pyproject.toml uv.lock ./
# tfx-bsl declares tensorflow, tensorflow-serving-api, apache-beam[gcp], google-api-python-client
# and pandas as dependencies, but its Arrow-to-tf.Example encoder (all ingest uses) imports none
# of them. `uv export --prune` drops them and what only they need (142 of the extra's 160
# packages); the rest installs at uv.lock's versions and hashes. tests/test_images.py runs an
# ingest in the image to show nothing needed is missing.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv export --frozen --no-dev --no-emit-project --extra ingest \
        --prune tensorflow --prune tensorflow-serving-api --prune apache-beam \
        --prune google-api-python-client --prune pandas \
        --output-file /tmp/requirements.txt \
    && uv venv /opt/venv \
    && uv pip sync --python /opt/venv/bin/python --require-hashes /tmp/requirements.txt \
    && slim-venv /opt/venv

FROM ${BASE_IMAGE}
COPY --from=deps /opt/venv /opt/venv
ARG CODE_VERSION=unknown
ENV CODE_VERSION=${CODE_VERSION}
# The code last, so a code-only change rebuilds nothing above this line.
COPY components/ /app/components/
USER 1000:1000
# kfp passes the step's command as the container command: no ENTRYPOINT on purpose.
CMD ["python", "-m", "components.ingest", "--help"]
