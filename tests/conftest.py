"""Shared fixtures: the real CFPB sample, a CLI runner, and a real S3 endpoint (moto's server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
REAL_SAMPLE = DATA / "cfpb_2013_sample.csv"


@pytest.fixture
def real_sample() -> Path:
    """1,000 real 2013 complaints (snake_case export, no narratives), copied from the CFPB."""
    return REAL_SAMPLE


def run_cli(module: str, *args: str, env: dict | None = None, timeout: int = 600):
    """Run `python -m <module> <args>` the way a container does; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol endpoint over HTTP on 127.0.0.1 (moto's server stands in for MinIO)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment for the storage module (and child processes) to reach the S3 endpoint."""
    values = {
        "S3_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_REGION": "us-east-1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    from components.common import storage

    storage._client.cache_clear()
    return values


@pytest.fixture
def s3_bucket(s3_env):
    """A fresh bucket name for a test, created through the minio client."""
    import uuid

    from components.common import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.s3_client().make_bucket(name)
    return name
