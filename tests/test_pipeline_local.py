"""The whole pipeline without a cluster: every step in its container, through kfp.local.

Needs a Docker daemon and the images `make build-images` builds (skipped otherwise; CI builds
them first). Runs remember: the second run validates against the first run's data version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("kfp")  # the pipeline-SDK environment (.venv-sdk) only

from components.common import build_facts  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

pytestmark = [pytest.mark.sdk, pytest.mark.slow]


def _images_ready() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client"
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no daemon, no socket, no permission
        return f"no Docker daemon ({type(exc).__name__})"
    from components.common import build_facts
    from orchestration.local_runner import missing_images

    missing = missing_images(build_facts.DEFAULT_REGISTRY, build_facts.image_tag())
    return f"images not built: {missing}" if missing else None


@pytest.fixture(scope="module")
def ready():
    reason = _images_ready()
    if reason:
        pytest.skip(reason)


def run(workdir, source, *extra):
    return subprocess.run(
        [sys.executable, str(ROOT / "pipeline.py"), "--run", "local", "--workdir", str(workdir),
         "--source", str(source), "--hparams", '{"epochs": 3}', *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )


def generate(path, rows, seed, rate=0.25):
    subprocess.run([sys.executable, "-m", "datagen", "--rows", str(rows), "--seed",
                    str(seed), "--disputed-rate", str(rate), "--out", str(path)],
                   cwd=ROOT, check=True, capture_output=True)
    return path


def test_pipeline_runs_every_step_in_containers_and_remembers(ready, tmp_path):
    work = tmp_path / "runs"
    # every step within 1 GB, as the pods' limits will hold it
    first = run(work, generate(tmp_path / "first.csv", 6000, seed=31), "--memory-limit", "1g")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    summary = json.loads((work / "latest" / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["success"] * len(summary["steps"])
    assert [s["name"] for s in summary["steps"]] == list(build_facts.training_steps())
    assert summary["new_data"] is True
    assert all(s["seconds"] and s["seconds"] > 0 for s in summary["steps"])
    assert summary["dataset_version"].startswith("ds-")
    assert summary["anomalies_found"] is False
    assert 0.5 < summary["metrics"]["auc"] <= 1.0
    assert summary["blessed"] is True and summary["model_version"] == 1
    assert summary["deployed"] is True
    deployment = json.loads((work / "registry" / "cfpb-disputes" / "deployment.json").read_text())
    assert deployment["traffic"] == {"1": 100}  # the first version has no stable to split with
    index = json.loads((work / "registry" / "cfpb-disputes" / "index.json").read_text())
    assert index["current"] == 1
    assert index["versions"][0]["dataset_version"] == summary["dataset_version"]
    assert "local run summary" in first.stdout
    # The model card names the image each step ran, with the digest Docker has for it.
    import docker

    card = json.loads((work / "registry" / "cfpb-disputes" / "cards" / "1" /
                       "model_card.json").read_text())
    client = docker.from_env()
    tag = build_facts.image_tag()
    assert card["provenance"]["image_digests"] == {
        step: client.images.get(build_facts.image_name(step, build_facts.DEFAULT_REGISTRY,
                                                       tag)).id
        for step in build_facts.training_steps()}

    # The same data again: ingest finds its version in the store, every later step skips
    # itself in its container, the run succeeds and says so; nothing else changes.
    registry_before = sorted(p.name for p in (work / "registry" / "cfpb-disputes").rglob("*"))
    same = run(work, tmp_path / "first.csv")
    assert same.returncode == 0, same.stdout[-4000:] + same.stderr[-4000:]
    summary = json.loads((work / "latest" / "summary.json").read_text())
    assert summary["new_data"] is False and summary["succeeded"] is True
    assert [s["status"] for s in summary["steps"]] == (
        ["success"] + ["skipped: no new data"] * (len(summary["steps"]) - 1))
    assert "no new data" in same.stdout
    assert sorted(p.name for p in (work / "registry" / "cfpb-disputes").rglob("*")) == \
        registry_before

    # New data whose label drifted: validation against the stored previous version stops it.
    second = run(work, generate(tmp_path / "shifted.csv", 6000, seed=32, rate=0.6),
                 "--fail-on-anomalies")
    assert second.returncode != 0
    summary = json.loads((work / "latest" / "summary.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert statuses["ingest"] == "success" and statuses["validate"] == "failure"
    assert all(statuses[s] == "not run"
               for s in ("transform", "tune", "train", "evaluate", "push", "deploy"))
    assert summary["failed_step"] == "validate" and "consumer_disputed" in summary["reason"]
    assert second.stderr.strip().splitlines()[-1].startswith("error: local run: step validate")
    assert json.loads((work / "registry" / "cfpb-disputes" / "index.json").read_text()) == index


def test_a_step_over_the_memory_limit_fails_the_run_there(ready, tmp_path):
    """--memory-limit is each container's hard limit (no swap): validate (TFDV and
    TensorFlow: about 300 MB) cannot start in 150 MB, ingest can; the run stops at validate."""
    work = tmp_path / "runs"
    result = run(work, generate(tmp_path / "data.csv", 2000, seed=5), "--memory-limit", "150m")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((work / "latest" / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status["ingest"] == "success" and summary["failed_step"] == "validate"
    assert status["train"] == "not run"
