"""No new data, no work: the gate every task after ingest runs through, and the run's summary.

The pipeline wraps each step's command in `python -m components.common.gate` (the step's own
command after `--`, `tests/test_pipeline.py` checks the compiled packages); here the gate runs as
a real process: with new data it becomes the step (same exit code), without it the step never
starts and its executor output says "skipped: no new data". The local runner's summary is built
from those executor outputs.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import yaml

from components.common import build_facts
from orchestration import definition, local_runner
from tests.conftest import run_cli

GATE = "components.common.gate"


def executor_input(tmp_path, artifacts=("evaluation", "metrics"), parameters=("blessed",)):
    return {
        "inputs": {"parameterValues": {}},
        "outputs": {
            "artifacts": {name: {"artifacts": [{"name": name, "uri": str(tmp_path / name),
                                                "metadata": {}}]} for name in artifacts},
            "parameters": {name: {"outputFile": str(tmp_path / f"{name}.param")}
                           for name in parameters},
            "outputFile": str(tmp_path / "executor_output.json"),
        },
    }


def test_with_new_data_the_gate_becomes_the_step(tmp_path):
    marker = tmp_path / "ran"
    step = f"import pathlib, sys; pathlib.Path({str(marker)!r}).write_text(sys.argv[1]); " \
           "sys.exit(3)"
    done = run_cli(GATE, "--new-data", "true", "--skip-outputs", "{}", "--",
                   "python", "-c", step, "its-argument")
    assert done.returncode == 3, done.stderr  # the step's own exit code
    assert marker.read_text() == "its-argument"


def test_without_new_data_the_step_never_starts_and_reports_skipped_outputs(tmp_path):
    marker = tmp_path / "ran"
    payload = executor_input(tmp_path)
    done = run_cli(GATE, "--new-data", "false", "--skip-outputs", '{"blessed": false}', "--",
                   "python", "-c", f"open({str(marker)!r}, 'w')",
                   "--executor-input", json.dumps(payload))
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert "skipped: no new data" in done.stderr
    reported = json.loads((tmp_path / "executor_output.json").read_text())
    assert reported["parameterValues"] == {"blessed": False}
    for name in ("evaluation", "metrics"):
        (artifact,) = reported["artifacts"][name]["artifacts"]
        assert artifact["metadata"] == {"skipped": "no new data"}
        assert artifact["uri"] == str(tmp_path / name)


def test_a_missing_skip_value_is_a_one_line_error(tmp_path):
    payload = executor_input(tmp_path, parameters=("pushed", "model_version"))
    done = run_cli(GATE, "--new-data", "false", "--skip-outputs", '{"pushed": false}', "--",
                   "python", "-m", "components.push", "--executor-input", json.dumps(payload))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: gate: no skip value for output parameter(s) model_version "
        "(--skip-outputs)")
    assert not (tmp_path / "executor_output.json").exists()


def test_no_command_is_an_error():
    done = run_cli(GATE, "--new-data", "true")
    assert done.returncode == 2 and "put it after `--`" in done.stderr


@pytest.mark.parametrize("step", [s for s in build_facts.training_steps() if s != "ingest"])
def test_the_gated_spec_keeps_the_steps_command_and_arguments(step, tmp_path):
    """What the pipeline runs is the step's component.yaml command behind the gate; skipped,
    it reports every output the spec declares."""
    spec = yaml.safe_load((build_facts.COMPONENTS / step / "component.yaml").read_text())
    wrapped = definition.gated(spec)
    container = wrapped["implementation"]["container"]
    args = container["args"]
    cut = args.index("--")
    assert container["command"] == ["python", "-m", GATE]
    assert args[cut + 1:] == [*spec["implementation"]["container"]["command"],
                              *spec["implementation"]["container"]["args"]]
    assert wrapped["inputs"][-1]["name"] == "new_data"
    assert wrapped["outputs"] == spec["outputs"]
    parameters = [o["name"] for o in spec["outputs"]
                  if o["type"] in ("String", "Integer", "Float", "Boolean")]
    artifacts = [o["name"] for o in spec["outputs"] if o["name"] not in parameters]
    payload = executor_input(tmp_path, artifacts, parameters)
    done = run_cli(GATE, "--new-data", "false", "--skip-outputs",
                   args[args.index("--skip-outputs") + 1], "--", "python", "-m",
                   f"components.{step}", "--executor-input", json.dumps(payload))
    assert done.returncode == 0, done.stderr
    reported = json.loads((tmp_path / "executor_output.json").read_text())
    assert set(reported["artifacts"]) == set(artifacts)
    assert set(reported["parameterValues"]) == set(parameters)


# --- the local run's summary ------------------------------------------------------------------

def write_task(run_dir, step, artifacts: dict, parameters: dict):
    (run_dir / step).mkdir(parents=True)
    output = {"artifacts": {name: {"artifacts": [{"name": name, "uri": f"/x/{name}",
                                                  "metadata": metadata}]}
                            for name, metadata in artifacts.items()},
              "parameterValues": parameters}
    (run_dir / step / "executor_output.json").write_text(json.dumps(output))


def finished_watcher(steps):
    watcher = local_runner.RunWatcher(io.StringIO())
    for step in steps:
        watcher.write(f"Executing task '{step}'\n")
        watcher.write(f"Task '{step}' finished with status SUCCESS\n")
    return watcher


def test_a_run_with_no_new_data_succeeds_and_says_so(tmp_path, capsys):
    run_dir = tmp_path / "run"
    steps = build_facts.training_steps()
    write_task(run_dir, "ingest", {"examples": {"dataset_version": "ds-1"}},
               {"dataset_version": "ds-1", "new_data": False})
    for step in steps[1:]:
        write_task(run_dir, step, {"out": {"skipped": "no new data"}, "report": {
            "skipped": "no new data"}}, {})
    summary = local_runner.build_summary(run_dir, finished_watcher(steps), None, None,
                                         tmp_path / "registry", "m")
    assert summary["succeeded"] is True
    assert summary["new_data"] is False
    assert [s["status"] for s in summary["steps"]] == (
        ["success"] + ["skipped: no new data"] * (len(steps) - 1))
    assert summary["reports"] == {}
    local_runner.print_summary(summary)
    out = capsys.readouterr().out
    assert "no new data: ds-1 is already in the data store" in out
    assert "validate   skipped: no new data" in out


def test_a_run_with_new_data_reports_steps_as_before(tmp_path):
    run_dir = tmp_path / "run"
    steps = build_facts.training_steps()
    write_task(run_dir, "ingest", {"examples": {}}, {"dataset_version": "ds-2",
                                                     "new_data": True})
    for step in steps[1:]:
        write_task(run_dir, step, {"out": {"rows": 1}}, {})
    summary = local_runner.build_summary(run_dir, finished_watcher(steps), None, None,
                                         tmp_path / "registry", "m")
    assert summary["succeeded"] is True and summary["new_data"] is True
    assert {s["status"] for s in summary["steps"]} == {"success"}


def test_gate_imports_nothing_heavy():
    """It starts in every step image before the step: no TensorFlow, numpy or S3 client."""
    code = ("import sys, components.common.gate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'numpy', 'minio', 'yaml')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=build_facts.ROOT)
    assert done.stdout.strip() == "[]", done.stderr
