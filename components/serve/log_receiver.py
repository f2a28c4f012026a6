"""KServe's payload logger into the prediction log: one format on disk, whoever served.

On a cluster the model server is TF Serving inside a KServe InferenceService, and its requests
and responses reach us as CloudEvents from KServe's payload logger (`predictor.logger: {mode:
all, url: http://<receiver>/v1/log}`): one event of type `org.kubeflow.serving.inference.request`
and one of type `...response` per call, sharing their `ce-id`. This module pairs them and writes
each predicted example as one line of the prediction log (`PredictionLog`, the format
`components/common/artifacts/prediction_log.py` reads), so the feedback step reads the same
files whether `components.serve` or TF Serving answered.

- Events: binary content mode (the `ce-*` headers, the payload as the body; what KServe sends)
  or structured mode (`application/cloudevents+json`: `data` or `data_base64`).
- Payloads: TF Serving's REST API (KServe protocol v1): `{"instances": [...]}` or
  `{"inputs": {...}}`; answers `{"predictions": [p, ...]}`, `[[p], ...]` or
  `[{"probability": p, ...}, ...]` (a model with several outputs).
- Version: the answer's `model_version` (components.serve's), else the logger URL's query
  parameter `model_version` (`.../v1/log?model_version=3`, set per predictor revision), else 0
  (unknown: feedback reports version 0 apart).
- Key per example: its `id`/`complaint_id` field; else the request's `X-Request-Key` header
  when the InferenceService logs it (`logger.metadataHeaders: [X-Request-Key]`, the event's
  `metadata` extension), as components.serve does.
- A request without its response (or the reverse) waits at most `pending_seconds` and
  `max_pending` events; beyond that it is dropped and counted (`/v1/log/stats`).

Served by `components.serve --log-store ...` at `POST /v1/log` (beside the predictions), or on
its own: `python -m components.serve.log_receiver --log-store <dir|s3://> --model-name <name>`.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from components.serve.framing import HttpError, declared_length
from components.serve.prediction_log import PredictionLog, Redaction
from components.serve.service import KEY_FIELDS, MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

PATH = "/v1/log"
STATS_PATH = "/v1/log/stats"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
KEY_HEADER = "x-request-key"
STRUCTURED = "application/cloudevents+json"


class BadEvent(ValueError):
    """An event this receiver cannot take (answered 400 with the reason)."""


@dataclass(frozen=True)
class Event:
    kind: str  # "request" | "response"
    id: str
    time: str | None
    data: object
    metadata: dict


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


def parse_event(headers: Mapping[str, str], body: bytes) -> Event:
    """A CloudEvent from an HTTP request (binary or structured content mode)."""
    lowered = _lower(headers)
    if lowered.get("content-type", "").split(";")[0].strip() == STRUCTURED:
        try:
            envelope = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadEvent(f"structured CloudEvent is not JSON: {exc}") from None
        if not isinstance(envelope, dict):
            raise BadEvent("structured CloudEvent is not a JSON object")
        attributes = {k.lower(): v for k, v in envelope.items()}
        if "data_base64" in attributes:
            payload = base64.b64decode(attributes["data_base64"])
        else:
            payload = attributes.get("data")
    else:
        attributes = {k[3:]: v for k, v in lowered.items() if k.startswith("ce-")}
        payload = body
    kind_text = str(attributes.get("type", ""))
    if kind_text == REQUEST_TYPE:
        kind = "request"
    elif kind_text == RESPONSE_TYPE:
        kind = "response"
    else:
        raise BadEvent(f"event type {kind_text or '(none)'!r}: expected {REQUEST_TYPE} or "
                       f"{RESPONSE_TYPE}")
    event_id = attributes.get("id")
    if not event_id:
        raise BadEvent("event has no id (ce-id)")
    if isinstance(payload, bytes | str):
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadEvent(f"{kind} payload is not JSON: {exc}") from None
    metadata = attributes.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            metadata = {}
    return Event(kind, str(event_id), attributes.get("time"), payload,
                 metadata if isinstance(metadata, dict) else {})


def _text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value) if isinstance(
        value, dict | list) else str(value)


def _instances(request) -> list[dict]:
    if not isinstance(request, dict):
        raise BadEvent("request payload is not a JSON object")
    if isinstance(request.get("instances"), list):
        rows = request["instances"]
        if not all(isinstance(row, dict) for row in rows):
            raise BadEvent("request instances are not objects of feature: value")
        return rows
    columns = request.get("inputs")
    if isinstance(columns, dict):
        lists = {k: v if isinstance(v, list) else [v] for k, v in columns.items()}
        count = max((len(v) for v in lists.values()), default=0)
        return [{k: (v[i] if i < len(v) else None) for k, v in lists.items()}
                for i in range(count)]
    raise BadEvent("request payload has neither 'instances' nor 'inputs' (TF Serving REST)")


def _probability(prediction) -> float:
    if isinstance(prediction, dict):
        prediction = prediction.get("probability")
    while isinstance(prediction, list) and len(prediction) == 1:
        prediction = prediction[0]
    if isinstance(prediction, bool) or not isinstance(prediction, int | float):
        raise BadEvent(f"prediction {prediction!r} is not one probability")
    return float(prediction)


def _header_key(metadata: dict) -> str | None:
    for name, values in metadata.items():
        if str(name).lower() == KEY_HEADER:
            value = values[0] if isinstance(values, list) and values else values
            return str(value) if value not in (None, "", []) else None
    return None


def examples(request, response, metadata: dict) -> list[tuple[dict, float, str | None]]:
    """(inputs, probability, key) per example of one call."""
    rows = _instances(request)
    if not isinstance(response, dict) or not isinstance(response.get("predictions"), list):
        raise BadEvent("response payload has no 'predictions' list (TF Serving REST)")
    predictions = response["predictions"]
    if len(predictions) != len(rows):
        raise BadEvent(f"{len(rows)} instances but {len(predictions)} predictions")
    header_key = _header_key(metadata)
    out = []
    for row, prediction in zip(rows, predictions, strict=True):
        key = next((str(row[f]) for f in KEY_FIELDS if row.get(f) not in (None, "")), None)
        inputs = {name: _text(value) for name, value in row.items() if name not in KEY_FIELDS}
        out.append((inputs, _probability(prediction), key or header_key))
    return out


def _version(response, query: dict) -> int:
    for value in ((response or {}).get("model_version") if isinstance(response, dict) else None,
                  (query.get("model_version") or [None])[0]):
        if value is not None and str(value).isdigit():
            return int(value)
    return 0


class LogReceiver:
    """Pairs request and response events by id and writes their examples to the log."""

    def __init__(self, prediction_log: PredictionLog, *, pending_seconds: float = 300.0,
                 max_pending: int = 10_000):
        self.prediction_log = prediction_log
        self.pending_seconds = pending_seconds
        self.max_pending = max_pending
        self._pending: collections.OrderedDict[str, tuple[float, Event, dict]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"events": 0, "calls": 0, "examples": 0, "bad_events": 0,
                      "unpaired_dropped": 0}

    def receive(self, headers: Mapping[str, str], body: bytes, query: str = "") -> tuple[int,
                                                                                       dict]:
        """(HTTP status, answer) for one event."""
        try:
            event = parse_event(headers, body)
        except BadEvent as exc:
            with self._lock:
                self.stats["bad_events"] += 1
            return 400, {"error": str(exc)}
        params = parse_qs(query)
        now = time.monotonic()
        with self._lock:
            self.stats["events"] += 1
            self._expire(now)
            other = self._pending.pop(event.id, None)
            if other is None or other[1].kind == event.kind:
                self._pending[event.id] = (now, event, params)
                return 202, {"status": "waiting for the " + (
                    "response" if event.kind == "request" else "request")}
        _, earlier, earlier_params = other
        request, response = (earlier, event) if earlier.kind == "request" else (event, earlier)
        try:
            found = examples(request.data, response.data, request.metadata or response.metadata)
        except BadEvent as exc:
            with self._lock:
                self.stats["bad_events"] += 1
            return 400, {"error": f"call {event.id}: {exc}"}
        version = _version(response.data, {**earlier_params, **params})
        for inputs, probability, key in found:
            self.prediction_log.record(event.id, version, [inputs], [probability], key)
        with self._lock:
            self.stats["calls"] += 1
            self.stats["examples"] += len(found)
        return 200, {"status": "logged", "examples": len(found), "model_version": version}

    def _expire(self, now: float) -> None:
        while self._pending:
            event_id, (seen, _event, _params) = next(iter(self._pending.items()))
            if now - seen <= self.pending_seconds and len(self._pending) < self.max_pending:
                return
            del self._pending[event_id]
            self.stats["unpaired_dropped"] += 1
            log.warning("log receiver: event %s never met its pair; dropped", event_id)


# ---------------------------------------------------------------------------------------------
# Its own process (for KServe, where components.serve is not the model server).

def make_server(receiver: LogReceiver, host: str, port: int,
                max_request_bytes: int = MAX_REQUEST_BYTES, timeout: float = 30.0):
    """A threading HTTP server for `receiver`. An event's body may be at most
    `max_request_bytes` (the model server's own request limit: a logged request is one it
    took); a client silent for `timeout` seconds is disconnected, so stalled connections do
    not hold threads for ever."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            self.timeout = timeout  # the socket's: each read waits at most this long
            super().setup()

        def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - the stdlib's name
            path = self.path.split("?", 1)[0]
            if path in ("/healthz", "/readyz"):
                return self._send(200, {"status": "alive"})
            if path == STATS_PATH:
                return self._send(200, receiver.stats)
            return self._send(404, {"error": f"no such endpoint: GET {path}"})

        def do_POST(self):  # noqa: N802 - the stdlib's name
            path, _, query = self.path.partition("?")
            try:
                if self.headers.get("Transfer-Encoding"):
                    raise HttpError(411, "Transfer-Encoding is not supported: send the body "
                                         "with a Content-Length")
                # Checked before a byte of the body is read: a negative or huge length is
                # refused, never read to the end of the stream.
                length = declared_length(self.headers.get_all("Content-Length") or [],
                                         max_request_bytes) or 0
            except HttpError as exc:
                self.close_connection = True  # the unread body must not be taken as a request
                return self._send(exc.status, {"error": str(exc)})
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True
                return self._send(408, {"error": f"request body not received within "
                                                 f"{timeout:g} s"})
            if len(body) < length:  # the client went away mid-body
                self.close_connection = True
                return None
            if path != PATH:
                return self._send(404, {"error": f"no such endpoint: POST {path} (use {PATH})"})
            status, answer = receiver.receive(dict(self.headers.items()), body, query)
            return self._send(status, answer)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    import signal
    import sys

    from components.common.cli import StepArgumentParser, add_dataset_config, positive_int

    parser = StepArgumentParser("serve", prog="python -m components.serve.log_receiver",
                                description="Receive KServe payload-logger CloudEvents at "
                                            "POST /v1/log and write the prediction log.")
    parser.add_argument("--log-store", required=True,
                        help="writes <log-store>/<model-name>/predictions/ (directory or s3://)")
    parser.add_argument("--model-name", required=True, help="the model's name")
    parser.add_argument("--host", default="127.0.0.1", help="address (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--max-request-bytes", type=positive_int, default=MAX_REQUEST_BYTES,
                        help="largest event body accepted (413 above; default "
                             f"{MAX_REQUEST_BYTES}, the model server's request limit)")
    add_dataset_config(parser)  # its privacy section: what the prediction log keeps
    args = parser.parse_args(argv)
    from components.common.dataset_config import load_dataset_config

    redaction = Redaction.from_config(load_dataset_config(args.dataset_config))
    prediction_log = PredictionLog(args.log_store, args.model_name, redaction=redaction)
    receiver = LogReceiver(prediction_log)
    server = make_server(receiver, args.host, args.port, args.max_request_bytes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"log receiver: http://{args.host}:{server.server_address[1]}{PATH}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    prediction_log.close()
    print(f"log receiver: {receiver.stats}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from components.common.cli import end_process, run_step

    end_process(run_step("serve log receiver", main))
