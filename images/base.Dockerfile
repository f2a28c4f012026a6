# Shared base of the step images (see images/README.md). Two targets, both built by
# `make build-images`:
#   runtime (default): Python, non-root user `app`, /opt/venv on PATH, WORKDIR /app, settings
#   builder:           runtime + uv; the step Dockerfiles install their locked extras with it
# PYTHON_IMAGE: python:3.11-slim-bookworm, or local/python:3.11-bookworm (`make base-image`)
# where Docker Hub is out of reach. The builder's interpreter is the runtime's, so a venv built
# in `builder` runs unchanged in `runtime`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS runtime
# TF_CPP_MIN_LOG_LEVEL=2: TensorFlow's C++ INFO/WARNING lines out of the step logs.
# MPLCONFIGDIR, KERAS_HOME: writable for any uid (Kubernetes runAsUser, `docker run --user`,
# kfp.local run as the host user), not only for `app`.
# PYTHONDONTWRITEBYTECODE: everything is compiled at build time; /app and /opt/venv are
# read-only to the step anyway.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/keras \
    LANG=C.UTF-8
# uid/gid 1000: the first user on most Linux machines, so kfp.local's bind-mounted pipeline
# root is writable there without further set-up.
RUN groupadd --gid 1000 app \
    && useradd --uid 1000 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app
# The standard library compiled once (neither base image ships its .pyc, and a non-root step
# cannot write them): `import tensorflow` starts ~0.5 s sooner (1.5 s instead of 2.0 s here).
# Not what no step imports (1.5 MB of bytecode): lib2to3, pydoc's topics, the regression tests.
RUN python -m compileall -q -j 0 -x '/(lib2to3|pydoc_data|test|idlelib|turtledemo)/' \
    "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
CMD ["python"]

FROM runtime AS builder
ARG UV_VERSION=0.13.9
# The builder installs as root into /opt/venv (root-owned, read-only to `app` at run time).
# hadolint ignore=DL3002
USER 0
# uv in its own venv (pip from ensurepip; the system pip may be absent or PEP 668-managed).
# Certificates: the image's own bundle (the host's, in local/python:3.11-bookworm).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_CACHE_DIR=/root/.cache/uv
# A C++ compiler (and Python's headers where the base lacks them) for the one locked package
# without a wheel that needs it: pyfarmhash (sdist only; TFDV's dependency). Builder stage only.
# Versions are those of the base's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && if [ ! -e "$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ]; then \
        apt-get install -y --no-install-recommends python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}" \
    && ln -s /opt/uv/bin/uv /usr/local/bin/uv \
    && uv --version
COPY images/slim_venv.sh /usr/local/bin/slim-venv
COPY images/strip_elf.py /usr/local/bin/strip_elf.py
