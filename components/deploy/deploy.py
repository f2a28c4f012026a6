"""Deploy core: move a registry version into service by a strategy (canary, promote, rollback).

One record type and one set of rules (`components/common/artifacts/deployment.py`); the targets
only persist and apply the record. target local: the registry's deployment.json, which the
local model server watches, plus TF Serving's model_config for it. target kserve: an annotation
of the InferenceService and its predictor spec (`kserve.py`). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
import os

from components.common import documents, registry, storage
from components.common.artifacts import deployment
from components.common.errors import StepError

log = logging.getLogger(__name__)

TARGETS = ("local", "kserve")
STATUS_DEPLOYED = "deployed"
STATUS_UNCHANGED = "unchanged"
STATUS_NOT_PUSHED = "skipped: not pushed"
RESULT_FILE = "deploy.json"
MODEL_CONFIG_FILE = "model_config.pbtxt"
RECORD_FILE = deployment.DEPLOYMENT_FILE
MANIFEST_FILE = "inferenceservice.json"


def _check_request(strategy: str, target: str, version: int | None, canary_percent: int) -> None:
    if strategy not in deployment.STRATEGIES:
        raise StepError(f"strategy {strategy!r}: expected one of "
                        f"{', '.join(deployment.STRATEGIES)}")
    if target not in TARGETS:
        raise StepError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
    if strategy != "rollback" and version is None:
        raise StepError(f"strategy {strategy} needs --version N (a registry version)")
    if not 0 <= canary_percent <= 100:
        raise StepError(f"canary percent {canary_percent}: expected 0..100")


def deploy(registry_uri: str, model_name: str, version: int | None, strategy: str, *,
           canary_percent: int = 10, target: str = "local", pushed: bool = True,
           output: str | None = None, kserve_target=None, kserve_api=None,
           timeout_seconds: float = 300, poll_seconds: float = 1.0) -> dict:
    """Deploy and return the result (deploy.json): deployed, status, revision, ...

    `pushed` false or version 0 (push's outputs when the model was not blessed) is a skip:
    nothing is read or written but the result. For kserve, `kserve_target` is a
    `kserve.Target` and `kserve_api` a `kserve.KServeApi` (made from the kubeconfig if None).
    Either target applies the same rules (`artifacts.deployment.apply_strategy`) to its record.
    """
    _check_request(strategy, target, version, canary_percent)
    registry.check_model_name(model_name)
    result = {"deployed": False, "status": STATUS_NOT_PUSHED, "revision": 0,
              "model_name": model_name, "version": version or 0, "strategy": strategy,
              "target": target, "registry": registry_uri}
    if not pushed or version == 0:
        log.info("version %s of %s was not pushed; nothing to deploy", version, model_name)
        _write_output(output, result)
        return result
    entries = index_entries(registry_uri, model_name, version, strategy)
    if target == "local":
        old, new, applied = _deploy_local(registry_uri, model_name, version, strategy,
                                          canary_percent, sorted(entries), output)
    else:
        old, new, applied = _deploy_kserve(registry_uri, model_name, version, strategy,
                                           canary_percent, entries, kserve_target, kserve_api,
                                           timeout_seconds, poll_seconds, output)
    result = {
        **result, **applied, **outcome(strategy, version, old, new),
        "deployed": True,
    }
    _write_output(output, result)
    return result


def index_entries(registry_uri: str, model_name: str, version: int | None,
                  strategy: str) -> dict[int, dict]:
    """The registry's versions (index entries by number); canary and promote need `version`
    among them."""
    entries = {e["version"]: e
               for e in registry.read_index(registry_uri, model_name)["versions"]}
    if strategy != "rollback" and version not in entries:
        raise StepError(f"{registry.model_uri(registry_uri, model_name)}: version {version} is "
                        f"not in the registry index (versions: {sorted(entries) or 'none'}); "
                        "only pushed versions can be deployed")
    return entries


def outcome(strategy: str, version: int | None, old: dict, new: dict) -> dict:
    """The fields of the result that follow from the records, for both targets."""
    return {
        "status": STATUS_DEPLOYED if new["revision"] != old["revision"] else STATUS_UNCHANGED,
        "revision": new["revision"],
        "version": deployment.stable_version(new) if strategy == "rollback" else version,
        "versions": new["versions"],
        "traffic": new["traffic"],
    }


def dry_run(registry_uri: str, model_name: str, version: int | None, strategy: str, *,
            canary_percent: int = 10, target: str = "local", kserve_target=None,
            kserve_api=None, record: dict | None = None) -> dict:
    """What `deploy` would do, changing nothing: the next record and, for kserve, the object it
    would create or the merge patches it would apply, in order.

    kserve starts from `record` (a deployment record, e.g. a copy of deployment.json) when
    given, without contacting a cluster; otherwise it reads the InferenceService (get only).
    """
    _check_request(strategy, target, version, canary_percent)
    registry.check_model_name(model_name)
    entries = index_entries(registry_uri, model_name, version, strategy)
    if target == "local":
        old = record if record is not None else deployment.load(registry_uri, model_name)
        new = deployment.apply_strategy(old, strategy, version, canary_percent,
                                        known_versions=sorted(entries))
        config = (deployment.tf_serving_model_config(
            new, model_name, registry.model_uri(registry_uri, model_name))
            if new["versions"] else None)
        return {**outcome(strategy, version, old, new), "record": new,
                "model_config": config, "requests": []}
    from components.deploy import kserve

    if kserve_target is None:
        raise StepError("target kserve needs a namespace and a service name")
    if record is not None:
        current = kserve.current_from_record(kserve_target, model_name, record, entries)
    else:
        api = kserve_api or kserve.KServeApi()
        current = api.get(kserve_target.namespace, kserve_target.name)
    rollout = kserve.plan(current, kserve_target, model_name, strategy, version,
                          canary_percent, entries)
    requests = ([("create", rollout.create)] if rollout.create is not None else []) + [
        ("patch", body) for body in rollout.patches]
    return {**outcome(strategy, version, rollout.old, rollout.new), "record": rollout.new,
            "requests": requests}


def _deploy_local(registry_uri: str, model_name: str, version: int | None, strategy: str,
                  canary_percent: int, known: list[int], output: str | None):
    """The record in `<registry>/<model>/deployment.json`, which the model server watches."""
    old = deployment.load(registry_uri, model_name)
    new = deployment.apply_strategy(old, strategy, version, canary_percent,
                                    known_versions=known)
    uri = deployment.deployment_uri(registry_uri, model_name)
    if new["revision"] != old["revision"]:
        deployment.save(registry_uri, model_name, new)
        log.info("%s: revision %d (%s): traffic %s", uri, new["revision"], strategy,
                 new["traffic"])
    else:
        log.info("%s: already in the requested state (revision %d); unchanged", uri,
                 new["revision"])
    if output:
        config = deployment.tf_serving_model_config(
            new, model_name, registry.model_uri(registry_uri, model_name))
        storage.write_bytes(storage.join(output, MODEL_CONFIG_FILE), config.encode())
        documents.write_json(storage.join(output, RECORD_FILE), new)
    return old, new, {"record": uri}


def _deploy_kserve(registry_uri: str, model_name: str, version: int | None, strategy: str,
                   canary_percent: int, entries: dict[int, dict], target, api,
                   timeout_seconds: float, poll_seconds: float, output: str | None):
    """The record in an annotation of the InferenceService, applied to its predictor."""
    from components.deploy import kserve

    if target is None:
        raise StepError("target kserve needs a namespace and a service name")
    api = api or kserve.KServeApi()
    done = kserve.deploy(api, target, model_name, strategy, version, canary_percent,
                         entries=entries, registry_uri=registry_uri,
                         timeout_seconds=timeout_seconds, poll_seconds=poll_seconds)
    if output:
        documents.write_json(storage.join(output, MANIFEST_FILE), done["inference_service"])
    return done["old"], done["record"], {
        "storage_uri": done["storage_uri"],
        "canary_traffic_percent": done["canary_traffic_percent"],
        "generation": done["generation"],
        "inference_service": f"{target.namespace}/{target.name}",
        "url": done["url"],
    }


def _write_output(output: str | None, result: dict) -> None:
    if not output:
        return
    if not storage.is_s3(output):
        os.makedirs(output, exist_ok=True)
    documents.write_json(storage.join(output, RESULT_FILE), result)
