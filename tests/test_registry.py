"""Tests for the model registry: versions, lineage, semantic versions, atomic publish, baselines.

Real SavedModels (a tiny tf.Module with a serving signature) are published to a real local
directory and to a real S3 endpoint (moto's server); a crash is simulated with an exception and
with SIGKILL of a publishing process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from components.common import registry, storage
from components.common.artifacts import model as model_artifact
from components.common.errors import StepError
from tests.conftest import ROOT

NAME = "cfpb-dispute"
HPARAMS = {"learning_rate": 0.001, "hidden_units": [32], "embedding_dim": 8, "dropout": 0.1,
           "epochs": 2, "batch_size": 64}

# Two serving interfaces: v2 adds an input, which is a new major version.
SIGNATURES = {
    "v1": {"serving_default": {"inputs": {"product": "string"},
                               "outputs": {"probability": "float32"}}},
    "v2": {"serving_default": {"inputs": {"product": "string", "state": "string"},
                               "outputs": {"probability": "float32"}}},
}


def save_tiny_model(path: Path, weight: float = 0.5, signature: str = "v1") -> None:
    """A real SavedModel: P = sigmoid(w * len(product)) (+ len(state) in the v2 interface)."""
    import tensorflow as tf

    def probability(w, *texts):
        total = tf.add_n([tf.cast(tf.strings.length(t), tf.float32) for t in texts])
        return {"probability": tf.sigmoid(w * total)}

    class TinyV1(tf.Module):
        def __init__(self):
            self.w = tf.Variable(weight)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="product")])
        def serve(self, product):
            return probability(self.w, product)

    class TinyV2(TinyV1):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="product"),
                                      tf.TensorSpec([None], tf.string, name="state")])
        def serve(self, product, state):
            return probability(self.w, product, state)

    module = TinyV1() if signature == "v1" else TinyV2()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def make_train_output(path: Path, *, weight: float = 0.5, signature: str = "v1",
                      dataset_version: str = "ds-0000000000000001",
                      preprocessing_hash: str = "pp-0000000000000001",
                      hparams: dict | None = None, model: Path | None = None) -> dict:
    """A train output directory per the contract: model/ and training.json; returns the latter.

    `model`: copy this SavedModel instead of saving a new one (the same files, same model_id).
    """
    path.mkdir(parents=True, exist_ok=True)
    if model is not None:
        shutil.copytree(model, path / "model")
    else:
        save_tiny_model(path / "model", weight, signature)
    training = {
        "model_id": model_artifact.model_id_of(str(path / "model")),
        "signature_hash": model_artifact.signature_hash_of(SIGNATURES[signature]),
        "dataset_version": dataset_version,
        "preprocessing_hash": preprocessing_hash,
        "hparams": dict(HPARAMS if hparams is None else hparams),
        "metrics": {"auc": 0.71, "loss": 0.52},
        "code_version": "0.1.0+test",
        "created_at": "2026-01-01T00:00:00Z",
    }
    (path / "training.json").write_text(json.dumps(training))
    return training


def lineage_of(training: dict, baseline_version: int | None = None) -> dict:
    return {**training, "metrics": {"evaluation": {"auc": 0.7}, "training": training["metrics"]},
            "baseline": {"version": baseline_version}, "baseline_version": baseline_version}


def publish(root, train_dir: Path, training: dict):
    return registry.publish(str(root), NAME, str(train_dir / "model"), lineage_of(training))


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (to show that nothing changed)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def numeric_dirs(root: Path) -> list[int]:
    base = root / NAME
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.exists() else []


def predict(model_dir: str, **features) -> list[float]:
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    return serve(**{k: tf.constant(v) for k, v in features.items()})["probability"].numpy().tolist()


@pytest.fixture
def trained(tmp_path):
    """A factory of train outputs under tmp_path."""
    counter = iter(range(1000))

    def make(**kwargs) -> tuple[Path, dict]:
        path = tmp_path / f"train-{next(counter)}"
        return path, make_train_output(path, **kwargs)

    return make


# ---------------------------------------------------------------------------------------------
# Identity and policy (no TensorFlow needed).

def test_model_id_is_content_of_the_files_not_their_location(tmp_path):
    a = tmp_path / "a"
    (a / "variables").mkdir(parents=True)
    (a / "saved_model.pb").write_bytes(b"graph")
    (a / "variables" / "variables.index").write_bytes(b"index")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert model_artifact.model_id_of(str(a)) == model_artifact.model_id_of(str(b))
    assert len(model_artifact.model_id_of(str(a))) == 16
    (b / "variables" / "variables.index").write_bytes(b"indeX")
    changed = model_artifact.model_id_of(str(b))
    assert changed != model_artifact.model_id_of(str(a))
    (b / "variables" / "variables.index").rename(b / "variables" / "other")
    assert model_artifact.model_id_of(str(b)) not in (changed, model_artifact.model_id_of(str(a)))
    with pytest.raises(StepError, match="not a directory"):
        model_artifact.model_id_of(str(tmp_path / "missing"))


def test_signature_hash_counts_names_and_dtypes_not_order():
    one = {"serving_default": {"inputs": {"a": "string", "b": "string"},
                               "outputs": {"probability": "float32"}}}
    reordered = {"serving_default": {"outputs": {"probability": "float32"},
                                     "inputs": {"b": "string", "a": "string"}}}
    assert model_artifact.signature_hash_of(one) == model_artifact.signature_hash_of(reordered)
    retyped = json.loads(json.dumps(one))
    retyped["serving_default"]["inputs"]["a"] = "int64"
    assert model_artifact.signature_hash_of(retyped) != model_artifact.signature_hash_of(one)
    renamed = {"serving_tf_example": one["serving_default"]}
    assert model_artifact.signature_hash_of(renamed) != model_artifact.signature_hash_of(one)


@pytest.mark.parametrize(("change", "level", "semver"), [
    ({}, "patch", "1.2.4"),
    ({"hparams": {**HPARAMS, "dropout": 0.3}}, "minor", "1.3.0"),
    ({"dataset_version": "ds-2"}, "minor", "1.3.0"),
    ({"preprocessing_hash": "pp-2"}, "minor", "1.3.0"),
    ({"signature_hash": "sig-2", "dataset_version": "ds-2"}, "major", "2.0.0"),
])
def test_semantic_version_policy(change, level, semver):
    current = {"semver": "1.2.3", "signature_hash": "sig-1", "dataset_version": "ds-1",
               "preprocessing_hash": "pp-1", "hparams": dict(HPARAMS)}
    candidate = {**current, "semver": None, "model_id": "new", **change}
    assert registry.change_level(candidate, current) == level
    assert registry.next_semver(candidate, current) == semver
    # hparams compare by content, not key order
    reordered = {**candidate, "hparams": dict(reversed(list(candidate["hparams"].items())))}
    assert registry.next_semver(reordered, current) == semver


def test_semantic_version_policy_first_version_and_taken_numbers():
    assert registry.next_semver({"signature_hash": "s"}, None) == "1.0.0"
    current = {"semver": "1.0.0", "signature_hash": "s", "hparams": {}}
    # 1.1.0 exists already (current was moved back to 1.0.0): the next minor is 1.2.0
    assert registry.next_semver({"signature_hash": "s", "hparams": {"x": 1}}, current,
                                ["1.0.0", "1.1.0"]) == "1.2.0"


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".hidden", "12", "x" * 200, "a b"])
def test_model_name_must_be_one_safe_path_segment(bad):
    with pytest.raises(StepError, match="model name"):
        registry.check_model_name(bad)


# ---------------------------------------------------------------------------------------------
# Publishing to a local registry.

def test_versions_increase_with_semver_lineage_and_current(tmp_path, trained):
    root = tmp_path / "registry"
    first_dir, first = trained()
    retuned = {**HPARAMS, "learning_rate": 0.01}
    outputs = [
        (first_dir, first),
        trained(weight=0.7, hparams=retuned),  # same data, new hyperparameters: minor
        trained(weight=0.7, hparams=retuned, signature="v2"),  # new serving signature: major
        trained(weight=0.7, hparams=retuned, signature="v2"),  # exported again: patch
    ]
    (_, retuned), (_, widened) = outputs[1], outputs[2]

    results = [publish(root, d, t) for d, t in outputs]
    assert [r.version for r in results] == [1, 2, 3, 4]
    assert [r.semver for r in results] == ["1.0.0", "1.1.0", "2.0.0", "2.0.1"]
    assert all(r.created for r in results)

    index = json.loads((root / NAME / "index.json").read_text())
    assert index["model_name"] == NAME
    assert index["current"] == 4
    assert [v["version"] for v in index["versions"]] == [1, 2, 3, 4]
    entry = index["versions"][1]
    assert entry["model_id"] == retuned["model_id"]
    assert entry["hparams"]["learning_rate"] == 0.01
    assert entry["dataset_version"] == retuned["dataset_version"]
    assert entry["preprocessing_hash"] == retuned["preprocessing_hash"]
    assert entry["signature_hash"] == retuned["signature_hash"]
    assert entry["metrics"] == {"evaluation": {"auc": 0.7}, "training": {"auc": 0.71, "loss": 0.52}}
    assert entry["blessed"] is True
    assert entry["code_version"] == "0.1.0+test"
    assert entry["pushed_at"].endswith("Z")
    assert entry["uri"] == str(root / NAME / "2")
    assert set(registry.INDEX_FIELDS) <= set(entry)

    lineage = registry.read_lineage(str(root), NAME, 3)
    assert lineage["change"] == "major" and lineage["previous_version"] == 2
    assert lineage["model_id"] == widened["model_id"]
    # TF Serving layout: <model>/<N>/saved_model.pb, the same files as published
    for result, (train_dir, _training) in zip(results, outputs, strict=True):
        version_dir = root / NAME / str(result.version)
        assert (version_dir / "saved_model.pb").is_file()
        assert model_artifact.model_id_of(str(version_dir)) == model_artifact.model_id_of(
            str(train_dir / "model"))
    assert numeric_dirs(root) == [1, 2, 3, 4]
    assert not [p for p in (root / NAME).iterdir() if p.name.startswith(".staging-")]


def test_republishing_the_same_model_is_a_no_op(tmp_path, trained):
    root = tmp_path / "registry"
    first_dir, first = trained()
    second_dir, second = trained(weight=0.9, dataset_version="ds-2")
    publish(root, first_dir, first)
    publish(root, second_dir, second)
    before = tree(root)
    again = publish(root, first_dir, first)
    assert (again.version, again.semver, again.created) == (1, "1.0.0", False)
    assert again.uri == str(root / NAME / "1")
    copy_dir, copy = trained(model=first_dir / "model")  # same files elsewhere: same model
    assert publish(root, copy_dir, copy).version == 1
    assert tree(root) == before


def test_publish_refuses_files_that_are_not_the_model_id(tmp_path, trained):
    train_dir, training = trained()
    (train_dir / "model" / "assets").mkdir(exist_ok=True)
    (train_dir / "model" / "assets" / "extra.txt").write_text("changed after training")
    with pytest.raises(StepError, match="changed after it was trained"):
        publish(tmp_path / "registry", train_dir, training)
    assert not (tmp_path / "registry" / NAME / "index.json").exists()
    assert numeric_dirs(tmp_path / "registry") == []


def test_crash_mid_copy_leaves_no_version_and_the_next_push_succeeds(tmp_path, trained,
                                                                     monkeypatch):
    root = tmp_path / "registry"
    first_dir, first = trained()
    second_dir, second = trained(weight=0.9)
    publish(root, first_dir, first)
    index_before = (root / NAME / "index.json").read_bytes()

    real_put = registry._put_file
    copied = []

    def crash_after_two_files(source, destination):
        if len(copied) == 2:
            raise OSError("disk full (simulated)")
        real_put(source, destination)
        copied.append(destination)

    monkeypatch.setattr(registry, "_put_file", crash_after_two_files)
    with pytest.raises(OSError, match="simulated"):
        publish(root, second_dir, second)
    assert len(copied) == 2  # it really crashed in the middle of the copy
    assert (root / NAME / "index.json").read_bytes() == index_before
    assert numeric_dirs(root) == [1]
    assert not [p for p in (root / NAME).iterdir() if p.name.startswith(".staging-")]

    monkeypatch.setattr(registry, "_put_file", real_put)
    result = publish(root, second_dir, second)
    assert (result.version, result.semver) == (2, "1.0.1")
    assert registry.read_index(str(root), NAME)["current"] == 2


CRASHING_PUBLISHER = textwrap.dedent(f"""
    import json, sys, time
    from components.common import registry
    root, model_dir, lineage, marker = sys.argv[1:]
    real_put = registry._put_file
    done = []
    def put_then_hang(source, destination):
        real_put(source, destination)
        done.append(destination)
        if len(done) == 2:  # two files copied: say so, then wait for SIGKILL
            open(marker, "w").close()
            time.sleep(120)
    registry._put_file = put_then_hang
    registry.publish(root, "{NAME}", model_dir, json.loads(open(lineage).read()))
""")


def test_killed_publisher_leaves_no_version_and_the_next_push_cleans_up(tmp_path, trained):
    """SIGKILL (no cleanup code runs) in the middle of copying the SavedModel."""
    root = tmp_path / "registry"
    first_dir, first = trained()
    second_dir, second = trained(weight=0.9)
    publish(root, first_dir, first)
    index_before = (root / NAME / "index.json").read_bytes()
    lineage_file = tmp_path / "lineage.json"
    lineage_file.write_text(json.dumps(lineage_of(second)))
    marker = tmp_path / "two-files-copied"
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_PUBLISHER, str(root), str(second_dir / "model"),
         str(lineage_file), str(marker)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, "the publisher exited before the simulated crash"
            assert time.monotonic() < deadline, "the publisher never started copying"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    staging = [p for p in (root / NAME).iterdir() if p.name.startswith(".staging-")]
    assert len(staging) == 1  # the partial copy, two files in it
    assert len([p for p in staging[0].rglob("*") if p.is_file()]) == 2
    assert (root / NAME / "index.json").read_bytes() == index_before
    assert numeric_dirs(root) == [1]
    with pytest.raises(StepError, match="no version 2"):
        registry.resolve_baseline(str(root / NAME / "2"), str(tmp_path / "dl"))

    result = publish(root, second_dir, second)  # the dead process's lock is gone
    assert result.version == 2 and result.created
    assert numeric_dirs(root) == [1, 2]
    assert not [p for p in (root / NAME).iterdir() if p.name.startswith(".staging-")]


def test_crash_between_rename_and_index_never_reuses_the_number(tmp_path, trained, monkeypatch):
    """A complete <N>/ the index does not list: ignored by readers, skipped by the next push."""
    root = tmp_path / "registry"
    first_dir, first = trained()
    second_dir, second = trained(weight=0.9)
    third_dir, third = trained(weight=1.1)
    publish(root, first_dir, first)

    def crash(*_args, **_kwargs):
        raise OSError("killed before the index (simulated)")

    monkeypatch.setattr(registry, "write_index", crash)
    with pytest.raises(OSError, match="simulated"):
        publish(root, second_dir, second)
    monkeypatch.undo()
    assert numeric_dirs(root) == [1, 2]  # complete, but not a version for readers
    index = registry.read_index(str(root), NAME)
    assert [v["version"] for v in index["versions"]] == [1] and index["current"] == 1
    with pytest.raises(StepError, match="no version 2"):
        registry.resolve_baseline(str(root / NAME / "2"), str(tmp_path / "dl"))

    result = publish(root, third_dir, third)
    assert result.version == 3
    assert [v["version"] for v in registry.read_index(str(root), NAME)["versions"]] == [1, 3]
    assert model_artifact.model_id_of(str(root / NAME / "3")) == third["model_id"]


# ---------------------------------------------------------------------------------------------
# Baseline resolution (local).

def test_resolve_baseline_reference_forms(tmp_path, trained):
    root = tmp_path / "registry"
    first_dir, first = trained(weight=0.5)
    second_dir, second = trained(weight=2.0, dataset_version="ds-2")
    publish(root, first_dir, first)
    publish(root, second_dir, second)
    downloads = str(tmp_path / "downloads")

    current = registry.resolve_baseline(str(root / NAME), downloads)
    assert (current.version, current.semver, current.model_id) == (2, "1.1.0", second["model_id"])
    assert current.path == str(root / NAME / "2")
    assert current.to_json() == {"version": 2, "model_id": second["model_id"],
                                 "uri": str(root / NAME / "2"), "semver": "1.1.0"}
    pinned = registry.resolve_baseline(str(root / NAME / "1") + "/", downloads)
    assert (pinned.version, pinned.model_id) == (1, first["model_id"])
    plain = registry.resolve_baseline(str(first_dir / "model"), downloads)
    assert (plain.version, plain.model_id, plain.uri) == (None, first["model_id"],
                                                          str(first_dir / "model"))
    train_output = registry.resolve_baseline(str(second_dir), downloads)
    assert train_output.model_id == second["model_id"]
    assert not os.path.exists(downloads)  # local models are used in place

    assert predict(current.path, product=["abc"]) == pytest.approx(
        predict(str(second_dir / "model"), product=["abc"]))

    with pytest.raises(StepError, match=r"no version 7 in the registry index \(versions: \[1, 2\]"):
        registry.resolve_baseline(str(root / NAME / "7"), downloads)


def test_resolve_model_ref_gives_a_directory_and_the_index_entry(tmp_path, trained):
    """The (SavedModel dir, index entry) form evaluate uses; None before the first version."""
    root = tmp_path / "registry"
    assert registry.resolve_model_ref(str(root / NAME)) is None
    train_dir, training = trained()
    publish(root, train_dir, training)
    path, entry = registry.resolve_model_ref(str(root / NAME), str(tmp_path / "dl"))
    assert path == str(root / NAME / "1")
    assert entry == registry.read_index(str(root), NAME)["versions"][0]
    assert registry.resolve_model_ref(str(train_dir)) == (str(train_dir / "model"), None)


def test_resolve_baseline_of_an_empty_registry(tmp_path):
    downloads = str(tmp_path / "dl")
    missing = tmp_path / "registry" / NAME
    with pytest.raises(StepError, match="not a baseline model"):
        registry.resolve_baseline(str(missing), downloads)
    assert registry.resolve_baseline(str(missing), downloads, allow_empty=True) is None

    missing.mkdir(parents=True)
    registry.write_index(str(tmp_path / "registry"), NAME, registry.empty_index(NAME))
    with pytest.raises(StepError, match="no blessed .current. version yet"):
        registry.resolve_baseline(str(missing), downloads)
    assert registry.resolve_baseline(str(missing), downloads, allow_empty=True) is None

    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    with pytest.raises(StepError, match="not a baseline model"):
        registry.resolve_baseline(str(not_a_model), downloads, allow_empty=True)


def test_resolve_baseline_detects_a_changed_version(tmp_path, trained):
    root = tmp_path / "registry"
    train_dir, training = trained()
    publish(root, train_dir, training)
    (root / NAME / "1" / "variables" / "variables.index").write_bytes(b"tampered")
    with pytest.raises(StepError, match="changed after publishing"):
        registry.resolve_baseline(str(root / NAME), str(tmp_path / "dl"))


def test_malformed_index_is_a_clear_error(tmp_path):
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "index.json").write_text("{not json")
    with pytest.raises(StepError, match="registry index is not valid JSON"):
        registry.read_index(str(tmp_path), NAME)


# ---------------------------------------------------------------------------------------------
# S3 (moto's server standing in for MinIO).

def s3_keys(bucket: str, prefix: str) -> list[str]:
    return [uri.split(f"s3://{bucket}/", 1)[1] for uri in storage.list_uris(f"s3://{bucket}/{prefix}")]


def test_s3_publish_versions_and_resolve_baseline_by_download(tmp_path, trained, s3_bucket):
    root = f"s3://{s3_bucket}/models"
    first_dir, first = trained(weight=0.5)
    second_dir, second = trained(weight=2.0, hparams={**HPARAMS, "epochs": 5})
    assert registry.resolve_baseline(f"{root}/{NAME}", str(tmp_path / "dl"),
                                     allow_empty=True) is None

    one = publish(root, first_dir, first)
    two = publish(root, second_dir, second)
    assert (one.version, one.semver, two.version, two.semver) == (1, "1.0.0", 2, "1.1.0")
    assert two.uri == f"{root}/{NAME}/2"
    assert publish(root, first_dir, first).created is False
    keys = s3_keys(s3_bucket, f"models/{NAME}")
    assert f"models/{NAME}/index.json" in keys
    assert f"models/{NAME}/lineage/2.json" in keys
    assert f"models/{NAME}/2/saved_model.pb" in keys
    assert f"models/{NAME}/2/variables/variables.index" in keys
    index = registry.read_index(root, NAME)
    assert index["current"] == 2 and [v["version"] for v in index["versions"]] == [1, 2]

    with registry.open_baseline(f"{root}/{NAME}") as baseline:
        assert (baseline.version, baseline.model_id) == (2, second["model_id"])
        assert baseline.uri == f"{root}/{NAME}/2"
        assert os.path.isfile(os.path.join(baseline.path, "saved_model.pb"))
        assert predict(baseline.path, product=["abc", ""]) == pytest.approx(
            predict(str(second_dir / "model"), product=["abc", ""]))
        downloaded = baseline.path
    assert not os.path.exists(downloaded)  # the temporary download is removed
    pinned = registry.resolve_baseline(f"{root}/{NAME}/1", str(tmp_path / "dl"))
    assert pinned.model_id == first["model_id"] and pinned.path.startswith(str(tmp_path / "dl"))
    path, entry = registry.resolve_model_ref(f"{root}/{NAME}", str(tmp_path / "dl"))
    assert path.startswith(str(tmp_path / "dl")) and (entry["version"], entry["uri"]) == (
        2, f"{root}/{NAME}/2")
    with pytest.raises(StepError, match="no version 3"):
        registry.resolve_baseline(f"{root}/{NAME}/3", str(tmp_path / "dl"))


def test_s3_crash_mid_upload_leaves_no_version(tmp_path, trained, s3_bucket, monkeypatch):
    root = f"s3://{s3_bucket}/models"
    first_dir, first = trained()
    second_dir, second = trained(weight=0.9)
    publish(root, first_dir, first)
    index_before = storage.read_bytes(f"{root}/{NAME}/index.json")

    real_put = registry._put_file
    uploads = []

    def crash_on_third(source, destination):
        if len(uploads) == 2:
            raise ConnectionError("network gone (simulated)")
        real_put(source, destination)
        uploads.append(destination)

    monkeypatch.setattr(registry, "_put_file", crash_on_third)
    with pytest.raises(ConnectionError, match="simulated"):
        publish(root, second_dir, second)
    monkeypatch.setattr(registry, "_put_file", real_put)
    assert uploads and all(u.startswith(f"{root}/{NAME}/2/") for u in uploads)
    assert storage.read_bytes(f"{root}/{NAME}/index.json") == index_before
    assert not any(k.startswith(f"models/{NAME}/2/") for k in s3_keys(s3_bucket, "models"))
    # saved_model.pb, the entry point, is uploaded last: it was not among the partial uploads
    assert not any(u.endswith("/saved_model.pb") for u in uploads)

    result = publish(root, second_dir, second)
    assert (result.version, result.created) == (2, True)
    with registry.open_baseline(f"{root}/{NAME}") as baseline:
        assert baseline.model_id == second["model_id"]
