"""Property-based tests (hypothesis) of the two parsers that take input from anyone: the CSV
reader of ingest and the REST request parser of serve.

Whatever the bytes, the quoting or the JSON: a CSV is read back exactly or refused with one
`StepError` and nothing published; a REST request gets one complete HTTP answer with a JSON
body and never a 500, and the server logs no error and goes on serving.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import logging
import socket
import string

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from components.common.errors import StepError
from components.ingest.csv_source import CsvRows
from components.ingest.ingest import IngestOptions, ingest
from tests.test_ingest import assert_nothing_published, cfpb_config, complaint, csv_bytes
from tests.test_serve import (
    NAME,
    PREDICT,
    ROWS,
    raw_request,
    registry_root,  # noqa: F401 - a fixture: two versions trained by the real steps
    request_head,
)

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
            HealthCheck.data_too_large]


# ---------------------------------------------------------------------------------------------
# The CSV reader.

def read_all(data: bytes, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    rows = CsvRows(io.BytesIO(data), "src.csv", delimiter)
    return rows.header, list(rows)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_read_or_refused_with_one_line(data):
    try:
        header, rows = read_all(data)
    except StepError as exc:
        event("refused")
        assert "\n" not in str(exc) and str(exc).startswith("src.csv: ")
        return
    event("read")
    assert all(isinstance(v, str) for row in [header, *rows] for v in row)
    assert all(len(row) == len(header) for row in rows)


FIELD = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
NAMES = st.lists(st.text(string.ascii_letters + string.digits + "_ ", min_size=1, max_size=12)
                 .map(str.strip).filter(bool), min_size=1, max_size=6, unique=True)


@st.composite
def tables(draw):
    header = draw(NAMES)
    rows = draw(st.lists(st.lists(FIELD, min_size=len(header), max_size=len(header)),
                         max_size=8))
    terminator = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    return header, rows, terminator, quoting, delimiter, draw(st.booleans())


@settings(max_examples=400, deadline=None)
@given(tables())
def test_random_quoting_reads_back_exactly(table):
    header, rows, terminator, quoting, delimiter, bom = table
    values = [v for row in rows for v in row]
    if terminator == "\r":  # LF inside a field makes a CR-only file ambiguous
        assume(not any("\n" in v for v in values))
    if terminator != "\r\n" and any(("\r" in v or "\n" in v) for v in values):
        quoting = csv.QUOTE_ALL  # csv.writer leaves a line break it does not end lines with
    if len(header) == 1:  # one column holding another delimiter is refused by design
        assume(delimiter == "," and not any(d in header[0] for d in ";\t|"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=terminator,
                        quoting=quoting)
    writer.writerow(header)
    writer.writerows(rows)
    data = ("\ufeff" if bom else "") + buffer.getvalue()
    read_header, read_rows = read_all(data.encode("utf-8"), delimiter)
    assert read_header == header
    assert read_rows == rows


MUTATIONS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3),
                               st.binary(min_size=0, max_size=4)), max_size=6)
VALID = csv_bytes([complaint(i, label="Yes" if i % 2 else "No",
                             narrative='She said "no", twice.\nThen hung up.' if i % 3 else "")
                   for i in range(1, 30)])


def mutate(data: bytes, mutations) -> bytes:
    for position, cut, insert in mutations:
        position %= len(data) + 1
        data = data[:position] + insert + data[position + cut:]
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(MUTATIONS)
def test_a_damaged_export_is_ingested_whole_or_not_at_all(tmp_path_factory, mutations):
    """Quotes, delimiters and line breaks inserted or cut anywhere: ingest publishes a
    complete dataset or raises one StepError and leaves nothing behind."""
    work = tmp_path_factory.mktemp("mutated")
    source = work / "in.csv"
    source.write_bytes(mutate(VALID, mutations))
    out = work / "out"
    try:
        metadata = ingest(str(source), str(out), cfpb_config(),
                          IngestOptions(eval_fraction=0.2))
    except StepError as exc:
        event("refused")
        assert "\n" not in str(exc) and str(exc).startswith(str(source))
        assert_nothing_published(out)
        return
    event("ingested")
    assert (out / "metadata.json").is_file()
    files = [out / name for split in metadata["files"].values() for name in split]
    assert files and all(f.is_file() for f in files)
    assert metadata["rows"]["kept"] == metadata["rows"]["train"] + metadata["rows"]["eval"]


# ---------------------------------------------------------------------------------------------
# The REST request parser, through a real server socket.

class Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def rest_server(registry_root):  # noqa: F811 - the imported fixture
    from components.serve.server import ModelServer, RestLimits

    errors = Errors()
    logging.getLogger("components.serve").addHandler(errors)
    server = ModelServer(str(registry_root), NAME, rest_port=0, grpc_port=None,
                         limits=RestLimits(request_timeout=2.0)).start()
    server.errors = errors
    assert server.manager.ready
    yield server
    server.stop()
    logging.getLogger("components.serve").removeHandler(errors)


def assert_fine(server, status: int, body) -> None:
    assert status != 500 and isinstance(body, dict), (status, body)
    assert ("error" in body) == (status != 200), body
    assert server.errors.records == [], [r.getMessage() for r in server.errors.records]


def post(server, body: bytes, headers: tuple[str, ...] = ()):
    status, _, answer = raw_request(server.rest_port, request_head(
        "POST", PREDICT, f"Content-Length: {len(body)}", *headers) + body)
    return status, answer


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)
FEATURE_VALUE = JSON | st.text(st.characters(), max_size=20)
INSTANCE = st.fixed_dictionaries({}, optional={f: FEATURE_VALUE for f in
                                               [*ROWS[0], "id", "complaint_id"]})

FEATURES = [*ROWS[0], "id", "complaint_id"]
CHANGES = st.dictionaries(st.sampled_from(FEATURES), FEATURE_VALUE, max_size=3)
PREDICT_BODIES = (
    st.lists(CHANGES, min_size=1, max_size=3).map(  # valid rows, a few values changed
        lambda changes: {"instances": [{**ROWS[i % len(ROWS)], **c}
                                       for i, c in enumerate(changes)]})
    | CHANGES.map(lambda c: {"inputs": {**{f: [v] for f, v in ROWS[0].items()}, **c}})
    | JSON
    | st.fixed_dictionaries({"instances": st.lists(INSTANCE, max_size=4) | JSON})
    | st.fixed_dictionaries({"inputs": st.dictionaries(
        st.sampled_from([*ROWS[0], "id", "complaint_id", "other"]),
        st.lists(FEATURE_VALUE, max_size=3) | FEATURE_VALUE, max_size=9) | JSON})
    | st.fixed_dictionaries({"instances": JSON, "inputs": JSON}))


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(PREDICT_BODIES)
def test_random_json_never_gets_a_500(rest_server, request_json):
    body = json.dumps(request_json, allow_nan=True).encode()
    status, answer = post(rest_server, body)
    event(f"status {status}")
    assert_fine(rest_server, status, answer)
    assert status in (200, 400), answer
    if status == 200:
        assert len(answer["predictions"]) == len(answer["decisions"]) >= 1


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(st.binary(max_size=500) | st.text(max_size=200).map(lambda t: t.encode("utf-8",
                                                                            "surrogatepass")))
def test_random_bodies_never_get_a_500(rest_server, body):
    status, answer = post(rest_server, body)
    assert_fine(rest_server, status, answer)
    assert status == 400, answer


HEADER_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=255,
                                     blacklist_characters="\x7f"), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES)
@given(HEADER_VALUE, st.sampled_from(["Content-Length", "X-Request-Key", "Expect",
                                      "Connection", "Transfer-Encoding"]),
       st.just(PREDICT[1:]) | st.text(string.printable.replace("\r", "").replace("\n", ""),
                                     max_size=60))
def test_random_headers_and_paths_never_get_a_500(rest_server, value, name, path):
    body = json.dumps({"instances": ROWS[:1]}).encode()
    head = request_head("POST", "/" + path.replace(" ", "%20"), f"{name}: {value}")
    if name != "Content-Length":
        head = head[:-2] + f"Content-Length: {len(body)}\r\n\r\n".encode()
    status, _, answer = raw_request(rest_server.rest_port, head + body)
    event(f"status {status}")
    assert_fine(rest_server, status, answer)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(st.sampled_from([b"", f"POST {PREDICT} HTTP/1.1\r\n".encode(),
                        b"GET /healthz HTTP/1.1\r\n", b"GET /healthz HTTP/1.0\r\n"]),
       st.binary(max_size=300))
def test_random_request_bytes_get_one_complete_answer(rest_server, start, data):
    """Any bytes, then the end of a head: a complete answer (status line, headers, a JSON body
    of the announced length) or, when the bytes were no request at all, a closed connection;
    never a 500, never part of an answer. The server answers /healthz after it."""
    with socket.create_connection(("127.0.0.1", rest_server.rest_port), timeout=20) as sock:
        sock.sendall(start + data + b"\r\n\r\n")
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # nothing more will come: no waiting for a body
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    event("answered" if raw else "closed without an answer")
    if raw:
        response = http.client.HTTPResponse(FakeSocket(raw), method="GET")
        response.begin()
        payload = response.read()
        assert response.status != 500
        event(f"status {response.status}")
        assert response.getheader("Content-Type") == "application/json"
        assert int(response.getheader("Content-Length")) == len(payload)
        assert_fine(rest_server, response.status, json.loads(payload))
    assert raw_request(rest_server.rest_port, request_head("GET", "/healthz"),
                       method="GET")[0] == 200


class FakeSocket:
    def __init__(self, data: bytes):
        self._data = data

    def makefile(self, *args, **kwargs):
        return io.BytesIO(self._data)
