"""The model server: TensorFlow Serving's REST API, and `ModelServer`, which starts the REST
server, the gRPC server and the watcher over one `service.Service` (what both protocols share).

REST connections belong to one event-loop thread (`RestServer`): it reads each request whole,
head and body, before a worker thread (at most `workers`) parses and answers it. A client that
sends slowly or stops half-way costs a socket until its deadline (then 408), never a thread;
at most `max_connections` are open at once (more are answered 503 and closed).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import re
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from components.common.errors import StepError
from components.serve import log_receiver
from components.serve.framing import HttpError, frame
from components.serve.models import BadRequest, LoadedModel, ModelManager, NotFound, Unavailable
from components.serve.prediction_log import PredictionLog, Redaction
from components.serve.service import (
    MAX_REQUEST_BYTES,
    Service,
    key_of,
    keys_of,
    rows_from_columns,
    rows_from_instances,
)

log = logging.getLogger(__name__)

KEY_HEADER = "X-Request-Key"


@dataclass(frozen=True)
class RestLimits:
    """What one client may take of the REST server."""

    max_request_bytes: int = MAX_REQUEST_BYTES  # a body's Content-Length (413 above it)
    request_timeout: float = 30.0  # first byte of a request to its last (408 after it)
    idle_timeout: float = 60.0  # a keep-alive connection waiting for its next request
    max_connections: int = 512  # open at once, stalled ones included (503 beyond)
    workers: int = 16  # threads answering requests
    max_header_bytes: int = 64 * 1024  # request line and headers (431 above it)

    @property
    def max_buffered_bytes(self) -> int:
        """Request bytes held by the loop at once, over every connection (503 beyond)."""
        return max(8 * self.max_request_bytes, 64 << 20)


# ---------------------------------------------------------------------------------------------
# The connection loop.

HEAD_END = re.compile(rb"\n\r?\n")
LINGER_SECONDS = 2.0  # after an error answer, unread input is drained this long before close


class _Connection:
    """One client connection, owned by the loop except while a worker answers it."""

    __slots__ = ("sock", "address", "buffer", "deadline", "reading", "need", "length",
                 "error", "busy", "draining", "continued")

    def __init__(self, sock: socket.socket, address, deadline: float):
        self.sock = sock
        self.address = address
        self.buffer = bytearray()
        self.deadline = deadline
        self.reading = False  # a request has started arriving
        self.need: int | None = None  # bytes of the current request, once its head is read
        self.length: int | None = None  # its declared body length
        self.error: HttpError | None = None  # its framing error
        self.busy = False  # a worker has it
        self.draining = False  # answered and closing: input is read and dropped
        self.continued = False  # 100 Continue sent for the current request


class _Request:
    """What a handler gets instead of a socket: the request's bytes, read whole."""

    __slots__ = ("sock", "data", "length", "error")

    def __init__(self, sock, data: bytes, length: int | None, error: HttpError | None):
        self.sock, self.data, self.length, self.error = sock, data, length, error


class _SocketWriter:
    def __init__(self, sock: socket.socket):
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


def _canned(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class RestServer:
    """The connection loop (see the module docstring) under `handler`'s request handling.

    The same surface as socketserver's servers: `server_address`, `RequestHandlerClass`,
    `serve_forever()`, `shutdown()`, `server_close()`.
    """

    def __init__(self, address: tuple[str, int], handler, limits: RestLimits = RestLimits()):
        self.RequestHandlerClass = handler
        self.limits = limits
        try:
            infos = socket.getaddrinfo(address[0] or "0.0.0.0", address[1],
                                       type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise StepError(f"--host {address[0]}: not an address of this machine ({exc})") \
                from None
        family = infos[0][0]
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind(infos[0][4])
        except OSError as exc:
            self.socket.close()
            raise StepError(f"REST port {address[0]}:{address[1]}: cannot listen there "
                            f"({exc.strerror or exc})") from None
        self.socket.listen(min(limits.max_connections, 1024))
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._returned: collections.deque = collections.deque()
        self._connections: set[_Connection] = set()
        self._buffered = 0
        self._pool = ThreadPoolExecutor(max_workers=limits.workers,
                                        thread_name_prefix="serve-rest")
        self._stopping = False
        self._stopped = threading.Event()
        self._stopped.set()

    # -- the loop --------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        self._selector.register(self.socket, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_expiry = 0.0
        try:
            while not self._stopping:
                for key, _ in self._selector.select(min(poll_interval, 0.1)):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._take_back()
                    else:
                        self._on_readable(key.data)
                now = time.monotonic()
                if now >= next_expiry:
                    self._expire(now)
                    next_expiry = now + 0.1
        finally:
            for connection in list(self._connections):
                if not connection.busy:
                    self._close(connection)
            self._selector.unregister(self.socket)
            self._selector.unregister(self._wake_r)
            self._stopped.set()

    def shutdown(self) -> None:
        self._stopping = True
        self._wake()
        self._stopped.wait(10)

    def server_close(self) -> None:
        self.socket.close()
        for connection in list(self._connections):  # a worker still writing fails at once
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for connection in list(self._connections):
            connection.sock.close()
        self._connections.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (the loop is awake anyway) or gone
            self._wake_w.send(b"x")

    def _observe(self, status: int) -> None:
        service = getattr(self.RequestHandlerClass, "service", None)
        if service is not None:
            service.metrics.observe("rest", "none", str(status), None)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the next round may do better
                log.warning("REST accept failed: %s", exc)
                return
            sock.setblocking(False)
            if len(self._connections) >= self.limits.max_connections:
                self._observe(503)
                with contextlib.suppress(OSError):
                    sock.send(_canned(503, f"too many connections (limit "
                                           f"{self.limits.max_connections}); try again"))
                sock.close()
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, address, time.monotonic() + self.limits.idle_timeout)
            self._connections.add(connection)
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _on_readable(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._close(connection)
        if not data:
            return self._close(connection)
        if connection.draining:
            return
        if self._buffered + len(data) > self.limits.max_buffered_bytes:
            return self._reject(connection, 503, "the server holds too many unanswered "
                                                 "requests; try again")
        connection.buffer += data
        self._buffered += len(data)
        self._advance(connection)

    def _advance(self, connection: _Connection) -> None:
        """Frame the buffered bytes; hand a complete request to a worker."""
        limits = self.limits
        if not connection.reading:
            blank = len(connection.buffer) - len(connection.buffer.lstrip(b"\r\n"))
            if blank:  # empty lines before a request line are ignored (RFC 9112 2.2)
                del connection.buffer[:blank]
                self._buffered -= blank
            if not connection.buffer:
                return
            connection.reading = True
            connection.deadline = time.monotonic() + limits.request_timeout
        if connection.need is None:
            match = HEAD_END.search(connection.buffer, 0, limits.max_header_bytes + 4)
            if match is None:
                if len(connection.buffer) > limits.max_header_bytes:
                    self._reject(connection, 431, "request line and headers are longer than "
                                                  f"{limits.max_header_bytes} bytes")
                return
            head_end = match.end()
            try:
                connection.length = frame(bytes(connection.buffer[:head_end]),
                                          limits.max_request_bytes)
            except HttpError as exc:
                connection.length, connection.error = None, exc
            connection.need = head_end + (connection.length or 0)
            if (len(connection.buffer) < connection.need and b"100-continue"
                    in connection.buffer[:head_end].lower()):
                connection.continued = True
                with contextlib.suppress(OSError):  # the client waits for it to send the body
                    connection.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(connection.buffer) >= connection.need:
            self._dispatch(connection)

    def _dispatch(self, connection: _Connection) -> None:
        need = connection.need
        request = _Request(connection.sock, bytes(connection.buffer[:need]), connection.length,
                           connection.error)
        del connection.buffer[:need]
        self._buffered -= need
        connection.need = connection.length = connection.error = None
        connection.reading = False
        connection.busy = True
        self._selector.unregister(connection.sock)
        self._pool.submit(self._work, connection, request)

    def _work(self, connection: _Connection, request: _Request) -> None:
        keep = False
        try:
            connection.sock.settimeout(self.limits.request_timeout)  # a client that never reads
            handler = self.RequestHandlerClass(request, connection.address, self)
            keep = not handler.close_connection
        except OSError as exc:  # the client went away or stopped reading
            log.debug("REST connection %s: %s", connection.address, exc)
        except Exception:
            log.exception("REST request failed outside its handler")
        finally:
            self._returned.append((connection, keep))
            self._wake()

    def _take_back(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._returned:
            connection, keep = self._returned.popleft()
            connection.busy = False
            if self._stopping:
                self._close(connection)
                continue
            try:
                connection.sock.setblocking(False)
            except OSError:
                self._close(connection)
                continue
            if not keep:
                self._linger(connection)
                continue
            connection.continued = False
            connection.deadline = time.monotonic() + self.limits.idle_timeout
            self._selector.register(connection.sock, selectors.EVENT_READ, connection)
            if connection.buffer:  # a pipelined request already arrived
                self._advance(connection)

    def _reject(self, connection: _Connection, status: int, message: str) -> None:
        """Answer from the loop (a request that cannot be read) and close."""
        self._observe(status)
        with contextlib.suppress(OSError):
            connection.sock.send(_canned(status, message))
        self._linger(connection)

    def _linger(self, connection: _Connection) -> None:
        """Close after an answer without discarding it: stop sending, read and drop what the
        client still sends (a body we did not read) for a moment, then close. An immediate
        close with unread input would reset the connection and lose the answer."""
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self._close(connection)
        self._buffered -= len(connection.buffer)
        connection.buffer = bytearray()
        connection.draining = True
        connection.deadline = time.monotonic() + LINGER_SECONDS
        with contextlib.suppress(KeyError):  # still registered (an answer from the loop)
            self._selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _close(self, connection: _Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()
        self._buffered -= len(connection.buffer)
        connection.buffer = bytearray()
        self._connections.discard(connection)

    def _expire(self, now: float) -> None:
        for connection in [c for c in self._connections
                           if not c.busy and c.deadline <= now]:
            if connection.draining or not connection.reading:
                self._close(connection)  # idle keep-alive, or done lingering
            else:
                self._reject(connection, 408, "request not received in full within "
                                              f"{self.limits.request_timeout:g} s")

    # -- for tests and metrics -------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._connections)


# ---------------------------------------------------------------------------------------------
# REST (TF Serving's API).

PREDICT_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r":predict$")
STATUS_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<metadata>/metadata)?$")
ALLOWED_METHODS = ("GET", "HEAD", "POST")
KNOWN_METHODS = ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")


def parse_predict_body(body: bytes) -> tuple[str, object]:
    """A predict body -> ("instances" | "inputs", its value); BadRequest for anything else."""
    try:
        request = json.loads(body)
    except RecursionError:
        raise BadRequest("request body is nested too deeply to be a predict request") from None
    except ValueError as exc:  # JSONDecodeError, invalid UTF-8, an integer of 4,300+ digits
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(request, dict):
        raise BadRequest("request body must be a JSON object with 'instances' or 'inputs'")
    if ("instances" in request) == ("inputs" in request):
        raise BadRequest("request needs exactly one of 'instances' (rows) or 'inputs' "
                         "(columns)")
    kind = "instances" if "instances" in request else "inputs"
    return kind, request[kind]


class RestHandler(BaseHTTPRequestHandler):
    """Answers one request whose bytes the loop has read whole (`request` is a `_Request`)."""

    protocol_version = "HTTP/1.1"
    server_version = "cfpb-serve/1"
    service: Service
    max_request_bytes: int
    event_receiver: log_receiver.LogReceiver | None = None  # POST /v1/log (with --log-store)

    def setup(self):
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.data)
        self.wfile = _SocketWriter(self.request.sock)
        self._answered = False

    def handle(self):
        self.close_connection = True
        self.handle_one_request()

    def finish(self):
        pass

    def handle_one_request(self):
        self.raw_requestline = self.rfile.readline(self.server.limits.max_header_bytes + 1)
        if not self.parse_request():
            if not self._answered:  # a blank request line: the stdlib answers nothing
                self.send_error(400, "bad request line")
            return
        if self.request_version == "HTTP/0.9":
            return self.send_error(400, "HTTP/0.9 requests are not supported")
        if self.request.error is not None:  # Content-Length: the body was never read
            self.close_connection = True
            return self._error(self.request.error.status, str(self.request.error))
        if self.command not in ALLOWED_METHODS:
            known = self.command in KNOWN_METHODS
            self.close_connection = True
            self.server._observe(405 if known else 501)
            return self._send(405 if known else 501, {"error": (
                f"method {self.command[:20]} is not allowed here (allowed: "
                f"{', '.join(ALLOWED_METHODS)})" if known else
                f"method {self.command[:20]!r} is not supported")},
                extra_headers={"Allow": ", ".join(ALLOWED_METHODS)})
        getattr(self, "do_" + self.command)()

    def handle_expect_100(self):
        return True  # the loop sent 100 Continue before it read the body

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code, message=None, explain=None):
        """Every error the stdlib's parsing finds, as JSON (not its HTML page)."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # a status line and headers, whatever was asked
        self.close_connection = True
        text = message or HTTPStatus(code).phrase
        self._send(code, {"error": text[:300]})
        self.server._observe(code)

    def _send(self, status: int, body, content_type: str = "application/json",
              extra_headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else (
            json.dumps(body).encode() if not isinstance(body, str) else body.encode())
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(data)
        self.flush_headers()

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message})

    def do_HEAD(self):  # noqa: N802 - the stdlib's name
        self.do_GET()

    def do_GET(self):  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        manager = self.service.manager
        if path == "/healthz":
            return self._send(200, {"status": "alive"})
        if path == "/readyz":
            table = manager.table
            if table.models:
                return self._send(200, {"status": "ready", "versions": sorted(table.models)})
            if manager.loading:
                return self._send(503, {"status": "loading",
                                        "error": "loading the deployed versions"})
            return self._send(503, {"status": "not ready", "error": manager.last_error or
                                    "no version loaded yet"})
        if path == "/metrics":
            return self._send(200, self.service.metrics.render(len(manager.table.models)),
                              "text/plain; version=0.0.4")
        match = STATUS_PATH.match(path)
        if not match:
            return self._error(404, f"no such endpoint: GET {path[:200]}")
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
        except Unavailable as exc:
            return self._error(503, str(exc))
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("GET %s failed", path[:200])
            return self._error(500, f"{type(exc).__name__}: {exc}")

    def do_POST(self):  # noqa: N802 - the stdlib's name
        if self.event_receiver is not None and self.path.split("?", 1)[0] == log_receiver.PATH:
            return self._log_event()  # KServe payload-logger events (log_receiver.py)
        started = time.perf_counter()
        version_label = "none"
        try:
            body = self._read_body()
            match = PREDICT_PATH.match(self.path.split("?", 1)[0])
            if not match:
                raise HttpError(404, f"no such endpoint: POST {self.path[:200]} (use "
                                "/v1/models/<name>[/versions/<N>|/labels/<label>]:predict)")
            self._check_name(match["name"])
            kind, data = parse_predict_body(body)
            key = self.headers.get(KEY_HEADER) or key_of(data)
            model = self.service.route(_version(match["version"]), match["label"], key)
            version_label = str(model.version)
            if kind == "instances":
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
        except Unavailable as exc:
            code = 503
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
            raise HttpError(404, f"model {name[:100]!r} is not served (this server serves "
                                 f"{self.service.manager.model_name!r})")

    def _read_body(self) -> bytes:
        """The body the loop framed (its Content-Length was checked there)."""
        if self.request.length is None:
            self.close_connection = True  # a body without a length cannot be skipped
            raise HttpError(411, "Content-Length required")
        return self.rfile.read(self.request.length)


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise NotFound(f"version {text[:40]!r} is not a version number")
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


def make_rest_server(service: Service, host: str, port: int,
                     limits: RestLimits | int = RestLimits()) -> RestServer:
    if isinstance(limits, int):  # a body limit alone
        limits = RestLimits(max_request_bytes=limits)
    handler = type("Handler", (RestHandler,), {"service": service,
                                               "max_request_bytes": limits.max_request_bytes})
    return RestServer((host, port), handler, limits)


# ---------------------------------------------------------------------------------------------
# The whole server.

class ModelServer:
    """REST + gRPC + watcher (+ prediction log). Port 0 picks a free port (see .rest_port).

    `start()` answers REST at once (`/healthz` 200, `/readyz` 503 "loading"), then binds gRPC
    and loads the deployed versions in the watcher thread.
    """

    def __init__(self, registry_uri: str, model_name: str, *, host: str = "127.0.0.1",
                 rest_port: int = 8501, grpc_port: int | None = 8500, poll_seconds: float = 0.5,
                 log_store: str | None = None, max_request_bytes: int = MAX_REQUEST_BYTES,
                 log_flush_records: int = 500, log_flush_seconds: float = 5.0,
                 keep_previous_seconds: float = 600.0, limits: RestLimits | None = None,
                 log_redaction: Redaction | None = None):
        self.manager = ModelManager(registry_uri, model_name, poll_seconds,
                                    keep_previous_seconds=keep_previous_seconds)
        self.prediction_log = (PredictionLog(log_store, model_name,
                                             flush_records=log_flush_records,
                                             flush_seconds=log_flush_seconds,
                                             redaction=log_redaction)
                               if log_store else None)
        self.service = Service(self.manager, self.prediction_log)
        self.host = host
        self.limits = limits or RestLimits(max_request_bytes=max_request_bytes)
        self._rest = make_rest_server(self.service, host, rest_port, self.limits)
        if self.prediction_log is not None:  # POST /v1/log: KServe payload-logger events
            self._rest.RequestHandlerClass.event_receiver = log_receiver.LogReceiver(
                self.prediction_log)
        self.rest_port = self._rest.server_address[1]
        self._grpc_port_asked = grpc_port
        self._grpc = None
        self.grpc_port = None
        self._rest_thread: threading.Thread | None = None

    def start(self, wait: bool = True) -> ModelServer:
        """Serve; with `wait`, return once the first load has finished (or failed)."""
        self._rest_thread = threading.Thread(target=self._rest.serve_forever,
                                             name="serve-rest-loop", daemon=True)
        self._rest_thread.start()
        if self._grpc_port_asked is not None:
            from components.serve.grpc_service import make_grpc_server  # imports TensorFlow

            self._grpc, self.grpc_port = make_grpc_server(
                self.service, self.host, self._grpc_port_asked, workers=self.limits.workers,
                max_request_bytes=self.limits.max_request_bytes)
            self._grpc.start()
        self.manager.start()  # loads the deployed versions; /readyz is 503 until then
        log.info("serving %s: REST http://%s:%d, gRPC %s:%s", self.manager.model_name,
                 self.host, self.rest_port, self.host, self.grpc_port)
        if wait:
            self.manager.first_attempt.wait()
        return self

    def stop(self) -> None:
        self.manager.stop()
        if self._rest_thread is not None:
            self._rest.shutdown()
        self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=2).wait()
        if self.prediction_log is not None:
            self.prediction_log.close()
