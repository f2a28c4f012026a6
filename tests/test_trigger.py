"""The trigger: one run per new object, at most once, even with two triggers or a crash.

Runs are a stand-in command here (it records its arguments and takes a moment, so concurrent
triggers overlap); `tests/test_pipeline_trigger.py` starts real kfp.Client runs against a fake KFP
API, and `make demo-loop` the real local pipeline. The claims are the real thing: exclusive
creates on a local store and on S3 (moto's server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from components.common import data_store, documents, storage
from components.trigger.trigger import Trigger, claim_uri, status
from tests.conftest import ROOT

RUNNER = """
import fcntl, os, sys, time
args = sys.argv[1:]
source = args[args.index("--source") + 1]
with open(os.environ["RUNS_FILE"], "a") as out:
    fcntl.flock(out, fcntl.LOCK_EX)
    out.write(f"{source} {os.getppid()}\\n")
time.sleep(float(os.environ.get("RUN_SECONDS", "0.5")) * (60 if "slow" in source else 1))
sys.exit(1 if "bad" in source else 0)
"""


@pytest.fixture
def world(tmp_path):
    source = tmp_path / "incoming-data"
    source.mkdir()
    store = tmp_path / "work" / "store"
    store.mkdir(parents=True)
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    runs = tmp_path / "runs.txt"
    runs.write_text("")
    return {"source": source, "store": store, "runs": runs,
            "command": f"{sys.executable} {runner}"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def trigger_process(world, *extra, run_seconds="0.5"):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RUNS_FILE": str(world["runs"]),
           "RUN_SECONDS": run_seconds}
    return subprocess.Popen(
        [sys.executable, "-m", "components.trigger", "--source", str(world["source"]),
         "--store", str(world["store"]), "--run", "local", "--local-command", world["command"],
         *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def runs(world) -> list[str]:
    return [line.split()[0] for line in world["runs"].read_text().splitlines()]


def test_two_concurrent_triggers_start_one_run_per_new_object(world):
    names = [write(world["source"] / f"batch-{i}.csv", f"id,label\n{i},Yes\n") for i in range(4)]
    write(world["source"] / "nested" / "batch-4.csv", "id,label\n4,No\n")
    (world["source"] / "copy-of-0.csv").write_bytes(names[0].read_bytes())  # same bytes
    write(world["source"] / ".tmp-upload", "half a file")
    ingested = write(world["source"] / "old.csv", "id,label\n9,No\n")
    version, _ = data_store.source_version(str(ingested))
    documents.write_json(str(world["store"] / version / "manifest.json"),
                         {"dataset_version": version})

    first, second = trigger_process(world, "--once"), trigger_process(world, "--once")
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    started = runs(world)
    # 5 distinct new contents (the copy is batch-0's version), each exactly once; the two
    # processes shared the work
    assert len(started) == 5 and len(set(started)) == 5
    assert str(ingested) not in started and not any(".tmp" in s for s in started)
    assert len({line.split()[1] for line in world["runs"].read_text().splitlines()}) == 2
    claims = status(str(world["store"]))
    assert len(claims) == 5 and {c["state"] for c in claims} == {"finished"}
    reported = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    assert sorted(r["dataset_version"] for r in reported) == sorted(
        c["dataset_version"] for c in claims)
    # nothing new: nothing runs
    again = trigger_process(world, "--once")
    again.communicate(timeout=60)
    assert again.returncode == 0 and len(runs(world)) == 5


def test_a_trigger_that_dies_mid_run_never_runs_the_object_twice(world):
    write(world["source"] / "slow.csv", "id,label\n1,Yes\n")
    crashed = trigger_process(world, "--once")
    deadline = time.monotonic() + 60
    while not runs(world) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs(world), "the first trigger never started its run"
    os.killpg(crashed.pid, signal.SIGKILL)  # the trigger and the run it started
    crashed.communicate(timeout=30)
    (claim,) = status(str(world["store"]))
    assert claim["state"] == "starting"  # claimed, the run never recorded

    after = trigger_process(world, "--once", "--stale-minutes", "0")
    _, err = after.communicate(timeout=60)
    assert after.returncode == 0
    assert runs(world) == [str(world["source"] / "slow.csv")]  # not again
    assert "stopped mid-way" in err and "delete" in err

    # a person checks, deletes the claim: it runs again
    storage.delete(claim_uri(str(world["store"]), claim["dataset_version"]))
    write(world["source"] / "slow.csv", "id,label\n1,Yes\n")
    os.rename(world["source"] / "slow.csv", world["source"] / "quick.csv")
    retry = trigger_process(world, "--once")
    retry.communicate(timeout=60)
    assert runs(world)[-1] == str(world["source"] / "quick.csv")


def test_a_failed_run_keeps_its_claim_and_says_so(world):
    write(world["source"] / "bad.csv", "id,label\n1,Yes\n")
    done = trigger_process(world, "--once")
    out, _ = done.communicate(timeout=60)
    assert done.returncode == 1
    (claim,) = status(str(world["store"]))
    assert claim["state"] == "failed" and claim["exit_code"] == 1
    again = trigger_process(world, "--once")
    _, err = again.communicate(timeout=60)
    assert len(runs(world)) == 1 and "its run failed" in err


def test_feedbacks_incoming_data_starts_a_run_without_a_source(world):
    version_file = world["store"] / "incoming" / "ds-0123456789abcdef.csv"
    write(version_file, "id,label\n7,Yes\n")
    started = Trigger([], str(world["store"]), lambda uri, v: {"state": "started"}).poll()
    assert [s["uri"] for s in started] == [str(version_file)]


def concurrent_polls(sources, store, count=2):
    calls, lock = [], threading.Lock()

    def start(uri, version):
        with lock:
            calls.append(uri)
        time.sleep(0.2)
        return {"state": "started"}

    triggers = [Trigger(sources, store, start) for _ in range(count)]
    threads = [threading.Thread(target=t.poll) for t in triggers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return calls


def test_two_triggers_on_s3_claim_each_object_once(s3_bucket):
    prefix = f"s3://{s3_bucket}"
    for i in range(4):
        storage.write_bytes(f"{prefix}/incoming/c-{i}.csv", f"id,label\n{i},Yes\n".encode())
    storage.check_exclusive_create(f"{prefix}/store/trigger")  # moto honours If-None-Match
    calls = concurrent_polls([f"{prefix}/incoming"], f"{prefix}/store", count=3)
    assert sorted(calls) == [f"{prefix}/incoming/c-{i}.csv" for i in range(4)]
    assert len(status(f"{prefix}/store")) == 4
    assert concurrent_polls([f"{prefix}/incoming"], f"{prefix}/store") == []


def test_local_runs_need_the_local_runners_store_layout(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for store, message in ((tmp_path / "elsewhere", "pass --store <workdir>/store"),
                           ("s3://bucket/store", "use --run kfp for an S3 store")):
        done = subprocess.run([sys.executable, "-m", "components.trigger", "--store",
                               str(store), "--run", "local", "--once"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]
    done = subprocess.run([sys.executable, "-m", "components.trigger", "--store",
                           str(world["store"]), "--run", "kfp", "--once"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "needs --host and --package" in done.stderr
