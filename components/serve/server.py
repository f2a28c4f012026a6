"""The model server: TensorFlow Serving's REST API on a threaded stdlib HTTP server, and
`ModelServer`, which starts the watcher, the REST server and the gRPC server over one
`service.Service` (what both protocols share).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from components.serve import log_receiver
from components.serve.models import BadRequest, LoadedModel, ModelManager, NotFound
from components.serve.prediction_log import PredictionLog
from components.serve.service import (
    Service,
    key_of,
    keys_of,
    rows_from_columns,
    rows_from_instances,
)

log = logging.getLogger(__name__)

KEY_HEADER = "X-Request-Key"


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
    event_receiver: log_receiver.LogReceiver | None = None  # POST /v1/log (with --log-store)

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
        if self.event_receiver is not None and self.path.split("?", 1)[0] == log_receiver.PATH:
            return self._log_event()  # KServe payload-logger events (log_receiver.py)
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
            outputs = self.service.predict(model, rows, key, keys_of(data, len(rows)))
            self._send(200, {"predictions": outputs, "decisions": model.decide(outputs),
                             "decision_threshold": model.decision_threshold,
                             "model_version": str(model.version)})
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

    def _log_event(self) -> None:
        try:
            body = self._read_body()
        except HttpError as exc:
            return self._error(exc.status, str(exc))
        _, _, query = self.path.partition("?")
        status, answer = self.event_receiver.receive(dict(self.headers.items()), body, query)
        return self._send(status, answer)

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
        if self.prediction_log is not None:  # POST /v1/log: KServe payload-logger events
            self._rest.RequestHandlerClass.event_receiver = log_receiver.LogReceiver(
                self.prediction_log)
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

