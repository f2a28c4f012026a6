"""Model analysis and blessing: metrics as scikit-learn computes them, slices and fairness gaps,
feature dependence that finds the feature a model uses, and a blessing that stops a worse model.

The fixtures are real: ingested synthetic complaints, and SavedModels with both contract
signatures, saved from a small tf.Module (a model fitted on the train split: log-odds of
product and company response, plus tone words in the narrative; and a noise model).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from components.common.artifacts.evaluation import BLESSING_FILE, METRICS_FILE, REPORT_FILE
from components.common.artifacts.model import model_id_of as compute_model_id
from components.common.artifacts.model import write_model_metadata
from components.common.dataset_config import load_dataset_config
from components.common.errors import StepError
from components.evaluate import analysis, blessing
from components.evaluate.evaluate import evaluate, kfp_scalars, resolve_baseline
from components.ingest.ingest import IngestOptions, ingest

CONFIG = load_dataset_config()
FEATURES = CONFIG.feature_names
LABEL = CONFIG.label.feature
UNUSED = ("state", "zip_code", "issue", "sub_product")  # inputs the fixture model ignores


# ------------------------------------------------------------------------------------------
# Fixtures: ingested data and real SavedModels
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def examples(workdir):
    from tests.conftest import run_cli

    csv_path = workdir / "complaints.csv"
    result = run_cli("datagen", "--rows", "3000", "--seed", "1",
                     "--out", str(csv_path))
    assert result.returncode == 0, result.stderr
    out = workdir / "examples"
    ingest(str(csv_path), str(out), CONFIG, IngestOptions(eval_fraction=0.3))
    return out


def _log_odds_tables(examples_dir) -> tuple[dict[str, dict[str, float]], float]:
    """Smoothed log-odds of each product and company response, fitted on the train split."""
    from components.common.artifacts.examples import raw_dataset

    counts: dict[str, dict[str, list[int]]] = {"product": {}, "company_response": {}}
    labels = []
    for features, y in raw_dataset(str(examples_dir), "train", CONFIG, 1024):
        y = y.numpy()
        labels.append(y)
        for name, table in counts.items():
            for value, label in zip(features[name].numpy(), y, strict=True):
                entry = table.setdefault(value.decode(), [0, 0])
                entry[0] += int(label)
                entry[1] += 1
    base = float(np.concatenate(labels).mean())
    prior = math.log(base / (1 - base))
    tables = {
        name: {value: math.log((pos + 5 * base) / (n - pos + 5 * (1 - base))) - prior
               for value, (pos, n) in table.items()}
        for name, table in counts.items()
    }
    return tables, prior


def save_model(directory, tables=None, prior=0.0, noise=False, threshold=None,
               distortion=None, distorted_as_probability=False) -> str:
    """A SavedModel honouring the train step's contract, plus training.json beside it.

    `threshold`: the model's metadata records it (as train writes it). `distortion` (scale,
    shift): a planted miscalibration sigmoid(scale * logit + shift) of the model's score,
    answered as `raw_probability` beside the calibrated `probability` (as train exports), or,
    with `distorted_as_probability`, as `probability` itself (an uncalibrated model).
    """
    import tensorflow as tf

    weights = {"product": 2.0, "company_response": 0.5}

    class Scorer(tf.Module):
        def __init__(self):
            super().__init__()
            self.tables = {
                name: tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                    list(table), [float(v) for v in table.values()],
                    key_dtype=tf.string, value_dtype=tf.float32), default_value=0.0)
                for name, table in (tables or {}).items()
            }

        def score(self, features):
            if noise:
                joined = tf.strings.join([features[name] for name in FEATURES], "|")
                bucket = tf.strings.to_hash_bucket_fast(joined, 1_000_003)
                return {"probability": tf.cast(bucket, tf.float32) / 1_000_003.0}
            logit = tf.fill(tf.shape(features["product"]), tf.constant(prior, tf.float32))
            for name, table in self.tables.items():
                logit += weights[name] * table.lookup(features[name])
            text = tf.strings.lower(features["narrative"])
            angry = tf.strings.regex_full_match(text, r"(?s).*\b(ignored|lied|never|still)\b.*")
            calm = tf.strings.regex_full_match(text, r"(?s).*\b(thank|helpful|resolved)\b.*")
            logit += 0.5 * tf.cast(angry, tf.float32) - 0.5 * tf.cast(calm, tf.float32)
            if distortion is None:
                return {"probability": tf.sigmoid(logit)}
            distorted = tf.sigmoid(distortion[0] * logit + distortion[1])
            if distorted_as_probability:
                return {"probability": distorted}
            return {"probability": tf.sigmoid(logit), "raw_probability": distorted}

        @tf.function(input_signature=[{
            name: tf.TensorSpec([None], tf.string, name=name) for name in FEATURES}])
        def serve(self, features):
            return self.score(features)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, examples):
            spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="")
                    for name in FEATURES}
            return self.score(tf.io.parse_example(examples, spec))

    module = Scorer()
    saved_model = os.path.join(directory, "model")
    tf.saved_model.save(module, saved_model, signatures={
        "serving_default": module.serve.get_concrete_function(),
        "serving_tf_example": module.serve_examples.get_concrete_function(),
    })
    if threshold is not None:
        write_model_metadata(saved_model, {"decision_threshold": threshold,
                                           "threshold_policy": "max_f1",
                                           "calibration": "platt"})
    training = {"model_id": compute_model_id(saved_model), "signature_hash": "test",
                "dataset_version": "ds-test", "preprocessing_hash": "test",
                "hparams": {"noise": noise}, "metrics": {}, "code_version": "test",
                "created_at": "2026-01-01T00:00:00+00:00"}
    with open(os.path.join(directory, "training.json"), "w", encoding="utf-8") as handle:
        json.dump(training, handle)
    return str(directory)


@pytest.fixture(scope="module")
def good_model(examples, workdir):
    tables, prior = _log_odds_tables(examples)
    return save_model(workdir / "good", tables, prior)


@pytest.fixture(scope="module")
def noise_model(workdir):
    return save_model(workdir / "noise", noise=True)


@pytest.fixture(scope="module")
def first_run(good_model, examples, workdir):
    """The good model evaluated with no baseline: the first run of the pipeline."""
    out = workdir / "first-run"
    result = evaluate(good_model, str(examples), str(out), CONFIG)
    return out, result


def eval_predictions(model_dir, examples_dir):
    """Labels and probabilities computed independently of the step, for comparison."""
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(model_dir, "model"))
    files = sorted((examples_dir / "eval").glob("*.tfrecord.gz"))
    labels, probs = [], []
    spec = {LABEL: tf.io.FixedLenFeature([], tf.int64)}
    for batch in tf.data.TFRecordDataset([str(f) for f in files], "GZIP").batch(500):
        labels.append(tf.io.parse_example(batch, spec)[LABEL].numpy())
        probs.append(loaded.signatures["serving_tf_example"](examples=batch)["probability"]
                     .numpy())
    return np.concatenate(labels), np.concatenate(probs).astype(np.float64)


# ------------------------------------------------------------------------------------------
# Pure analysis
# ------------------------------------------------------------------------------------------


def test_overall_metrics_are_scikit_learns():
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.3).astype(int)
    p = np.clip(0.3 + 0.25 * (y - 0.3) + rng.normal(0, 0.2, y.size), 0, 1)
    m = analysis.overall_metrics(y, p, 0.4)
    y_hat = (p >= 0.4).astype(int)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, y_hat))
    assert m["precision"] == pytest.approx(skm.precision_score(y, y_hat))
    assert m["recall"] == pytest.approx(skm.recall_score(y, y_hat))
    assert m["f1"] == pytest.approx(skm.f1_score(y, y_hat))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert m["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, y_hat).tolist()
    from sklearn.calibration import calibration_curve

    true_rate, predicted = calibration_curve(y, p, n_bins=10)
    assert m["calibration"]["observed_rate"] == pytest.approx(true_rate.tolist())
    assert m["calibration"]["mean_predicted"] == pytest.approx(predicted.tolist())
    assert sum(m["calibration"]["count"]) == y.size
    bins = np.minimum((p * 10).astype(int), 9)  # same bins (no p lies exactly on an edge)
    ece = sum(np.mean(bins == b) * abs(y[bins == b].mean() - p[bins == b].mean())
              for b in range(10) if np.any(bins == b))
    assert m["ece"] == pytest.approx(ece)
    roc = m["roc_curve"]
    assert 2 < len(roc["fpr"]) <= analysis.MAX_ROC_POINTS
    fpr, tpr, _ = skm.roc_curve(y, p)
    assert (roc["fpr"][0], roc["tpr"][0]) == (fpr[0], tpr[0])
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert all(0.0 <= t <= 1.0 for t in roc["thresholds"])
    assert np.all(np.diff(roc["fpr"]) >= 0)


def test_one_class_eval_set_reports_auc_as_undefined():
    y = np.zeros(50, dtype=int)
    p = np.linspace(0.05, 0.95, 50)
    m = analysis.overall_metrics(y, p, 0.5)
    assert m["auc"] is None and m["pr_auc"] is None and m["roc_curve"] is None
    assert any("AUC" in note for note in m["notes"])
    assert m["accuracy"] == pytest.approx(0.5) and m["recall"] == 0.0
    json.dumps(m, allow_nan=False)  # no NaN anywhere
    decision = blessing.decide(m, {"auc": 0.6, "accuracy": 0.4}, {}, None)
    assert not decision["blessed"]
    auc = next(r for r in decision["reasons"] if r["metric"] == "auc")
    assert auc["passed"] is False and auc["value"] is None and "undefined" in auc["note"]


def test_slices_list_small_ones_but_leave_them_out_of_the_gaps():
    values = ["A"] * 40 + ["B"] * 40 + ["C"] * 5 + [""] * 3
    y = np.array([1, 0] * 20 + [1, 0] * 20 + [1] * 5 + [0] * 3)
    p = np.array([0.9, 0.1] * 20 + [0.4, 0.6] * 20 + [0.9] * 5 + [0.2] * 3)
    rows = analysis.slice_metrics(y, p, values, 0.5, min_size=30)
    by_value = {r["value"]: r for r in rows}
    assert [r["value"] for r in rows] == ["A", "B", "C", analysis.MISSING]
    assert by_value["A"]["count"] == 40 and by_value["A"]["positives"] == 20
    assert by_value["A"]["auc"] == 1.0 and by_value["B"]["auc"] == 0.0
    assert by_value["C"]["eligible"] is False and by_value["C"]["auc"] is None  # one class
    assert by_value["C"]["fpr"] is None and by_value["C"]["recall"] == 1.0
    assert by_value[analysis.MISSING]["recall"] is None  # no positives
    gaps = analysis.fairness_gaps(rows)
    assert gaps["recall"]["slices_compared"] == 2  # C (recall 1.0) is too small to count


def test_fairness_gaps_on_a_constructed_case():
    # A: recall 0.8, FPR 0.1; B: recall 0.5, FPR 0.3; C: recall 0.9, FPR 0.0 (too small).
    def block(tp, fn, fp, tn):
        return [1] * (tp + fn) + [0] * (fp + tn), [0.9] * tp + [0.1] * fn + [0.9] * fp + [0.1] * tn

    y, p, values = [], [], []
    for name, counts in (("A", (8, 2, 2, 18)), ("B", (10, 10, 6, 14)), ("C", (9, 1, 0, 2))):
        labels, probs = block(*counts)
        y += labels
        p += probs
        values += [name] * len(labels)
    rows = analysis.slice_metrics(y, p, values, 0.5, min_size=20)
    gaps = analysis.fairness_gaps(rows)
    assert gaps["recall"]["gap"] == pytest.approx(0.3)
    assert (gaps["recall"]["max"]["slice"], gaps["recall"]["min"]["slice"]) == ("A", "B")
    assert gaps["fpr"]["gap"] == pytest.approx(0.2)
    assert (gaps["fpr"]["max"]["slice"], gaps["fpr"]["min"]["slice"]) == ("B", "A")
    assert gaps["fpr"]["slices_compared"] == 2
    one = analysis.fairness_gaps([r for r in rows if r["value"] == "A"])
    assert one["recall"]["gap"] is None and "two" in one["recall"]["note"]


def test_counterfactual_summary_and_reservoir_are_deterministic():
    sample = {"a": ["x", "y", "x"], "b": ["1", "2", ""]}
    inputs, rows, replacements = analysis.counterfactual_inputs(sample, ["a", "b"], k=1)
    assert replacements == {"a": ["x", ""], "b": ["1", ""]}
    # a -> x (its most common) or blank; b -> 1 (first of equally common) or blank
    assert rows == [(0, "a", ""), (1, "a", "x"), (1, "a", ""), (2, "a", ""),
                    (0, "b", ""), (1, "b", "1"), (1, "b", ""), (2, "b", "1")]
    assert inputs["a"][1] == "x" and inputs["b"][1] == "2"
    base = np.array([0.6, 0.4, 0.5])
    changed = np.array([0.6, 0.4, 0.4, 0.5, 0.7, 0.4, 0.4, 0.45])
    summary = analysis.summarise_counterfactuals(base, changed, rows, ["a", "b"], 0.5,
                                                 replacements)
    assert summary["a"]["max_abs_delta"] == pytest.approx(0.0)
    assert summary["b"]["max_abs_delta"] == pytest.approx(0.1)
    assert summary["b"]["mean_abs_delta"] == pytest.approx(0.0375)
    assert summary["b"]["flip_rate"] == pytest.approx(0.25)  # 0.5 -> 0.45 crosses 0.5
    assert summary["b"]["values_tried"] == ["1", ""]
    first, second = analysis.ReservoirSample(10, 3), analysis.ReservoirSample(10, 3)
    for item in range(1000):
        first.offer(item)
        second.offer(item)
    assert first.items == second.items and len(set(first.items)) == 10
    assert max(first.items) > 10  # a sample of the whole stream, not its head


# ------------------------------------------------------------------------------------------
# Blessing rules
# ------------------------------------------------------------------------------------------


def test_blessing_thresholds_and_baseline_tolerance():
    metrics = {"auc": 0.70, "f1": 0.40, "log_loss": 0.55}
    ok = blessing.decide(metrics, {"auc": 0.6, "log_loss": 0.6}, {"auc": 0.01}, None)
    assert ok["blessed"] and [r["kind"] for r in ok["reasons"]] == ["threshold", "threshold"]
    assert ok["reasons"][1]["check"] == "log_loss <= 0.6"  # lower is better: a maximum
    worse = blessing.decide(metrics, {"auc": 0.6}, {"auc": 0.01, "log_loss": 0.02},
                            {"auc": 0.72, "log_loss": 0.54})
    assert not worse["blessed"]
    auc = next(r for r in worse["reasons"] if r["kind"] == "baseline" and r["metric"] == "auc")
    assert auc["passed"] is False and auc["threshold"] == pytest.approx(0.71)
    assert auc["check"].startswith("auc >= 0.71")
    loss = next(r for r in worse["reasons"] if r["metric"] == "log_loss")
    assert loss["passed"] is True and loss["threshold"] == pytest.approx(0.56)
    within = blessing.decide(metrics, {}, {"auc": 0.05}, {"auc": 0.74})
    assert within["blessed"]
    assert "not blessed: auc >= 0.71" in blessing.one_line(worse)


@pytest.mark.parametrize(("content", "message"), [
    ("thresholds: {auc: high}", "thresholds.auc: expected a number"),
    ("thresholds: {roc: 0.6}", "thresholds.roc: unknown metric"),
    ("thresholds: {auc: 1.5}", "thresholds.auc: must be between 0 and 1"),
    ("baseline_tolerance: {auc: -0.1}", "baseline_tolerance.auc: a tolerance cannot be negative"),
    ("thresholds: [auc]", "thresholds: expected a mapping"),
    ("threshold: {auc: 0.6}", "unknown key(s) ['threshold']"),
    ("evaluation: {thresholds: {auc: true}}", "evaluation: thresholds.auc: expected a number"),
    ("", "empty thresholds file"),
    ("thresholds: {auc: [0.6", "not valid YAML"),
])
def test_thresholds_yaml_errors_name_the_key(tmp_path, content, message):
    path = tmp_path / "thresholds.yaml"
    path.write_text(content)
    with pytest.raises(StepError) as error:
        blessing.load_overrides(str(path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_thresholds_yaml_overrides_only_the_sections_given(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("evaluation:\n  thresholds: {auc: 0.7, log_loss: 0.6}\n")
    assert blessing.load_overrides(str(path)) == {"thresholds": {"auc": 0.7, "log_loss": 0.6}}
    path.write_text("thresholds: {}\nbaseline_tolerance: {f1: 0.02}\n")
    assert blessing.load_overrides(str(path)) == {"thresholds": {},
                                                  "baseline_tolerance": {"f1": 0.02}}


# ------------------------------------------------------------------------------------------
# The step on real SavedModels
# ------------------------------------------------------------------------------------------


def test_metrics_equal_sklearn_on_the_models_predictions(first_run, good_model, examples):
    out, _ = first_run
    metrics = json.loads((out / METRICS_FILE).read_text())
    y, p = eval_predictions(good_model, examples)
    overall = metrics["overall"]
    assert metrics["eval_examples"] == y.size == overall["count"]
    assert overall["positives"] == int(y.sum())
    assert overall["auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
    y_hat = (p >= 0.5).astype(int)
    assert overall["f1"] == pytest.approx(skm.f1_score(y, y_hat))
    assert overall["log_loss"] == pytest.approx(skm.log_loss(y, p), abs=1e-6)
    assert overall["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, y_hat).tolist()
    assert overall["auc"] > 0.6  # the fixture model is a real, if simple, model
    products = metrics["slices"]["product"]
    assert sum(s["count"] for s in products["slices"]) == y.size
    assert {s["value"] for s in products["slices"] if s["eligible"]} >= {"Mortgage",
                                                                         "Debt collection"}
    assert all(s["eligible"] == (s["count"] >= 30) for s in products["slices"])
    assert products["fairness"]["recall"]["slices_compared"] >= 2
    assert set(metrics["slices"]) == {"product", "state"}


def test_first_run_is_blessed_on_absolute_thresholds_only(first_run):
    out, result = first_run
    decision = json.loads((out / BLESSING_FILE).read_text())
    assert decision["blessed"] is True
    assert [r["check"] for r in decision["reasons"]] == ["auc >= 0.6"]
    assert decision["reasons"][0]["value"] == pytest.approx(result["metrics"]["overall"]["auc"])
    assert decision["baseline"] == {"uri": None, "version": None, "semver": None,
                                    "model_id": None}
    training = json.loads((out.parent / "good" / "training.json").read_text())
    assert decision["model_id"] == training["model_id"]
    assert decision["dataset_version"].startswith("ds-")
    assert sorted(os.listdir(out)) == [BLESSING_FILE, METRICS_FILE, REPORT_FILE]
    assert not [n for n in os.listdir(out.parent) if n.startswith(".first-run.partial")]


def test_feature_dependence_finds_the_feature_the_model_uses(first_run):
    out, _ = first_run
    dependence = json.loads((out / METRICS_FILE).read_text())["feature_dependence"]
    assert dependence["sample_size"] == CONFIG.evaluation.counterfactual_sample
    features = dependence["features"]
    assert set(features) == set(FEATURES)
    ranked = sorted(features, key=lambda n: -features[n]["mean_abs_delta"])
    assert ranked[0] == "product"
    assert features["product"]["mean_abs_delta"] > 0.03
    assert features["product"]["flip_rate"] > 0
    for name in UNUSED:
        assert features[name]["max_abs_delta"] < 1e-6, name
    assert features["narrative"]["mean_abs_delta"] > 0  # tone words
    assert "" in features["product"]["values_tried"]
    assert dependence["signature_max_abs_diff"] < 1e-6  # both signatures agree


def publish_by_hand(registry_dir, model_dir, version: int = 1) -> str:
    """`<registry>/cfpb/<N>/` and an index naming it current, as the registry lays them out."""
    import shutil

    model_name = registry_dir / "cfpb"
    shutil.copytree(os.path.join(model_dir, "model"), model_name / str(version))
    entry = {"version": version, "semver": "1.0.0", "uri": str(model_name / str(version)),
             "model_id": compute_model_id(str(model_name / str(version))), "blessed": True}
    (model_name / "index.json").write_text(json.dumps(
        {"model_name": "cfpb", "current": version, "versions": [entry]}))
    return str(model_name)


def test_a_worse_model_is_not_blessed_against_a_good_baseline(noise_model, good_model, examples,
                                                              workdir, tmp_path):
    pytest.importorskip("components.common.registry")
    ref = publish_by_hand(tmp_path / "registry", good_model)  # the registry's current model
    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text("thresholds: {auc: 0.4}\nbaseline_tolerance: {auc: 0.01}\n")
    out = workdir / "noise-vs-good"
    result = evaluate(noise_model, str(examples), str(out), CONFIG,
                      baseline_ref=ref, thresholds_path=str(thresholds))
    decision = json.loads((out / BLESSING_FILE).read_text())
    assert decision["blessed"] is False
    threshold, versus = decision["reasons"]
    assert threshold["check"] == "auc >= 0.4" and threshold["passed"] is True
    assert versus["kind"] == "baseline" and versus["metric"] == "auc"
    assert versus["passed"] is False and versus["check"].startswith("auc >= ")
    baseline_auc = result["metrics"]["baseline"]["overall"]["auc"]
    assert versus["baseline"] == pytest.approx(baseline_auc) and baseline_auc > 0.6
    assert versus["value"] < 0.6
    good_training = json.loads((workdir / "good" / "training.json").read_text())
    assert decision["baseline"]["model_id"] == good_training["model_id"]
    assert (decision["baseline"]["version"], decision["baseline"]["semver"]) == (1, "1.0.0")
    assert decision["model_id"] != good_training["model_id"]


def test_an_empty_registry_means_a_first_run(good_model, examples, tmp_path):
    pytest.importorskip("components.common.registry")
    out = tmp_path / "out"
    evaluate(good_model, str(examples), str(out), CONFIG,
             baseline_ref=str(tmp_path / "registry" / "cfpb"))
    decision = json.loads((out / BLESSING_FILE).read_text())
    assert decision["blessed"] is True and [r["kind"] for r in decision["reasons"]] == [
        "threshold"]
    assert decision["baseline"]["model_id"] is None
    assert "no blessed version" in decision["baseline"]["note"]


def test_cli_writes_kfp_outputs(good_model, examples, workdir, cli):
    """The container's view: executor output with artifacts' metadata and `blessed`."""
    kfp_dir = workdir / "kfp"
    executor_input = {"outputs": {
        "artifacts": {name: {"artifacts": [{"name": name, "uri": f"minio://b/{name}"}]}
                      for name in ("evaluation", "metrics", "classification_metrics", "report")},
        "outputFile": str(kfp_dir / "executor_output.json"),
    }}
    # The baseline is the same model as a bare SavedModel directory (as in a registry).
    result = cli("components.evaluate", "--model", good_model, "--examples", str(examples),
                 "--output", str(kfp_dir / "evaluation"),
                 "--baseline-model", os.path.join(good_model, "model"),
                 "--metrics", str(kfp_dir / "metrics"),
                 "--classification-metrics", str(kfp_dir / "classification_metrics"),
                 "--report", str(kfp_dir / "report"),
                 "--executor-input", json.dumps(executor_input))
    assert result.returncode == 0, result.stderr
    assert "blessed: auc >= 0.6" in result.stderr
    output = json.loads((kfp_dir / "executor_output.json").read_text())
    assert output["parameterValues"] == {"blessed": True}
    artifacts = {name: entry["artifacts"][0]["metadata"]
                 for name, entry in output["artifacts"].items()}
    evaluation = artifacts["evaluation"]
    assert evaluation["blessed"] is True and evaluation["auc"] > 0.6
    training = json.loads((workdir / "good" / "training.json").read_text())
    assert evaluation["model_id"] == evaluation["baseline_model_id"] == training["model_id"]
    assert evaluation["baseline_version"] == ""
    scalars = artifacts["metrics"]
    assert {"auc", "accuracy", "precision", "recall", "f1", "log_loss", "pr_auc",
            "brier"} <= set(scalars)
    assert scalars["baseline_auc"] == pytest.approx(scalars["auc"])
    assert all(isinstance(v, int | float) for v in scalars.values())
    assert json.loads((kfp_dir / "metrics").read_text()) == scalars
    cm = artifacts["classification_metrics"]
    assert cm["confusionMatrix"]["annotationSpecs"] == [{"displayName": "No"},
                                                        {"displayName": "Yes"}]
    rows = cm["confusionMatrix"]["rows"]
    assert len(rows) == 2 and all(set(r) == {"row"} and len(r["row"]) == 2 for r in rows)
    assert sum(sum(r["row"]) for r in rows) == scalars["eval_examples"]
    points = cm["confidenceMetrics"]
    assert 2 < len(points) <= 200
    assert all(set(p) == {"confidenceThreshold", "recall", "falsePositiveRate"} for p in points)
    assert json.loads((kfp_dir / "classification_metrics").read_text()) == cm
    report = (kfp_dir / "report").read_text()
    assert report == (kfp_dir / "evaluation" / REPORT_FILE).read_text()


def test_report_embeds_plots_and_slice_tables(first_run):
    out, _ = first_run
    report = (out / REPORT_FILE).read_text()
    # ROC, calibration, fairness gaps, product and state slices, feature dependence
    assert report.count('src="data:image/png;base64,') == 6
    assert "BLESSED" in report and "auc &gt;= 0.6" in report
    assert "id='slice-product'" in report and "id='slice-state'" in report
    assert "Mortgage" in report and "too small" in report
    assert "Fairness gaps" in report and "Feature dependence" in report
    assert "<script" not in report and 'src="http' not in report  # self-contained


PLANTED = (1.3, 1.5)  # too sure and too high, as class weights make a network


@pytest.fixture(scope="module")
def calibrated_model(examples, workdir):
    """The good model's score as `probability`, a planted miscalibration of it as
    `raw_probability`, and a decision threshold of its own."""
    tables, prior = _log_odds_tables(examples)
    return save_model(workdir / "calibrated", tables, prior, threshold=0.3, distortion=PLANTED)


def test_threshold_comes_from_the_model_and_calibration_is_reported_before_and_after(
        calibrated_model, examples, workdir):
    out = workdir / "calibrated-run"
    result = evaluate(calibrated_model, str(examples), str(out), CONFIG)
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["decision_threshold"] == 0.3 and metrics["decision_threshold_source"] == "model"
    y, p = eval_predictions(calibrated_model, examples)
    y_hat = (p >= 0.3).astype(int)
    overall = metrics["overall"]
    assert overall["decision_threshold"] == 0.3
    assert overall["f1"] == pytest.approx(skm.f1_score(y, y_hat))
    assert overall["predicted_positive_rate"] == pytest.approx(y_hat.mean())
    assert overall["mean_probability"] == pytest.approx(p.mean())

    before, after = metrics["calibration"]["before"], metrics["calibration"]["after"]
    raw = 1 / (1 + np.exp(-(PLANTED[0] * np.log(p / (1 - p)) + PLANTED[1])))
    assert before["ece"] == pytest.approx(analysis.calibration(y, raw)["ece"], abs=1e-4)
    assert before["brier"] == pytest.approx(skm.brier_score_loss(y, raw), abs=1e-5)
    assert before["decision_threshold"] == CONFIG.evaluation.decision_threshold.value
    assert before["predicted_positive_rate"] == pytest.approx(np.mean(raw >= 0.5), abs=0.01)
    assert after["ece"] == overall["ece"] and after["brier"] == overall["brier"]
    assert before["ece"] > 0.15 > after["ece"] and before["brier"] > after["brier"]
    assert after["positive_rate"] == before["positive_rate"] == pytest.approx(y.mean())
    assert before["mean_probability"] > y.mean() + 0.15
    assert before["auc"] == pytest.approx(after["auc"], abs=1e-4)  # monotonic: same ranking
    scalars = kfp_scalars(result["metrics"])
    assert scalars["raw_ece"] == before["ece"] and scalars["ece"] == after["ece"]
    assert scalars["decision_threshold"] == 0.3

    report = (out / REPORT_FILE).read_text()
    assert "<h2>Calibration</h2>" in report and "before calibration" in report
    assert "decision threshold 0.3 (model)" in report
    assert report.count('src="data:image/png;base64,') == 6  # both curves in one plot


def test_ece_blessing_judges_the_calibrated_probability(calibrated_model, examples, workdir,
                                                        tmp_path):
    """`thresholds: {ece: ...}` is a maximum on `probability`: a model that serves calibrated
    probabilities passes where the same scores uncalibrated fail."""
    tables, prior = _log_odds_tables(examples)
    uncalibrated = save_model(tmp_path / "uncalibrated", tables, prior, distortion=PLANTED,
                              distorted_as_probability=True)
    rules = tmp_path / "thresholds.yaml"
    rules.write_text("thresholds: {auc: 0.6, ece: 0.1}\n")
    decisions = {}
    for name, model in (("calibrated", calibrated_model), ("uncalibrated", uncalibrated)):
        evaluate(model, str(examples), str(tmp_path / f"{name}-evaluation"), CONFIG,
                 thresholds_path=str(rules))
        decisions[name] = json.loads((tmp_path / f"{name}-evaluation" / BLESSING_FILE)
                                     .read_text())
    ece = {name: next(r for r in d["reasons"] if r["metric"] == "ece")
           for name, d in decisions.items()}
    assert decisions["calibrated"]["blessed"] is True and ece["calibrated"]["value"] < 0.1
    assert decisions["uncalibrated"]["blessed"] is False
    assert ece["uncalibrated"]["check"] == "ece <= 0.1" and ece["uncalibrated"]["value"] > 0.15
    # An older model (no metadata, no raw output): the config's value, no before/after.
    metrics = json.loads((tmp_path / "uncalibrated-evaluation" / METRICS_FILE).read_text())
    assert metrics["decision_threshold"] == CONFIG.evaluation.decision_threshold.value
    assert metrics["decision_threshold_source"].startswith("config")
    assert metrics["calibration"] is None


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors(good_model, examples, workdir, tmp_path):
    def error(**kwargs):
        args = {"model": good_model, "examples": str(examples),
                "output": str(tmp_path / "out"), "config": CONFIG, **kwargs}
        with pytest.raises(StepError) as raised:
            evaluate(args.pop("model"), args.pop("examples"), args.pop("output"),
                     args.pop("config"), **args)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    assert "not the output of a finished ingest step" in error(examples=str(tmp_path))
    assert "neither a train output" in error(model=str(tmp_path))
    assert "--model not found" in error(model=str(tmp_path / "nope"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    assert "not empty" in error(output=str(busy))
    bad = tmp_path / "bad.yaml"
    bad.write_text("thresholds: {auc: 2}\n")
    assert "thresholds.auc: must be between 0 and 1" in error(thresholds_path=str(bad))
    assert not (tmp_path / "out").exists()

    import tensorflow as tf

    class OneSignature(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            return {"probability": tf.zeros_like(examples, dtype=tf.float32)}

    module = OneSignature()
    tf.saved_model.save(module, str(tmp_path / "one" / "model"),
                        signatures={"serving_tf_example": module.serve.get_concrete_function()})
    assert "no 'serving_default' signature" in error(model=str(tmp_path / "one"))


def test_resolve_baseline_local_dirs(good_model):
    saved_model, info = resolve_baseline(good_model)
    assert os.path.samefile(saved_model, os.path.join(good_model, "model"))
    assert info["model_id"] == compute_model_id(saved_model)
    assert info["version"] is None and info["uri"] == good_model


def test_a_registry_that_does_not_exist_yet_means_no_baseline(tmp_path):
    """The first run of a pipeline points at a registry nobody has pushed to yet."""
    saved_model, info = resolve_baseline(str(tmp_path / "registry" / "cfpb"))
    assert saved_model is None and "no blessed version" in info["note"]


def test_a_registry_version_takes_its_id_from_the_index(good_model, tmp_path):
    import shutil

    from components.evaluate.evaluate import describe_local_model

    version_dir = tmp_path / "registry" / "cfpb" / "3"
    shutil.copytree(os.path.join(good_model, "model"), version_dir)
    (version_dir.parent / "index.json").write_text(json.dumps({
        "model_name": "cfpb", "current": 3,
        "versions": [{"version": 3, "semver": "1.2.0", "model_id": "from-the-index"}]}))
    saved_model, info = describe_local_model(str(version_dir), "--model")
    assert saved_model == str(version_dir)
    assert (info["model_id"], info["version"], info["semver"]) == ("from-the-index", 3, "1.2.0")
    (version_dir.parent / "index.json").unlink()
    _, info = describe_local_model(str(version_dir), "--model")
    assert info["model_id"] == compute_model_id(str(version_dir)) and info["version"] is None
