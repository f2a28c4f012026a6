#!/usr/bin/env bash
# Remove this project's images of other tags (called by `make prune-images`).
#
#     REGISTRY=local TAG=0.1.0-abc1234 [KEEP="0.1.0-1111111 latest"] images/prune_images.sh
#
# `make build-images` tags every commit's images <REGISTRY>/<PROJECT>-<image>:<version>-<sha>, so
# a working copy collects one set per commit built. Their layers are mostly shared (only the
# code layer differs), but every tag stays listed, and kfp.local lists every local image before
# each task it runs (0.2 s per task with 200 images on the benchmark machine). This removes the
# tags of <REGISTRY>/<PROJECT>-* other than TAG and KEEP, then the dangling layers Docker no
# longer needs. Images of other names and registries are never touched.
set -euo pipefail
cd "$(dirname "$0")/.."

facts() { "${PYTHON:-python3}" -m components.common.build_facts "$@"; }
PROJECT=$(facts project)
REGISTRY=${REGISTRY:-local}
TAG=${TAG:-$(facts tag)}
DOCKER=${DOCKER:-docker}
keep=" $TAG ${KEEP:-} "
prefix="${REGISTRY%/}/$PROJECT-"

$DOCKER info >/dev/null 2>&1 || { echo "error: prune-images: no Docker daemon reachable" >&2; exit 1; }
removed=0
while read -r name; do
    [[ $name == "$prefix"* ]] || continue
    tag=${name##*:}
    [[ $keep == *" $tag "* ]] && continue
    $DOCKER rmi "$name" >/dev/null
    removed=$((removed + 1))
done < <($DOCKER images --format '{{.Repository}}:{{.Tag}}' | grep -v ':<none>$' || true)
$DOCKER image prune -f >/dev/null
echo "prune-images: removed $removed tags of ${prefix}* (kept: ${keep# }); $($DOCKER images -q | wc -l) images left"
