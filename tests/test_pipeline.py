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
def test_component_spec_matches_the_cli(step):
    """Every flag a component.yaml passes is one the step's CLI accepts, and vice versa."""
    import importlib

    spec_path = ROOT / "components" / step / "component.yaml"
    spec = components.load_component_from_file(str(spec_path))
    assert spec.name == step
    raw = yaml.safe_load(spec_path.read_text())
    container = raw["implementation"]["container"]
    assert container["command"] == ["python", "-m", f"components.{step}"]
    flags = set()
    for arg in container["args"]:
        if isinstance(arg, str) and arg.startswith("--"):
            flags.add(arg)
        elif isinstance(arg, dict) and "if" in arg:
            flags.update(a for a in arg["if"]["then"] if isinstance(a, str) and a.startswith("--"))
    parser = importlib.import_module(f"components.{step}.__main__").build_parser()
    cli_flags = {opt for action in parser._actions for opt in action.option_strings
                 if opt.startswith("--") and opt != "--help"}
    assert flags <= cli_flags, flags - cli_flags
    required = {opt for action in parser._actions if action.required
                for opt in action.option_strings}
    assert required <= flags, required - flags
    for name in (i["name"] for i in raw.get("inputs", [])):
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{name}: kfp lowercases input names"
