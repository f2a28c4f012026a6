# Shared by the e2e/*.sh scripts (sourced, not run): the pinned versions, the tools, names,
# logging, waiting and port-forwards. Every kubectl call goes through `k`, which names the kind
# cluster's context, so these scripts never touch another cluster of yours.
# shellcheck shell=bash

set -euo pipefail

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=e2e/versions.env
source "$E2E_ROOT/e2e/versions.env"

KIND_CLUSTER=${KIND_CLUSTER:-cfpb-e2e}
KUBE_CONTEXT=kind-$KIND_CLUSTER
# Everything the run writes (tools, data, the package, logs): under local_runs/, which git ignores.
E2E_DIR=${E2E_DIR:-$E2E_ROOT/local_runs/kind}
TOOLS_DIR=$E2E_DIR/bin
LOG_DIR=$E2E_DIR/logs
export PATH="$TOOLS_DIR:$PATH"

PYTHON=${PYTHON:-python3}
RUN=${RUN:-$E2E_ROOT/.venv/bin/python}          # component runtime env (storage client)
RUN_SDK=${RUN_SDK:-$E2E_ROOT/.venv-sdk/bin/python}  # pipeline SDK env (pipeline.py, datagen)
REGISTRY=${REGISTRY:-local}
TAG=${TAG:-$(cd "$E2E_ROOT" && "$PYTHON" -m components.common.build_facts tag)}

# Standalone KFP: runs, the project's RBAC and the InferenceService all live in `kubeflow`.
NS=kubeflow
MODEL_NAME=${MODEL_NAME:-cfpb-disputes}
REGISTRY_URI=${REGISTRY_URI:-s3://mlpipeline/cfpb/models}
KFP_PORT=${KFP_PORT:-8888}
S3_PORT=${S3_PORT:-19000}
INGRESS_PORT=${INGRESS_PORT:-18080}

log() { printf '%s e2e: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: e2e: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$KUBE_CONTEXT" "$@"; }

need() {  # <command>...: fail early, with the make target that installs them
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (make kind-tools installs kind and kubectl into $TOOLS_DIR)"
    done
}

retry() {  # <attempts> <command...>: for applies that race a webhook or a CRD still starting
    local attempts=$1 n=1
    shift
    until "$@"; do
        ((n < attempts)) || die "failed $attempts times: $*"
        log "attempt $n of $attempts failed; retrying in 15s: $*"
        n=$((n + 1))
        sleep 15
    done
}

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; }

wait_for() {  # <what> <seconds> <command...>: retry the command until it succeeds
    local what=$1 seconds=$2 deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
        sleep 5
    done
}

# The step images, exactly as the build names them: build_facts.image_name for every image in
# build_facts.IMAGES (the one definition; tests/test_kind_e2e.py checks this list).
step_images() {
    (cd "$E2E_ROOT" && "$PYTHON" -c '
import sys
from components.common import build_facts as facts
for spec in facts.IMAGES:
    print(facts.image_name(spec.name, sys.argv[1], sys.argv[2]))
' "$REGISTRY" "$TAG")
}

# KFP's object store inside the cluster: minio-service (KFP <= 2.15) or SeaweedFS (KFP >= 2.16,
# port 9000 kept for compatibility).
s3_service() {
    if k get service minio-service -n "$NS" >/dev/null 2>&1; then
        echo minio-service
    else
        echo seaweedfs
    fi
}

PF_PIDS=()
port_forward() {  # <namespace> <service> <local port> <remote port>
    local ns=$1 service=$2 local_port=$3 remote_port=$4
    mkdir -p "$LOG_DIR"
    k port-forward -n "$ns" "service/$service" "$local_port:$remote_port" \
        >>"$LOG_DIR/port-forward-$service.log" 2>&1 &
    PF_PIDS+=("$!")
    # any HTTP answer (even 403/404) means the tunnel is up; curl exits 7 while it is not
    wait_for "port-forward to $ns/$service" 60 curl -s -o /dev/null --max-time 3 "http://127.0.0.1:$local_port/"
}
stop_port_forwards() {
    local pid
    for pid in "${PF_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    PF_PIDS=()
}
