"""Preprocessing travels with the model: what training applied is exactly what serving applies."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from components.common.artifacts import transform as transform_artifact
from components.common.dataset_config import load_dataset_config
from components.common.errors import StepError
from components.common.hparams import DEFAULTS, parse_hparams
from components.ingest.ingest import ingest
from components.train.train import train
from components.transform.transform import transform

CONFIG = load_dataset_config()
FAST = {"epochs": 2, "batch_size": 128, "hidden_units": [16], "embedding_dim": 8}


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    """Generated complaints ingested, transformed and trained once for the module."""
    from tests.conftest import run_cli

    work = tmp_path_factory.mktemp("train")
    result = run_cli("datagen", "--rows", "3000", "--seed", "5",
                     "--out", str(work / "data.csv"))
    assert result.returncode == 0, result.stderr
    ingest(str(work / "data.csv"), str(work / "examples"), CONFIG)
    transform(str(work / "examples"), str(work / "transform"), CONFIG)
    info = train(str(work / "examples"), str(work / "transform"), str(work / "model"), CONFIG,
                 parse_hparams(json.dumps(FAST)))
    return work, info


def raw_batch(examples_dir, n=64):
    """Raw feature strings of eval examples, as the CSV had them ('' when blank)."""
    from components.common.artifacts.examples import raw_dataset

    features, labels = next(iter(raw_dataset(str(examples_dir), "eval", CONFIG, n)))
    return {k: v for k, v in features.items()}, labels.numpy()


def test_saved_model_on_raw_strings_equals_in_process_model(pipeline_dirs):
    """serving_default takes the raw strings; its output is the trained model's on them."""
    import keras
    import tensorflow as tf

    work, info = pipeline_dirs
    raw, _ = raw_batch(work / "examples")
    loaded = tf.saved_model.load(str(work / "model" / "model"))
    served = loaded.signatures["serving_default"](**raw)["probability"].numpy()
    assert served.shape == (64,)
    assert np.all((served > 0) & (served < 1))

    preprocessing, _ = transform_artifact.load(str(work / "transform"))
    reloaded = keras.layers.TFSMLayer(str(work / "model" / "model"),
                                      call_endpoint="serving_default")
    again = reloaded(raw)["probability"].numpy()
    np.testing.assert_allclose(served, again, rtol=1e-6)
    ids = preprocessing(raw)
    assert ids["product"].dtype == tf.int64 and ids["narrative"].shape[1] == \
        CONFIG.preprocessing.text_sequence_length


def test_tf_example_signature_agrees_with_raw_signature(pipeline_dirs):
    import glob

    import tensorflow as tf

    work, _ = pipeline_dirs
    files = sorted(glob.glob(str(work / "examples" / "eval" / "*.tfrecord.gz")))
    serialized = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(64)))
    raw, _ = raw_batch(work / "examples")
    loaded = tf.saved_model.load(str(work / "model" / "model"))
    by_example = loaded.signatures["serving_tf_example"](examples=serialized)
    by_raw = loaded.signatures["serving_default"](**raw)
    for output in ("probability", "raw_probability"):  # both carry the calibration alike
        np.testing.assert_allclose(by_example[output].numpy(), by_raw[output].numpy(),
                                   rtol=1e-6)


def test_unseen_and_blank_values_are_served(pipeline_dirs):
    """A category never seen in training, a masked ZIP and blanks get a prediction, not an error."""
    import tensorflow as tf

    work, _ = pipeline_dirs
    loaded = tf.saved_model.load(str(work / "model" / "model"))
    raw = {name: tf.constant(["", "never seen value"]) for name in CONFIG.feature_names}
    raw["zip_code"] = tf.constant(["606XX", "24540-2342"])
    out = loaded.signatures["serving_default"](**raw)["probability"].numpy()
    assert out.shape == (2,) and np.all(np.isfinite(out))


def test_serving_signature_rejects_a_missing_feature(pipeline_dirs):
    import tensorflow as tf

    work, _ = pipeline_dirs
    loaded = tf.saved_model.load(str(work / "model" / "model"))
    raw = {name: tf.constant(["x"]) for name in CONFIG.feature_names if name != "state"}
    with pytest.raises(TypeError, match="state"):
        loaded.signatures["serving_default"](**raw)


def test_training_lineage_and_signatures(pipeline_dirs):
    import tensorflow as tf

    from components.common.artifacts.model import model_id_of

    work, info = pipeline_dirs
    saved = json.loads((work / "model" / "training.json").read_text())
    assert saved["model_id"] == model_id_of(str(work / "model" / "model"))
    assert saved["dataset_version"] == json.loads(
        (work / "examples" / "metadata.json").read_text())["dataset_version"]
    assert saved["preprocessing_hash"] == json.loads(
        (work / "transform" / "transform.json").read_text())["preprocessing_hash"]
    assert saved["hparams"] == {**DEFAULTS, **FAST}
    assert set(saved["signatures"]) == {"serving_default", "serving_tf_example"}
    assert set(saved["signatures"]["serving_default"]["inputs"]) == set(CONFIG.feature_names)
    assert saved["signatures"]["serving_default"]["outputs"] == {"probability": "float32",
                                                                 "raw_probability": "float32"}
    assert saved["signatures"]["serving_tf_example"]["outputs"] == \
        saved["signatures"]["serving_default"]["outputs"]
    # Read from saved_model.pb alone; what loading the SavedModel (as a server does) reports.
    loaded = tf.saved_model.load(str(work / "model" / "model"))
    assert saved["signatures"] == {
        name: {"inputs": {k: v.dtype.name for k, v in fn.structured_input_signature[1].items()},
               "outputs": {k: v.dtype.name for k, v in fn.structured_outputs.items()}}
        for name, fn in loaded.signatures.items()}
    assert 0.5 < saved["metrics"]["auc"] <= 1.0
    assert (work / "model" / "logs").is_dir()


def test_tensorboard_logs_hold_each_epochs_metrics(pipeline_dirs):
    """logs/train and logs/validation, one `epoch_<metric>` value per epoch run, as Keras'
    TensorBoard callback writes them (what the TensorBoard UI reads)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work, _ = pipeline_dirs
    saved = json.loads((work / "model" / "training.json").read_text())
    epochs = saved["epochs_run"]
    for part, tag in (("train", "epoch_loss"), ("validation", "epoch_auc")):
        events = EventAccumulator(str(work / "model" / "logs" / part))
        events.Reload()
        tags = events.Tags()["tensors"] or events.Tags()["scalars"]
        assert tag in tags, (part, tags)
        assert len(events.Tensors(tag) if events.Tags()["tensors"] else
                   events.Scalars(tag)) == epochs


def test_preprocessing_hash_tracks_data_config_and_is_deterministic(pipeline_dirs, tmp_path):
    from tests.conftest import run_cli

    work, _ = pipeline_dirs
    first = json.loads((work / "transform" / "transform.json").read_text())
    same = transform(str(work / "examples"), str(tmp_path / "same"), CONFIG)
    assert same["preprocessing_hash"] == first["preprocessing_hash"]

    smaller = dataclasses.replace(CONFIG, preprocessing=dataclasses.replace(
        CONFIG.preprocessing, vocabulary_sizes={"issue": 10}))
    changed_config = transform(str(work / "examples"), str(tmp_path / "cfg"), smaller)
    assert changed_config["preprocessing_hash"] != first["preprocessing_hash"]
    assert changed_config["vocabulary_sizes"]["issue"] == 10 + CONFIG.preprocessing.oov_buckets

    run_cli("datagen", "--rows", "1500", "--seed", "6", "--out",
            str(tmp_path / "other.csv"))
    ingest(str(tmp_path / "other.csv"), str(tmp_path / "other"), CONFIG)
    changed_data = transform(str(tmp_path / "other"), str(tmp_path / "data"), CONFIG)
    assert changed_data["preprocessing_hash"] != first["preprocessing_hash"]


def test_train_refuses_preprocessing_fitted_on_other_data(pipeline_dirs, tmp_path):
    work, _ = pipeline_dirs
    other = tmp_path / "other-transform"
    other.mkdir()
    for item in (work / "transform").iterdir():
        target = other / item.name
        if item.is_dir():
            import shutil

            shutil.copytree(item, target)
        else:
            target.write_bytes(item.read_bytes())
    info = json.loads((other / "transform.json").read_text())
    info["dataset_version"] = "ds-0000000000000000"
    (other / "transform.json").write_text(json.dumps(info))
    with pytest.raises(StepError, match="fitted on ds-0000000000000000"):
        train(str(work / "examples"), str(other), str(tmp_path / "m"), CONFIG, parse_hparams(None))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("text,message", [
    ('{"learning_rate": 0.01, "layers": 3}', "unknown key"),
    ("[1, 2]", "JSON object"),
    ("{not json", "not valid JSON"),
    ('{"dropout": 1.5}', "dropout"),
])
def test_bad_hparams_are_one_line_errors(text, message):
    with pytest.raises(StepError, match=message):
        parse_hparams(text)


def test_cli_prints_katib_metrics_and_fails_fast_on_bad_hparams(pipeline_dirs, tmp_path, cli):
    work, _ = pipeline_dirs
    result = cli("components.train", "--examples", str(work / "examples"), "--transform",
                 str(work / "transform"), "--output", str(tmp_path / "m"),
                 "--hparams", '{"epochs": 1, "batch_size": 512, "hidden_units": [8]}')
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert 0.0 < float(lines["auc"]) <= 1.0 and "loss" in lines
    bad = cli("components.train", "--examples", str(work / "examples"), "--transform",
              str(work / "transform"), "--output", str(tmp_path / "m2"), "--hparams", '{"x": 1}')
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: train: --hparams: unknown key")


def test_data_without_any_narrative_trains_and_serves(real_sample, tmp_path):
    """The real 2013 export has no narratives: the text feature is empty, not an error."""
    import tensorflow as tf

    ingest(str(real_sample), str(tmp_path / "ex"), CONFIG)
    info = transform(str(tmp_path / "ex"), str(tmp_path / "tf"), CONFIG)
    assert info["vocabulary_sizes"]["narrative"] == 3
    trained = train(str(tmp_path / "ex"), str(tmp_path / "tf"), str(tmp_path / "m"), CONFIG,
                    parse_hparams(json.dumps({**FAST, "epochs": 1})))
    loaded = tf.saved_model.load(str(tmp_path / "m" / "model"))
    raw = {name: tf.constant(["", "some words"]) for name in CONFIG.feature_names}
    out = loaded.signatures["serving_default"](**raw)["probability"].numpy()
    assert out.shape == (2,) and np.all(np.isfinite(out)) and trained["model_id"]


def test_train_reads_examples_and_transform_from_s3(pipeline_dirs, tmp_path, s3_bucket, cli):
    """What a Katib trial pod does: inputs from MinIO (here moto's S3 server), by URI."""
    from components.common import storage
    from components.common.artifacts import model as model_artifact
    from components.common.hparams import parse_metric_lines

    work, info = pipeline_dirs
    for name in ("examples", "transform"):
        storage.upload_tree(str(work / name), f"s3://{s3_bucket}/run/{name}")
    result = cli("components.train", "--examples", f"s3://{s3_bucket}/run/examples",
                 "--transform", f"s3://{s3_bucket}/run/transform", "--output",
                 str(tmp_path / "model"), "--hparams", json.dumps({**FAST, "epochs": 1}))
    assert result.returncode == 0, result.stderr[-2000:]
    training = model_artifact.read_training(str(tmp_path / "model"))
    assert training["dataset_version"] == info["dataset_version"]
    assert training["preprocessing_hash"] == info["preprocessing_hash"]
    assert set(parse_metric_lines(result.stdout)) >= {"auc", "loss"}


# ---------------------------------------------------------------------------------------------
# Calibration inside the SavedModel, and the decision threshold.

def holdout_rows(examples_dir, config=CONFIG):
    """The calibration holdout as train reads it: raw feature tensors and labels."""
    import tensorflow as tf

    from components.train.train import train_split_part

    batches = list(train_split_part(str(examples_dir), config, "holdout", 100_000))
    assert len(batches) == 1
    features, labels = batches[0]
    return {k: tf.constant(v) for k, v in features.items()}, labels.numpy()


def test_calibration_travels_in_the_saved_model(pipeline_dirs):
    """Raw-string serving answers what train computed in process: the SavedModel's
    `probability` is scikit-learn's Platt fit on the holdout's raw scores, applied to its
    `raw_probability`; the threshold is the policy's choice on those probabilities."""
    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression

    from components.common.artifacts import model as model_artifact
    from components.train import calibration

    work, info = pipeline_dirs
    training = json.loads((work / "model" / "training.json").read_text())
    assert training["calibration"]["method"] == "platt"
    features, labels = holdout_rows(work / "examples")
    served = tf.saved_model.load(str(work / "model" / "model")).signatures["serving_default"](
        **features)
    raw = served["raw_probability"].numpy()
    probability = served["probability"].numpy()

    holdout = training["calibration"]["holdout"]
    assert holdout["rows"] == labels.size == training["rows"]["calibration"]
    assert holdout["positives"] == int(labels.sum())
    assert training["rows"]["fit"] + training["rows"]["calibration"] == training["rows"]["train"]
    assert 0.07 < labels.size / training["rows"]["train"] < 0.13
    # What train measured in process on these rows is what the SavedModel answers.
    assert holdout["before"]["mean_probability"] == pytest.approx(raw.mean(), abs=1e-6)
    assert holdout["after"]["mean_probability"] == pytest.approx(probability.mean(), abs=1e-6)

    reference = LogisticRegression(C=np.inf, max_iter=1000).fit(
        calibration.logit(raw).reshape(-1, 1), labels)
    parameters = training["calibration"]["parameters"]
    assert parameters["a"] == pytest.approx(reference.coef_[0, 0], rel=1e-3)
    assert parameters["b"] == pytest.approx(reference.intercept_[0], rel=1e-3, abs=1e-3)
    expected = reference.predict_proba(calibration.logit(raw).reshape(-1, 1))[:, 1]
    np.testing.assert_allclose(probability, expected, atol=1e-4)

    chosen = calibration.choose_threshold(CONFIG.evaluation.decision_threshold, labels,
                                          probability)
    threshold = training["decision_threshold"]
    assert threshold["policy"] == "max_f1" and threshold["computed_on"] == "calibration holdout"
    assert threshold["value"] == pytest.approx(chosen["value"], abs=1e-6)
    metadata = model_artifact.read_model_metadata(str(work / "model" / "model"))
    assert metadata["decision_threshold"] == threshold["value"]
    assert metadata["threshold_policy"] == "max_f1" and metadata["calibration"] == "platt"
    assert model_artifact.decision_threshold_of(str(work / "model" / "model")) == (
        threshold["value"], "model")


def test_calibrated_probabilities_read_as_the_dispute_rate_on_eval(pipeline_dirs):
    """Class weights push the raw score up; the calibrated probability does not, on rows
    neither training nor calibration saw."""
    from components.common import calibration as metrics

    work, _ = pipeline_dirs
    raw_features, labels = raw_batch(work / "examples", n=10_000)
    import tensorflow as tf

    served = tf.saved_model.load(str(work / "model" / "model")).signatures["serving_default"](
        **raw_features)
    before = metrics.summary(labels, served["raw_probability"].numpy(), 0.5)
    after = metrics.summary(labels, served["probability"].numpy(), 0.5)
    assert before["mean_probability"] > labels.mean() + 0.1
    assert abs(after["mean_probability"] - labels.mean()) < 0.06
    assert after["ece"] < before["ece"] / 2 and after["brier"] < before["brier"]
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, served["probability"].numpy()) == pytest.approx(
        roc_auc_score(labels, served["raw_probability"].numpy()), abs=1e-4)


def test_isotonic_calibration_and_a_cost_threshold(pipeline_dirs, tmp_path):
    import tensorflow as tf
    from sklearn.isotonic import IsotonicRegression

    from components.common.dataset_config import CalibrationSpec, ThresholdPolicy
    from components.train import calibration

    work, _ = pipeline_dirs
    policy = ThresholdPolicy("min_cost", cost_false_positive=1, cost_false_negative=3)
    config = dataclasses.replace(
        CONFIG, calibration=CalibrationSpec("isotonic", 0.2),
        evaluation=dataclasses.replace(CONFIG.evaluation, decision_threshold=policy))
    info = train(str(work / "examples"), str(work / "transform"), str(tmp_path / "m"), config,
                 parse_hparams(json.dumps({**FAST, "epochs": 1})))
    features, labels = holdout_rows(work / "examples", config)
    assert info["rows"]["calibration"] == labels.size
    assert 0.17 < labels.size / info["rows"]["train"] < 0.23
    served = tf.saved_model.load(str(tmp_path / "m" / "model")).signatures["serving_default"](
        **features)
    raw = served["raw_probability"].numpy().astype(np.float64)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw, labels)
    np.testing.assert_allclose(served["probability"].numpy(), reference.predict(raw),
                               atol=1e-6)
    assert info["calibration"]["parameters"]["x"] == pytest.approx(
        reference.X_thresholds_.tolist())
    chosen = calibration.choose_threshold(policy, labels, served["probability"].numpy())
    assert info["decision_threshold"]["value"] == pytest.approx(chosen["value"], abs=1e-6)
    assert info["decision_threshold"]["cost"] == chosen["cost"]
    assert info["decision_threshold"]["bayes_threshold"] == 0.25


def test_no_calibration_and_a_fixed_threshold_trains_on_the_whole_split(pipeline_dirs,
                                                                         tmp_path):
    import tensorflow as tf

    from components.common.artifacts import model as model_artifact
    from components.common.dataset_config import CalibrationSpec, ThresholdPolicy

    work, _ = pipeline_dirs
    config = dataclasses.replace(
        CONFIG, calibration=CalibrationSpec("none", 0.0),
        evaluation=dataclasses.replace(CONFIG.evaluation,
                                       decision_threshold=ThresholdPolicy("fixed", 0.4)))
    info = train(str(work / "examples"), str(work / "transform"), str(tmp_path / "m"), config,
                 parse_hparams(json.dumps({**FAST, "epochs": 1})))
    assert info["rows"]["fit"] == info["rows"]["train"] and info["rows"]["calibration"] == 0
    raw, _ = raw_batch(work / "examples")
    served = tf.saved_model.load(str(tmp_path / "m" / "model")).signatures["serving_default"](
        **raw)
    np.testing.assert_array_equal(served["probability"].numpy(),
                                  served["raw_probability"].numpy())
    assert model_artifact.decision_threshold_of(str(tmp_path / "m" / "model")) == (0.4, "model")
    assert info["decision_threshold"]["value"] == 0.4


def test_a_holdout_without_both_classes_fails_before_training(pipeline_dirs, tmp_path):
    from components.common.dataset_config import CalibrationSpec

    work, _ = pipeline_dirs
    config = dataclasses.replace(CONFIG, calibration=CalibrationSpec("platt", 0.00001))
    with pytest.raises(StepError) as raised:
        train(str(work / "examples"), str(work / "transform"), str(tmp_path / "m"), config,
              parse_hparams(json.dumps(FAST)))
    message = str(raised.value)
    assert "the calibration holdout has 0 rows, 0 positive" in message
    assert "calibration.holdout_fraction" in message and "\n" not in message
    assert not (tmp_path / "m").exists()
