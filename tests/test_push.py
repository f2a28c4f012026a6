"""Tests for the push step: only a blessed model reaches the registry, with its lineage.

Train and evaluate outputs are built by hand per the contract (a real tiny SavedModel, training.
json, blessing.json, metrics.json); the step runs in-process and as the real CLI (exit codes,
KFP executor output). The CLI needs no TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.common import registry
from components.common.artifacts import model as model_artifact
from components.common.errors import StepError
from components.push.push import STATUS_ALREADY, STATUS_NOT_BLESSED, STATUS_PUBLISHED, push
from tests.conftest import ROOT
from tests.test_registry import HPARAMS, NAME, make_train_output, tree

MODULE = "components.push"


def make_evaluation(path: Path, model_id: str, *, blessed: bool = True,
                    baseline: dict | None = None, metrics: dict | None = None) -> Path:
    """An evaluate output per the contract: blessing.json and metrics.json."""
    path.mkdir(parents=True, exist_ok=True)
    auc = 0.74 if blessed else 0.52
    blessing = {
        "blessed": blessed,
        "reasons": [
            {"check": "auc >= 0.6", "passed": auc >= 0.6, "value": auc, "threshold": 0.6},
            {"check": "auc >= baseline auc - 0.01", "passed": blessed, "value": auc,
             "threshold": 0.7},
        ],
        "model_id": model_id,
        "baseline": baseline or {"version": None, "model_id": None, "uri": None},
        "dataset_version": "ds-0000000000000001",
    }
    (path / "blessing.json").write_text(json.dumps(blessing))
    if metrics is None:
        metrics = {
            "overall": {"auc": auc, "accuracy": 0.8, "log_loss": 0.45, "examples": 900,
                        "confusion_matrix": [[600, 100], [80, 120]],
                        "roc": {"fpr": [0, 1], "tpr": [0, 1]}},
            "slices": {"product": {"Mortgage": {"auc": 0.7, "examples": 400}}},
        }
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


@pytest.fixture
def outputs(tmp_path):
    """A factory of (train output, evaluate output) pairs under tmp_path."""
    counter = iter(range(1000))

    def make(*, blessed: bool = True, baseline: dict | None = None, **train_kwargs):
        n = next(counter)
        train_dir = tmp_path / f"train-{n}"
        training = make_train_output(train_dir, **train_kwargs)
        evaluation = make_evaluation(tmp_path / f"eval-{n}", training["model_id"],
                                     blessed=blessed, baseline=baseline)
        return train_dir, evaluation, training

    return make


def executor_input(tmp_path: Path) -> dict:
    return {
        "inputs": {"artifacts": {}, "parameterValues": {}},
        "outputs": {
            "artifacts": {"pushed_model": {"artifacts": [
                {"name": "pushed_model", "uri": str(tmp_path / "pushed_model")}]},
                "model_card": {"artifacts": [
                    {"name": "model_card", "uri": str(tmp_path / "model_card.html")}]}},
            "parameters": {"pushed": {"outputFile": str(tmp_path / "p")},
                           "model_version": {"outputFile": str(tmp_path / "v")}},
            "outputFile": str(tmp_path / "out" / "executor_output.json"),
        },
    }


def run_push(cli, tmp_path, train_dir, evaluation, registry_root, *extra, model_name=NAME):
    """The CLI as the component spec runs it; returns (process, executor output or None)."""
    output_file = tmp_path / "out" / "executor_output.json"
    output_file.unlink(missing_ok=True)
    result = cli(MODULE, "--model", str(train_dir), "--evaluation", str(evaluation),
                 "--registry", str(registry_root), "--model-name", model_name,
                 "--pushed-model", str(tmp_path / "pushed_model"),
                 "--model-card", str(tmp_path / "model_card.html"),
                 "--executor-input", json.dumps(executor_input(tmp_path)), *extra)
    output = json.loads(output_file.read_text()) if output_file.exists() else None
    return result, output


def test_help(cli):
    result = cli(MODULE, "--help")
    assert result.returncode == 0
    for flag in ("--model", "--evaluation", "--registry", "--model-name", "--executor-input"):
        assert flag in result.stdout


def test_blessed_model_is_published_with_lineage_and_executor_output(tmp_path, outputs, cli):
    root = tmp_path / "registry"
    train_dir, evaluation, training = outputs()
    result, output = run_push(cli, tmp_path, train_dir, evaluation, root)
    assert result.returncode == 0, result.stderr

    assert output["parameterValues"] == {"pushed": True, "model_version": 1}
    artifact = output["artifacts"]["pushed_model"]["artifacts"][0]
    assert artifact["uri"] == str(tmp_path / "pushed_model")
    assert artifact["metadata"] == {
        "pushed": True, "status": STATUS_PUBLISHED, "version": 1, "semver": "1.0.0",
        "uri": str(root / NAME / "1"), "model_id": training["model_id"], "model_name": NAME,
        "model_card": str(root / NAME / "cards" / "1"),
    }
    recorded = json.loads((tmp_path / "pushed_model").read_text())
    assert recorded["version"] == 1 and recorded["status"] == STATUS_PUBLISHED

    assert (root / NAME / "1" / "saved_model.pb").is_file()
    assert model_artifact.model_id_of(str(root / NAME / "1")) == training["model_id"]
    index = registry.read_index(str(root), NAME)
    assert index["current"] == 1
    entry = index["versions"][0]
    assert entry["metrics"] == {
        # scalar overall metrics only; matrices, curves and slices stay in metrics.json
        "evaluation": {"auc": 0.74, "accuracy": 0.8, "log_loss": 0.45, "examples": 900},
        "training": {"auc": 0.71, "loss": 0.52},
    }
    lineage = registry.read_lineage(str(root), NAME, 1)
    for key in ("dataset_version", "preprocessing_hash", "hparams", "signature_hash",
                "code_version"):
        assert lineage[key] == training[key], key
    assert lineage["trained_at"] == training["created_at"]
    assert lineage["baseline_version"] is None
    assert lineage["blessing"]["reasons"][0]["check"] == "auc >= 0.6"
    assert lineage["source"]["evaluation"] == str(evaluation)


def test_second_model_records_the_baseline_it_beat(tmp_path, outputs):
    root = str(tmp_path / "registry")
    first_train, first_eval, first = outputs()
    push(str(first_train), str(first_eval), root, NAME)
    baseline = {"version": 1, "model_id": first["model_id"], "uri": f"{root}/{NAME}/1"}
    second_train, second_eval, second = outputs(
        baseline=baseline, weight=0.8, dataset_version="ds-0000000000000002")
    result = push(str(second_train), str(second_eval), root, NAME)
    assert (result["version"], result["semver"], result["pushed"]) == (2, "1.1.0", True)
    index = registry.read_index(root, NAME)
    assert index["current"] == 2
    assert index["versions"][1]["baseline_version"] == 1
    assert registry.read_lineage(root, NAME, 2)["baseline"] == baseline


def test_unblessed_model_writes_nothing_and_exits_zero(tmp_path, outputs, cli):
    root = tmp_path / "registry"
    good_train, good_eval, _ = outputs()
    push(str(good_train), str(good_eval), str(root), NAME)
    before = tree(root)
    bad_train, bad_eval, bad = outputs(blessed=False, weight=-3.0)

    result, output = run_push(cli, tmp_path, bad_train, bad_eval, root)
    assert result.returncode == 0, result.stderr
    assert "not blessed" in result.stderr
    assert tree(root) == before
    assert output["parameterValues"] == {"pushed": False, "model_version": 0}
    metadata = output["artifacts"]["pushed_model"]["artifacts"][0]["metadata"]
    assert metadata["status"] == STATUS_NOT_BLESSED == "skipped: not blessed"
    assert metadata["model_id"] == bad["model_id"] and metadata["uri"] == ""
    recorded = json.loads((tmp_path / "pushed_model").read_text())
    assert recorded["pushed"] is False
    assert recorded["failed_checks"] == ["auc >= 0.6", "auc >= baseline auc - 0.01"]

    fresh = tmp_path / "fresh-registry"
    assert push(str(bad_train), str(bad_eval), str(fresh), NAME)["pushed"] is False
    assert not fresh.exists()


def test_pushing_the_same_model_again_is_a_no_op(tmp_path, outputs, cli):
    root = tmp_path / "registry"
    train_dir, evaluation, training = outputs()
    first, _ = run_push(cli, tmp_path, train_dir, evaluation, root)
    assert first.returncode == 0, first.stderr
    before = tree(root)
    again, output = run_push(cli, tmp_path, train_dir, evaluation, root)
    assert again.returncode == 0, again.stderr
    assert tree(root) == before
    assert output["parameterValues"] == {"pushed": True, "model_version": 1}
    metadata = output["artifacts"]["pushed_model"]["artifacts"][0]["metadata"]
    assert (metadata["status"], metadata["model_id"]) == (STATUS_ALREADY, training["model_id"])


def test_evaluation_of_another_model_is_refused(tmp_path, outputs, cli):
    root = tmp_path / "registry"
    train_dir, _, _ = outputs()
    _, other_eval, other = outputs()
    result, output = run_push(cli, tmp_path, train_dir, other_eval, root)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: push: ") and "evaluation is of another model" in last
    assert other["model_id"] in last
    assert output is None
    assert not root.exists()


def test_model_changed_after_evaluation_is_refused(tmp_path, outputs):
    root = tmp_path / "registry"
    train_dir, evaluation, _ = outputs()
    (train_dir / "model" / "variables" / "variables.index").write_bytes(b"retrained in place")
    with pytest.raises(StepError, match="changed after it was trained and evaluated"):
        push(str(train_dir), str(evaluation), str(root), NAME)
    assert not (root / NAME / "index.json").exists()


@pytest.mark.parametrize(("case", "message"), [
    ("no-blessing", "no blessing.json; not the output of a finished evaluate step"),
    ("no-training", "no training.json; not the output of a finished train step"),
    ("bad-name", "model name 'a/b'"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, outputs, cli, case, message):
    train_dir, evaluation, _ = outputs()
    name = NAME
    if case == "no-blessing":
        (evaluation / "blessing.json").unlink()
    elif case == "no-training":
        (train_dir / "training.json").unlink()
    else:
        name = "a/b"
    result, _ = run_push(cli, tmp_path, train_dir, evaluation, tmp_path / "registry",
                         model_name=name)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "registry").exists()


def test_metrics_without_an_overall_section_use_the_top_level(tmp_path):
    train_dir = tmp_path / "train"
    training = make_train_output(train_dir, hparams={**HPARAMS, "epochs": 1})
    evaluation = make_evaluation(tmp_path / "eval", training["model_id"],
                                 metrics={"auc": 0.69, "recall": 0.5, "blessed": True,
                                          "nan": float("nan"), "slices": {"x": 1}})
    push(str(train_dir), str(evaluation), str(tmp_path / "registry"), NAME)
    entry = registry.read_index(str(tmp_path / "registry"), NAME)["versions"][0]
    assert entry["metrics"]["evaluation"] == {"auc": 0.69, "recall": 0.5}


def test_push_runs_without_tensorflow(tmp_path, outputs):
    """The push image needs no TensorFlow: the step only copies files and reads JSON."""
    train_dir, evaluation, _ = outputs()
    code = (
        "import sys\n"
        "from components.push.__main__ import main\n"
        f"main(['--model', {str(train_dir)!r}, '--evaluation', {str(evaluation)!r},\n"
        f"      '--registry', {str(tmp_path / 'registry')!r}, '--model-name', {NAME!r}])\n"
        "assert 'tensorflow' not in sys.modules, 'push imported tensorflow'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "registry" / NAME / "1" / "saved_model.pb").is_file()


def test_push_to_an_s3_registry(tmp_path, outputs, cli, s3_bucket):
    root = f"s3://{s3_bucket}/registry"
    first_train, first_eval, first = outputs()
    result, output = run_push(cli, tmp_path, first_train, first_eval, root)
    assert result.returncode == 0, result.stderr
    assert output["parameterValues"] == {"pushed": True, "model_version": 1}
    baseline = {"version": 1, "model_id": first["model_id"], "uri": f"{root}/{NAME}/1"}
    second_train, second_eval, second = outputs(baseline=baseline, signature="v2")
    result, output = run_push(cli, tmp_path, second_train, second_eval, root)
    assert result.returncode == 0, result.stderr
    metadata = output["artifacts"]["pushed_model"]["artifacts"][0]["metadata"]
    assert (metadata["version"], metadata["semver"]) == (2, "2.0.0")
    assert metadata["uri"] == f"{root}/{NAME}/2"
    index = registry.read_index(root, NAME)
    assert index["current"] == 2 and index["versions"][1]["model_id"] == second["model_id"]

    unblessed_train, unblessed_eval, _ = outputs(blessed=False)
    before = registry.read_index(root, NAME)
    result, output = run_push(cli, tmp_path, unblessed_train, unblessed_eval, root)
    assert result.returncode == 0 and output["parameterValues"]["pushed"] is False
    assert registry.read_index(root, NAME) == before


def test_a_stale_blessing_is_not_published(tmp_path, outputs, cli):
    """A and B both beat v1; A becomes v2; B was never compared with v2 and is refused."""
    root = tmp_path / "registry"
    first_train, first_eval, first = outputs()
    push(str(first_train), str(first_eval), str(root), NAME)
    baseline = {"version": 1, "model_id": first["model_id"], "uri": f"{root}/{NAME}/1"}
    a_train, a_eval, _ = outputs(baseline=baseline, weight=0.8, dataset_version="ds-2")
    b_train, b_eval, b = outputs(baseline=baseline, weight=0.6, dataset_version="ds-3")
    assert push(str(a_train), str(a_eval), str(root), NAME)["version"] == 2
    before = tree(root)
    result, output = run_push(cli, tmp_path, b_train, b_eval, root)
    assert result.returncode == 2 and output is None
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: push: ") and "evaluated against version 1" in last
    assert "current version is 2" in last and "evaluate it against version 2 again" in last
    assert tree(root) == before  # nothing written


def test_concurrent_pushes_of_stale_blessings_publish_one(tmp_path, outputs):
    """Two pushes evaluated against v1 at the same time: the registry lock lets one through."""
    import concurrent.futures

    root = tmp_path / "registry"
    first_train, first_eval, first = outputs()
    push(str(first_train), str(first_eval), str(root), NAME)
    baseline = {"version": 1, "model_id": first["model_id"], "uri": f"{root}/{NAME}/1"}
    pairs = [outputs(baseline=baseline, weight=w, dataset_version=f"ds-{w}")
             for w in (0.7, 0.9)]
    code = ("import sys; from components.push.push import push; "
            "push(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])")

    def run(pair):
        return subprocess.run([sys.executable, "-c", code, str(pair[0]), str(pair[1]),
                               str(root), NAME], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, pairs))
    assert sorted(r.returncode == 0 for r in results) == [False, True]
    assert "the blessing is stale" in next(r for r in results if r.returncode).stderr
    index = registry.read_index(str(root), NAME)
    assert [e["version"] for e in index["versions"]] == [1, 2] and index["current"] == 2
