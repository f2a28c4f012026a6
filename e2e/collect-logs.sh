#!/usr/bin/env bash
# What went on in the kind cluster, for a person reading a failed run (called by `make kind-logs`;
# CI uploads the folder): pods and their descriptions, InferenceServices and Knative services,
# Argo workflows, events, the logs of failed or unready pods and of the KServe controller, and
# the newest KFP runs with their details. Best effort: every command may fail without stopping.
source "$(dirname "$0")/lib.sh"
set +e
need kind kubectl curl
cluster_exists || die "no kind cluster $KIND_CLUSTER"
trap stop_port_forwards EXIT
mkdir -p "$LOG_DIR"
log "collecting into $LOG_DIR"

save() {  # <file> <command...>
    local file=$LOG_DIR/$1
    shift
    "$@" >"$file" 2>&1 || echo "(command failed: $*)" >>"$file"
}
save pods.txt k get pods -A -o wide
save events.txt k get events -A --sort-by=.lastTimestamp
save describe-pods-$NS.txt k describe pods -n "$NS"
save inferenceservices.yaml k get inferenceservices -A -o yaml
save describe-inferenceservices.txt k describe inferenceservices -A
save knative.yaml k get ksvc,configurations,revisions,routes -A -o yaml
save workflows.yaml k get workflows -n "$NS" -o yaml
save rbac-$NS.txt k get roles,rolebindings,serviceaccounts -n "$NS" -o wide
save kserve-controller.log k logs deployment/kserve-controller-manager -n kserve --all-containers --tail=2000
save kserve-config.yaml k get configmap inferenceservice-config -n kserve -o yaml

# logs of every pod in the namespace that failed or is not ready (pipeline steps, predictors)
while read -r pod phase ready; do
    if [[ $phase != Succeeded && ($phase != Running || $ready == *false*) ]]; then
        save "pod-$pod.log" k logs "$pod" -n "$NS" --all-containers --prefix --tail=2000
    fi
done < <(k get pods -n "$NS" --no-headers \
    -o custom-columns='NAME:.metadata.name,PHASE:.status.phase,READY:.status.containerStatuses[*].ready')

# the newest KFP runs, with their task details
if k get service ml-pipeline -n "$NS" >/dev/null 2>&1; then
    port_forward "$NS" ml-pipeline "$KFP_PORT" 8888
    api=http://127.0.0.1:$KFP_PORT/apis/v2beta1
    curl -fsS "$api/runs?page_size=20&sort_by=created_at%20desc" >"$LOG_DIR/runs.json"
    "$PYTHON" -c 'import json, sys; [print(r.get("run_id", "")) for r in json.load(sys.stdin).get("runs") or []]' \
        <"$LOG_DIR/runs.json" | while read -r id; do
        [[ -n $id ]] && curl -fsS "$api/runs/$id" >"$LOG_DIR/run-$id.json"
    done
fi
ls -la "$LOG_DIR"
exit 0
