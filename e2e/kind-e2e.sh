#!/usr/bin/env bash
# The pipeline on the kind cluster, end to end (called by `make kind-e2e`, after `make kind-up`;
# make builds the step images and both Python environments first):
#
#   1. load the step images into the node; apply manifests/overlays/standalone and KServe's
#      storage Secret (values copied from KFP's mlpipeline-minio-artifact, never printed)
#   2. compile the package for those images and KFP's object store; upload generated data
#   3. run 1 on clean data: the run succeeds, the registry has version 1 (index.json), the
#      InferenceService is Ready and answers a REST prediction through Knative's ingress
#   4. run 2 on data with a planted label shift (--disputed-rate 0.6): it fails at validate,
#      nothing after validate runs, and the registry still has version 1 only
#
# On failure `make kind-logs` collects pods, InferenceServices and the runs into
# local_runs/kind/logs (CI uploads that folder).
source "$(dirname "$0")/lib.sh"
need docker kind kubectl curl base64
cluster_exists || die "no kind cluster $KIND_CLUSTER: make kind-up first"
[[ -x $RUN && -x $RUN_SDK ]] || die "no Python environments ($RUN, $RUN_SDK): make venv"
# The checks count registry versions from 1: a cluster that already ran this needs renewing.
if k get inferenceservice "$MODEL_NAME" -n "$NS" >/dev/null 2>&1; then
    die "InferenceService $NS/$MODEL_NAME exists from an earlier run: make kind-down kind-up"
fi
trap stop_port_forwards EXIT
trap 'log "FAILED; make kind-logs collects pods, InferenceServices and runs into $LOG_DIR"' ERR

ROWS=5000
SEED=1
SHIFTED_DISPUTED_RATE=0.6
run_id=${GITHUB_RUN_ID:-local}-$(date +%Y%m%d-%H%M%S)
data_prefix=s3://mlpipeline/cfpb/e2e/$run_id
package=$E2E_DIR/pipeline.yaml
mkdir -p "$E2E_DIR/data"

check() { (cd "$E2E_ROOT" && PYTHONPATH=$E2E_ROOT "$RUN" e2e/checks.py "$@"); }

# ---- 1. images, RBAC, KServe's storage access ---------------------------------------------------
"$E2E_ROOT/e2e/load-images.sh"
log "applying manifests/overlays/standalone"
k apply -k "$E2E_ROOT/manifests/overlays/standalone"

s3_service=$(s3_service)
s3_endpoint=http://$s3_service.$NS:9000
log "KFP's object store: $s3_endpoint"
access_key=$(k get secret mlpipeline-minio-artifact -n "$NS" -o jsonpath='{.data.accesskey}' | base64 -d)
secret_key=$(k get secret mlpipeline-minio-artifact -n "$NS" -o jsonpath='{.data.secretkey}' | base64 -d)
reader=cfpb-model-reader
reader_secret=$(k get serviceaccount "$reader" -n "$NS" -o jsonpath='{.secrets[0].name}')
log "Secret $reader_secret for KServe's storage initializer (ServiceAccount $reader)"
k create secret generic "$reader_secret" -n "$NS" \
    --from-literal=AWS_ACCESS_KEY_ID="$access_key" --from-literal=AWS_SECRET_ACCESS_KEY="$secret_key" \
    --dry-run=client -o yaml \
    | k annotate --local -f - -o yaml \
        serving.kserve.io/s3-endpoint="$s3_service.$NS:9000" \
        serving.kserve.io/s3-usehttps=0 serving.kserve.io/s3-region=us-east-1 \
    | k apply -f -

# ---- 2. package and data ---------------------------------------------------------------------------
log "compiling $package for $REGISTRY/*:$TAG"
(cd "$E2E_ROOT" && "$RUN_SDK" pipeline.py --compile --output "$package" \
    --image-registry "$REGISTRY" --image-tag "$TAG" --s3-endpoint-url "$s3_endpoint")
clean=$E2E_DIR/data/complaints-$ROWS-$SEED.csv
shifted=$E2E_DIR/data/complaints-$ROWS-$SEED-disputed-$SHIFTED_DISPUTED_RATE.csv
(cd "$E2E_ROOT" && "$RUN_SDK" -m datagen --rows "$ROWS" --seed "$SEED" --out "$clean")
(cd "$E2E_ROOT" && "$RUN_SDK" -m datagen --rows "$ROWS" --seed "$SEED" \
    --disputed-rate "$SHIFTED_DISPUTED_RATE" --out "$shifted")

port_forward "$NS" "$s3_service" "$S3_PORT" 9000
port_forward "$NS" ml-pipeline "$KFP_PORT" 8888
s3() {  # the object store through the port-forward, with KFP's credentials
    S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=$access_key \
        AWS_SECRET_ACCESS_KEY=$secret_key check "$@"
}
s3 upload "$clean" "$data_prefix/$(basename "$clean")"
s3 upload "$shifted" "$data_prefix/$(basename "$shifted")"

host=http://localhost:$KFP_PORT
SUBMIT_STATUS=0
submit() {  # <run name> <source URI>: compile, submit and wait (exit 0 succeeded, 1 run failed)
    log "run $1 on $2"
    SUBMIT_STATUS=0
    (cd "$E2E_ROOT" && "$RUN_SDK" pipeline.py --submit --output "$package" --host "$host" \
        --experiment cfpb-e2e --run-name "$1" --wait --timeout-minutes 75 \
        --image-registry "$REGISTRY" --image-tag "$TAG" --s3-endpoint-url "$s3_endpoint" \
        --param source="$2" --param registry="$REGISTRY_URI" --param model_name="$MODEL_NAME" \
        --param deploy_target=kserve --param serving_account="$reader") || SUBMIT_STATUS=$?
    case $SUBMIT_STATUS in
        2) die "pipeline.py --submit: $1 was rejected before or by the KFP API" ;;
        3) die "pipeline.py --submit: $1 did not finish within --timeout-minutes" ;;
    esac
}
expect_submit_status() {  # <run name> <0|1>: after the checks, which say why when it differs
    [[ $SUBMIT_STATUS -eq $2 ]] \
        || die "pipeline.py --submit --wait for $1 exited $SUBMIT_STATUS, expected $2"
}

# ---- 3. clean data: trained, pushed, deployed, serving ---------------------------------------------
good_run=cfpb-e2e-$run_id-clean
submit "$good_run" "$data_prefix/$(basename "$clean")"
check run --host "$host" --name "$good_run" --package "$package" --expect succeeded
expect_submit_status "$good_run" 0
s3 registry --uri "$REGISTRY_URI" --model "$MODEL_NAME" --version 1 --only
k wait --for=condition=Ready "inferenceservice/$MODEL_NAME" -n "$NS" --timeout=600s
k get inferenceservice "$MODEL_NAME" -n "$NS"
url=$(k get inferenceservice "$MODEL_NAME" -n "$NS" -o jsonpath='{.status.url}')
service_host=${url#*://}
service_host=${service_host%%/*}
[[ -n $service_host ]] || die "InferenceService $MODEL_NAME has no status.url"
port_forward kourier-system kourier "$INGRESS_PORT" 80
check predict --url "http://127.0.0.1:$INGRESS_PORT/v1/models/$MODEL_NAME:predict" \
    --host-header "$service_host"

# ---- 4. planted label shift: stopped at validate ------------------------------------------------------
shifted_run=cfpb-e2e-$run_id-label-shift
submit "$shifted_run" "$data_prefix/$(basename "$shifted")"
check run --host "$host" --name "$shifted_run" --package "$package" --expect failed-at:validate
expect_submit_status "$shifted_run" 1
s3 registry --uri "$REGISTRY_URI" --model "$MODEL_NAME" --version 1 --only

log "end-to-end run passed: $good_run succeeded and serves; $shifted_run stopped at validate"
