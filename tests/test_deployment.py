"""Tests for the deployment record (components/common/artifacts/deployment.py): strategies as pure
functions, validation, atomic load/save, and the TF Serving model_config it produces."""

from __future__ import annotations

import copy
import json
import os

import pytest

from components.common.artifacts import deployment
from components.common.errors import StepError

NAME = "cfpb-dispute"
KNOWN = [1, 2, 3, 4]
NOW = "2026-11-27T17:00:00+00:00"


def fresh() -> dict:
    return deployment.empty_record(NAME)


def test_first_canary_becomes_stable_with_all_traffic():
    record = deployment.canary(fresh(), 1, 10, known_versions=KNOWN, now=NOW)
    assert record["versions"] == {"1": {"labels": ["stable"]}}
    assert record["traffic"] == {"1": 100}
    assert record["revision"] == 1 and record["strategy"] == "canary"
    assert record["history"] == [] and record["updated_at"] == NOW


def test_canary_splits_traffic_with_the_stable_version():
    stable = deployment.promote(fresh(), 3, known_versions=KNOWN)
    record = deployment.canary(stable, 4, 10, known_versions=KNOWN)
    assert record["versions"] == {"3": {"labels": ["stable"]}, "4": {"labels": ["canary"]}}
    assert record["traffic"] == {"3": 90, "4": 10}
    assert record["revision"] == 2
    assert record["history"][-1]["revision"] == 1
    assert record["history"][-1]["traffic"] == {"3": 100}
    assert deployment.stable_version(record) == 3 and deployment.canary_version(record) == 4
    # a new canary replaces the old one; the input record is not changed (pure)
    before = copy.deepcopy(record)
    moved = deployment.canary(record, 2, 25, known_versions=KNOWN)
    assert record == before
    assert moved["traffic"] == {"3": 75, "2": 25}
    assert "4" not in moved["versions"]


def test_same_state_again_is_a_no_op():
    record = deployment.canary(deployment.promote(fresh(), 3), 4, 10)
    assert deployment.canary(record, 4, 10) == record
    assert deployment.canary(record, 3, 10) == record  # the stable version is not its own canary
    assert deployment.canary(record, 4, 30)["revision"] == record["revision"] + 1


def test_promote_undeploys_every_other_version():
    record = deployment.canary(deployment.promote(fresh(), 3), 4, 10)
    promoted = deployment.promote(record, 4, known_versions=KNOWN)
    assert promoted["versions"] == {"4": {"labels": ["stable"]}}
    assert promoted["traffic"] == {"4": 100}
    assert promoted["strategy"] == "promote" and promoted["revision"] == 3


def test_rollback_restores_the_previous_revision_step_by_step():
    r1 = deployment.promote(fresh(), 3)
    r2 = deployment.canary(r1, 4, 10)
    r3 = deployment.promote(r2, 4)
    back = deployment.rollback(r3)
    assert back["versions"] == r2["versions"] and back["traffic"] == r2["traffic"]
    assert back["revision"] == 4 and back["strategy"] == "rollback"
    further = deployment.rollback(back)
    assert further["traffic"] == {"3": 100} and further["revision"] == 5
    with pytest.raises(StepError, match="nothing to roll back"):
        deployment.rollback(further)


def test_rollback_with_no_history_fails():
    with pytest.raises(StepError, match="nothing to roll back"):
        deployment.rollback(fresh())
    with pytest.raises(StepError, match="nothing to roll back"):
        deployment.rollback(deployment.promote(fresh(), 1))


@pytest.mark.parametrize("strategy", ["canary", "promote"])
def test_unknown_version_is_rejected(strategy):
    with pytest.raises(StepError, match="version 9 is not in the registry index"):
        deployment.apply_strategy(fresh(), strategy, 9, known_versions=KNOWN)
    with pytest.raises(StepError, match="registry version number"):
        deployment.apply_strategy(fresh(), strategy, 0, known_versions=KNOWN)


@pytest.mark.parametrize("percent", [-1, 101])
def test_bad_canary_percent_is_rejected(percent):
    with pytest.raises(StepError, match="canary percent"):
        deployment.canary(deployment.promote(fresh(), 1), 2, percent)


def test_history_keeps_the_last_entries():
    record = fresh()
    for i in range(30):
        record = deployment.promote(record, 1 + i % 2)
    assert len(record["history"]) == deployment.HISTORY_LIMIT
    assert record["history"][-1]["revision"] == record["revision"] - 1


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["traffic"].update({"3": 80}), "sums to"),
    (lambda r: r["versions"]["4"].update({"labels": ["stable"]}), "label 'stable' is on"),
    (lambda r: r["versions"]["4"].update({"labels": ["blue"]}), "unknown label"),
    (lambda r: r["traffic"].pop("4"), "not the deployed versions"),
    (lambda r: r.update({"revision": -1}), "revision"),
    (lambda r: r.update({"history": {}}), "history"),
    (lambda r: r["versions"].update({"x": {"labels": []}}), "not a positive integer"),
])
def test_validation_names_the_problem(mutate, message):
    record = deployment.canary(deployment.promote(fresh(), 3), 4, 10)
    mutate(record)
    with pytest.raises(StepError, match=message):
        deployment.validate(record)


def test_load_and_save_round_trip_atomically(tmp_path, monkeypatch):
    registry_root = str(tmp_path / "registry")
    assert deployment.load(registry_root, NAME) == fresh()
    record = deployment.canary(deployment.promote(fresh(), 3), 4, 10)
    uri = deployment.save(registry_root, NAME, record)
    assert uri == str(tmp_path / "registry" / NAME / "deployment.json")
    assert deployment.load(registry_root, NAME) == record
    # atomic: the file is replaced by a rename, never written in place
    from components.common import storage

    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real_replace(a, b)))
    deployment.save(registry_root, NAME, deployment.promote(record, 4))
    assert calls and calls[-1][1] == uri and os.path.basename(calls[-1][0]).startswith(".tmp-")
    assert not [n for n in os.listdir(os.path.dirname(uri)) if n.startswith(".tmp-")]
    assert storage.exists(uri)


def test_save_refuses_an_invalid_record_and_load_a_broken_file(tmp_path):
    registry_root = str(tmp_path)
    bad = deployment.promote(fresh(), 3)
    bad["traffic"]["3"] = 50
    with pytest.raises(StepError, match="sums to 50"):
        deployment.save(registry_root, NAME, bad)
    assert not (tmp_path / NAME / "deployment.json").exists()
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "deployment.json").write_text("{not json")
    with pytest.raises(StepError, match="not valid JSON"):
        deployment.load(registry_root, NAME)


def parse_model_config(text: str):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_tf_serving_model_config_parses_with_the_real_protos():
    record = deployment.canary(deployment.promote(fresh(), 3), 4, 10)
    text = deployment.tf_serving_model_config(record, NAME, "s3://models/registry/" + NAME)
    config = parse_model_config(text)
    (model,) = config.model_config_list.config
    assert model.name == NAME
    assert model.base_path == "s3://models/registry/" + NAME
    assert model.model_platform == "tensorflow"
    assert list(model.model_version_policy.specific.versions) == [3, 4]
    assert dict(model.version_labels) == {"stable": 3, "canary": 4}
    assert "3=90%" in text and "4=10%" in text

    promoted = deployment.promote(record, 4)
    (model,) = parse_model_config(
        deployment.tf_serving_model_config(promoted, NAME, "/r/" + NAME)).model_config_list.config
    assert list(model.model_version_policy.specific.versions) == [4]
    assert dict(model.version_labels) == {"stable": 4}


def test_tf_serving_model_config_quotes_paths_and_needs_a_deployment():
    record = deployment.promote(fresh(), 1)
    path = '/tmp/a "quoted" dir\\x'
    (model,) = parse_model_config(
        deployment.tf_serving_model_config(record, NAME, path)).model_config_list.config
    assert model.base_path == path
    with pytest.raises(StepError, match="nothing is deployed"):
        deployment.tf_serving_model_config(fresh(), NAME, "/r")


def test_record_is_plain_json():
    record = deployment.canary(deployment.promote(fresh(), 3), 4, 10)
    assert json.loads(json.dumps(record)) == record
