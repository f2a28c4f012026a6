"""The pipeline package a user uploads: it compiles, loads back and wires the steps as specified."""

from __future__ import annotations

import re

import pytest
import yaml

kfp = pytest.importorskip("kfp")  # the pipeline-SDK environment (.venv-sdk) only

pytestmark = pytest.mark.sdk

from kfp import components  # noqa: E402

import pipeline  # noqa: E402
from components.common import build_facts  # noqa: E402
from orchestration import definition  # noqa: E402
from tests.conftest import ROOT  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "pipeline.yaml"
    pipeline.main(["--compile", "--output", str(path)])
    return path


def test_pipeline_compiles_and_loads_back(compiled):
    loaded = components.load_component_from_file(str(compiled))
    assert loaded.name == definition.PIPELINE_NAME
    docs = list(yaml.safe_load_all(compiled.read_text()))
    spec = docs[0]
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(build_facts.pipeline_steps())
    validate_inputs = tasks["validate"]["inputs"]["artifacts"]
    assert validate_inputs["examples"]["taskOutputArtifact"] == {
        "outputArtifactKey": "examples", "producerTask": "ingest"}
    assert set(spec["root"]["inputDefinitions"]["parameters"]) >= {
        "source", "dataset_config", "eval_fraction", "data_store", "fail_on_anomalies"}


def test_steps_get_storage_credentials_from_a_secret_not_parameters(compiled):
    docs = list(yaml.safe_load_all(compiled.read_text()))
    executors = docs[0]["deploymentSpec"]["executors"]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        assert env["S3_ENDPOINT_URL"] == definition.S3_ENDPOINT_URL
        assert "AWS_SECRET_ACCESS_KEY" not in env
        secret = platform[name]["secretAsEnv"][0]
        assert secret["secretName"] == definition.S3_SECRET
        assert {k["envVar"] for k in secret["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_steps_pass_executor_input_and_artifacts(compiled):
    """Executor input is how outputs and their metadata reach kfp.local and ML Metadata."""
    docs = list(yaml.safe_load_all(compiled.read_text()))
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        assert args[args.index("--executor-input") + 1] == "{{$}}"


@pytest.mark.parametrize("step", build_facts.pipeline_steps())
def test_kfp_loads_every_component_spec(step):
    """kfp itself reads each spec (tests/test_component_specs.py checks it against the CLI)."""
    spec_path = ROOT / "components" / step / "component.yaml"
    spec = components.load_component_from_file(str(spec_path))
    assert spec.name == step
    raw = yaml.safe_load(spec_path.read_text())
    for name in (i["name"] for i in raw.get("inputs", [])):
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{name}: kfp lowercases input names"
