"""Loaded model versions, the routing table and its hot reload.

The server keeps one `RoutingTable` (versions, labels, traffic split) behind one attribute of
`ModelManager`; a request reads that attribute once and keeps the `LoadedModel` it routed to, so
a swap (one reference assignment) never changes a request in flight. The watcher loads every
new version *before* the swap and forgets removed versions only after it.

What is deployed comes from `<registry>/<model_name>/deployment.json` (written by the deploy
step); without one, the registry's `current` version is served as `stable` with 100% traffic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from components.common import registry, storage
from components.common.errors import StepError

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
OUTPUT = "probability"


class NotFound(Exception):
    """An unknown version or label (REST 404, gRPC NOT_FOUND)."""


class BadRequest(Exception):
    """A malformed request (REST 400, gRPC INVALID_ARGUMENT); the message names the problem."""


# ---------------------------------------------------------------------------------------------
# What is deployed.

@dataclass(frozen=True)
class Deployment:
    """The deployed versions, their labels and the traffic split (percent per version)."""

    versions: dict[int, tuple[str, ...]]
    traffic: dict[int, float]
    revision: int | None = None

    def key(self) -> str:
        return json.dumps([sorted((v, list(ls)) for v, ls in self.versions.items()),
                           sorted(self.traffic.items())])


def parse_deployment(record: Mapping) -> Deployment:
    """`{"versions": {"3": {"labels": [...]}}, "traffic": {"3": 90, ...}}` -> Deployment."""
    try:
        versions = {int(v): tuple(str(label) for label in (spec or {}).get("labels", ()))
                    for v, spec in dict(record.get("versions") or {}).items()}
        traffic = {int(v): float(p) for v, p in dict(record.get("traffic") or {}).items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise StepError(f"deployment record: malformed versions/traffic ({exc})") from exc
    if not versions:
        raise StepError("deployment record: no deployed versions")
    unknown = set(traffic) - set(versions)
    if unknown:
        raise StepError(f"deployment record: traffic for undeployed versions {sorted(unknown)}")
    if any(p < 0 for p in traffic.values()) or abs(sum(traffic.values()) - 100) > 1e-6:
        raise StepError(f"deployment record: traffic must be >= 0 and sum to 100, got {traffic}")
    return Deployment(versions, traffic, record.get("revision"))


def read_deployment(registry_uri: str, model_name: str) -> Deployment:
    """The deployment record, or the registry's current version as stable with 100%.

    A missing record and one with no deployed versions both mean: serve `current`.
    """
    from components.common import deployment

    record = deployment.load(registry_uri, model_name)  # validated; empty when none yet
    if record.get("versions"):
        return parse_deployment(record)
    current = registry.read_index(registry_uri, model_name).get("current")
    if current is None:
        raise StepError(f"{registry.model_uri(registry_uri, model_name)}: no deployment.json and "
                        "no current version in index.json; nothing to serve")
    return Deployment({int(current): ("stable",)}, {int(current): 100.0})


# ---------------------------------------------------------------------------------------------
# One loaded version.

class LoadedModel:
    """A SavedModel version with its `serving_default` function and signature metadata."""

    def __init__(self, version: int, path: str, temp_dir: str | None = None):
        import tensorflow as tf

        self.version = version
        self.path = path
        self._temp_dir = temp_dir
        self._saved = tf.saved_model.load(path)
        if SIGNATURE not in self._saved.signatures:
            raise StepError(f"{path}: no {SIGNATURE!r} signature")
        self._fn = self._saved.signatures[SIGNATURE]
        self.features: list[str] = sorted(self._fn.structured_input_signature[1])
        self.signature_defs = _signature_defs(path)
        self.predict({name: [""] for name in self.features})  # warm up before it takes traffic

    def predict(self, columns: Mapping[str, Sequence[str]]) -> list[float]:
        """`{feature: [str, ...]}` (every feature, equal lengths) -> probabilities."""
        import tensorflow as tf

        tensors = {name: tf.constant(list(columns[name]), dtype=tf.string)
                   for name in self.features}
        return [float(p) for p in self._fn(**tensors)[OUTPUT].numpy().reshape(-1)]

    def close(self) -> None:
        self._fn = None
        self._saved = None
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)


def _signature_defs(path: str):
    """The SavedModel's SignatureDef map (protos, as TF Serving reports them)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, registry.SAVED_MODEL_FILE), "rb") as handle:
        saved.ParseFromString(handle.read())
    return dict(saved.meta_graphs[0].signature_def)


def load_version(registry_uri: str, model_name: str, version: int) -> LoadedModel:
    """Load version N of the registry (S3 versions are downloaded to a temp dir first)."""
    uri = registry.version_uri(registry_uri, model_name, version)
    if storage.is_s3(uri):
        temp = tempfile.mkdtemp(prefix=f"serve-{model_name}-{version}-")
        try:
            if not storage.download_tree(uri, temp):
                raise StepError(f"{uri}: no objects; the version's files are missing")
            return LoadedModel(version, temp, temp_dir=temp)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    if not os.path.isfile(os.path.join(uri, registry.SAVED_MODEL_FILE)):
        raise StepError(f"{uri}: no {registry.SAVED_MODEL_FILE}; version {version} is missing")
    return LoadedModel(version, uri)


# ---------------------------------------------------------------------------------------------
# Routing.

def key_point(key: str) -> float:
    """A request key hashed to [0, 100): the same key always lands on the same point."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000 / 10_000


@dataclass(frozen=True)
class RoutingTable:
    """An immutable snapshot: loaded versions, label -> version, cumulative traffic."""

    models: dict[int, LoadedModel]
    labels: dict[str, int]
    traffic: dict[int, float]
    revision: int | None = None
    _cumulative: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def build(cls, models: dict[int, LoadedModel], deployment: Deployment) -> RoutingTable:
        labels = {label: v for v, ls in deployment.versions.items() for label in ls}
        cumulative, total = [], 0.0
        for version in sorted(deployment.traffic):
            if deployment.traffic[version] > 0:
                total += deployment.traffic[version]
                cumulative.append((total, version))
        return cls(models, labels, dict(deployment.traffic), deployment.revision, cumulative)

    def route(self, *, version: int | None = None, label: str | None = None,
              key: str | None = None) -> LoadedModel:
        if version is not None:
            if version not in self.models:
                raise NotFound(f"version {version} is not served; served versions: "
                               f"{sorted(self.models)}")
            return self.models[version]
        if label is not None:
            if label not in self.labels:
                raise NotFound(f"label {label!r} is not assigned; labels: {sorted(self.labels)}")
            return self.models[self.labels[label]]
        if not self._cumulative:
            raise NotFound("no version is loaded yet")
        point = key_point(key) if key else random.random() * 100
        for bound, chosen in self._cumulative:
            if point < bound:
                return self.models[chosen]
        return self.models[self._cumulative[-1][1]]


EMPTY = RoutingTable({}, {}, {})


class ModelManager:
    """Owns the routing table; `refresh` (called by the watcher thread) reloads it."""

    def __init__(self, registry_uri: str, model_name: str, poll_seconds: float = 2.0):
        self.registry = registry_uri
        self.model_name = registry.check_model_name(model_name)
        self.poll_seconds = poll_seconds
        self.table: RoutingTable = EMPTY
        self._deployed_key: str | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return bool(self.table.models)

    def refresh(self) -> bool:
        """Bring the table in line with the registry; True when it changed."""
        with self._refresh_lock:
            deployment = read_deployment(self.registry, self.model_name)
            if deployment.key() == self._deployed_key:
                return False
            old = self.table
            models = {}
            loaded_now = []
            try:
                for version in sorted(deployment.versions):
                    if version in old.models:
                        models[version] = old.models[version]
                    else:
                        log.info("loading %s version %d", self.model_name, version)
                        models[version] = load_version(self.registry, self.model_name, version)
                        loaded_now.append(models[version])
            except BaseException:
                for model in loaded_now:
                    model.close()
                raise
            self.table = RoutingTable.build(models, deployment)  # the one atomic swap
            self._deployed_key = deployment.key()
            log.info("serving %s: versions %s, labels %s, traffic %s (revision %s)",
                     self.model_name, sorted(models), self.table.labels, self.table.traffic,
                     deployment.revision)
            for version, model in old.models.items():
                if version not in models:
                    log.info("unloaded %s version %d", self.model_name, version)
                    # In-flight requests still hold `model`; its function stays alive with
                    # them. Only the downloaded copy (S3) is removed.
                    if model._temp_dir:
                        shutil.rmtree(model._temp_dir, ignore_errors=True)
            return True

    def try_refresh(self) -> None:
        try:
            self.refresh()
            self.last_error = None
        except Exception as exc:  # keep serving what is loaded; retry on the next poll
            message = " ".join(str(exc).split())
            if message != self.last_error:
                log.error("reload failed (still serving the previous versions): %s", message)
            self.last_error = message

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="serve-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.try_refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
