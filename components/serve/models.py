"""Loaded model versions, the routing table and its hot reload.

The server keeps one `RoutingTable` (versions, labels, traffic split) behind one attribute of
`ModelManager`; a request reads that attribute once and keeps the `LoadedModel` it routed to, so
a swap (one reference assignment) never changes a request in flight. The watcher loads every
new version *before* the swap and takes removed versions out only after it; those stay loaded
for a while (`keep_previous_seconds`), so a rollback is a swap, not a reload.

What is deployed is the deployment record (`artifacts.deployment.serving_state`: written by the
deploy step; without one, the registry's `current` version as `stable` with 100% traffic).
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from components.common import registry, storage
from components.common.artifacts import deployment
from components.common.artifacts import model as model_artifact
from components.common.errors import StepError

log = logging.getLogger(__name__)

SIGNATURE = model_artifact.RAW_SIGNATURE
OUTPUT = model_artifact.OUTPUT
# What the server adds beside `probability` (REST: `decisions`, `decision_threshold`).
DECISION_OUTPUT = "decision"
THRESHOLD_OUTPUT = "decision_threshold"


class NotFound(Exception):
    """An unknown version or label (REST 404, gRPC NOT_FOUND)."""


class BadRequest(Exception):
    """A malformed request (REST 400, gRPC INVALID_ARGUMENT); the message names the problem."""


class Unavailable(Exception):
    """Nothing to answer with yet: the deployed versions are still loading (REST 503, gRPC
    UNAVAILABLE)."""


# ---------------------------------------------------------------------------------------------
# One loaded version.

class LoadedModel:
    """A SavedModel version with its `serving_default` function, signature metadata and
    decision threshold (the model's own; `DEFAULT_DECISION_THRESHOLD` for a version trained
    before thresholds were chosen)."""

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
        self.signature_defs = model_artifact.signature_defs(path)
        self.decision_threshold, self.threshold_source = model_artifact.decision_threshold_of(
            path)
        self.predict({name: [""] for name in self.features})  # warm up before it takes traffic

    def predict(self, columns: Mapping[str, Sequence[str]]) -> list[float]:
        """`{feature: [str, ...]}` (every feature, equal lengths) -> probabilities."""
        import tensorflow as tf

        tensors = {name: tf.constant(list(columns[name]), dtype=tf.string)
                   for name in self.features}
        return [float(p) for p in self._fn(**tensors)[OUTPUT].numpy().reshape(-1)]

    def decide(self, probabilities: Sequence[float]) -> list[bool]:
        """One decision per probability: probability >= this version's threshold."""
        return model_artifact.decide(probabilities, self.decision_threshold)

    def close(self) -> None:
        self._fn = None
        self._saved = None
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)


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
    if not model_artifact.is_saved_model(uri):
        raise StepError(f"{uri}: no {model_artifact.SAVED_MODEL_FILE}; version {version} is "
                        "missing")
    return LoadedModel(version, uri)


# ---------------------------------------------------------------------------------------------
# Routing.

def key_point(key: str) -> float:
    """A request key hashed to [0, 100): the same key always lands on the same point."""
    # surrogatepass: a JSON key may hold a lone surrogate ("\\ud800"); it still routes.
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000 / 10_000


@dataclass(frozen=True)
class RoutingTable:
    """An immutable snapshot: loaded versions, label -> version, cumulative traffic."""

    models: dict[int, LoadedModel]
    labels: dict[str, int]
    traffic: dict[int, int]
    revision: int | None = None
    _cumulative: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def build(cls, models: dict[int, LoadedModel], record: dict) -> RoutingTable:
        """The table for a deployment record (`artifacts.deployment`)."""
        traffic = deployment.traffic(record)
        cumulative, total = [], 0.0
        for version in sorted(traffic):
            if traffic[version] > 0:
                total += traffic[version]
                cumulative.append((total, version))
        return cls(models, deployment.labels(record), traffic, record.get("revision"),
                   cumulative)

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
    """Owns the routing table; `refresh` (called by the watcher thread) reloads it.

    A version the deployment record no longer lists leaves the table at once but stays loaded
    for `keep_previous_seconds` (at most `MAX_RETAINED` of them): a rollback that brings it back
    swaps it in without reading it from storage again.
    """

    MAX_RETAINED = 2

    def __init__(self, registry_uri: str, model_name: str, poll_seconds: float = 2.0,
                 keep_previous_seconds: float = 600.0):
        self.registry = registry_uri
        self.model_name = registry.check_model_name(model_name)
        self.poll_seconds = poll_seconds
        self.keep_previous_seconds = keep_previous_seconds
        self.table: RoutingTable = EMPTY
        self._deployed_key: str | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.first_attempt = threading.Event()  # set once the first load has finished or failed
        self._retained: dict[int, tuple[LoadedModel, float]] = {}  # version -> (model, until)

    @property
    def ready(self) -> bool:
        return bool(self.table.models)

    @property
    def loading(self) -> bool:
        """True until the first attempt to load the deployed versions has finished."""
        return not self.first_attempt.is_set()

    @property
    def retained_versions(self) -> list[int]:
        """Versions out of the table but still loaded (for a quick rollback)."""
        return sorted(self._retained)

    def refresh(self) -> bool:
        """Bring the table in line with the registry; True when it changed."""
        with self._refresh_lock:
            self._expire_retained()
            record = deployment.serving_state(self.registry, self.model_name)
            if deployment.state_key(record) == self._deployed_key:
                return False
            old = self.table
            models = {}
            loaded_now = []
            reused = {}
            try:
                for version in deployment.deployed_versions(record):
                    if version in old.models:
                        models[version] = old.models[version]
                    elif version in self._retained:
                        models[version] = reused[version] = self._retained[version][0]
                        log.info("%s version %d is still loaded: back in the table without "
                                 "reading it again", self.model_name, version)
                    else:
                        log.info("loading %s version %d", self.model_name, version)
                        models[version] = load_version(self.registry, self.model_name, version)
                        loaded_now.append(models[version])
            except BaseException:
                for model in loaded_now:
                    model.close()
                raise
            self.table = RoutingTable.build(models, record)  # the one atomic swap
            self._deployed_key = deployment.state_key(record)
            for version in reused:
                del self._retained[version]
            log.info("serving %s: versions %s, labels %s, traffic %s (revision %s)",
                     self.model_name, sorted(models), self.table.labels, self.table.traffic,
                     record.get("revision"))
            for version, model in old.models.items():
                if version not in models:
                    self._retire(version, model)
            return True

    def _retire(self, version: int, model: LoadedModel) -> None:
        """A version out of the table: kept loaded for a while, or its files dropped now."""
        if self.keep_previous_seconds > 0:
            self._retained[version] = (model, time.monotonic() + self.keep_previous_seconds)
            log.info("%s version %d left the table; kept loaded for %.0f s for a rollback",
                     self.model_name, version, self.keep_previous_seconds)
            while len(self._retained) > self.MAX_RETAINED:
                oldest = min(self._retained, key=lambda v: self._retained[v][1])
                self._drop(oldest, self._retained.pop(oldest)[0])
        else:
            self._drop(version, model)

    def _drop(self, version: int, model: LoadedModel) -> None:
        log.info("unloaded %s version %d", self.model_name, version)
        # In-flight requests still hold `model`; its function stays alive with them. Only the
        # downloaded copy (S3) is removed.
        if model._temp_dir:
            shutil.rmtree(model._temp_dir, ignore_errors=True)

    def _expire_retained(self) -> None:
        now = time.monotonic()
        for version in [v for v, (_, until) in self._retained.items() if until <= now]:
            self._drop(version, self._retained.pop(version)[0])

    def try_refresh(self) -> None:
        try:
            self.refresh()
            self.last_error = None
        except Exception as exc:  # keep serving what is loaded; retry on the next poll
            message = " ".join(str(exc).split())
            if message != self.last_error:
                log.error("reload failed (still serving the previous versions): %s", message)
            self.last_error = message
        finally:
            self.first_attempt.set()

    def start(self) -> None:
        """The watcher thread: loads the deployed versions at once, then follows the record."""
        self._thread = threading.Thread(target=self._watch, name="serve-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        self.try_refresh()
        while not self._stop.wait(self.poll_seconds):
            self.try_refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._refresh_lock.acquire(timeout=1):  # not behind a load still under way
            try:
                for version in list(self._retained):
                    self._drop(version, self._retained.pop(version)[0])
            finally:
                self._refresh_lock.release()
