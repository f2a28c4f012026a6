"""The pipeline package a user uploads: it compiles, loads back and wires the steps as specified."""

from __future__ import annotations

import json
import re
from pathlib import Path

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


@pytest.fixture(scope="module")
def compiled_in_step(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline") / "pipeline-in-step.yaml"
    pipeline.main(["--compile", "--gates", "in-step", "--output", str(path)])
    return path


def all_tasks(spec: dict) -> dict[str, tuple[dict, list[str]]]:
    """Every task of the package, conditions unfolded: name -> (task, enclosing conditions)."""
    found = {}

    def walk(tasks: dict, conditions: list[str]) -> None:
        for name, task in tasks.items():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                condition = task["triggerPolicy"]["condition"]
                walk(component["dag"]["tasks"], [*conditions, condition])
            else:
                found[name] = (task, conditions)

    walk(spec["root"]["dag"]["tasks"], [])
    return found


def test_pipeline_compiles_and_loads_back(compiled):
    loaded = components.load_component_from_file(str(compiled))
    assert loaded.name == definition.PIPELINE_NAME
    docs = list(yaml.safe_load_all(compiled.read_text()))
    spec = docs[0]
    tasks = all_tasks(spec)
    assert set(tasks) == set(build_facts.training_steps())
    assert "feedback" in build_facts.pipeline_steps()  # a step of its own, not a task here
    # validate sits in the new-data condition: ingest's examples reach it through the sub-DAG
    validate_inputs = tasks["validate"][0]["inputs"]["artifacts"]
    assert validate_inputs["examples"] == {
        "componentInputArtifact": "pipelinechannel--ingest-examples"}
    (condition,) = [t for n, t in spec["root"]["dag"]["tasks"].items() if n != "ingest"]
    assert condition["taskInfo"]["name"] == "new-data"
    assert condition["inputs"]["artifacts"]["pipelinechannel--ingest-examples"] == {
        "taskOutputArtifact": {"outputArtifactKey": "examples", "producerTask": "ingest"}}
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


def test_every_task_has_resources_and_the_right_caching(compiled):
    spec = list(yaml.safe_load_all(compiled.read_text()))[0]
    executors = spec["deploymentSpec"]["executors"]
    for name, (task, _conditions) in all_tasks(spec).items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        resources = executors[executor]["container"]["resources"]
        wanted = definition.RESOURCES[name]
        assert resources["resourceCpuRequest"] == wanted["cpu_request"], name
        assert resources["resourceCpuLimit"] == wanted["cpu_limit"], name
        assert resources["resourceMemoryRequest"] == wanted["memory_request"], name
        assert resources["resourceMemoryLimit"] == wanted["memory_limit"], name
        assert resources["memoryRequest"] <= resources["memoryLimit"], name
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        # side effects and external inputs are never replayed from the cache
        assert cached == (name not in ("ingest", "tune", "push", "deploy")), name


NEW_DATA = "inputs.parameter_values['pipelinechannel--ingest-new_data'] == true"
BLESSED = "inputs.parameter_values['pipelinechannel--evaluate-blessed'] == true"
PUSHED = "inputs.parameter_values['pipelinechannel--push-pushed'] == true"


def test_steps_after_ingest_are_conditions_on_new_data_on_the_cluster(compiled):
    spec = list(yaml.safe_load_all(compiled.read_text()))[0]
    tasks = all_tasks(spec)
    assert tasks["ingest"][1] == []
    for name in ("validate", "transform", "tune", "train", "evaluate"):
        assert tasks[name][1] == [NEW_DATA], name
    assert tasks["push"][1] == [NEW_DATA, BLESSED]
    assert tasks["deploy"][1] == [NEW_DATA, BLESSED, PUSHED]


def test_every_task_after_ingest_runs_through_the_no_new_data_gate(compiled):
    """The same gate in both packages: the step's own command after `--`, new_data from ingest,
    a skip value for each output parameter (what kfp.local passes on when it skips)."""
    spec = list(yaml.safe_load_all(compiled.read_text()))[0]
    executors = spec["deploymentSpec"]["executors"]
    for name, (task, _conditions) in all_tasks(spec).items():
        component = spec["components"][task["componentRef"]["name"]]
        container = executors[component["executorLabel"]]["container"]
        if name == "ingest":
            assert container["command"] == ["python", "-m", "components.ingest"]
            outputs = component["outputDefinitions"]["parameters"]
            assert outputs["new_data"]["parameterType"] == "BOOLEAN"
            continue
        assert container["command"] == ["python", "-m", "components.common.gate"], name
        args = container["args"]
        cut = args.index("--")
        assert args[cut + 1:cut + 4] == ["python", "-m", f"components.{name}"], name
        assert args[args.index("--new-data") + 1] == "{{$.inputs.parameters['new_data']}}"
        channel = task["inputs"]["parameters"]["new_data"]
        assert channel in ({"taskOutputParameter": {"outputParameterKey": "new_data",
                                                    "producerTask": "ingest"}},
                           {"componentInputParameter": "pipelinechannel--ingest-new_data"})
        skip = json.loads(args[args.index("--skip-outputs") + 1])
        declared = component.get("outputDefinitions", {}).get("parameters", {})
        assert set(skip) == set(declared), name
        for output, value in skip.items():
            kind = declared[output]["parameterType"]
            assert value == {"BOOLEAN": False, "NUMBER_INTEGER": 0, "STRING": ""}[kind]


def test_the_local_package_differs_only_in_the_conditions(compiled, compiled_in_step):
    cluster = list(yaml.safe_load_all(compiled.read_text()))
    local = list(yaml.safe_load_all(compiled_in_step.read_text()))
    # the same containers (images, commands, arguments, resources, env) and platform settings
    assert cluster[0]["deploymentSpec"] == local[0]["deploymentSpec"]
    assert cluster[1] == local[1]
    cluster_tasks, local_tasks = all_tasks(cluster[0]), all_tasks(local[0])
    assert set(cluster_tasks) == set(local_tasks)
    assert all(not conditions for _t, conditions in local_tasks.values())
    for name, (task, _conditions) in local_tasks.items():
        other = cluster_tasks[name][0]
        for key in ("componentRef", "cachingOptions", "taskInfo"):
            assert task.get(key) == other.get(key), (name, key)
        assert set(task.get("inputs", {}).get("parameters", {})) == set(
            other.get("inputs", {}).get("parameters", {})), name
    assert spec_without_conditions(cluster[0]) == spec_without_conditions(local[0])


def spec_without_conditions(spec: dict) -> dict:
    """The components that are containers (conditions' sub-DAGs left out)."""
    return {name: component for name, component in spec["components"].items()
            if "dag" not in component}


def test_resources_are_overridable_at_compile_time(tmp_path):
    overrides = tmp_path / "resources.yaml"
    overrides.write_text("train: {memory_limit: 8Gi, cpu_limit: '4'}\n")
    path = tmp_path / "p.yaml"
    assert pipeline.main(["--compile", "--resources", str(overrides), "--output", str(path)]) == 0
    spec = list(yaml.safe_load_all(path.read_text()))[0]
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["resourceMemoryLimit"] == "8Gi" and resources["resourceCpuLimit"] == "4"
    assert resources["resourceMemoryRequest"] == definition.RESOURCES["train"]["memory_request"]
    overrides.write_text("trian: {memory_limit: 8Gi}\n")
    assert pipeline.main(["--compile", "--resources", str(overrides), "--output",
                          str(tmp_path / "q.yaml")]) == 2
    assert not (tmp_path / "q.yaml").exists()


def test_no_task_retries_at_the_kfp_level(compiled):
    """KFP's retry policy retries any non-zero exit, bad input (exit 2) included; the steps
    retry transient S3 and Kubernetes failures themselves (tests/test_storage.py,
    tests/test_deploy.py), so the package must not add a second, blind retry."""
    spec = list(yaml.safe_load_all(compiled.read_text()))[0]
    for name, (task, _conditions) in all_tasks(spec).items():
        assert "retryPolicy" not in task, name


def test_image_digests_resolved_at_compile_time_reach_the_push_step(tmp_path):
    """The model card's provenance: push gets every step's image as name@digest."""
    digests = {step: "sha256:" + f"{i:02x}" * 32
               for i, step in enumerate(build_facts.training_steps())}
    path = definition.compile_pipeline(str(tmp_path / "p.yaml"), image_tag="1.0",
                                       image_digests=digests)
    spec = list(yaml.safe_load_all(Path(path).read_text()))[0]
    push_task, _ = all_tasks(spec)["push"]
    images = json.loads(push_task["inputs"]["parameters"]["pipeline_images"]["runtimeValue"]
                        ["constant"])
    assert images == {step: build_facts.image_name(step, build_facts.DEFAULT_REGISTRY, "1.0")
                      + "@" + digests[step] for step in build_facts.training_steps()}


def test_image_digests_of_images_not_built_is_one_line(tmp_path, capsys):
    pytest.importorskip("docker")
    path = tmp_path / "p.yaml"
    code = pipeline.main(["--compile", "--image-digests", "--image-registry",
                          "registry.invalid/nobody", "--output", str(path)])
    assert code == 2 and not path.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: pipeline: image digests: ")
