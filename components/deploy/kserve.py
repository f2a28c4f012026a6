"""Deploy to KServe: create or patch an InferenceService and wait until it is Ready.

Storage layout. KServe's TensorFlow predictor downloads `storageUri` to /mnt/models and runs
TF Serving with `--model_base_path=/mnt/models`, which wants version directories in it. The
registry's `<registry>/<model>/` holds every version (TF Serving would serve the newest), so each
deployed version gets a serving view with only that version:

    <storage_uri_prefix>/<model_name>/serving/<N>/<N>/saved_model.pb ...   (storageUri = .../<N>)

The step copies `<registry>/<model_name>/<N>/` there when it is not there yet (`saved_model.pb`
last, so a view with `saved_model.pb` is complete). The prefix defaults to the registry.

Credentials. The predictor reads MinIO with the credentials of a Secret attached to the
`serviceAccountName` (KServe's S3 annotations on the Secret); nothing secret is in the manifest.

Traffic. canary: the new storageUri with `canaryTrafficPercent` P (KServe keeps the previously
rolled-out revision at 100-P); promote: the new storageUri with `canaryTrafficPercent` removed
(100% to it); rollback: drops a canary in progress (the stable version gets 100%), otherwise
returns to the stable version before the current one. The stable state and the earlier stable
states are kept in annotations (`cfpb-pipeline.deploy/stable`, `.../history`, JSON).
The step then polls `status.conditions[type=Ready]` of the current generation until it is True;
a False condition or the timeout fails the step with the condition's reason and message.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass

from components.common import registry, storage
from components.common.errors import StepError

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
SERVING_DIR = "serving"
ANNOTATION = "cfpb-pipeline.deploy"
A_VERSION = f"{ANNOTATION}/version"          # the version the spec points at
A_STABLE = f"{ANNOTATION}/stable"            # {"version", "storageUri"} last at 100%
A_HISTORY = f"{ANNOTATION}/history"          # earlier stable states, newest last (rollback)
A_STRATEGY = f"{ANNOTATION}/strategy"
HISTORY_LIMIT = 20
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _api_error(exc: Exception, what: str) -> StepError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    body = getattr(exc, "body", None)
    detail = f": {body}" if body else ""
    return StepError(f"{what}: Kubernetes API error {status or ''} {reason}{detail}")


class KServeApi:
    """The InferenceService calls the step makes (tests point `api_client` at a fake server)."""

    def __init__(self, api_client=None):
        from kubernetes import client

        self._client = client.CustomObjectsApi(api_client or load_api_client())

    def get(self, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._client.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                             name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(exc, f"get {KIND} {namespace}/{name}") from exc
        except Exception as exc:  # urllib3 connection errors
            raise _api_error(exc, f"get {KIND} {namespace}/{name}") from exc

    def create(self, namespace: str, body: dict) -> dict:
        name = body["metadata"]["name"]
        try:
            return self._client.create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                PLURAL, body)
        except Exception as exc:
            raise _api_error(exc, f"create {KIND} {namespace}/{name}") from exc

    def patch(self, namespace: str, name: str, body: dict) -> dict:
        """A JSON merge patch (RFC 7386: a None value removes the field)."""
        try:
            return self._client.patch_namespaced_custom_object(GROUP, VERSION, namespace,
                                                               PLURAL, name, body)
        except Exception as exc:
            raise _api_error(exc, f"patch {KIND} {namespace}/{name}") from exc


def load_api_client():
    """In-cluster config (the pod's ServiceAccount), else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise StepError(f"no Kubernetes configuration: not in a cluster and no kubeconfig "
                            f"({exc})") from exc
    return client.ApiClient()


# ---------------------------------------------------------------------------------------------
# Manifests (pure).

@dataclass(frozen=True)
class Target:
    namespace: str
    name: str
    storage_uri_prefix: str
    service_account: str | None = None


def storage_uri(prefix: str, model_name: str, version: int) -> str:
    """The serving view of one version: `<prefix>/<model_name>/serving/<N>` (holds `<N>/`)."""
    return storage.join(prefix.rstrip("/"), registry.check_model_name(model_name), SERVING_DIR,
                        str(int(version)))


def manifest(target: Target, model_name: str, version: int, *,
             canary_percent: int | None = None, strategy: str = "promote") -> dict:
    """The InferenceService to create: TF predictor on version N's serving view at 100%."""
    uri = storage_uri(target.storage_uri_prefix, model_name, version)
    predictor: dict = {"model": {"modelFormat": {"name": "tensorflow"}, "storageUri": uri}}
    if target.service_account:
        predictor["serviceAccountName"] = target.service_account
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = int(canary_percent)
    stable = {"version": int(version), "storageUri": uri}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": target.name, "namespace": target.namespace,
                     "labels": {"app.kubernetes.io/managed-by": "cfpb-pipeline-deploy",
                                "cfpb-pipeline/model-name": model_name},
                     "annotations": _state_annotations(version, stable, [], strategy)},
        "spec": {"predictor": predictor},
    }


def _state_annotations(version, stable: dict, history: list, strategy: str) -> dict:
    return {A_VERSION: str(version), A_STABLE: json.dumps(stable, sort_keys=True),
            A_HISTORY: json.dumps(history[-HISTORY_LIMIT:], sort_keys=True),
            A_STRATEGY: strategy}


def _state(current: dict) -> tuple[dict, list]:
    """(stable, history) recorded on the InferenceService; an unmanaged one is its own stable."""
    annotations = _annotations(current)
    model = ((current.get("spec") or {}).get("predictor") or {}).get("model") or {}
    try:
        stable = json.loads(annotations[A_STABLE])
        history = json.loads(annotations.get(A_HISTORY) or "[]")
    except (KeyError, json.JSONDecodeError):
        stable = {"version": int(annotations.get(A_VERSION) or 0),
                  "storageUri": model.get("storageUri")}
        history = []
    return stable, history


def patch_for(current: dict, target: Target, model_name: str, version: int, *,
              canary_percent: int | None, strategy: str) -> dict:
    """The merge patch from `current` to version N (canary percent, or None for 100%).

    canary: N at `canary_percent`, the stable state is kept (it serves the rest); promote: N at
    100% becomes stable, the old stable goes on the rollback history.
    """
    wanted = manifest(target, model_name, version, canary_percent=canary_percent,
                      strategy=strategy)
    predictor = copy.deepcopy(wanted["spec"]["predictor"])
    stable, history = _state(current)
    if canary_percent is None:
        predictor["canaryTrafficPercent"] = None  # merge patch: remove it -> 100% to latest
        new_stable = {"version": int(version), "storageUri": predictor["model"]["storageUri"]}
        if stable.get("storageUri") and stable != new_stable:
            history = [*history, stable]
        stable = new_stable
    annotations = _state_annotations(version, stable, history, strategy)
    return {"metadata": {"labels": wanted["metadata"]["labels"], "annotations": annotations},
            "spec": {"predictor": predictor}}


def rollback_patch(current: dict) -> dict:
    """Back to the previous state at 100%: a canary in progress is dropped (the stable version
    takes all the traffic); otherwise the stable version before the current one returns."""
    stable, history = _state(current)
    predictor = (current.get("spec") or {}).get("predictor") or {}
    serving = (predictor.get("model") or {}).get("storageUri")
    in_canary = predictor.get("canaryTrafficPercent") is not None or serving != stable.get(
        "storageUri")
    if in_canary and stable.get("storageUri"):
        target = stable
    elif history:
        *history, target = history
    else:
        name = (current.get("metadata") or {}).get("name")
        raise StepError(f"{KIND} {name}: nothing to roll back to (no earlier stable version "
                        f"recorded in annotation {A_HISTORY})")
    return {
        "metadata": {"annotations": _state_annotations(target.get("version", 0), target,
                                                       history, "rollback")},
        "spec": {"predictor": {"model": {"storageUri": target["storageUri"]},
                               "canaryTrafficPercent": None}},
    }


def _annotations(obj: dict | None) -> dict:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


# ---------------------------------------------------------------------------------------------
# Storage view.

def ensure_serving_copy(registry_uri: str, model_name: str, version: int, prefix: str) -> str:
    """Copy `<registry>/<model>/<N>/` to `<storage_uri(prefix)>/<N>/` unless it is there."""
    uri = storage_uri(prefix, model_name, version)
    destination = storage.join(uri, str(int(version)))
    if storage.exists(storage.join(destination, registry.SAVED_MODEL_FILE)):
        log.info("serving view %s exists", destination)
        return uri
    source = registry.version_uri(registry_uri, model_name, version)
    with tempfile.TemporaryDirectory(prefix="deploy-") as download_dir:
        local = registry._local_copy(source, download_dir)
        if not storage.exists(storage.join(local, registry.SAVED_MODEL_FILE)):
            raise StepError(f"{source}: no {registry.SAVED_MODEL_FILE}; the version's files "
                            "are missing")
        count = storage.upload_tree(local, destination, last=registry.LAST_FILES)
    log.info("copied %s (%d files) to the serving view %s", source, count, destination)
    return uri


# ---------------------------------------------------------------------------------------------
# Rollout.

def ready_condition(obj: dict) -> dict | None:
    """The Ready condition, if the status is about the current generation."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition
    return None


def wait_ready(api: KServeApi, namespace: str, name: str, timeout_seconds: float,
               poll_seconds: float = 1.0) -> dict:
    """Poll until Ready is True; StepError on a False Ready condition or at the timeout."""
    deadline = time.monotonic() + timeout_seconds
    last = None
    while True:
        obj = api.get(namespace, name)
        if obj is None:
            raise StepError(f"{KIND} {namespace}/{name} disappeared while waiting for Ready")
        condition = ready_condition(obj)
        last = condition or last
        if condition and condition.get("status") == "True":
            return obj
        if condition and condition.get("status") == "False":
            raise StepError(f"{KIND} {namespace}/{name} is not ready: "
                            f"{_describe(condition)}")
        if time.monotonic() >= deadline:
            raise StepError(f"{KIND} {namespace}/{name} did not become Ready within "
                            f"{timeout_seconds:g}s (last Ready condition: {_describe(last)})")
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


def _describe(condition: dict | None) -> str:
    if not condition:
        return "none reported"
    parts = [f"status {condition.get('status')}"]
    for key in ("reason", "message"):
        if condition.get(key):
            parts.append(f"{key} {condition[key]!r}")
    return ", ".join(parts)


def deploy(api: KServeApi, target: Target, model_name: str, strategy: str,
           version: int | None, canary_percent: int = 10, *, timeout_seconds: float = 300,
           poll_seconds: float = 1.0) -> dict:
    """Apply the strategy to the InferenceService, wait for Ready; returns the result."""
    if not DNS_LABEL.match(target.name):
        raise StepError(f"service name {target.name!r}: an InferenceService name is a DNS label "
                        "(lowercase letters, digits and '-', starting with a letter); give "
                        "--service-name")
    current = api.get(target.namespace, target.name)
    if strategy == "rollback":
        if current is None:
            raise StepError(f"{KIND} {target.namespace}/{target.name} does not exist; nothing "
                            "to roll back")
        body = rollback_patch(current)
        obj = api.patch(target.namespace, target.name, body)
        action = "patched"
    else:
        percent = canary_percent if strategy == "canary" else None
        if current is None:
            # a first deployment has nothing to split with: it takes all the traffic
            body = manifest(target, model_name, version, strategy=strategy)
            obj = api.create(target.namespace, body)
            action = "created"
        else:
            body = patch_for(current, target, model_name, version, canary_percent=percent,
                             strategy=strategy)
            obj = api.patch(target.namespace, target.name, body)
            action = "patched"
    log.info("%s %s %s/%s (%s); waiting up to %ss for Ready", action, KIND, target.namespace,
             target.name, strategy, timeout_seconds)
    ready = wait_ready(api, target.namespace, target.name, timeout_seconds, poll_seconds)
    annotations = _annotations(ready)
    predictor = (ready.get("spec") or {}).get("predictor") or {}
    return {
        "action": action,
        "request": body,
        "inference_service": ready,
        "version": int(annotations.get(A_VERSION) or version or 0),
        "storage_uri": (predictor.get("model") or {}).get("storageUri"),
        "canary_traffic_percent": predictor.get("canaryTrafficPercent"),
        "revision": int((ready.get("metadata") or {}).get("generation") or 0)
        or int(obj.get("metadata", {}).get("generation") or 0),
        "url": (ready.get("status") or {}).get("url"),
    }
