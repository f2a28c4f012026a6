"""The storage module against a flaky S3 endpoint: transient failures are retried, answers a
person must act on are not.

A small proxy on 127.0.0.1 answers the next requests with injected statuses, then forwards to
moto's server (the real S3 protocol over HTTP).
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from components.common import storage
from components.common.errors import StepError


class FlakyProxy:
    """Forwards every request to `upstream` unless `failures` holds a status for it."""

    def __init__(self, upstream: str):
        self.failures: list[int] = []
        self.seen: list[tuple[str, int]] = []  # (method, status answered)
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                status = proxy.failures.pop(0) if proxy.failures else 0
                if status:
                    proxy.seen.append((self.command, status))
                    data = (f"<Error><Code>Injected{status}</Code><Message>injected</Message>"
                            "</Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                upstream_conn = http.client.HTTPConnection(target.hostname, target.port,
                                                           timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "transfer-encoding")}
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                response = upstream_conn.getresponse()
                data = response.read()
                proxy.seen.append((self.command, response.status))
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream_conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(s3_server, s3_env, monkeypatch):
    proxy = FlakyProxy(s3_server)
    monkeypatch.setenv("S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(storage, "RETRY_BACKOFF_SECONDS", 0.01)
    storage._client.cache_clear()
    yield proxy
    proxy.close()
    storage._client.cache_clear()


def test_transient_failures_are_retried(flaky, s3_bucket):
    uri = f"s3://{s3_bucket}/data/one.json"
    flaky.seen.clear()
    flaky.failures = [503, 500]
    storage.write_bytes(uri, b'{"a": 1}')
    assert [status for _m, status in flaky.seen][:2] == [503, 500]
    flaky.seen.clear()
    flaky.failures = [429, 502]  # SlowDown, then a gateway error
    assert storage.read_bytes(uri) == b'{"a": 1}'
    assert [status for _m, status in flaky.seen] == [429, 502, 200]


def test_errors_a_person_must_fix_are_not_retried(flaky, s3_bucket):
    flaky.seen.clear()
    flaky.failures = [403]
    with pytest.raises(StepError, match=r"s3://.*/data/x: S3 error Injected403"):
        storage.read_bytes(f"s3://{s3_bucket}/data/x")
    assert [status for _m, status in flaky.seen] == [403]


def test_a_failure_that_does_not_pass_gives_up_with_one_line(flaky, s3_bucket):
    flaky.seen.clear()
    flaky.failures = [503] * (storage.RETRIES + 1)
    with pytest.raises(StepError, match="S3 error Injected503") as info:
        storage.read_bytes(f"s3://{s3_bucket}/data/x")
    assert "\n" not in str(info.value)
    assert len(flaky.seen) == storage.RETRIES + 1


@pytest.fixture
def unreachable(s3_env, monkeypatch):
    """An endpoint nobody listens on (a port just freed)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    monkeypatch.setattr(storage, "RETRY_BACKOFF_SECONDS", 0.01)
    storage._client.cache_clear()
    yield endpoint
    storage._client.cache_clear()


@pytest.mark.parametrize("call", [
    lambda uri: storage.read_bytes(uri),
    lambda uri: storage.exists(uri),
    lambda uri: storage.write_bytes(uri, b"x"),
    lambda uri: storage.create_exclusive(uri, b"x"),
    lambda uri: storage.list_uris(uri),
    lambda uri: storage.list_objects(uri),
    lambda uri: storage.delete(uri),
    lambda uri: storage.download_tree(uri, "/nonexistent"),
])
def test_an_unreachable_endpoint_is_one_line_naming_uri_and_endpoint(unreachable, call):
    uri = "s3://bucket/some/key.csv"
    with pytest.raises(StepError) as info:
        call(uri)
    assert str(info.value) == (
        f"{uri}: S3 endpoint {unreachable} did not answer (Connection refused; "
        f"{storage.RETRIES} retries); check S3_ENDPOINT_URL and that the object store is up")


@pytest.fixture
def silent(s3_env, monkeypatch):
    """An endpoint that accepts connections and never answers (S3_READ_TIMEOUT_SECONDS 0.3)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])  # held open, never answered
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("S3_READ_TIMEOUT_SECONDS", "0.3")
    monkeypatch.setattr(storage, "RETRY_BACKOFF_SECONDS", 0.01)
    storage._client.cache_clear()
    yield endpoint, accepted
    storage._client.cache_clear()
    listener.close()
    for sock in accepted:
        sock.close()


def test_an_endpoint_that_never_answers_fails_after_a_few_read_timeouts(silent):
    """It does not hang, and silence is tried 1 + READ_RETRIES times, not 1 + RETRIES."""
    endpoint, accepted = silent
    started = time.monotonic()
    with pytest.raises(StepError) as info:
        storage.read_bytes("s3://bucket/some/key.csv")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"s3://bucket/some/key.csv: S3 endpoint {endpoint} did not answer "
                              f"(timed out; {storage.READ_RETRIES} retries)")
    assert len(accepted) == 1 + storage.READ_RETRIES


def test_a_bad_read_timeout_setting_is_one_line(s3_env, monkeypatch):
    monkeypatch.setenv("S3_READ_TIMEOUT_SECONDS", "soon")
    storage._client.cache_clear()
    try:
        with pytest.raises(StepError, match=r"S3_READ_TIMEOUT_SECONDS='soon': expected a "
                                            "positive number of seconds"):
            storage.read_bytes("s3://bucket/some/key.csv")
    finally:
        storage._client.cache_clear()
