"""Deploy to KServe: the deployment record applied to an InferenceService, then wait for Ready.

The rollout rules are the deployment record's (`components/common/artifacts/deployment.py`):
canary, promote and rollback compute the next record exactly as for the local target. This
module only persists the record (JSON in the annotation `cfpb-pipeline.deploy/record`) and
applies it to the predictor spec. An InferenceService without that annotation was not made by
this step: it is refused, never taken over.

Storage layout. KServe's TensorFlow predictor downloads `storageUri` to /mnt/models and runs
TF Serving with `--model_base_path=/mnt/models`, which wants version directories in it. The
registry's `<registry>/<model>/` holds every version (TF Serving would serve the newest), so each
deployed version gets a serving view with only that version:

    <storage_uri_prefix>/<model_name>/serving/<N>/<N>/saved_model.pb ...   (storageUri = .../<N>)

The step copies `<registry>/<model_name>/<N>/` there when it is not there yet (`saved_model.pb`
last, so a view with `saved_model.pb` is complete). The prefix defaults to the registry.

Credentials. The predictor reads MinIO with the credentials of a Secret attached to the
`serviceAccountName` (KServe's S3 annotations on the Secret); nothing secret is in the manifest.

Traffic (KServe's Knative mode). The record's stable version alone: its storageUri, no
`canaryTrafficPercent` (100%). Stable S with canary C at P%: C's storageUri with
`canaryTrafficPercent` P; KServe sends the other 100-P% to the last revision rolled out at 100%,
which must be S. When the stable version changes while a canary stays (a rollback to an earlier
canary state), S is rolled out first (and waited for), then the canary is applied.
The step polls `status.conditions[type=Ready]` of the current generation until it is True;
a False condition or the timeout fails the step with the condition's reason and message.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass

from components.common import kube, registry, storage
from components.common.artifacts import deployment
from components.common.artifacts import model as model_artifact
from components.common.errors import StepError

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
SERVING_DIR = "serving"
A_RECORD = "cfpb-pipeline.deploy/record"  # the deployment record, JSON
# The TF Serving release (KServe's `runtimeVersion`, the tensorflow/serving image tag) that
# loads a SavedModel exported by each TensorFlow major.minor. Without it KServe's TensorFlow
# runtime is TF Serving 2.6, which cannot load TF 2.16 exports (ops such as DisableCopyOnRead).
TF_SERVING_FOR_TENSORFLOW = {"2.16": "2.16.1"}
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class KServeApi:
    """The InferenceService calls the step makes, retried on transient failures
    (`common.kube`); tests point `api_client` at a fake server."""

    def __init__(self, api_client=None):
        from kubernetes import client

        self._client = client.CustomObjectsApi(api_client or kube.load_api_client())

    def get(self, namespace: str, name: str) -> dict | None:
        return kube.get_or_none(
            f"get {KIND} {namespace}/{name}",
            lambda: self._client.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                              name))

    def create(self, namespace: str, body: dict) -> dict:
        """Create; a retry that finds the object already there (an earlier attempt that
        succeeded unseen) returns it."""
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        attempts = []

        def call():
            attempts.append(1)
            try:
                return self._client.create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                    PLURAL, body)
            except ApiException as exc:
                if exc.status == 409 and len(attempts) > 1:
                    found = self.get(namespace, name)
                    if found is not None and kube_annotations(found) == kube_annotations(body):
                        return found
                raise

        return kube.with_retries(f"create {KIND} {namespace}/{name}", call)

    def patch(self, namespace: str, name: str, body: dict) -> dict:
        """A JSON merge patch (RFC 7386: a None value removes the field); idempotent, so
        retrying is safe."""
        return kube.with_retries(
            f"patch {KIND} {namespace}/{name}",
            lambda: self._client.patch_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                PLURAL, name, body))


def kube_annotations(obj: dict) -> dict:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


# ---------------------------------------------------------------------------------------------
# The record on the InferenceService, and the spec it gives (pure).

@dataclass(frozen=True)
class Target:
    namespace: str
    name: str
    storage_uri_prefix: str
    service_account: str | None = None
    # KServe's payload logger sends every request and answer here (the log receiver in the
    # serve image, components/serve/log_receiver.py), so the feedback step reads them
    payload_log_url: str | None = None


def storage_uri(prefix: str, model_name: str, version: int) -> str:
    """The serving view of one version: `<prefix>/<model_name>/serving/<N>` (holds `<N>/`)."""
    return storage.join(prefix.rstrip("/"), registry.check_model_name(model_name), SERVING_DIR,
                        str(int(version)))


def record_of(obj: dict | None, model_name: str) -> dict:
    """The deployment record an InferenceService carries; an empty one when there is none yet.

    An existing InferenceService without the annotation is someone else's: StepError.
    """
    if obj is None:
        return deployment.empty_record(model_name)
    metadata = obj.get("metadata") or {}
    where = f"{KIND} {metadata.get('namespace')}/{metadata.get('name')}"
    text = (metadata.get("annotations") or {}).get(A_RECORD)
    if text is None:
        raise StepError(f"{where} exists but was not deployed by this step (no annotation "
                        f"{A_RECORD}); refusing to take it over: delete it or choose another "
                        "--service-name")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StepError(f"{where}: annotation {A_RECORD} is not valid JSON ({exc})") from exc
    record = deployment.validate(record, f"{where} annotation {A_RECORD}")
    if record["model_name"] != model_name:
        raise StepError(f"{where} serves model {record['model_name']!r}, not {model_name!r}; "
                        "choose another --service-name")
    return record


def runtime_version(model_name: str, version: int, entry: dict | None) -> str:
    """The TF Serving release for a registry version, from the TensorFlow that exported it
    (`tensorflow_version` in its lineage); StepError when no known release can serve it."""
    exported = (entry or {}).get("tensorflow_version")
    if not exported:
        raise StepError(f"{model_name} version {version}: its lineage does not say which "
                        "TensorFlow exported it (pushed before tensorflow_version was recorded),"
                        " so no TF Serving runtime is known to load it; train and push it again")
    runtime = TF_SERVING_FOR_TENSORFLOW.get(".".join(str(exported).split(".")[:2]))
    if runtime is None:
        known = ", ".join(f"TensorFlow {k}.x -> TF Serving {v}"
                          for k, v in TF_SERVING_FOR_TENSORFLOW.items())
        raise StepError(f"{model_name} version {version} was exported by TensorFlow {exported}; "
                        f"no known TF Serving runtime loads it ({known})")
    return runtime


def predictor_for(target: Target, model_name: str, record: dict,
                  runtimes: dict[int, str]) -> dict:
    """The predictor spec of a record (see the module docstring); `canaryTrafficPercent` None
    means removed (100% to the storageUri) in a merge patch. `runtimes`: version -> TF Serving
    release (`runtime_version`)."""
    stable = deployment.stable_version(record)
    canary = deployment.canary_version(record)
    if stable is None:
        raise StepError(f"{model_name}: nothing is deployed in the record; no predictor to apply")
    serving = canary if canary is not None else stable
    predictor: dict = {"model": {"modelFormat": {"name": "tensorflow"},
                                 "runtimeVersion": runtimes[serving],
                                 "storageUri": storage_uri(target.storage_uri_prefix, model_name,
                                                           serving)},
                       "canaryTrafficPercent": record["traffic"][str(canary)]
                       if canary is not None else None}
    if target.service_account:
        predictor["serviceAccountName"] = target.service_account
    if target.payload_log_url:
        # model_version tells the receiver which version answered; the request key travels
        # as a header for requests whose instances carry no id
        separator = "&" if "?" in target.payload_log_url else "?"
        predictor["logger"] = {"mode": "all",
                               "url": f"{target.payload_log_url}{separator}model_version={serving}",
                               "metadataHeaders": ["X-Request-Key"]}
    return predictor


def _metadata(target: Target, model_name: str, record: dict) -> dict:
    return {"labels": {"app.kubernetes.io/managed-by": "cfpb-pipeline-deploy",
                       "cfpb-pipeline/model-name": model_name},
            "annotations": {A_RECORD: json.dumps(record, sort_keys=True)}}


def manifest(target: Target, model_name: str, record: dict, runtimes: dict[int, str]) -> dict:
    """The InferenceService to create for a record."""
    predictor = {k: v for k, v in predictor_for(target, model_name, record, runtimes).items()
                 if v is not None}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": target.name, "namespace": target.namespace,
                     **_metadata(target, model_name, record)},
        "spec": {"predictor": predictor},
    }


def patches(target: Target, model_name: str, old: dict, new: dict,
            runtimes: dict[int, str]) -> list[dict]:
    """The merge patches from the InferenceService of record `old` to that of `new`, in order.

    One patch, unless the stable version changes while a canary stays: KServe splits a canary
    against the last revision rolled out at 100%, so the new stable version is rolled out first
    (spec only: the annotation keeps `old` until the rollout is complete)."""
    out = []
    stable = deployment.stable_version(new)
    if (deployment.canary_version(new) is not None
            and deployment.stable_version(old) not in (None, stable)):
        alone = {**new, "versions": {str(stable): {"labels": [deployment.STABLE]}},
                 "traffic": {str(stable): 100}}
        out.append({"spec": {"predictor": predictor_for(target, model_name, alone, runtimes)}})
    out.append({"metadata": _metadata(target, model_name, new),
                "spec": {"predictor": predictor_for(target, model_name, new, runtimes)}})
    return out


# ---------------------------------------------------------------------------------------------
# Storage view.

def ensure_serving_copy(registry_uri: str, model_name: str, version: int, prefix: str) -> str:
    """Copy `<registry>/<model>/<N>/` to `<storage_uri(prefix)>/<N>/` unless it is there."""
    uri = storage_uri(prefix, model_name, version)
    destination = storage.join(uri, str(int(version)))
    if storage.exists(storage.join(destination, model_artifact.SAVED_MODEL_FILE)):
        log.info("serving view %s exists", destination)
        return uri
    source = registry.version_uri(registry_uri, model_name, version)
    with tempfile.TemporaryDirectory(prefix="deploy-") as download_dir:
        local = registry.local_copy(source, download_dir)
        if not model_artifact.is_saved_model(local):
            raise StepError(f"{source}: no {model_artifact.SAVED_MODEL_FILE}; the version's "
                            "files are missing")
        count = storage.upload_tree(local, destination, last=model_artifact.LAST_FILES)
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


@dataclass(frozen=True)
class Rollout:
    """What a strategy does to an InferenceService: the records before and after, and the
    create body or the merge patches (in order) that take it there."""

    old: dict
    new: dict
    create: dict | None = None
    patches: tuple[dict, ...] = ()

    @property
    def changed(self) -> bool:
        return self.new["revision"] != self.old["revision"]


def plan(current: dict | None, target: Target, model_name: str, strategy: str,
         version: int | None, canary_percent: int, entries: dict[int, dict]) -> Rollout:
    """The rollout from the InferenceService `current` (None: none yet) for a strategy (pure).

    `entries`: the registry index entries by version (what may be deployed, and the TensorFlow
    that exported each, for its TF Serving runtime).
    """
    if not DNS_LABEL.match(target.name):
        raise StepError(f"service name {target.name!r}: an InferenceService name is a DNS label "
                        "(lowercase letters, digits and '-', starting with a letter); give "
                        "--service-name")
    if current is None and strategy == "rollback":
        raise StepError(f"{KIND} {target.namespace}/{target.name} does not exist; nothing to "
                        "roll back")
    old = record_of(current, model_name)
    new = deployment.apply_strategy(old, strategy, version, canary_percent,
                                    known_versions=sorted(entries))
    if new["revision"] == old["revision"]:
        return Rollout(old, new)
    runtimes = {v: runtime_version(model_name, v, entries.get(v))
                for v in deployment.deployed_versions(new)}
    if current is None:
        return Rollout(old, new, create=manifest(target, model_name, new, runtimes))
    return Rollout(old, new, patches=tuple(patches(target, model_name, old, new, runtimes)))


def deploy(api: KServeApi, target: Target, model_name: str, strategy: str,
           version: int | None, canary_percent: int = 10, *, entries: dict[int, dict],
           registry_uri: str | None = None, timeout_seconds: float = 300,
           poll_seconds: float = 1.0) -> dict:
    """Apply the strategy to the record on the InferenceService, roll it out, wait for Ready.

    With `registry_uri`, the serving view of every deployed version is made first.
    Returns the old and new record, the requests sent and the Ready object.
    """
    where = f"{KIND} {target.namespace}/{target.name}"
    rollout = plan(api.get(target.namespace, target.name), target, model_name, strategy,
                   version, canary_percent, entries)
    requests = []
    if not rollout.changed:
        log.info("%s is already in the requested state (record revision %d); unchanged", where,
                 rollout.new["revision"])
    else:
        if registry_uri is not None:
            for deployed in deployment.deployed_versions(rollout.new):
                ensure_serving_copy(registry_uri, model_name, deployed,
                                    target.storage_uri_prefix)
        if rollout.create is not None:
            requests.append(("create", rollout.create))
            api.create(target.namespace, rollout.create)
        for body in rollout.patches:
            if requests:  # an earlier phase must be rolled out before the next one
                wait_ready(api, target.namespace, target.name, timeout_seconds, poll_seconds)
            requests.append(("patch", body))
            api.patch(target.namespace, target.name, body)
        log.info("%s: record revision %d (%s), traffic %s; waiting up to %ss for Ready", where,
                 rollout.new["revision"], strategy, rollout.new["traffic"], timeout_seconds)
    ready = wait_ready(api, target.namespace, target.name, timeout_seconds, poll_seconds)
    predictor = (ready.get("spec") or {}).get("predictor") or {}
    return {
        "old": rollout.old,
        "record": rollout.new,
        "requests": requests,
        "inference_service": ready,
        "storage_uri": (predictor.get("model") or {}).get("storageUri"),
        "canary_traffic_percent": predictor.get("canaryTrafficPercent"),
        "generation": int((ready.get("metadata") or {}).get("generation") or 0),
        "url": (ready.get("status") or {}).get("url"),
    }


def current_from_record(target: Target, model_name: str, record: dict,
                        entries: dict[int, dict]) -> dict | None:
    """The InferenceService a record stands for (None when nothing is deployed): how a dry run
    starts from a deployment record alone, without a cluster."""
    deployment.validate(record)
    if not record["versions"]:
        return None
    runtimes = {v: runtime_version(model_name, v, entries.get(v))
                for v in deployment.deployed_versions(record)}
    return manifest(target, model_name, record, runtimes)
