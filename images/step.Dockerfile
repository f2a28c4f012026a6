# Every step image (and the model server's): `python -m components.<STEP>`, with the step's
# pyproject extra installed from uv.lock. Built by `make build-images` (images/build_images.sh),
# which takes STEP, EXTRA and PRUNE from components/common/build_facts.py, on the shared base
# images/base.Dockerfile (see images/README.md).
ARG BASE_IMAGE=local/cfpb-pipeline-base:latest
ARG BUILDER_IMAGE=local/cfpb-pipeline-builder:latest

FROM ${BUILDER_IMAGE} AS deps
# Depends on pyproject.toml, uv.lock, EXTRA and PRUNE only: a code-only change does not
# reinstall, and steps with the same extra (transform, train, evaluate) share this layer.
# PRUNE: packages a dependency declares but the step never imports; `uv export --prune` drops
# them and whatever only they need, the rest installs at uv.lock's versions and hashes.
ARG EXTRA
ARG PRUNE=""
WORKDIR /src
COPY pyproject.toml uv.lock ./
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/root/.cache/uv \
    test -n "$EXTRA" || { echo "error: step.Dockerfile: --build-arg EXTRA=<extra> is required" >&2; exit 1; }; \
    prune=""; for package in $PRUNE; do prune="$prune --prune $package"; done; \
    uv export --frozen --no-dev --no-emit-project --extra "$EXTRA" $prune \
        --output-file /tmp/requirements.txt \
    && uv venv /opt/venv \
    && uv pip sync --python /opt/venv/bin/python --require-hashes /tmp/requirements.txt \
    && slim-venv /opt/venv

# What the extra installs but its step never loads (images/prune/<extra>.txt, when there is
# one) and duplicate copies of shared libraries (images/prune_venv.sh). A stage of its own, so
# editing a list never reinstalls a venv.
FROM deps AS pruned
ARG EXTRA
COPY images/prune_venv.sh images/prune/ /tmp/prune/
RUN list="/tmp/prune/$EXTRA.txt"; [ -f "$list" ] || list=""; \
    sh /tmp/prune/prune_venv.sh /opt/venv $list

FROM ${BASE_IMAGE}
COPY --from=pruned /opt/venv /opt/venv
# Matplotlib's font list built once here, not at every start of a step that plots (and every
# TensorFlow step: Keras imports pyplot); writable for whatever uid the step runs as.
ENV MPLCONFIGDIR=/opt/matplotlib
USER 0
RUN if python -c "import matplotlib" 2>/dev/null; then \
        python -c "import matplotlib.font_manager" && chmod -R a+rwX,+t "$MPLCONFIGDIR"; \
    fi
ARG CODE_VERSION=unknown
ENV CODE_VERSION=${CODE_VERSION}
# The code last, so a code-only change rebuilds nothing above this line (and steps with the
# same venv share this layer too: STEP is set after it).
COPY components/ /app/components/
ARG STEP
ENV STEP=${STEP}
USER 1000:1000
# kfp passes the step's command as the container command: no ENTRYPOINT on purpose. The model
# server listens on 8501 (REST) and 8500 (gRPC): `python -m components.serve --host 0.0.0.0 ...`.
CMD ["sh", "-c", "exec python -m components.\"$STEP\" --help"]
