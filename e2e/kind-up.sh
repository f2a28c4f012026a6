#!/usr/bin/env bash
# A kind cluster with what the pipeline meets on a real Kubeflow install (called by
# `make kind-up`): cert-manager, Knative Serving with Kourier, KServe in Knative mode, Kubeflow
# Pipelines standalone and Katib, at the versions in e2e/versions.env. Idempotent: run it again
# to finish an install that was interrupted. Needs Docker, kind and kubectl (make kind-tools).
#
# Sizes: a GitHub-hosted ubuntu-24.04 runner (4 CPUs, 16 GB) holds this plus one pipeline step
# and the model server at a time; a laptop needs about the same free.
source "$(dirname "$0")/lib.sh"
need docker kind kubectl curl

# ---- the cluster -------------------------------------------------------------------------------
if cluster_exists; then
    log "kind cluster $KIND_CLUSTER exists"
else
    log "creating kind cluster $KIND_CLUSTER ($KIND_NODE_IMAGE)"
    kind create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" --wait 180s
fi
k cluster-info

apply_url() {  # <field manager> <url>: server-side, so the big CRDs fit and owners stay apart
    retry 3 k apply --server-side --force-conflicts --field-manager="e2e-$1" -f "$2"
}
apply_kustomize() {  # <field manager> <kustomize dir or remote ref>
    retry 3 k apply --server-side --force-conflicts --field-manager="e2e-$1" -k "$2"
}
available() {  # <namespace> <seconds>: every Deployment there Available
    k wait --for=condition=Available deployment --all -n "$1" --timeout="$2s"
}

# ---- cert-manager (KServe's webhook certificates) ----------------------------------------------
log "cert-manager $CERT_MANAGER_VERSION"
apply_url cert-manager "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
available cert-manager 300

# ---- Knative Serving + Kourier ------------------------------------------------------------------
log "Knative Serving and Kourier $KNATIVE_VERSION"
knative_tag=knative-v$KNATIVE_VERSION
apply_url knative "https://github.com/knative/serving/releases/download/$knative_tag/serving-crds.yaml"
k wait --for=condition=Established crd -l knative.dev/crd-install=true --timeout=120s
apply_url knative "https://github.com/knative/serving/releases/download/$knative_tag/serving-core.yaml"
apply_url kourier "https://github.com/knative-extensions/net-kourier/releases/download/$knative_tag/kourier.yaml"
# Kourier as Knative's ingress; a domain (example.com) so routes get a host Kourier serves
k patch configmap config-network -n knative-serving --type merge \
    -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
k patch configmap config-domain -n knative-serving --type merge -p '{"data":{"example.com":""}}'
available knative-serving 600
available kourier-system 300

# ---- KServe, Knative mode ----------------------------------------------------------------------
log "KServe $KSERVE_VERSION (Knative mode)"
kserve_url=https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION
k create namespace kserve --dry-run=client -o yaml | k apply -f -
apply_url kserve "$kserve_url/kserve.yaml"
# only the InferenceService controller: kserve.yaml also carries the LLMInferenceService and
# local-model controllers, which this run does not use (nor install their dependencies for)
k rollout status deployment/kserve-controller-manager -n kserve --timeout=600s
apply_url kserve "$kserve_url/kserve-cluster-resources.yaml"  # ClusterServingRuntimes (webhook)
# Knative mode explicitly (the pinned release still defaults to its old name, Serverless), no Istio
# VirtualService: Kourier is the ingress.
ingress=$(k get configmap inferenceservice-config -n kserve -o jsonpath='{.data.ingress}')
patch=$("$PYTHON" -c '
import json
import sys

ingress = json.loads(sys.argv[1])
ingress["disableIstioVirtualHost"] = True
print(json.dumps({"data": {"ingress": json.dumps(ingress, indent=2),
                           "deploy": json.dumps({"defaultDeploymentMode": "Knative"})}}))
' "$ingress")
k patch configmap inferenceservice-config -n kserve --type merge -p "$patch"
k rollout restart deployment/kserve-controller-manager -n kserve
k rollout status deployment/kserve-controller-manager -n kserve --timeout=300s

# ---- Kubeflow Pipelines standalone -------------------------------------------------------------
log "Kubeflow Pipelines $KFP_VERSION (standalone, platform-agnostic)"
kfp_manifests=github.com/kubeflow/pipelines/manifests/kustomize
apply_kustomize kfp "$kfp_manifests/cluster-scoped-resources?ref=$KFP_VERSION"
k wait --for=condition=Established crd/applications.app.k8s.io --timeout=120s
apply_kustomize kfp "$kfp_manifests/env/platform-agnostic?ref=$KFP_VERSION"

# ---- Katib (namespace kubeflow too; its own field manager keeps KFP's namespace labels) --------
log "Katib $KATIB_VERSION (standalone)"
apply_kustomize katib "github.com/kubeflow/katib.git/manifests/v1beta1/installs/katib-standalone?ref=$KATIB_VERSION"

log "waiting for Kubeflow Pipelines and Katib"
available "$NS" 1500
k wait --for=condition=Established crd/experiments.kubeflow.org crd/trials.kubeflow.org --timeout=120s

# ---- images the first deployment would otherwise pull within the deploy step's Ready timeout ---
node=$KIND_CLUSTER-control-plane
tf_serving=$(cd "$E2E_ROOT" && "$PYTHON" -c '
from components.deploy.kserve import TF_SERVING_FOR_TENSORFLOW
print(*sorted(set(TF_SERVING_FOR_TENSORFLOW.values())))')
storage_initializer=$(k get configmap inferenceservice-config -n kserve \
    -o jsonpath='{.data.storageInitializer}' | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["image"])')
queue_proxy=$(k get configmap config-deployment -n knative-serving -o jsonpath='{.data.queue-sidecar-image}')
images=("$storage_initializer" "$queue_proxy")
for version in $tf_serving; do
    images+=("docker.io/tensorflow/serving:$version")
done
for image in "${images[@]}"; do
    log "pre-pulling $image on $node"
    retry 3 docker exec "$node" crictl pull "$image" >/dev/null
done

k get pods -A
log "cluster $KIND_CLUSTER ready (context $KUBE_CONTEXT); next: make kind-e2e"
