"""The feedback step: predictions meet late labels, live metrics, A/B verdict, drift, the next
dataset version and the retrain decision.

The world each test builds is real where it matters: the training data is ingested into a real
data store by the ingest step's code, the deployment record comes from the deployment rules,
labels are a CSV, the prediction log is JSONL in the server's layout (the serve tests check
that the server writes exactly what `prediction_log.parse_line` reads). Only the models are
absent: feedback reads what they answered, never the models themselves.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import random

import numpy as np
import pytest

from components.common import data_store, documents, storage
from components.common.artifacts import deployment
from components.common.dataset_config import load_dataset_config
from components.common.errors import StepError
from components.feedback import live_metrics
from components.feedback.feedback import FeedbackOptions, run_feedback
from tests.conftest import run_cli

MODEL = "cfpb-disputes"
T0 = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)
FEATURES = {"product": "Product", "sub_product": "Sub-product", "issue": "Issue",
            "company_response": "Company response to consumer", "state": "State",
            "zip_code": "ZIP code", "narrative": "Consumer complaint narrative"}


# --------------------------------------------------------------------------- the world

@pytest.fixture(scope="module")
def config():
    return load_dataset_config()


@pytest.fixture(scope="module")
def training_store(tmp_path_factory, config):
    """A data store holding one ingested data version (3,000 generated complaints)."""
    from components.ingest.ingest import IngestOptions, ingest
    from datagen.generator import write_complaints

    base = tmp_path_factory.mktemp("training")
    source = base / "complaints.csv"
    write_complaints(str(source), 3000, 1)
    metadata = ingest(str(source), str(base / "examples"), config,
                      IngestOptions(store=str(base / "store")))
    return base / "store", metadata["dataset_version"]


def make_world(tmp_path, training_store, canary_percent=30, canary=True):
    """A store (a copy of the module's), a registry with versions 1 and 2 trained on its data
    version, and a deployment record: 1 stable, 2 canary."""
    import shutil

    store_src, version = training_store
    store = tmp_path / "store"
    shutil.copytree(store_src, store)
    registry = tmp_path / "registry"
    documents.write_json(str(registry / MODEL / "index.json"), {
        "model_name": MODEL, "current": 2,
        "versions": [{"version": 1, "dataset_version": version},
                     {"version": 2, "dataset_version": version}]})
    record = deployment.canary(deployment.empty_record(MODEL), 1)
    if canary:
        record = deployment.canary(record, 2, canary_percent)
    deployment.save(str(registry), MODEL, record)
    return {"store": str(store), "registry": str(registry), "dataset_version": version,
            "log": tmp_path / "log" / MODEL / "predictions", "labels": tmp_path / "labels.csv"}


def complaints(rows: int, seed: int, id_offset: int = 10_000_000):
    """Generated complaints as (id, inputs, label) with ids outside the training data's."""
    from datagen.generator import iter_complaints

    for row in iter_complaints(rows, seed):
        inputs = {feature: row[header] for feature, header in FEATURES.items()}
        yield str(int(row["Complaint ID"]) + id_offset), inputs, row["Consumer disputed?"]


def entry(request_id, version, probability, key=None, time=None, inputs=None):
    line = {"request_id": request_id, "time": (time or T0).isoformat(), "model_version": version,
            "inputs": inputs or {f: "" for f in FEATURES}, "outputs": {"probability": probability}}
    if key is not None:
        line["key"] = key
    return line


def write_log(folder, entries, day="2026-11-02", name="120000-000001-abcd1234.jsonl",
              extra_lines=()):
    path = folder / day / name
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(e) for e in entries] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_labels(path, pairs, header=("Complaint ID", "Consumer disputed?")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(pairs)
    return path


def feedback(world, output, config, **options):
    options.setdefault("drift_sample", 0)
    return run_feedback(str(world["log"]), str(world["labels"]), world["registry"], MODEL,
                        world["store"], str(output), config, FeedbackOptions(**options))


def planted_traffic(world, rows=4000, seed=7, stable_separation=0.5, canary_separation=1.4,
                    canary_share=0.5, skew=None):
    """Predictions of versions 1 and 2 on generated complaints, with labels; version 2's scores
    separate the classes better when canary_separation > stable_separation."""
    rnd = random.Random(seed)
    entries, labels = [], []
    for i, (key, inputs, label) in enumerate(complaints(rows, seed)):
        if skew:
            inputs = {**inputs, **skew}
        version = 2 if rnd.random() < canary_share else 1
        y = label == "Yes"
        separation = canary_separation if version == 2 else stable_separation
        score = rnd.gauss(separation if y else 0.0, 1.0)
        probability = 1 / (1 + math.exp(-(score - 1.0)))
        entries.append(entry(f"r{i}", version, probability, key, T0 + dt.timedelta(seconds=i),
                             inputs))
        labels.append((key, label))
    write_log(world["log"], entries)
    write_labels(world["labels"], labels)


# --------------------------------------------------------------------------- metrics by hand

# Eight scored predictions, one per calibration bin, worked out on paper:
#   positives 0.95 0.85 0.65 0.35, negatives 0.75 0.55 0.45 0.25
#   AUC: pairs positive > negative: 4 + 4 + 3 + 1 = 12 of 16 = 0.75
#   V10 (per positive) = 1, 1, .75, .25; V01 (per negative) = .5, .75, .75, 1
#   var = var(V10)/4 + var(V01)/4 = (0.375/3)/4 + (0.125/3)/4 = 0.041667
#   at 0.5: TP 3 (.95 .85 .65), FP 2 (.75 .55), FN 1 (.35), TN 2 (.45 .25)
#   ECE: mean |y - p| = (.05+.15+.75+.35+.55+.45+.65+.25)/8 = 0.4
HAND_P = [0.95, 0.85, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25]
HAND_Y = [1, 1, 0, 1, 0, 0, 1, 0]


def test_version_metrics_match_a_hand_computed_case():
    m = live_metrics.version_metrics(HAND_P, HAND_Y, threshold=0.5)
    assert m["n"] == 8 and m["positives"] == 4
    assert m["auc"]["value"] == pytest.approx(0.75)
    assert m["auc"]["variance"] == pytest.approx(0.125 / 4 + (0.125 / 3) / 4)
    sd = math.sqrt(m["auc"]["variance"])
    assert m["auc"]["ci"] == pytest.approx([0.75 - 1.959964 * sd, min(1.0, 0.75 + 1.959964 * sd)],
                                           abs=1e-5)
    assert m["confusion"] == {"tp": 3, "fp": 2, "fn": 1, "tn": 2}
    assert m["precision"]["value"] == pytest.approx(0.6)
    assert m["precision"]["ci"] == pytest.approx([0.2307, 0.8824], abs=1e-4)  # Wilson 3/5
    assert m["recall"]["value"] == pytest.approx(0.75)
    assert m["accuracy"]["value"] == pytest.approx(5 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["calibration"]["ece"] == pytest.approx(0.4)
    assert len(m["calibration"]["bins"]) == 8
    assert m["calibration"]["calibration_in_the_large"]["value"] == pytest.approx(
        np.mean(HAND_P) - 0.5)
    assert m["brier"] == pytest.approx(np.mean((np.array(HAND_P) - np.array(HAND_Y)) ** 2))


def test_logged_decisions_win_over_the_threshold():
    decisions = [1, 1, 1, 1, 1, 1, 1, 1]  # the server said yes to everything
    m = live_metrics.version_metrics(HAND_P, HAND_Y, decisions, threshold=0.5)
    assert m["confusion"] == {"tp": 4, "fp": 4, "fn": 0, "tn": 0}


def test_auc_agrees_with_scikit_learn_and_counts_ties_half():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500) * 0.5 + y * 0.2, 2)  # many ties
    assert live_metrics.auc_delong(p, y)[0] == pytest.approx(roc_auc_score(y, p))
    assert live_metrics.auc_delong(np.array([0.5, 0.5]), np.array([1, 0]))[0] == 0.5
    assert live_metrics.auc_delong(np.array([0.5]), np.array([1])) == (None, None)


def simulated(n, separation, rng, rate=0.25):
    y = (rng.random(n) < rate).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + separation * y - 1)))
    return live_metrics.version_metrics(p, y)


def test_ab_verdict_finds_a_planted_difference_and_its_direction():
    rng = np.random.default_rng(11)
    stable, canary = simulated(3000, 0.8, rng), simulated(3000, 1.6, rng)
    verdict = live_metrics.ab_verdict(1, 2, stable, canary)
    assert verdict["significant"] and verdict["winner"] == 2
    assert verdict["difference"] > 0 and verdict["ci"][0] > 0 and verdict["p_value"] < 1e-6
    assert verdict["labelled_still_needed"] == 0
    assert verdict["verdict"].startswith("version 2 is better than version 1")
    worse = live_metrics.ab_verdict(1, 2, canary, stable)
    assert worse["significant"] and worse["winner"] == 1 and worse["difference"] < 0


def test_ab_verdict_without_a_difference_says_how_many_labels_are_still_needed():
    rng = np.random.default_rng(2)  # the same distribution for both (p = 0.82 here)
    stable, canary = simulated(1500, 1.0, rng), simulated(1500, 1.0, rng)
    verdict = live_metrics.ab_verdict(1, 2, stable, canary, min_effect=0.02)
    assert not verdict["significant"] and verdict["winner"] is None
    assert verdict["ci"][0] < 0 < verdict["ci"][1]
    assert verdict["labelled_needed_total"] > 3000
    assert verdict["labelled_still_needed"] == verdict["labelled_needed_total"] - 3000
    assert verdict["verdict"].startswith("no significant difference yet")
    # a smaller effect to detect needs more labels
    smaller = live_metrics.ab_verdict(1, 2, stable, canary, min_effect=0.01)
    assert smaller["labelled_needed_total"] > verdict["labelled_needed_total"]


def test_ab_verdict_too_early_and_the_sample_size_is_the_smallest_that_suffices():
    rng = np.random.default_rng(2)
    few_s, few_c = simulated(20, 1.0, rng), simulated(20, 1.0, rng)
    verdict = live_metrics.ab_verdict(1, 2, few_s, few_c)
    assert verdict["verdict"].startswith("too early to tell")
    assert verdict["p_value"] is None and verdict["labelled_still_needed"] > 0
    n = live_metrics.labelled_needed(0.75, 0.75, 0.25, 0.5, 0.05, 0.05, 0.8)
    z = 1.959964 + 0.841621

    def sd(total):
        half = total / 2
        return math.sqrt(2 * live_metrics.hanley_mcneil_variance(0.75, half * 0.25, half * 0.75))

    assert z * sd(n) <= 0.05 < z * sd(n - 1)


# --------------------------------------------------------------------------- the join

def test_join_counts_missing_duplicate_late_and_unknown_labels(tmp_path, training_store, config):
    world = make_world(tmp_path, training_store)
    before = T0 - dt.timedelta(days=2)
    write_log(world["log"], [
        entry("a", 1, 0.9, "A", before),   # labelled, but before the window: a late label
        entry("b", 1, 0.1, "B", before),   # no label
    ], day="2026-10-31", name="120000-000001-early000.jsonl")
    write_log(world["log"], [
        entry("c", 1, 0.8, "C"),           # scored
        entry("d", 2, 0.3, "D"),           # scored (its label is corrected later: Yes)
        entry("e", 2, 0.4, "E"),           # pending: no label yet
        entry("c2", 2, 0.2, "C"),          # C predicted again: a duplicate prediction
        entry("u", 1, 0.5),                # no key
        entry("f", 1, 0.7, "F"),           # a batch request of three: the server gave all
        entry("f", 1, 0.6, "F"),           # three records the first instance's key
        entry("f", 1, 0.5, "F"),
    ], extra_lines=["{not json", json.dumps({"request_id": "x"})])
    write_labels(world["labels"], [
        ("C", "Yes"), ("D", "No"), ("A", "Yes"), ("F", "No"), ("G", "Yes"),
        ("C", "Yes"),        # duplicate
        ("D", "yes"),        # conflicting: the later row wins
        ("H", ""),           # not known yet
        ("I", "maybe"),      # invalid
        ("", "No"),          # no id
    ])
    result = feedback(world, tmp_path / "out", config, since=T0 - dt.timedelta(hours=1),
                      min_new_rows=1)
    assert result["join"] | {"malformed_examples": None} == {
        "records": 10, "before_window": 2, "in_window": 8, "matched": 3, "pending": 1,
        "duplicate_predictions": 1, "unkeyed": 1, "batch_followers": 2, "malformed_lines": 2,
        "malformed_examples": None}
    assert len(result["join"]["malformed_examples"]) == 2
    assert result["labels"] == {"rows": 10, "ids": 5, "blank": 1, "invalid": 1, "missing_id": 1,
                                "duplicates": 1, "conflicting": 1, "scored": 3, "late": 1,
                                "unknown": 1}
    versions = result["versions"]
    assert versions["1"]["n"] == 2 and versions["2"]["n"] == 1  # C, F by 1; D by 2
    assert versions["1"]["predictions"] == 5 and versions["2"]["predictions"] == 3
    assert versions["2"]["positives"] == 1  # D's corrected label
    assert versions["1"]["labels"] == ["stable"] and versions["2"]["labels"] == ["canary"]
    stored = json.loads((tmp_path / "out" / "feedback.json").read_text())
    assert stored["join"]["matched"] == 3
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000
    assert "too early to tell" in result["ab"]["verdict"]


def test_a_label_for_an_id_never_predicted_is_not_an_error(tmp_path, training_store, config):
    world = make_world(tmp_path, training_store)
    write_log(world["log"], [entry("a", 1, 0.5, "A")])
    write_labels(world["labels"], [("Z", "Yes")])
    result = feedback(world, tmp_path / "out", config)
    assert result["labels"]["unknown"] == 1 and result["join"]["matched"] == 0
    assert result["dataset"]["status"] == "no new labelled rows"
    assert result["decision"]["retrain"] is False


# --------------------------------------------------------------------------- decisions, data

def test_planted_ab_difference_end_to_end_and_auto_promote(tmp_path, training_store, config):
    world = make_world(tmp_path, training_store)
    planted_traffic(world)
    result = feedback(world, tmp_path / "out", config, min_new_rows=100_000)
    ab = result["ab"]
    assert ab["stable"] == 1 and ab["canary"] == 2
    assert ab["significant"] and ab["winner"] == 2
    assert result["deployment"]["action"] == "none"  # off by default
    promoted = feedback(world, tmp_path / "out2", config, auto_promote=True,
                        min_new_rows=100_000)
    assert promoted["deployment"]["action"] == "promote"
    record = deployment.load(world["registry"], MODEL)
    assert record["traffic"] == {"2": 100} and deployment.stable_version(record) == 2


def test_auto_rollback_removes_a_worse_canary(tmp_path, training_store, config):
    world = make_world(tmp_path, training_store)
    planted_traffic(world, stable_separation=1.4, canary_separation=0.3)
    result = feedback(world, tmp_path / "out", config, auto_rollback=True, auto_promote=True)
    assert result["ab"]["winner"] == 1
    assert result["deployment"]["action"] == "rollback"
    record = deployment.load(world["registry"], MODEL)
    assert record["traffic"] == {"1": 100} and deployment.canary_version(record) is None
    assert record["strategy"] == "rollback"


def test_a_stable_version_below_the_live_threshold_asks_for_a_retrain(tmp_path, training_store,
                                                                      config):
    world = make_world(tmp_path, training_store, canary=False)
    planted_traffic(world, rows=1200, stable_separation=0.0, canary_share=0.0)
    result = feedback(world, tmp_path / "out", config, min_new_rows=100_000)
    assert result["ab"] is None
    assert result["versions"]["1"]["auc"]["value"] < 0.6
    assert result["decision"]["retrain"] is True
    (reason,) = result["decision"]["reasons"]
    assert reason.startswith("live auc below threshold: version 1: auc 0.")


def test_new_rows_become_the_next_content_addressed_dataset_version(tmp_path, training_store,
                                                                    config):
    from components.ingest.ingest import IngestOptions, ingest

    world = make_world(tmp_path, training_store)
    planted_traffic(world, rows=600)
    result = feedback(world, tmp_path / "out", config, min_new_rows=100)
    dataset = result["dataset"]
    labelled = sum(1 for row in csv.reader(world["labels"].open()) if row[1] in ("Yes", "No"))
    assert dataset["rows_new"] == labelled and dataset["rows_base"] == 3000
    assert dataset["combined_with"] == world["dataset_version"]
    assert dataset["status"] == "written"
    assert dataset["uri"] == data_store.incoming_uri(world["store"], dataset["dataset_version"])
    assert "enough new labelled rows" in result["decision"]["reasons"][-1]
    # the same data again: the same version, already waiting, nothing written
    again = feedback(world, tmp_path / "out2", config, min_new_rows=100)
    assert again["dataset"]["dataset_version"] == dataset["dataset_version"]
    assert again["dataset"]["status"] == "waiting"
    # ingest gives the file exactly that version, and trains on old + new rows
    metadata = ingest(dataset["uri"], str(tmp_path / "examples"), config,
                      IngestOptions(store=world["store"]))
    assert metadata["dataset_version"] == dataset["dataset_version"]
    assert metadata["new_data"] is True
    assert metadata["rows"]["kept"] == training_rows_kept(world) + labelled
    third = feedback(world, tmp_path / "out3", config, min_new_rows=100)
    assert third["dataset"]["status"] == "already stored"
    # the new rows alone
    alone = feedback(world, tmp_path / "out4", config, combine=False)
    assert alone["dataset"]["rows_base"] == 0 and alone["dataset"]["combined_with"] is None
    with open(alone["dataset"]["uri"], newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["Product", "Sub-product", "Issue", "Company response to consumer",
                       "State", "ZIP code", "Consumer complaint narrative",
                       "Consumer disputed?", "Complaint ID"]
    assert len(rows) == labelled + 1
    # once the run validated it, the next new rows go after it (the training data so far)
    data_store.mark_validated(world["store"], dataset["dataset_version"], {})
    planted_traffic(world, rows=200, seed=8)
    fourth = feedback(world, tmp_path / "out5", config, min_new_rows=100)
    assert fourth["dataset"]["combined_with"] == dataset["dataset_version"]
    assert fourth["dataset"]["rows_base"] == 3000 + labelled


def training_rows_kept(world) -> int:
    manifest = documents.read_json(
        storage.join(world["store"], world["dataset_version"], "manifest.json"), "manifest")
    return manifest["rows"]["kept"]


def test_drift_is_caught_on_planted_serving_skew(tmp_path, training_store, config):
    """TFDV: logged inputs from the training distribution pass; all-mortgage traffic (a planted
    skew on product) fails drift and skew on product and asks for a retrain."""
    world = make_world(tmp_path / "same", training_store)
    planted_traffic(world, rows=1500)
    same = feedback(world, tmp_path / "same" / "out", config, drift_sample=100_000,
                    min_new_rows=100_000)
    assert same["drift"]["drifted"] == []
    assert same["drift"]["serving_examples"] == 1500
    assert set(same["drift"]["features"]) == {"product", "sub_product", "issue",
                                              "company_response", "state"}
    assert same["drift"]["drift"]["product"]["value"] < 0.1
    assert (tmp_path / "same" / "out" / "statistics" / "serving" / "FeatureStats.pb").exists()

    world = make_world(tmp_path / "skewed", training_store)
    planted_traffic(world, rows=1500, skew={"product": "Mortgage"})
    skewed = feedback(world, tmp_path / "skewed" / "out", config, drift_sample=500,
                      min_new_rows=100_000)
    drift = skewed["drift"]
    assert "product" in drift["drifted"]
    assert drift["drift"]["product"]["value"] > 0.5
    assert drift["skew"]["product"]["above"] is True
    assert drift["serving_examples"] == 500  # the sample
    assert skewed["decision"]["retrain"] is True
    assert any(r.startswith("drift above the config's threshold: product")
               for r in skewed["decision"]["reasons"])


# --------------------------------------------------------------------------- CLI, S3, errors

def test_cli_reports_to_kfp_and_refuses_auto_promote_on_kserve(tmp_path, training_store):
    world = make_world(tmp_path, training_store)
    planted_traffic(world, rows=400)
    output = tmp_path / "executor_output.json"
    payload = {"inputs": {"parameterValues": {}}, "outputs": {
        "artifacts": {name: {"artifacts": [{"name": name, "uri": str(tmp_path / name),
                                            "metadata": {}}]}
                      for name in ("feedback", "metrics", "report")},
        "parameters": {"retrain": {"outputFile": str(tmp_path / "r")},
                       "new_dataset_version": {"outputFile": str(tmp_path / "v")}},
        "outputFile": str(output)}}
    args = ["--predictions", str(world["log"]), "--labels", str(world["labels"]),
            "--registry", world["registry"], "--model-name", MODEL, "--store", world["store"],
            "--drift-sample", "0", "--min-new-rows", "100"]
    done = run_cli("components.feedback", *args, "--output", str(tmp_path / "feedback"),
                   "--metrics", str(tmp_path / "metrics.json"), "--report",
                   str(tmp_path / "report.html"), "--executor-input", json.dumps(payload))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("retrain: true (enough new labelled")
    reported = json.loads(output.read_text())
    assert reported["parameterValues"]["retrain"] is True
    assert reported["parameterValues"]["new_dataset_version"].startswith("ds-")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["retrain"] == 1 and "v1_auc" in metrics and "v2_auc" in metrics
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")

    refused = run_cli("components.feedback", *args, "--output", str(tmp_path / "no"),
                      "--auto-promote", "--deploy-target", "kserve")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: feedback: --auto-promote/--auto-rollback with "
                           "--deploy-target kserve")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("case", ["no label column", "bad since", "nothing served"])
def test_errors_are_one_line_and_leave_no_output(tmp_path, training_store, case):
    world = make_world(tmp_path, training_store)
    write_log(world["log"], [entry("a", 1, 0.5, "A")])
    write_labels(world["labels"], [("A", "Yes")])
    args = {"--predictions": str(world["log"]), "--labels": str(world["labels"]),
            "--registry": world["registry"], "--model-name": MODEL, "--store": world["store"],
            "--output": str(tmp_path / "out"), "--drift-sample": "0"}
    expected = {"no label column": "no column for 'consumer_disputed'",
                "bad since": "--since 'yesterday': expected an ISO 8601 time",
                "nothing served": "nothing to serve"}[case]
    if case == "no label column":
        write_labels(world["labels"], [("A", "Yes")], header=("Complaint ID", "Outcome"))
    elif case == "bad since":
        args["--since"] = "yesterday"
    else:
        args["--model-name"] = "other-model"
    done = run_cli("components.feedback", *[x for pair in args.items() for x in pair])
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: feedback: ") and expected in last
    assert not (tmp_path / "out").exists()


def test_everything_on_s3(tmp_path, training_store, config, s3_bucket):
    """Log, labels, registry and store in an S3 bucket (moto's server): the base training data
    is read from there and the new version is written there."""
    world = make_world(tmp_path, training_store)
    planted_traffic(world, rows=300)
    prefix = f"s3://{s3_bucket}"
    for local, remote in ((tmp_path / "store", f"{prefix}/store"),
                          (tmp_path / "registry", f"{prefix}/registry"),
                          (tmp_path / "log", f"{prefix}/log")):
        storage.upload_tree(str(local), remote)
    # the stored manifest names the local snapshot; on S3 it must name the S3 one
    manifest_uri = f"{prefix}/store/{world['dataset_version']}/manifest.json"
    manifest = documents.read_json(manifest_uri, "manifest")
    manifest["snapshot"] = manifest["snapshot"].replace(str(tmp_path / "store"), f"{prefix}/store")
    manifest["examples"] = manifest["examples"].replace(str(tmp_path / "store"), f"{prefix}/store")
    documents.write_json(manifest_uri, manifest)
    storage.put_file(str(world["labels"]), f"{prefix}/labels.csv")
    result = run_feedback(f"{prefix}/log/{MODEL}/predictions", f"{prefix}/labels.csv",
                          f"{prefix}/registry", MODEL, f"{prefix}/store", str(tmp_path / "out"),
                          config, FeedbackOptions(drift_sample=0, min_new_rows=10))
    assert result["join"]["matched"] > 250
    assert result["dataset"]["combined_with"] == world["dataset_version"]
    assert result["dataset"]["uri"].startswith(f"{prefix}/store/incoming/ds-")
    assert storage.exists(result["dataset"]["uri"])
    version, _ = data_store.source_version(result["dataset"]["uri"])
    assert version == result["dataset"]["dataset_version"]


def test_since_must_be_iso():
    from components.feedback.feedback import parse_since

    assert parse_since("2026-11-01") == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with pytest.raises(StepError):
        parse_since("last week")
