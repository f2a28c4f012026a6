"""The model server: TensorFlow Serving's REST API on a threaded stdlib HTTP server.

`Service` is what REST and gRPC share: request validation, routing, prediction, metrics and the
prediction log. `ModelServer` starts the watcher, the REST server and the gRPC server.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from components.serve.models import BadRequest, LoadedModel, ModelManager, NotFound
from components.serve.prediction_log import PredictionLog

log = logging.getLogger(__name__)

KEY_FIELDS = ("id", "complaint_id")
KEY_HEADER = "X-Request-Key"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_INSTANCES = 10_000


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

def _as_string(value, feature: str, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{where}: feature {feature!r} must be a string (or a number), "
                         f"got {type(value).__name__}")
    return str(value)


def rows_from_instances(instances, features: Sequence[str]) -> list[dict[str, str]]:
    """`[{feature: value, ...}, ...]` -> rows with every feature as a string."""
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list of objects (one per example)")
    if len(instances) > MAX_INSTANCES:
        raise BadRequest(f"too many instances: {len(instances)} > {MAX_INSTANCES}")
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
    if count > MAX_INSTANCES:
        raise BadRequest(f"too many examples: {count} > {MAX_INSTANCES}")
    return [{f: _as_string(columns[f][i], f, f"inputs[{f!r}][{i}]") for f in features}
            for i in range(count)]


def key_of(instances) -> str | None:
    """The sticky routing key: the first instance's `id` or `complaint_id`."""
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        for name in KEY_FIELDS:
            if instances[0].get(name) not in (None, ""):
                return str(instances[0][name])
    if isinstance(instances, dict):
        for name in KEY_FIELDS:
            values = instances.get(name)
            if isinstance(values, list) and values and values[0] not in (None, ""):
                return str(values[0])
    return None


class Service:
    """Routing + prediction + metrics + prediction log, for both protocols."""

    def __init__(self, manager: ModelManager, prediction_log: PredictionLog | None = None):
        self.manager = manager
        self.metrics = Metrics()
        self.prediction_log = prediction_log

    def route(self, version: int | None = None, label: str | None = None,
              key: str | None = None) -> LoadedModel:
        return self.manager.table.route(version=version, label=label, key=key)

    def predict(self, model: LoadedModel, rows: list[dict[str, str]],
                key: str | None = None) -> list[float]:
        columns = {f: [row[f] for row in rows] for f in model.features}
        outputs = model.predict(columns)
        if self.prediction_log is not None:
            self.prediction_log.record(uuid.uuid4().hex, model.version, rows, outputs, key)
        return outputs


# ---------------------------------------------------------------------------------------------
# REST.

PREDICT_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r":predict$")
STATUS_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?$")


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cfpb-serve/1"
    service: Service
    max_request_bytes: int

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    def setup(self):
        super().setup()
        # Headers and body go out in one write, and small answers are not held back by Nagle.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (
            json.dumps(body).encode() if not isinstance(body, str) else body.encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(data)
        self.flush_headers()

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message})

    def do_GET(self):  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        manager = self.service.manager
        if path == "/healthz":
            return self._send(200, {"status": "alive"})
        if path == "/readyz":
            table = manager.table
            if table.models:
                return self._send(200, {"status": "ready", "versions": sorted(table.models)})
            return self._send(503, {"status": "not ready", "error": manager.last_error or
                                    "no version loaded yet"})
        if path == "/metrics":
            return self._send(200, self.service.metrics.render(len(manager.table.models)),
                              "text/plain; version=0.0.4")
        match = STATUS_PATH.match(path)
        if not match:
            return self._error(404, f"no such endpoint: GET {path}")
        try:
            self._check_name(match["name"])
            table = manager.table
            if match["metadata"]:
                model = self.service.route(_version(match["version"]), match["label"])
                return self._send(200, metadata_json(manager.model_name, model))
            if match["version"] or match["label"]:
                versions = [self.service.route(_version(match["version"]), match["label"])
                            .version]
            else:
                versions = sorted(table.models)
            return self._send(200, {"model_version_status": [
                {"version": str(v), "state": "AVAILABLE",
                 "status": {"error_code": "OK", "error_message": ""}} for v in versions]})
        except HttpError as exc:
            return self._error(exc.status, str(exc))
        except NotFound as exc:
            return self._error(404, str(exc))

    def do_POST(self):  # noqa: N802 - the stdlib's name
        started = time.perf_counter()
        version_label = "none"
        try:
            body = self._read_body()  # before any other answer: keep-alive stays in sync
            match = PREDICT_PATH.match(self.path.split("?", 1)[0])
            if not match:
                raise HttpError(404, f"no such endpoint: POST {self.path} (use "
                                "/v1/models/<name>[/versions/<N>|/labels/<label>]:predict)")
            self._check_name(match["name"])
            try:
                request = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(request, dict):
                raise BadRequest("request body must be a JSON object with 'instances' or "
                                 "'inputs'")
            if ("instances" in request) == ("inputs" in request):
                raise BadRequest("request needs exactly one of 'instances' (rows) or 'inputs' "
                                 "(columns)")
            data = request.get("instances", request.get("inputs"))
            key = self.headers.get(KEY_HEADER) or key_of(data)
            model = self.service.route(_version(match["version"]), match["label"], key)
            version_label = str(model.version)
            if "instances" in request:
                rows = rows_from_instances(data, model.features)
            else:
                rows = rows_from_columns(data, model.features)
            outputs = self.service.predict(model, rows, key)
            self._send(200, {"predictions": outputs, "model_version": str(model.version)})
            code = 200
        except HttpError as exc:
            code = exc.status
            self._error(code, str(exc))
        except BadRequest as exc:
            code = 400
            self._error(code, str(exc))
        except NotFound as exc:
            code = 404
            self._error(code, str(exc))
        except Exception as exc:  # a bug or a TF error: answer, log, keep serving
            log.exception("prediction failed")
            code = 500
            self._error(code, f"prediction failed: {type(exc).__name__}: {exc}")
        self.service.metrics.observe("rest", version_label, str(code),
                                     time.perf_counter() - started if code == 200 else None)

    def _check_name(self, name: str) -> None:
        if name != self.service.manager.model_name:
            raise HttpError(404, f"model {name!r} is not served (this server serves "
                                 f"{self.service.manager.model_name!r})")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise HttpError(411, "Content-Length required")
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise HttpError(400, f"bad Content-Length {length!r}") from None
        if size > self.max_request_bytes:
            self.close_connection = True  # the unread body would garble the next request
            raise HttpError(413, f"request body of {size} bytes is larger than the limit of "
                                 f"{self.max_request_bytes} bytes")
        return self.rfile.read(size)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise NotFound(f"version {text!r} is not a version number")
    return int(text)


def metadata_json(model_name: str, model: LoadedModel) -> dict:
    """GET .../metadata as TF Serving answers it (signature_def map as JSON)."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in model.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature)
    return {
        "model_spec": {"name": model_name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": json_format.MessageToDict(
            signature_map, preserving_proto_field_name=True)},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def make_rest_server(service: Service, host: str, port: int,
                     max_request_bytes: int) -> ThreadingHTTPServer:
    handler = type("Handler", (RestHandler,), {"service": service,
                                               "max_request_bytes": max_request_bytes})
    return _Server((host, port), handler)


# ---------------------------------------------------------------------------------------------
# The whole server.

class ModelServer:
    """Watcher + REST + gRPC (+ prediction log). Port 0 picks a free port (see .rest_port)."""

    def __init__(self, registry_uri: str, model_name: str, *, host: str = "127.0.0.1",
                 rest_port: int = 8501, grpc_port: int | None = 8500, poll_seconds: float = 2.0,
                 log_store: str | None = None, max_request_bytes: int = 1 << 20,
                 log_flush_records: int = 500, log_flush_seconds: float = 5.0):
        self.manager = ModelManager(registry_uri, model_name, poll_seconds)
        self.prediction_log = (PredictionLog(log_store, model_name,
                                             flush_records=log_flush_records,
                                             flush_seconds=log_flush_seconds)
                               if log_store else None)
        self.service = Service(self.manager, self.prediction_log)
        self.host = host
        self._rest = make_rest_server(self.service, host, rest_port, max_request_bytes)
        self.rest_port = self._rest.server_address[1]
        self._grpc = None
        self.grpc_port = None
        if grpc_port is not None:
            from components.serve.grpc_service import make_grpc_server

            self._grpc, self.grpc_port = make_grpc_server(self.service, host, grpc_port)
        self._rest_thread: threading.Thread | None = None

    def start(self) -> ModelServer:
        self.manager.try_refresh()  # first load; not ready (503) until a version loads
        self.manager.start()
        self._rest_thread = threading.Thread(target=self._rest.serve_forever,
                                             name="serve-rest", daemon=True)
        self._rest_thread.start()
        if self._grpc is not None:
            self._grpc.start()
        log.info("serving %s: REST http://%s:%d, gRPC %s:%s", self.manager.model_name,
                 self.host, self.rest_port, self.host, self.grpc_port)
        return self

    def stop(self) -> None:
        self.manager.stop()
        self._rest.shutdown()
        self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=2).wait()
        if self.prediction_log is not None:
            self.prediction_log.close()

