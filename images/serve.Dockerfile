# serve: `python -m components.serve`, the TF-Serving-compatible model server (REST 8501,
# gRPC 8500) over the model registry; a long-running service, not a pipeline step.
# Installs the `serve` extra (TensorFlow, tensorflow-serving-api, grpcio, minio).
# Built by `make build-images` on images/base.Dockerfile (see images/README.md).
ARG BASE_IMAGE=local/cfpb-pipeline-base:latest
ARG BUILDER_IMAGE=local/cfpb-pipeline-builder:latest

FROM ${BUILDER_IMAGE} AS deps
# Depends on pyproject.toml and uv.lock only: a code-only change does not reinstall.
WORKDIR /src
COPY pyproject.toml uv.lock ./
# libclang (62 MB) is a dependency of tensorflow that nothing imports at run time.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --extra serve --no-install-package libclang \
    && slim-venv /opt/venv

FROM ${BASE_IMAGE}
COPY --from=deps /opt/venv /opt/venv
EXPOSE 8500 8501
ARG CODE_VERSION=unknown
ENV CODE_VERSION=${CODE_VERSION}
# The code last, so a code-only change rebuilds nothing above this line.
COPY components/ /app/components/
USER 1000:1000
# No ENTRYPOINT: run it with the registry, e.g.
#   docker run -p 8501:8501 -v $PWD/local_runs:/data <image> python -m components.serve \
#     --host 0.0.0.0 --registry /data/registry --model-name cfpb-disputes
CMD ["python", "-m", "components.serve", "--help"]
