"""KServe's payload logger into the prediction log (components/serve/log_receiver.py).

Events are built as KServe's logger sends them (binary CloudEvents: `ce-*` headers, the TF
Serving REST payload as the body; request and response share `ce-id`) and posted over real HTTP
to the receiver's own server; what lands on disk is read back with the reader the feedback step
uses (`components/common/artifacts/prediction_log.py`). The receiver inside `components.serve`
(`POST /v1/log`) is tested in tests/test_serve.py with the real server.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time

import pytest

from components.common.artifacts.prediction_log import LogReader, predictions_uri
from components.serve.log_receiver import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    LogReceiver,
    make_server,
)
from components.serve.prediction_log import PredictionLog

MODEL = "cfpb-disputes"
ROW = {"product": "Mortgage", "sub_product": "", "issue": "Loan servicing", "company_response":
       "Closed with explanation", "state": "CA", "zip_code": "945XX", "narrative": "x"}


def binary_event(kind: str, event_id: str, payload: dict, **extensions) -> tuple[dict, bytes]:
    headers = {"Ce-Specversion": "1.0", "Ce-Id": event_id, "Ce-Source": "http://localhost:9081/",
               "Ce-Type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
               "Ce-Time": "2026-11-02T12:00:00Z", "Ce-Inferenceservicename": "cfpb-disputes",
               "Ce-Namespace": "kubeflow", "Ce-Component": "predictor", "Ce-Endpoint": "",
               "Content-Type": "application/json"}
    headers.update({f"Ce-{k.capitalize()}": v for k, v in extensions.items()})
    return headers, json.dumps(payload).encode()


@pytest.fixture
def receiver(tmp_path):
    log = PredictionLog(str(tmp_path / "logs"), MODEL, flush_records=10_000, flush_seconds=60)
    receiver = LogReceiver(log, pending_seconds=60)
    yield receiver
    log.close()


def records(tmp_path, receiver):
    receiver.prediction_log.flush()
    reader = LogReader(predictions_uri(str(tmp_path / "logs"), MODEL))
    found = list(reader.records())
    assert reader.bad_lines == 0, reader.bad_examples
    return found


def test_a_request_and_its_response_become_one_record_per_example(tmp_path, receiver):
    request = {"instances": [{**ROW, "complaint_id": "101"}, {**ROW, "id": 102, "state": None}]}
    response = {"predictions": [[0.25], [0.75]]}  # TF Serving, an output of shape [-1, 1]
    status, answer = receiver.receive(*binary_event("request", "call-1", request),
                                      "model_version=3")
    assert status == 202 and "waiting" in answer["status"]
    status, answer = receiver.receive(*binary_event("response", "call-1", response))
    assert status == 200 and answer == {"status": "logged", "examples": 2, "model_version": 3}
    first, second = records(tmp_path, receiver)
    assert (first.request_id, first.model_version, first.key, first.probability) == (
        "call-1", 3, "101", 0.25)
    assert first.inputs == ROW  # the id is the key, not an input
    assert (second.key, second.probability, second.inputs["state"]) == ("102", 0.75, "")


def test_the_response_may_come_first_and_the_server_says_the_version(tmp_path, receiver):
    response = {"predictions": [{"probability": [0.4], "raw_probability": [0.3]}],
                "model_version": "2"}
    assert receiver.receive(*binary_event("response", "c2", response))[0] == 202
    status, _ = receiver.receive(*binary_event("request", "c2", {"inputs": {
        k: [v] for k, v in ROW.items()}}))
    assert status == 200
    (record,) = records(tmp_path, receiver)
    assert record.model_version == 2 and record.probability == 0.4 and record.key is None


def test_the_request_key_header_from_the_loggers_metadata(tmp_path, receiver):
    metadata = json.dumps({"X-Request-Key": ["3309951"]})
    receiver.receive(*binary_event("request", "c3", {"instances": [ROW]}, metadata=metadata))
    receiver.receive(*binary_event("response", "c3", {"predictions": [0.9]}))
    (record,) = records(tmp_path, receiver)
    assert record.key == "3309951" and record.model_version == 0  # no version known


def test_structured_mode_events(tmp_path, receiver):
    for kind, payload in (("request", {"instances": [{**ROW, "id": "7"}]}),
                          ("response", {"predictions": [0.1]})):
        envelope = {"specversion": "1.0", "id": "c4", "source": "x", "type":
                    REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
                    "data_base64": base64.b64encode(json.dumps(payload).encode()).decode()}
        status, _ = receiver.receive({"content-type": "application/cloudevents+json"},
                                     json.dumps(envelope).encode())
    assert status == 200
    (record,) = records(tmp_path, receiver)
    assert record.key == "7" and record.probability == 0.1


@pytest.mark.parametrize("case,message", [
    ("type", "event type 'other': expected"),
    ("id", "event has no id"),
    ("json", "request payload is not JSON"),
    ("count", "2 instances but 1 predictions"),
    ("payload", "neither 'instances' nor 'inputs'"),
])
def test_bad_events_are_400_with_the_reason(receiver, case, message):
    headers, body = binary_event("request", "c5", {"instances": [ROW, ROW]})
    if case == "type":
        headers["Ce-Type"] = "other"
    elif case == "id":
        del headers["Ce-Id"]
    elif case == "json":
        body = b"{nope"
    elif case == "payload":
        body = json.dumps({"rows": []}).encode()
    status, answer = receiver.receive(headers, body)
    if case in ("count", "payload"):
        assert status == 202
        status, answer = receiver.receive(*binary_event("response", "c5", {"predictions": [1]}))
    assert status == 400 and message in answer["error"]
    assert receiver.stats["bad_events"] == 1


def test_an_event_without_its_pair_is_dropped_after_a_while(tmp_path):
    log = PredictionLog(str(tmp_path / "logs"), MODEL, flush_seconds=60)
    receiver = LogReceiver(log, pending_seconds=0.0)
    receiver.receive(*binary_event("request", "lonely", {"instances": [ROW]}))
    receiver.receive(*binary_event("request", "next", {"instances": [ROW]}))
    assert receiver.stats["unpaired_dropped"] == 1
    log.close()


def test_its_own_http_server(tmp_path):
    """`python -m components.serve.log_receiver`'s server, over HTTP."""
    log = PredictionLog(str(tmp_path / "logs"), MODEL, flush_seconds=60)
    server = make_server(LogReceiver(log), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        for kind, payload in (("request", {"instances": [{**ROW, "id": "9"}]}),
                              ("response", {"predictions": [0.6]})):
            headers, body = binary_event(kind, "h1", payload)
            conn.request("POST", "/v1/log?model_version=4", body, headers)
            answer = conn.getresponse()
            assert answer.status in (200, 202), answer.read()
            answer.read()
        conn.request("GET", "/v1/log/stats")
        stats = json.loads(conn.getresponse().read())
        assert stats["examples"] == 1 and stats["calls"] == 1
        conn.request("POST", "/other", b"{}", {"Content-Length": "2"})
        assert conn.getresponse().status == 404
    finally:
        conn.close()
        server.shutdown()
        log.close()
    reader = LogReader(predictions_uri(str(tmp_path / "logs"), MODEL))
    (record,) = list(reader.records())
    assert (record.model_version, record.key, record.probability) == (4, "9", 0.6)


def _until_closed(sock) -> str:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.mark.parametrize("length, status", [("-1", 400), ("+5", 400), ("5, 6", 400),
                                            (str(1024 + 1), 413)])
def test_its_own_server_refuses_a_bad_length_before_reading_the_body(tmp_path, length, status):
    """A negative, signed, conflicting or too large Content-Length is answered at once (the
    body, here 3 MB, is never read to the end of the stream) and the connection closed."""
    log = PredictionLog(str(tmp_path / "logs"), MODEL, flush_seconds=60)
    server = make_server(LogReceiver(log), "127.0.0.1", 0, max_request_bytes=1024)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
            s.sendall(f"POST /v1/log HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                      "\r\n".encode())
            s.sendall(b"x" * 4096)  # the start of a body that would go on for 3 MB
            answer = _until_closed(s)
        assert answer.startswith(f"HTTP/1.1 {status} "), answer
        assert '"error": ' in answer and ("Content-Length" in answer or "limit" in answer)
    finally:
        server.shutdown()
        log.close()
    assert not (tmp_path / "logs" / MODEL / "predictions").exists()  # nothing was logged


def test_its_own_server_drops_a_stalled_client(tmp_path):
    """A client that stops mid-body is answered 408 after the timeout, not waited for."""
    log = PredictionLog(str(tmp_path / "logs"), MODEL, flush_seconds=60)
    server = make_server(LogReceiver(log), "127.0.0.1", 0, timeout=0.5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
            s.sendall(b"POST /v1/log HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            started = time.monotonic()
            answer = _until_closed(s)
            waited = time.monotonic() - started
        assert answer.startswith("HTTP/1.1 408 "), answer
        assert waited < 5
    finally:
        server.shutdown()
        log.close()
