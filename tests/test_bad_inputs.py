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
