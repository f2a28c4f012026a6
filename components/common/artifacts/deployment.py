"""The deployment record: which registry versions are served, with which labels and split.

    <registry>/<model_name>/deployment.json
    {
      "model_name": "cfpb-disputes",
      "versions": {"3": {"labels": ["stable"]}, "4": {"labels": ["canary"]}},
      "traffic": {"3": 90, "4": 10},     # percent per deployed version, sums to 100
      "revision": 7,                     # +1 on every change
      "history": [{"revision": 6, "versions": {...}, "traffic": {...}, "strategy": "...",
                   "at": "..."}],        # the last HISTORY_LIMIT states, for rollback
      "updated_at": "2026-11-27T17:00:00+00:00",
      "strategy": "canary|promote|rollback"
    }

This is the one record type and the one set of rollout rules. The deploy step's targets only
persist and apply it: `local` in this file (plus TF Serving's model_config), `kserve` in an
annotation of the InferenceService (plus its predictor spec); the model server reads it through
`serving_state`. The strategies are pure functions from a record to the next record:

- `canary(record, N, P)`: N gets label canary and P%, the stable version keeps its label and
  100-P% (any other canary is undeployed); with nothing deployed yet N becomes stable at 100%.
- `promote(record, N)`: N is stable with 100%; every other version is undeployed.
- `rollback(record)`: the previous state (the last history entry) comes back, and leaves the
  history, so rolling back again goes one state further back; no history is an error.

Re-applying the state that is already deployed is a no-op (same record, same revision), so a
retried pipeline run does not add revisions. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Iterable

from components.common import documents, registry, storage
from components.common.errors import StepError

DEPLOYMENT_FILE = "deployment.json"
HISTORY_LIMIT = 20
STABLE = "stable"
CANARY = "canary"
LABELS = (STABLE, CANARY)
STRATEGIES = ("canary", "promote", "rollback")


def deployment_uri(registry_uri: str, model_name: str) -> str:
    return storage.join(registry.model_uri(registry_uri, model_name), DEPLOYMENT_FILE)


def empty_record(model_name: str) -> dict:
    """Nothing deployed (revision 0): what `load` returns when there is no record yet."""
    return {"model_name": model_name, "versions": {}, "traffic": {}, "revision": 0,
            "history": [], "updated_at": None, "strategy": None}


# ---------------------------------------------------------------------------------------------
# Validation.

def _check_state(versions, traffic, where: str) -> None:
    if not isinstance(versions, dict) or not isinstance(traffic, dict):
        raise StepError(f"{where}: 'versions' and 'traffic' must be objects")
    seen: dict[str, str] = {}
    for key, spec in versions.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) > 0):
            raise StepError(f"{where}: version key {key!r} is not a positive integer")
        labels = spec.get("labels") if isinstance(spec, dict) else None
        if not isinstance(labels, list):
            raise StepError(f"{where}: version {key} has no 'labels' list")
        for label in labels:
            if label not in LABELS:
                raise StepError(f"{where}: version {key} has unknown label {label!r} "
                                f"(known: {', '.join(LABELS)})")
            if label in seen:
                raise StepError(f"{where}: label {label!r} is on versions {seen[label]} and {key}")
            seen[label] = key
    if set(traffic) != set(versions):
        raise StepError(f"{where}: traffic versions {sorted(traffic)} are not the deployed "
                        f"versions {sorted(versions)}")
    for key, percent in traffic.items():
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise StepError(f"{where}: traffic of version {key} is {percent!r}, not 0..100")
    if versions and sum(traffic.values()) != 100:
        raise StepError(f"{where}: traffic sums to {sum(traffic.values())}, not 100")
    if versions and STABLE not in seen:
        raise StepError(f"{where}: versions are deployed but none is labelled {STABLE!r}")


def validate(record, where: str = "deployment record") -> dict:
    """Check a record's shape and invariants; returns it. StepError names what is wrong."""
    if not isinstance(record, dict):
        raise StepError(f"{where}: expected a JSON object")
    if not isinstance(record.get("model_name"), str) or not record["model_name"]:
        raise StepError(f"{where}: missing 'model_name'")
    revision = record.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise StepError(f"{where}: 'revision' must be a non-negative integer, got {revision!r}")
    _check_state(record.get("versions"), record.get("traffic"), where)
    history = record.get("history")
    if not isinstance(history, list):
        raise StepError(f"{where}: 'history' must be a list")
    for entry in history:
        if not isinstance(entry, dict) or not isinstance(entry.get("revision"), int):
            raise StepError(f"{where}: a history entry has no integer 'revision': {entry!r}")
        _check_state(entry.get("versions"), entry.get("traffic"),
                     f"{where} (history revision {entry['revision']})")
    if record.get("strategy") not in (None, *STRATEGIES):
        raise StepError(f"{where}: unknown strategy {record.get('strategy')!r}")
    return record


def load(registry_uri: str, model_name: str) -> dict:
    """The model's deployment record; `empty_record` when none has been written."""
    uri = deployment_uri(registry_uri, model_name)
    if not storage.exists(uri):
        return empty_record(model_name)
    return validate(documents.read_json(uri, "deployment record", object_only=False), uri)


def save(registry_uri: str, model_name: str, record: dict) -> str:
    """Validate and write the record in one atomic write; returns its URI."""
    uri = deployment_uri(registry_uri, model_name)
    documents.write_json(uri, validate(record, uri))
    return uri


def serving_state(registry_uri: str, model_name: str) -> dict:
    """What a model server serves: the deployment record or, when nothing has been deployed
    yet, the registry's current version as stable with 100% of the traffic."""
    record = load(registry_uri, model_name)
    if record["versions"]:
        return record
    current = registry.read_index(registry_uri, model_name).get("current")
    if current is None:
        raise StepError(f"{registry.model_uri(registry_uri, model_name)}: no {DEPLOYMENT_FILE} "
                        f"and no current version in {registry.INDEX_FILE}; nothing to serve")
    key = str(int(current))
    return validate({**record, "versions": {key: {"labels": [STABLE]}}, "traffic": {key: 100}})


# ---------------------------------------------------------------------------------------------
# Queries.

def version_with_label(record: dict, label: str) -> int | None:
    for key, spec in record.get("versions", {}).items():
        if label in spec.get("labels", []):
            return int(key)
    return None


def stable_version(record: dict) -> int | None:
    return version_with_label(record, STABLE)


def canary_version(record: dict) -> int | None:
    return version_with_label(record, CANARY)


def deployed_versions(record: dict) -> list[int]:
    return sorted(int(key) for key in record.get("versions", {}))


def labels(record: dict) -> dict[str, int]:
    """label -> version."""
    return {label: int(key) for key, spec in record["versions"].items()
            for label in spec["labels"]}


def traffic(record: dict) -> dict[int, int]:
    """version -> percent of the traffic."""
    return {int(key): percent for key, percent in record["traffic"].items()}


def state_key(record: dict) -> str:
    """Equal for two records that serve the same versions, labels and split."""
    return json.dumps([record["versions"], record["traffic"]], sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Strategies (pure: a new record, the input is not changed).

def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _check_version(version, known_versions: Iterable[int] | None) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise StepError(f"version {version!r}: expected a registry version number (1, 2, ...)")
    if known_versions is not None:
        known = sorted(set(known_versions))
        if version not in known:
            raise StepError(f"version {version} is not in the registry index "
                            f"(versions: {known or 'none'}); only pushed versions can be deployed")
    return version


def _transition(record: dict, versions: dict, traffic: dict, strategy: str, now: str | None,
                history: list | None = None) -> dict:
    """The next record; the same record when versions and traffic do not change."""
    if versions == record["versions"] and traffic == record["traffic"]:
        return copy.deepcopy(record)
    if history is None:
        history = list(record["history"])
        if record["revision"] > 0:
            history.append({"revision": record["revision"], "versions": record["versions"],
                            "traffic": record["traffic"], "strategy": record.get("strategy"),
                            "at": record.get("updated_at")})
    new = {
        **record,
        "versions": versions,
        "traffic": traffic,
        "revision": record["revision"] + 1,
        "history": copy.deepcopy(history[-HISTORY_LIMIT:]),
        "updated_at": now or _now(),
        "strategy": strategy,
    }
    return validate(new)


def canary(record: dict, version: int, percent: int = 10, *,
           known_versions: Iterable[int] | None = None, now: str | None = None) -> dict:
    """`version` gets the canary label and `percent`% of the traffic; stable keeps the rest.

    With nothing deployed the version becomes stable with 100%. The stable version itself
    cannot be its own canary: that is a no-op (logged by the caller as unchanged).
    """
    validate(record)
    version = _check_version(version, known_versions)
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise StepError(f"canary percent {percent!r}: expected an integer 0..100")
    stable = stable_version(record)
    key = str(version)
    if stable is None:
        return _transition(record, {key: {"labels": [STABLE]}}, {key: 100}, "canary", now)
    if stable == version:
        return copy.deepcopy(record)
    versions = {str(stable): {"labels": [STABLE]}, key: {"labels": [CANARY]}}
    traffic = {str(stable): 100 - percent, key: percent}
    return _transition(record, versions, traffic, "canary", now)


def promote(record: dict, version: int, *, known_versions: Iterable[int] | None = None,
            now: str | None = None) -> dict:
    """`version` is stable with 100% of the traffic; every other version is undeployed."""
    validate(record)
    key = str(_check_version(version, known_versions))
    return _transition(record, {key: {"labels": [STABLE]}}, {key: 100}, "promote", now)


def rollback(record: dict, *, now: str | None = None) -> dict:
    """Restore the previous state (the last history entry, which is removed from the history)."""
    validate(record)
    if not record["history"]:
        raise StepError(
            f"{record['model_name']}: nothing to roll back to (revision {record['revision']} "
            "has no earlier deployment in its history)"
        )
    *rest, previous = record["history"]
    return _transition(record, copy.deepcopy(previous["versions"]),
                       copy.deepcopy(previous["traffic"]), "rollback", now, history=rest)


def apply_strategy(record: dict, strategy: str, version: int | None = None,
                   canary_percent: int = 10, *, known_versions: Iterable[int] | None = None,
                   now: str | None = None) -> dict:
    """Dispatch to `canary`, `promote` or `rollback` by name."""
    if strategy == "canary":
        return canary(record, version, canary_percent, known_versions=known_versions, now=now)
    if strategy == "promote":
        return promote(record, version, known_versions=known_versions, now=now)
    if strategy == "rollback":
        return rollback(record, now=now)
    raise StepError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")


# ---------------------------------------------------------------------------------------------
# TensorFlow Serving.

def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a text-proto literal


def tf_serving_model_config(record: dict, model_name: str, base_path: str) -> str:
    """TF Serving's `--model_config_file` (ModelServerConfig text proto) for the record.

    Serves exactly the deployed versions (`model_version_policy { specific { ... } }`) with
    their labels (`version_labels`). TF Serving has no traffic split: the split is written as a
    comment; clients or a gateway route by label (`/v1/models/<name>/labels/canary`). TF Serving
    refuses labels of versions not yet loaded unless it runs with
    `--allow_version_labels_for_unavailable_models`.
    """
    validate(record)
    versions = deployed_versions(record)
    if not versions:
        raise StepError(f"{model_name}: nothing is deployed; no TF Serving config to write")
    split = ", ".join(f"{v}={record['traffic'][str(v)]}%" for v in versions)
    lines = [
        f"# deployment revision {record['revision']} ({record.get('strategy')}); "
        f"traffic: {split}",
        "model_config_list {",
        "  config {",
        f"    name: {_quote(model_name)}",
        f"    base_path: {_quote(base_path)}",
        '    model_platform: "tensorflow"',
        "    model_version_policy {",
        "      specific {",
        *(f"        versions: {v}" for v in versions),
        "      }",
        "    }",
    ]
    for label in LABELS:
        version = version_with_label(record, label)
        if version is not None:
            lines += ["    version_labels {", f"      key: {_quote(label)}",
                      f"      value: {version}", "    }"]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"
