#!/usr/bin/env bash
# Build the step images: <REGISTRY>/<PROJECT>-<step>:<TAG> (called by `make build-images`).
#
#     REGISTRY=local TAG=0.1.0-abc1234 PYTHON_IMAGE=python:3.11-slim-bookworm \
#     images/build_images.sh [step ...]
#
# Names, tag, code version and each image's extra/prune come from
# components/common/build_facts.py (the one definition). First the Python base: PYTHON_IMAGE
# when it is present or can be pulled; otherwise (no Docker Hub, as on machines without
# internet) a Python 3.11 base built from Debian packages (images/build_base.sh,
# LOCAL_PYTHON_IMAGE). Then the shared base (images/base.Dockerfile: targets runtime and
# builder, tagged <PROJECT>-base and <PROJECT>-builder), then images/step.Dockerfile per step.
# The Dockerfiles need BuildKit (a cache mount for uv's downloads): a Docker CLI with buildx, or
# a 20.10-22.x CLI (BuildKit built in). DOCKER=... picks one; otherwise the first that works.
set -euo pipefail
cd "$(dirname "$0")/.."

facts() { "${PYTHON:-python3}" -m components.common.build_facts "$@"; }
PROJECT=$(facts project)
REGISTRY=${REGISTRY:-local}
DEFAULT_PYTHON_IMAGE=python:3.11-slim-bookworm
LOCAL_PYTHON_IMAGE=${LOCAL_PYTHON_IMAGE:-local/python:3.11-bookworm}
PYTHON_IMAGE=${PYTHON_IMAGE:-$DEFAULT_PYTHON_IMAGE}
TAG=${TAG:-$(facts tag)}
CODE_VERSION=${CODE_VERSION:-$(facts code-version)}
sha=$(git rev-parse --short HEAD 2>/dev/null || true)
STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || read -r -a STEPS <<< "$(facts images)"

log() { printf 'build-images: %s\n' "$*" >&2; }
die() { printf 'error: build-images: %s\n' "$*" >&2; exit 1; }

# A Docker CLI that can build with BuildKit.
pick_docker() {
    if [[ -n ${DOCKER:-} ]]; then echo "$DOCKER"; return; fi
    if docker buildx version >/dev/null 2>&1; then echo docker; return; fi
    local d v
    for d in $(type -ap docker); do
        # "Docker version 20.10.24+dfsg1, build 297e128": BuildKit is built into CLIs before 23
        v=$("$d" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
        if [[ -n $v && $v -lt 23 ]]; then echo "$d"; return; fi
    done
    die "BuildKit is needed: install the buildx plugin (docker-buildx) or a Docker 20.10 CLI, or set DOCKER"
}
DOCKER=$(pick_docker)
export DOCKER_BUILDKIT=1
$DOCKER info >/dev/null 2>&1 || die "no Docker daemon reachable ($DOCKER info failed)"
declare -A IMAGE_ARGS
for step in "${STEPS[@]}"; do
    IMAGE_ARGS[$step]=$(facts image-args "$step") || die "unknown image $step"
done

# The Python base: present, pulled, or built from Debian packages where it cannot be pulled.
if ! $DOCKER image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    if [[ $PYTHON_IMAGE == "$LOCAL_PYTHON_IMAGE" ]]; then
        images/build_base.sh "$LOCAL_PYTHON_IMAGE"
    elif ! $DOCKER pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
        [[ $PYTHON_IMAGE == "$DEFAULT_PYTHON_IMAGE" ]] \
            || die "cannot pull PYTHON_IMAGE=$PYTHON_IMAGE; pull it or set PYTHON_IMAGE to a Python 3.11 (Debian 12) image you have"
        log "cannot pull $PYTHON_IMAGE (no Docker Hub?); building $LOCAL_PYTHON_IMAGE from Debian packages instead"
        images/build_base.sh "$LOCAL_PYTHON_IMAGE" \
            || die "no Python base: cannot pull $PYTHON_IMAGE nor build $LOCAL_PYTHON_IMAGE (needs root and debootstrap); set PYTHON_IMAGE to a Python 3.11 (Debian 12) image you have"
        PYTHON_IMAGE=$LOCAL_PYTHON_IMAGE
    fi
fi

base=$REGISTRY/$PROJECT-base:$TAG
builder=$REGISTRY/$PROJECT-builder:$TAG
labels=(--label "org.opencontainers.image.version=$CODE_VERSION"
        --label "org.opencontainers.image.revision=${sha:-unknown}"
        --label "org.opencontainers.image.vendor=$PROJECT")
progress=${PROGRESS:-plain}
build() {  # <what> docker build args...
    local what=$1 start=$SECONDS
    shift
    log "$what"
    $DOCKER build --progress="$progress" "$@" . || die "$what failed"
    log "$what: $((SECONDS - start)) s"
}

total=$SECONDS
log "docker: $DOCKER; PYTHON_IMAGE=$PYTHON_IMAGE; images $REGISTRY/$PROJECT-<step>:$TAG; CODE_VERSION=$CODE_VERSION"
build "$base" -f images/base.Dockerfile --target runtime \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$base"
build "$builder" -f images/base.Dockerfile --target builder \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$builder"
for step in "${STEPS[@]}"; do
    image=$REGISTRY/$PROJECT-$step:$TAG
    read -r extra prune <<< "${IMAGE_ARGS[$step]}"
    build "$image" -f images/step.Dockerfile \
        --build-arg BASE_IMAGE="$base" --build-arg BUILDER_IMAGE="$builder" \
        --build-arg STEP="$step" --build-arg EXTRA="$extra" --build-arg PRUNE="${prune:-}" \
        --build-arg CODE_VERSION="$CODE_VERSION" \
        "${labels[@]}" --label "org.opencontainers.image.title=$PROJECT-$step" \
        -t "$image"
done
log "built ${#STEPS[@]} step images in $((SECONDS - total)) s:"
for step in "${STEPS[@]}"; do
    image=$REGISTRY/$PROJECT-$step:$TAG
    printf '  %-48s %s\n' "$image" "$($DOCKER image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')" >&2
done
