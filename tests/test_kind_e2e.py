"""The kind end-to-end workflow, checked without running it (it needs Docker, a kind cluster and
the internet; see manifests/README.md "What was run and what was not").

The workflow validates against GitHub's workflow schema and runs only make targets that exist;
the scripts parse (`bash -n`, and shellcheck where installed); every pinned version is written
once (e2e/versions.env) and named in the README's supported-versions table; the images the run
loads are the build's own names; the flags and parameters it passes exist; and the verdicts of
e2e/checks.py (succeeded, failed at validate) are right on canned KFP answers.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.common import build_facts

ROOT = Path(__file__).resolve().parent.parent
E2E = ROOT / "e2e"
WORKFLOW = ROOT / ".github" / "workflows" / "e2e-kind.yml"
VERSIONS_ENV = E2E / "versions.env"
MAKEFILE = ROOT / "Makefile"
SCRIPTS = sorted(E2E.glob("*.sh"))
LIBRARY = E2E / "lib.sh"
E2E_SCRIPT = E2E / "kind-e2e.sh"
# What another engineer's pipeline.py --submit accepts (agreed names; the test also accepts any
# flag pipeline.py's parser has today, e.g. the compile flags).
SUBMIT_FLAGS = {"--submit", "--host", "--namespace", "--experiment", "--run-name", "--wait",
                "--param", "--schedule"}
VERSION_LITERAL = re.compile(r"(?<![\w.])v?\d+\.\d+\.\d+(?!\.\d)")  # not 127.0.0.1


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _steps() -> list[dict]:
    (job,) = _workflow()["jobs"].values()
    return job["steps"]


def _versions() -> dict[str, str]:
    pins = {}
    for line in VERSIONS_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert re.fullmatch(r"[A-Z_]+", key) and value and " " not in value, line
            pins[key] = value
    return pins


def _kind_section() -> str:
    text = MAKEFILE.read_text()
    start = text.index("# ==== kind end-to-end")
    return text[start:]


def _joined(path: Path) -> str:
    """A script with its backslash-continued lines joined."""
    return re.sub(r"\\\n\s*", " ", path.read_text())


def _invocations(path: Path, marker: str) -> list[list[str]]:
    """The arguments after `marker` on each line that runs it (up to the end of the command)."""
    found = []
    for line in _joined(path).splitlines():
        if marker in line and not line.lstrip().startswith("#"):
            tail = line.split(marker, 1)[1].split(")", 1)[0].split("||", 1)[0]
            found.append(shlex.split(tail, comments=True))
    return found


# --- the workflow --------------------------------------------------------------------------------

def test_workflow_validates_against_githubs_workflow_schema():
    tool = Path(sys.executable).parent / "check-jsonschema"
    if not tool.exists():
        pytest.skip("check-jsonschema is not installed in this environment (make venv)")
    result = subprocess.run([str(tool), "--builtin-schema", "vendor.github-workflows",
                             str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_on_push_and_pull_request():
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)


def _make_targets() -> list[str]:
    targets = []
    for step in _steps():
        if "run" not in step:
            continue
        words = shlex.split(step["run"])
        assert words[0] == "make" and len(step["run"].splitlines()) == 1, step["run"]
        targets += [w for w in words[1:] if "=" not in w and not w.startswith("-")]
    return targets


def test_every_run_in_the_workflow_is_a_make_target():
    targets = _make_targets()
    assert {"kind-tools", "kind-up", "kind-e2e", "kind-logs", "kind-down"} <= set(targets)
    for target in targets:
        result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, f"make -n {target}: {result.stderr}"


def test_kind_targets_call_the_e2e_scripts():
    for target, script in (("kind-tools", "install-tools.sh"), ("kind-up", "kind-up.sh"),
                           ("kind-e2e", "kind-e2e.sh"), ("kind-logs", "collect-logs.sh"),
                           ("kind-down", "kind-down.sh"), ("kind-ci-disk", "ci-free-disk.sh")):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", _kind_section(), re.MULTILINE)
        assert recipe, f"Makefile: no target {target} in the kind section"
        assert f"e2e/{script}" in recipe[1], target
        assert os.access(E2E / script, os.X_OK), script


def test_logs_are_collected_and_uploaded_on_failure_and_the_cluster_always_deleted():
    steps = _steps()
    by_run = {step.get("run"): step for step in steps if "run" in step}
    assert by_run["make kind-logs"]["if"] == "failure()"
    assert by_run["make kind-down"]["if"] == "always()"
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["if"] == "failure()"
    assert "local_runs/kind/logs" in upload["with"]["path"]
    order = [s.get("run") or s.get("uses") for s in steps]
    assert order.index("make kind-e2e") < order.index("make kind-logs") < order.index(
        upload["uses"]) < order.index("make kind-down")


# --- the scripts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck():
    result = subprocess.run(["shellcheck", "-x", "-P", "SCRIPTDIR", *map(str, SCRIPTS)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != LIBRARY], ids=lambda p: p.name)
def test_scripts_run_through_the_library(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert 'source "$(dirname "$0")/lib.sh"' in text
    assert os.access(script, os.X_OK)
    # kubectl only through lib.sh's `k`, which names the kind cluster's context
    commands = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    for line in commands:
        assert not re.search(r"(^|[|;&(]\s*)kubectl\s", line), f"{script.name}: {line}"


# --- pinned versions -----------------------------------------------------------------------------

def test_versions_are_pinned_in_one_file():
    pins = _versions()
    assert set(pins) == {"KIND_VERSION", "KIND_NODE_IMAGE", "KUBECTL_VERSION",
                         "CERT_MANAGER_VERSION", "KNATIVE_VERSION", "KSERVE_VERSION",
                         "KFP_VERSION", "KATIB_VERSION"}
    assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}",
                        pins["KIND_NODE_IMAGE"])
    assert pins["KSERVE_VERSION"] == "v0.20.0" and pins["KATIB_VERSION"] == "v0.19.0"
    others = {path: path.read_text() for path in [*SCRIPTS, E2E / "checks.py", WORKFLOW]}
    others[MAKEFILE] = _kind_section()
    for path, text in others.items():
        literal = VERSION_LITERAL.search(text)
        assert literal is None, f"{path.name}: version {literal[0]} belongs in versions.env"
        for key, value in pins.items():
            assert value not in text, f"{path.name} repeats {key}"
    used = "\n".join(path.read_text() for path in SCRIPTS)
    for key in pins:
        assert re.search(rf"\$\{{?{key}\b", used), f"{key} is pinned but no script uses it"


def test_kserve_version_is_the_crd_the_manifest_tests_validate_against():
    from tests.test_manifests import KSERVE_CRD

    assert KSERVE_CRD.startswith(f"kserve-{_versions()['KSERVE_VERSION']}-")


def test_readme_supported_versions_name_the_pins():
    readme = (ROOT / "manifests" / "README.md").read_text()
    table = readme[readme.index("## Supported versions"):]
    pins = _versions()
    node = re.search(r":v(\d+\.\d+\.\d+)@", pins["KIND_NODE_IMAGE"])[1]
    for value in (pins["KIND_VERSION"], node, pins["CERT_MANAGER_VERSION"],
                  pins["KNATIVE_VERSION"], pins["KSERVE_VERSION"], pins["KFP_VERSION"],
                  pins["KATIB_VERSION"]):
        assert value in table, value
    assert "kubeflow/pipelines#10857" in table and "Knative mode" in table


# --- what the run loads and passes ---------------------------------------------------------------

def _listed_images(**env) -> list[str]:
    full_env = {key: value for key, value in os.environ.items() if key not in ("REGISTRY", "TAG")}
    full_env.update(PYTHON=sys.executable, **env)
    result = subprocess.run(["bash", str(E2E / "load-images.sh"), "--list"], cwd=ROOT,
                            env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_loaded_images_are_the_builds_own_names():
    assert _listed_images(REGISTRY="registry.example.com/ml", TAG="9.9.9-test") == [
        build_facts.image_name(image.name, "registry.example.com/ml", "9.9.9-test")
        for image in build_facts.IMAGES]
    assert _listed_images() == [build_facts.image_name(image.name)
                                for image in build_facts.IMAGES]


def test_pipeline_flags_the_run_passes_exist():
    import pipeline

    known = {option for action in pipeline.build_parser()._actions
             for option in action.option_strings} | SUBMIT_FLAGS
    calls = _invocations(E2E_SCRIPT, "\"$RUN_SDK\" pipeline.py")
    assert any("--compile" in call for call in calls)
    (submit,) = [call for call in calls if "--submit" in call]
    assert {"--host", "--wait", "--param", "--run-name"} <= set(submit)
    for call in calls:
        flags = {word.split("=", 1)[0] for word in call if word.startswith("--")}
        assert flags <= known, flags - known


def test_pipeline_parameters_the_run_sets_exist():
    source = (ROOT / "orchestration" / "definition.py").read_text()
    (function,) = [node for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.FunctionDef) and node.name == "training_pipeline"]
    parameters = {arg.arg for arg in function.args.args}
    text = _joined(E2E_SCRIPT)
    keys = set(re.findall(r"--param ([a-z_]+)=", text))
    assert {"source", "deploy_target", "serving_account"} <= keys
    assert keys <= parameters, keys - parameters
    assert "--param deploy_target=kserve" in text


def test_datagen_flags_the_run_passes_exist():
    from datagen.__main__ import build_parser

    known = {option for action in build_parser()._actions for option in action.option_strings}
    calls = _invocations(E2E_SCRIPT, "\"$RUN_SDK\" -m datagen")
    assert len(calls) == 2 and any("--disputed-rate" in call for call in calls)
    for call in calls:
        assert {w for w in call if w.startswith("--")} <= known


def test_the_run_uses_the_standalone_overlay_and_the_manifests_names():
    from tests.test_manifests import OVERLAY_NAMESPACES, _docs

    text = E2E_SCRIPT.read_text()
    assert 'k apply -k "$E2E_ROOT/manifests/overlays/standalone"' in text
    assert re.search(r"^NS=(\S+)", LIBRARY.read_text(), re.MULTILINE)[1] == (
        OVERLAY_NAMESPACES["standalone"])
    assert "reader=cfpb-model-reader" in text
    example = _docs(ROOT / "manifests" / "base" / "kserve-s3-secret.example.yaml")[0]
    annotations = set(re.findall(r"(serving\.kserve\.io/s3-[a-z]+)=", text))
    assert annotations == set(example["metadata"]["annotations"])
    assert "--expect failed-at:validate" in text and "validate" in build_facts.pipeline_steps()
    assert "--disputed-rate" in text and "--expect succeeded" in text


# --- e2e/checks.py's verdicts --------------------------------------------------------------------

def _checks():
    spec = importlib.util.spec_from_file_location("e2e_checks", E2E / "checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PACKAGE = {"root": {"dag": {"tasks": {
    "ingest": {"taskInfo": {"name": "Ingest and version data"}},
    "validate": {"taskInfo": {"name": "Validate data (TFDV)"}, "dependentTasks": ["ingest"]},
    "transform": {"taskInfo": {"name": "Fit preprocessing"},
                  "dependentTasks": ["ingest", "validate"]},
    "train": {"taskInfo": {"name": "Train model"}, "dependentTasks": ["transform"]},
    "condition-1": {"taskInfo": {"name": "blessed"}, "dependentTasks": ["train"]},
}}}}


def _run(state: str, *tasks: tuple[str, str]) -> dict:
    return {"run_id": "r", "display_name": "n", "state": state,
            "run_details": {"task_details": [{"display_name": n, "state": s}
                                             for n, s in tasks]}}


def test_checks_know_what_follows_a_task():
    checks = _checks()
    tasks = checks.pipeline_tasks(PACKAGE)
    assert checks.downstream(tasks, "validate") == {"transform", "train", "condition-1"}
    assert checks.downstream(tasks, "train") == {"condition-1"}


def test_checks_unfold_conditions():
    """The compiled package nests every step after ingest in the new-data condition."""
    checks = _checks()
    nested = {"components": {
        "comp-condition-1": {"dag": {"tasks": {
            "validate": {"taskInfo": {"name": "Validate data (TFDV)"}},
            "train": {"taskInfo": {"name": "Train model"}, "dependentTasks": ["validate"]}}}},
        "comp-validate": {"executorLabel": "exec-validate"}},
        "root": {"dag": {"tasks": {
            "ingest": {"taskInfo": {"name": "Ingest and version data"}},
            "condition-1": {"taskInfo": {"name": "new-data"}, "dependentTasks": ["ingest"],
                            "componentRef": {"name": "comp-condition-1"}}}}}}
    tasks = checks.pipeline_tasks(nested)
    assert set(tasks) == {"ingest", "condition-1", "validate", "train"}
    assert checks.downstream(tasks, "validate") == {"train"}
    assert checks.downstream(tasks, "ingest") == {"condition-1", "validate", "train"}
    stopped = _run("FAILED", ("Validate data (TFDV)", "FAILED"))
    assert checks.verdict(stopped, "failed-at:validate", tasks) == []


def test_checks_verdicts():
    checks = _checks()
    tasks = checks.pipeline_tasks(PACKAGE)
    stopped = _run("FAILED", ("Ingest and version data", "SUCCEEDED"),
                   ("Validate data (TFDV)", "FAILED"))
    assert checks.verdict(stopped, "failed-at:validate", tasks) == []
    assert checks.verdict(_run("FAILED", ("validate", "FAILED")), "failed-at:validate",
                          tasks) == []  # the task key works as well as the display name
    assert checks.verdict(stopped, "succeeded", tasks)
    went_on = _run("FAILED", ("Validate data (TFDV)", "FAILED"), ("Train model", "SUCCEEDED"))
    assert any("train" in p for p in checks.verdict(went_on, "failed-at:validate", tasks))
    failed_later = _run("FAILED", ("Validate data (TFDV)", "SUCCEEDED"),
                        ("Train model", "FAILED"))
    assert checks.verdict(failed_later, "failed-at:validate", tasks)
    passed = _run("SUCCEEDED", ("Validate data (TFDV)", "SUCCEEDED"))
    assert checks.verdict(passed, "succeeded", tasks) == []
    assert checks.verdict(passed, "failed-at:validate", tasks)
    camel = {"runId": "r", "displayName": "n", "state": "SUCCEEDED", "runDetails": {}}
    assert checks.verdict(camel, "succeeded", tasks) == []
    with pytest.raises(ValueError, match="no task"):
        checks.verdict(passed, "failed-at:nowhere", tasks)


def test_checks_predict_instance_has_the_models_features():
    """The REST instance carries exactly the dataset's model inputs (the SavedModel takes raw
    features by name)."""
    from components.common.dataset_config import load_dataset_config

    assert list(_checks().INSTANCE) == load_dataset_config().feature_names
