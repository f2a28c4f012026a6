# validate: `python -m components.validate` (components/validate/component.yaml).
# Installs the `validate` extra (TFDV, tfx-bsl, Apache Beam, TensorFlow) minus what TFDV never
# imports (see below).
# Built by `make build-images` on images/base.Dockerfile (see images/README.md).
ARG BASE_IMAGE=local/cfpb-pipeline-base:latest
ARG BUILDER_IMAGE=local/cfpb-pipeline-builder:latest

FROM ${BUILDER_IMAGE} AS deps
# Depends on pyproject.toml and uv.lock only: a code-only change does not reinstall.
WORKDIR /src
COPY pyproject.toml uv.lock ./
# apache-beam[gcp] (TFDV's dependency) brings google-cloud-aiplatform with google-genai, pydantic,
# httpx and more (~190 MB); only Beam's Vertex AI / Gemini transforms import them, never TFDV's
# statistics. libclang (62 MB) is a dependency of tensorflow that nothing imports.
# `uv export --prune` drops those and what only they need; the rest installs at uv.lock's
# versions and hashes. tests/test_images.py validates real data in the image.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv export --frozen --no-dev --no-emit-project --extra validate \
        --prune google-cloud-aiplatform --prune libclang \
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
CMD ["python", "-m", "components.validate", "--help"]
