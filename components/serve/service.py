"""What REST and gRPC share, below both protocols: request validation, routing, prediction,
metrics and the prediction log. `server.py` (REST) and `grpc_service.py` (gRPC) sit on top.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

from components.serve.models import BadRequest, LoadedModel, ModelManager, Unavailable
from components.serve.prediction_log import PredictionLog

KEY_FIELDS = ("id", "complaint_id")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The one request limit, REST and gRPC alike: at most MAX_INSTANCES examples, in at most
# MAX_REQUEST_BYTES (a REST body; a gRPC message) by default (`--max-request-bytes`). The
# default holds 10,000 rows of about 1.6 KB each in either REST format (generated CFPB rows
# average 0.5 KB as JSON); rows with longer narratives need a higher --max-request-bytes.
MAX_INSTANCES = 10_000
MAX_REQUEST_BYTES = 16 << 20


# ---------------------------------------------------------------------------------------------
# Metrics (Prometheus text exposition, written by hand: no extra dependency).

class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}   # (protocol, version, code)
        self.latency: dict[str, list[int]] = {}                # version -> bucket counts
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}

    def observe(self, protocol: str, version: str, code: str, seconds: float | None) -> None:
        with self._lock:
            key = (protocol, version, code)
            self.requests[key] = self.requests.get(key, 0) + 1
            if seconds is None:
                return
            buckets = self.latency.setdefault(version, [0] * len(LATENCY_BUCKETS))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.latency_sum[version] = self.latency_sum.get(version, 0.0) + seconds
            self.latency_count[version] = self.latency_count.get(version, 0) + 1

    def render(self, versions_loaded: int) -> str:
        out = [
            "# HELP serve_requests_total Prediction requests by protocol, version and status.",
            "# TYPE serve_requests_total counter",
        ]
        with self._lock:
            for (protocol, version, code), n in sorted(self.requests.items()):
                out.append(f'serve_requests_total{{protocol="{protocol}",version="{version}",'
                           f'code="{code}"}} {n}')
            out += ["# HELP serve_errors_total Failed prediction requests by protocol and status.",
                    "# TYPE serve_errors_total counter"]
            errors: dict[tuple[str, str], int] = {}
            for (protocol, _version, code), n in self.requests.items():
                if code not in ("200", "OK"):
                    errors[(protocol, code)] = errors.get((protocol, code), 0) + n
            for (protocol, code), n in sorted(errors.items()):
                out.append(f'serve_errors_total{{protocol="{protocol}",code="{code}"}} {n}')
            out += ["# HELP serve_request_latency_seconds Prediction latency by version.",
                    "# TYPE serve_request_latency_seconds histogram"]
            for version in sorted(self.latency):
                for bound, n in zip(LATENCY_BUCKETS, self.latency[version], strict=True):
                    out.append(f'serve_request_latency_seconds_bucket{{version="{version}",'
                               f'le="{bound}"}} {n}')
                count = self.latency_count[version]
                out.append(f'serve_request_latency_seconds_bucket{{version="{version}",'
                           f'le="+Inf"}} {count}')
                out.append(f'serve_request_latency_seconds_sum{{version="{version}"}} '
                           f'{self.latency_sum[version]:.6f}')
                out.append(f'serve_request_latency_seconds_count{{version="{version}"}} {count}')
        out += ["# HELP serve_versions_loaded Model versions loaded.",
                "# TYPE serve_versions_loaded gauge", f"serve_versions_loaded {versions_loaded}"]
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Input validation (shared by REST and gRPC).

def check_count(count: int) -> None:
    """The example cap both protocols enforce."""
    if count > MAX_INSTANCES:
        raise BadRequest(f"too many examples: {count} > {MAX_INSTANCES} per request (split "
                         "the batch)")


def _as_string(value, feature: str, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON)
                raise BadRequest(f"{where}: feature {feature!r} is not valid Unicode (a lone "
                                 "surrogate)") from None
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{where}: feature {feature!r} must be a string (or a number), "
                         f"got {type(value).__name__}")
    return str(value)


def rows_from_instances(instances, features: Sequence[str]) -> list[dict[str, str]]:
    """`[{feature: value, ...}, ...]` -> rows with every feature as a string."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list of objects (one per example)")
    check_count(len(instances))
    rows = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise BadRequest(f"instances[{i}]: expected an object of feature: value, got "
                             f"{type(instance).__name__}")
        missing = [f for f in features if f not in instance]
        if missing:
            raise BadRequest(f"instances[{i}]: missing feature(s) {', '.join(missing)}")
        rows.append({f: _as_string(instance[f], f, f"instances[{i}]") for f in features})
    return rows


def rows_from_columns(inputs, features: Sequence[str]) -> list[dict[str, str]]:
    """`{feature: [v, ...], ...}` (TF Serving's columnar format) -> rows."""
    if not isinstance(inputs, dict):
        raise BadRequest("'inputs' must be an object of feature: [values]")
    missing = [f for f in features if f not in inputs]
    if missing:
        raise BadRequest(f"inputs: missing feature(s) {', '.join(missing)}")
    columns = {f: inputs[f] if isinstance(inputs[f], list) else [inputs[f]] for f in features}
    lengths = {len(c) for c in columns.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise BadRequest(f"inputs: every feature needs the same non-zero number of values, got "
                         f"{ {f: len(c) for f, c in columns.items()} }")
    count = lengths.pop()
    check_count(count)
    return [{f: _as_string(columns[f][i], f, f"inputs[{f!r}][{i}]") for f in features}
            for i in range(count)]


def _key(value) -> str | None:
    """A key field's value as a key: strings and numbers only (not "", not nested JSON)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def keys_of(instances, count: int) -> list[str | None]:
    """Each example's own key (`id` or `complaint_id`), for the prediction log: the feedback
    step joins every example of a batch with its label by it. None where an example has none."""
    keys: list[str | None] = [None] * count
    if isinstance(instances, list):
        for i, instance in enumerate(instances[:count]):
            if isinstance(instance, dict):
                keys[i] = next((k for n in KEY_FIELDS
                                if (k := _key(instance.get(n))) is not None), None)
    elif isinstance(instances, dict):
        for name in KEY_FIELDS:
            values = instances.get(name)
            if isinstance(values, list) and len(values) == count:
                keys = [_key(v) for v in values]
                break
    return keys


def key_of(instances) -> str | None:
    """The sticky routing key: the first instance's `id` or `complaint_id`."""
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        for name in KEY_FIELDS:
            if (key := _key(instances[0].get(name))) is not None:
                return key
    if isinstance(instances, dict):
        for name in KEY_FIELDS:
            values = instances.get(name)
            if isinstance(values, list) and values and (key := _key(values[0])) is not None:
                return key
    return None


class Service:
    """Routing + prediction + metrics + prediction log, for both protocols."""

    def __init__(self, manager: ModelManager, prediction_log: PredictionLog | None = None):
        self.manager = manager
        self.metrics = Metrics()
        self.prediction_log = prediction_log

    def route(self, version: int | None = None, label: str | None = None,
              key: str | None = None) -> LoadedModel:
        table = self.manager.table
        if not table.models and self.manager.loading:
            raise Unavailable("the deployed versions are still loading; try again shortly")
        return table.route(version=version, label=label, key=key)

    def predict(self, model: LoadedModel, rows: list[dict[str, str]],
                key: str | None = None, keys: list[str | None] | None = None) -> list[float]:
        """Probabilities for the rows; logged with each example's own key (`keys`), else the
        request's routing key."""
        columns = {f: [row[f] for row in rows] for f in model.features}
        outputs = model.predict(columns)
        if self.prediction_log is not None:
            self.prediction_log.record(uuid.uuid4().hex, model.version, rows, outputs, key,
                                       keys=keys)
        return outputs
