#!/usr/bin/env bash
# Delete the kind cluster (called by `make kind-down`); nothing else is touched.
source "$(dirname "$0")/lib.sh"
need kind
if cluster_exists; then
    kind delete cluster --name "$KIND_CLUSTER"
else
    log "no kind cluster $KIND_CLUSTER"
fi
