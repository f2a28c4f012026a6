#!/usr/bin/env bash
# Load the step images `make build-images` built (<REGISTRY>/cfpb-pipeline-<step>:<TAG>, every
# image of components/common/build_facts.py) into the kind cluster's node, so pods start them
# without a registry (called by kind-e2e.sh). Their tags are never `latest`, so Kubernetes'
# default pull policy (IfNotPresent) uses the loaded copies.
#
#   e2e/load-images.sh           load them
#   e2e/load-images.sh --list    print their names only (what tests/test_kind_e2e.py checks)
source "$(dirname "$0")/lib.sh"

mapfile -t images < <(step_images)
[[ ${#images[@]} -gt 0 ]] || die "no step images named by components/common/build_facts.py"
if [[ ${1:-} == --list ]]; then
    printf '%s\n' "${images[@]}"
    exit 0
fi

need docker kind
cluster_exists || die "no kind cluster $KIND_CLUSTER: make kind-up first"
for image in "${images[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 \
        || die "$image is not built: make build-images REGISTRY=$REGISTRY TAG=$TAG"
done
for image in "${images[@]}"; do
    log "loading $image into $KIND_CLUSTER"
    kind load docker-image "$image" --name "$KIND_CLUSTER"
done
