"""Bad inputs through the real command lines: one line `error: <step>: ...`, a non-zero exit,
nothing half-written. Cases found by trying the steps as a hostile user would.

Permission cases run the step as an unprivileged user (setpriv), since root reads anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

NOBODY = 65534


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def one_line(result, step: str, code: int = 2) -> str:
    found = errors(result)
    assert result.returncode == code, result.stderr[-3000:]
    assert len(found) == 1 and found[0].startswith(f"error: {step}: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return found[0]


@pytest.fixture
def shared():
    """A directory another user can reach (pytest's own are private to root)."""
    import tempfile

    path = tempfile.mkdtemp(prefix="cfpb-bad-inputs-", dir="/tmp")
    os.chmod(path, 0o777)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(module: str, *args: str):
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the step as another user")
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-m", module, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/tmp"})


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "complaints.csv"
    run_cli("datagen", "--rows", "500", "--seed", "2", "--out", str(path))
    path.chmod(0o644)
    path.parent.chmod(0o755)
    return path


def test_an_unreadable_source_is_one_line(sample, shared):
    locked = shared / "locked.csv"
    shutil.copy(sample, locked)
    locked.chmod(0o600)
    line = one_line(as_nobody("components.ingest", "--source", str(locked), "--output",
                              str(shared / "out")), "ingest")
    assert f"{locked}: permission denied" in line
    assert sorted(p.name for p in shared.iterdir()) == ["locked.csv"]


def test_an_unwritable_store_is_one_line(sample, shared):
    readable = shared / "complaints.csv"
    shutil.copy(sample, readable)
    readable.chmod(0o644)
    store = shared / "store"
    store.mkdir()
    store.chmod(0o555)
    result = as_nobody("components.ingest", "--source", str(readable), "--output",
                       str(shared / "out"), "--store", str(store))
    assert "permission denied" in one_line(result, "ingest")
    assert sorted(p.name for p in shared.iterdir()) == ["complaints.csv", "store"]


def test_a_registry_that_is_a_file_is_one_line(tmp_path):
    registry_file = tmp_path / "registry"
    registry_file.write_text("not a directory")
    result = run_cli("components.deploy", "--registry", str(registry_file), "--model-name",
                     "m", "--version", "1")
    assert "is a file; the registry is a directory" in one_line(result, "deploy")


@pytest.mark.parametrize(("hparams", "message"), [
    ('{"hidden_units": "64,x"}', "hidden_units='64,x' is not valid"),
    ('{"seed": 4294967296}', "seed=4294967296 is not valid"),
    ('{"seed": -1}', "seed=-1 is not valid"),
])
def test_bad_hyperparameters_are_one_line(tmp_path, hparams, message):
    result = run_cli("components.train", "--examples", str(tmp_path), "--transform",
                     str(tmp_path), "--output", str(tmp_path / "out"), "--hparams", hparams)
    assert message in one_line(result, "train")


def test_an_unexpected_failure_is_one_line_with_the_traceback_in_the_debug_log():
    code = ("import sys; from components.common.cli import run_step\n"
            "def main(argv):\n    {}['missing']\n"
            "sys.exit(run_step('demo', main))")
    quiet = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert one_line(quiet, "demo", code=1) == "error: demo: KeyError: 'missing'"
    loud = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                          "LOG_LEVEL": "DEBUG"})
    assert "Traceback" in loud.stderr and loud.returncode == 1


def test_a_step_ending_without_interpreter_teardown_still_says_and_cleans_up(tmp_path):
    """end_process skips Python's teardown (seconds after TensorFlow) but not what a normal
    exit promises: the exit code, buffered output, the log, atexit handlers, temporary
    directories."""
    code = (
        "import atexit, logging, pathlib, sys, tempfile\n"
        "from components.common.cli import end_process, run_step\n"
        "def main(argv):\n"
        "    global scratch\n"
        "    scratch = tempfile.TemporaryDirectory(dir=sys.argv[1])\n"
        "    (pathlib.Path(scratch.name) / 'x').write_text('x')\n"
        "    atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "    logging.getLogger('components.demo').info('done')\n"
        "    sys.stdout.write('no newline, still buffered')\n"
        "    return 3\n"
        "end_process(run_step('demo', main))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 3, result.stderr
    assert result.stdout == "no newline, still buffered"
    assert "INFO components.demo: done" in result.stderr
    assert "atexit ran" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_leaves_no_partial_output(tmp_path):
    """Kubernetes stops a pod with SIGTERM: the staged output goes, nothing half-written."""
    data = tmp_path / "big.csv"
    run_cli("datagen", "--rows", "300000", "--seed", "4", "--out", str(data))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "components.ingest", "--source",
                                str(data), "--output", str(out)], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and process.poll() is None, "ingest did not start"
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: ingest: stopped by SIGTERM; nothing was published"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]


def test_published_files_are_readable_by_other_users(tmp_path):
    """mkstemp makes 0600; what the registry and the data store publish must be 0644 under
    the usual umask, so a model server under another uid can read it."""
    from components.common import storage

    previous = os.umask(0o022)
    try:
        storage._umask.cache_clear()
        target = tmp_path / "registry" / "m" / "index.json"
        storage.write_bytes(str(target), json.dumps({"versions": []}).encode())
    finally:
        os.umask(previous)
        storage._umask.cache_clear()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------------
# The model server's hostile-client cases, through `python -m components.serve` (its own
# process) and real sockets, on real SavedModels (tests/test_serve.py's registry fixture).

from tests.test_serve import (  # noqa: E402 - the cases below need these
    NAME,
    PREDICT,
    ROWS,
    raw_request,
    read_answer,
    registry_root,  # noqa: F401 - a fixture: two versions trained by the real steps
    request_head,
)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str):
    return raw_request(port, request_head("GET", path), method="GET")


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return int(next(line for line in handle if line.startswith("Threads:")).split()[1])


@pytest.fixture(scope="module")
def served(registry_root, tmp_path_factory):  # noqa: F811 - the imported fixture
    """The real server on a copy of the registry; `first_readyz` is /readyz's answer when
    /healthz first answered."""
    from types import SimpleNamespace

    work = tmp_path_factory.mktemp("served")
    root = work / "registry"
    shutil.copytree(registry_root, root)
    port = free_port()
    log = open(work / "serve.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "components.serve", "--registry", str(root), "--model-name",
         NAME, "--rest-port", str(port), "--grpc-port", "-1", "--poll-seconds", "0.1",
         "--request-timeout-seconds", "1", "--max-connections", "400", "--workers", "4"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    first_readyz = None
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
        try:
            if get(port, "/healthz")[0] == 200:
                first_readyz = first_readyz or get(port, "/readyz")
                if get(port, "/readyz")[0] == 200:
                    break
        except OSError:
            pass
        time.sleep(0.05)
    yield SimpleNamespace(port=port, pid=process.pid, root=root, log=work / "serve.log",
                          first_readyz=first_readyz)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    log.close()
    assert process.returncode == 0, (work / "serve.log").read_text()[-3000:]


def _predict_bytes(body: bytes, path: str = PREDICT) -> bytes:
    return request_head("POST", path, f"Content-Length: {len(body)}") + body


ONE_ROW = json.dumps({"instances": ROWS[:1]}).encode()
SERVER_CASES = {
    # case: (request, then (a body the server must not wait for), status, in the error)
    "Content-Length -1 with a 3 MB body": (
        request_head("POST", PREDICT, "Content-Length: -1"), b" " * 3_000_000, 400,
        "bad Content-Length '-1'"),
    "Content-Length +5": (request_head("POST", PREDICT, "Content-Length: +5"), b"", 400,
                          "bad Content-Length"),
    "Content-Length over the limit": (
        request_head("POST", PREDICT, "Content-Length: 99999999999"), b"", 413,
        "larger than the limit of 16777216 bytes"),
    "two Content-Lengths": (request_head("POST", PREDICT, "Content-Length: 1",
                                         "Content-Length: 2"), b"", 400, "conflicting"),
    "chunked body": (request_head("POST", PREDICT, "Transfer-Encoding: chunked"),
                     b"0\r\n\r\n", 411, "Transfer-Encoding"),
    "version ² (isdigit, not int)": (
        _predict_bytes(ONE_ROW, f"/v1/models/{NAME}/versions/\xb2:predict"), b"", 404,
        "not a version number"),
    "version of 5,000 digits": (
        _predict_bytes(ONE_ROW, f"/v1/models/{NAME}/versions/{'9' * 5000}:predict"), b"", 404,
        "not a version number"),
    "JSON nested 200,000 deep": (
        _predict_bytes(b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"), b"", 400,
        "nested too deeply"),
    "integer of 5,000 digits": (_predict_bytes(b'{"instances": [' + b"7" * 5000 + b"]}"), b"",
                                400, "not valid JSON"),
    "lone surrogate in a feature": (
        _predict_bytes(json.dumps({"instances": [{**ROWS[0], "state": "\ud800"}]}).encode()),
        b"", 400, "not valid Unicode"),
    "10,001 examples": (
        _predict_bytes(json.dumps({"inputs": {f: [""] * 10_001 for f in ROWS[0]}}).encode()),
        b"", 400, "too many examples: 10001 > 10000"),
    "PUT": (request_head("PUT", PREDICT, "Content-Length: 0"), b"", 405, "not allowed"),
    "unknown method": (request_head("BREW", "/pot"), b"", 501, "not supported"),
    "bad request line": (b"GARBAGE\r\n\r\n", b"", 400, "Bad request syntax"),
    "half a header, then nothing": (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Le"
                                    .encode(), b"", 408, "within 1 s"),
    "half a body, then nothing": (request_head("POST", PREDICT, "Content-Length: 100") +
                                  b'{"inst', b"", 408, "within 1 s"),
}


@pytest.mark.parametrize("case", list(SERVER_CASES))
def test_the_server_answers_hostile_requests_with_json_and_goes_on(served, case):
    request, then, status, fragment = SERVER_CASES[case]
    code, headers, body = raw_request(served.port, request, then=then)
    assert code == status and fragment in body["error"], body
    assert headers["Content-Type"] == "application/json"
    code, _, body = raw_request(served.port, _predict_bytes(ONE_ROW))
    assert code == 200 and len(body["predictions"]) == 1


def test_the_server_answers_health_while_loading(served):
    status, _, body = served.first_readyz
    assert status == 503 and body["status"] == "loading"


def test_300_stalled_connections_take_no_threads(served):
    import socket

    before = threads_of(served.pid)
    stalled = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=20)
            sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\n".encode())
            stalled.append(sock)
        for _ in range(10):
            assert raw_request(served.port, _predict_bytes(ONE_ROW))[0] == 200
        assert threads_of(served.pid) <= before + 4  # at most the 4 workers, started lazily
        assert {read_answer(sock)[0] for sock in stalled} == {408}
    finally:
        for sock in stalled:
            sock.close()


def test_the_documented_10000_rows_fit_the_default_limit(served):
    rows = [{**ROWS[0], "narrative": ROWS[0]["narrative"] * 18, "complaint_id": str(i)}
            for i in range(10_000)]  # about 1.3 KB a row as JSON
    body = json.dumps({"instances": rows}).encode()
    assert 12_000_000 < len(body) < 16 << 20
    status, _, answer = raw_request(served.port, _predict_bytes(body), timeout=120)
    assert status == 200 and len(answer["predictions"]) == 10_000


def test_a_rollback_uses_the_version_still_loaded(served):
    def deploy(*args):
        result = run_cli("components.deploy", "--registry", str(served.root), "--model-name",
                         NAME, "--target", "local", *args)
        assert result.returncode == 0, result.stderr[-2000:]

    def serving() -> list[str]:
        return [s["version"] for s in get(served.port, f"/v1/models/{NAME}")[2][
            "model_version_status"]]

    deploy("--version", "1", "--strategy", "promote")
    deadline = time.monotonic() + 60
    while serving() != ["1"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deploy("--version", "2", "--strategy", "promote")
    while serving() != ["2"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deploy("--strategy", "rollback")
    while serving() != ["1"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    log = served.log.read_text()
    assert "version 1 is still loaded: back in the table without reading it again" in log
    assert log.count("loading cfpb version 1") == 1, log[-3000:]


# ---------------------------------------------------------------------------------------------
# Ingest and validate: the cases through the real CLIs.

from tests.test_ingest import HEADER, complaint, csv_bytes  # noqa: E402


def _file(data: bytes):
    return lambda path: path.write_bytes(data)


INGEST_ERRORS = {
    # case: (writes the source, extra flags, in the one-line error)
    "duplicate header names": (
        _file(csv_bytes([complaint(1)], header=[*HEADER, "Tags"])), [],
        "the header names 'Tags' (columns 11 and 19) more than once"),
    "two columns for one feature": (
        _file(csv_bytes([complaint(1)], header=[*HEADER, "SubProduct"])), [],
        "columns 'Sub-product' (column 3) and 'SubProduct' (column 19) all match the feature "
        "'sub_product'"),
    "rows sharing an id differ": (
        _file(csv_bytes([complaint(1, state="CA"), complaint(1, state="NY")])),
        ["--on-duplicate-id", "error"], "rows 1 and 2 share the id '1'"),
    "blank ids": (_file(csv_bytes([complaint(""), complaint("")])), [],
                  "check the id column 'Complaint ID'"),
    "a 5 MB field": (_file(csv_bytes([complaint(1, narrative="x" * 5_000_000)])), [],
                     "a field is over the limit of 1048576 bytes; if such long fields are "
                     "real, raise csv.max_field_bytes in the dataset config"),
    "a CR inside an unquoted field": (
        _file(csv_bytes([complaint(1), complaint(2)]).replace(b"Wells Fargo", b"Wells\rFargo",
                                                              1)), [],
        "a carriage return (CR) inside an unquoted field"),
    "ragged, not R's row names": (
        _file(csv_bytes([["x", *complaint(1).values()]], header=HEADER)), [],
        "19 fields, expected 18 as in the header"),
    "a bad --eval-fraction": (_file(csv_bytes([complaint(1)])), ["--eval-fraction", "half"],
                              "argument --eval-fraction: not a number: 'half'"),
}


@pytest.mark.parametrize("case", list(INGEST_ERRORS))
def test_ingest_refuses_with_one_line(tmp_path, case):
    write, flags, fragment = INGEST_ERRORS[case]
    source = tmp_path / "in.csv"
    write(source)
    line = one_line(run_cli("components.ingest", "--source", str(source), "--output",
                            str(tmp_path / "out"), *flags), "ingest")
    assert fragment in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_ingest_with_an_unreachable_s3_endpoint_is_one_line(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = run_cli("components.ingest", "--source", "s3://bucket/complaints.csv",
                     "--output", str(tmp_path / "out"),
                     env={"S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "a",
                          "AWS_SECRET_ACCESS_KEY": "b"})
    assert one_line(result, "ingest") == (
        f"error: ingest: s3://bucket/complaints.csv: S3 endpoint {endpoint} did not answer "
        "(Connection refused; 5 retries); check S3_ENDPOINT_URL and that the object store is "
        "up")
    assert list(tmp_path.iterdir()) == []


def _r_names(rows) -> bytes:
    lines = csv_bytes([[str(i), *row.values()] for i, row in enumerate(rows, start=1)],
                      header=HEADER).split(b"\n")
    lines[0] = csv_bytes([], header=HEADER).rstrip(b"\n")
    return b"\n".join(lines)


INGEST_VARIANTS = {
    # case: (source bytes, what metadata.json says)
    "CR-only line endings": (csv_bytes([complaint(1), complaint(2)], newline="\r"),
                             {"line_endings": "CR"}),
    "R's row names": (_r_names([complaint(1), complaint(2)]), {"r_row_names_dropped": True}),
    "no narrative column": (
        csv_bytes([complaint(1), complaint(2)],
                  header=[h for h in HEADER if h != "Consumer complaint narrative"]),
        {"missing_columns": {"narrative": 2}}),
    "no id column": (csv_bytes([complaint(1), complaint(2, state="NY")],
                               header=[h for h in HEADER if h != "Complaint ID"]),
                     {"id_source": "content hash (no id column)"}),
    "snake_case headers": (csv_bytes([{h.lower().replace(" ", "_").replace("-", "_"): v
                                       for h, v in complaint(i).items()} for i in (1, 2)],
                                     header=[h.lower().replace(" ", "_").replace("-", "_")
                                             for h in HEADER]),
                           {"rows": {"read": 2, "kept": 2}}),
    "an updated complaint (same id)": (
        csv_bytes([complaint(1, state="CA"), complaint(2), complaint(1, state="NY")]),
        {"duplicate_ids": {"ids": 1, "conflicting": 1, "rows_dropped": 1}}),
}


@pytest.mark.parametrize("case", list(INGEST_VARIANTS))
def test_ingest_reads_the_exports_people_have(tmp_path, case):
    data, expected = INGEST_VARIANTS[case]
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    result = run_cli("components.ingest", "--source", str(source), "--output",
                     str(tmp_path / "out"), "--eval-fraction", "0.01")
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    for key, value in expected.items():
        found = metadata[key]
        assert ({k: found[k] for k in value} if isinstance(value, dict) else found) == value


def test_validate_on_a_truncated_tfrecord_is_one_line(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(csv_bytes([complaint(i, label="Yes" if i % 3 else "No")
                                  for i in range(1, 400)]))
    assert run_cli("components.ingest", "--source", str(source), "--output",
                   str(tmp_path / "examples")).returncode == 0
    shard = sorted((tmp_path / "examples" / "train").glob("*.tfrecord.gz"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    line = one_line(run_cli("components.validate", "--examples", str(tmp_path / "examples"),
                            "--output", str(tmp_path / "out")), "validate")
    assert line.startswith(f"error: validate: {shard}: truncated: ") and len(line) < 300
    assert not (tmp_path / "out").exists()
