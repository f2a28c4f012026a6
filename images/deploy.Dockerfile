# deploy: `python -m components.deploy` (components/deploy/component.yaml).
# Installs the `deploy` extra (kubernetes client, minio): no TensorFlow.
# Built by `make build-images` on images/base.Dockerfile (see images/README.md).
ARG BASE_IMAGE=local/cfpb-pipeline-base:latest
ARG BUILDER_IMAGE=local/cfpb-pipeline-builder:latest

FROM ${BUILDER_IMAGE} AS deps
# Depends on pyproject.toml and uv.lock only: a code-only change does not reinstall.
WORKDIR /src
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --extra deploy \
    && slim-venv /opt/venv

FROM ${BASE_IMAGE}
COPY --from=deps /opt/venv /opt/venv
ARG CODE_VERSION=unknown
ENV CODE_VERSION=${CODE_VERSION}
# The code last, so a code-only change rebuilds nothing above this line.
COPY components/ /app/components/
USER 1000:1000
# kfp passes the step's command as the container command: no ENTRYPOINT on purpose.
CMD ["python", "-m", "components.deploy", "--help"]
