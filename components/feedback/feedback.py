"""Feedback core: the prediction log meets the labels; live metrics, A/B verdict, drift, the
next dataset version and the retrain decision (see README.md).

Order matters for memory: the join streams the log once (labels, window keys, scored pairs and
a bounded input sample in memory), the metrics reduce the pairs, the new rows are already on
disk; only then TFDV (and TensorFlow with it) is imported for the drift statistics.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import tempfile
import time
from dataclasses import dataclass

from components.common import data_store, registry, storage
from components.common.artifacts import deployment
from components.common.artifacts import feedback as feedback_artifact
from components.common.artifacts.prediction_log import LogReader
from components.common.dataset_config import DatasetConfig
from components.common.errors import StepError
from components.common.staging import staged_output
from components.feedback import dataset, drift, live_metrics
from components.feedback.join import Join, Reservoir
from components.feedback.labels import read_labels

log = logging.getLogger(__name__)
TARGETS = ("local", "kserve")
HIGHER_IS_BETTER = ("auc", "accuracy", "precision", "recall", "f1")
LOWER_IS_BETTER = ("log_loss", "brier", "ece")


@dataclass(frozen=True)
class FeedbackOptions:
    since: dt.datetime | None = None
    min_new_rows: int = 1000
    min_labelled: int = 200
    alpha: float = 0.05
    power: float = 0.8
    min_effect: float = 0.02
    drift_sample: int = 50_000
    combine: bool = True
    auto_promote: bool = False
    auto_rollback: bool = False
    deploy_target: str = "local"


def parse_since(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise StepError(f"--since {text!r}: expected an ISO 8601 time, e.g. "
                        "2026-11-01 or 2026-11-01T00:00:00+00:00") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def check_options(options: FeedbackOptions) -> None:
    if options.deploy_target not in TARGETS:
        raise StepError(f"--deploy-target {options.deploy_target!r}: expected one of "
                        f"{', '.join(TARGETS)}")
    if options.deploy_target == "kserve" and (options.auto_promote or options.auto_rollback):
        raise StepError(
            "--auto-promote/--auto-rollback with --deploy-target kserve: the feedback step "
            "changes local deployment records only (the KServe apply logic is the deploy "
            "step's); run `python -m components.deploy --target kserve --strategy "
            "promote|rollback` with the verdict instead")
    if not 0 < options.alpha < 1 or not 0 < options.power < 1:
        raise StepError("--alpha and --power must be between 0 and 1")
    if options.drift_sample < 0 or options.min_new_rows < 0 or options.min_labelled < 0:
        raise StepError("--drift-sample, --min-new-rows and --min-labelled cannot be negative")
    if options.min_effect <= 0:
        raise StepError("--min-effect must be positive")


def run_feedback(predictions: str, labels_uri: str, registry_uri: str, model_name: str,
                 store: str, output: str, config: DatasetConfig,
                 options: FeedbackOptions = FeedbackOptions()) -> dict:
    """Everything the step does; returns what it writes to `<output>/feedback.json`."""
    check_options(options)
    registry.check_model_name(model_name)
    started = time.monotonic()
    index = registry.read_index(registry_uri, model_name)
    record = deployment.serving_state(registry_uri, model_name)
    stable = deployment.stable_version(record)
    canary = deployment.canary_version(record)
    reader = LogReader(predictions)
    labels = read_labels(labels_uri, config)
    log.info("%d labels for %d ids from %s; %d prediction log parts under %s",
             labels.rows, len(labels.values), labels_uri, len(reader.parts), predictions)
    with staged_output(output, last=feedback_artifact.FEEDBACK_FILE) as staging, \
            tempfile.TemporaryDirectory(prefix="feedback-") as work:
        new_rows = dataset.NewRows(work, config)
        sample = Reservoir(options.drift_sample, seed=0) if options.drift_sample else None
        join = Join(labels, options.since, on_matched=new_rows.add, sample=sample,
                    sample_features=tuple(drift.compared_features(config)))
        try:
            for prediction in reader.records():
                join.add(prediction)
        finally:
            new_rows.close()
        reader.check()
        joined = {**join.counts, "malformed_lines": reader.bad_lines,
                  "malformed_examples": reader.bad_examples}
        label_fate = join.label_counts()
        versions = {}
        for number, samples in sorted(join.versions.items()):
            threshold, source = decision_threshold(registry_uri, model_name, number, config)
            metrics = live_metrics.version_metrics(samples.probabilities, samples.labels,
                                                   samples.decisions, threshold)
            metrics["threshold_source"] = source
            metrics["predictions"] = samples.predictions
            metrics["mean_probability"] = samples.probability_sum / samples.predictions
            metrics["labels"] = deployment_labels(record, number)
            versions[number] = metrics
        window = {"since": options.since.isoformat() if options.since else None,
                  "first": join.first_time.isoformat() if join.first_time else None,
                  "last": join.last_time.isoformat() if join.last_time else None}
        sample_rows = sample.items if sample else []
        label_counts = {**labels.counts(), **label_fate}
        # The window's keys, the labels and the scored pairs are not needed any more: free them
        # before the drift statistics import TensorFlow (the step's peak memory).
        del join, labels, sample
        gc.collect()
        ab = None
        if stable is not None and canary is not None:
            ab = live_metrics.ab_verdict(
                stable, canary, versions.get(stable, {"n": 0}), versions.get(canary, {"n": 0}),
                alpha=options.alpha, power=options.power, min_effect=options.min_effect,
                canary_share=deployment.traffic(record).get(canary, 0) / 100 or None)
        stable_dataset = _dataset_of(index, stable)
        new_version = _new_dataset(new_rows, work, store, stable_dataset, options.combine)
        drift_result = _drift(sample_rows, store, stable_dataset, config, staging, work)
        decision = decide(versions.get(stable) if stable is not None else None, stable,
                          drift_result, new_version, config, options)
        change = _auto_deploy(registry_uri, model_name, record, ab, options, index)
        result = {
            "model_name": model_name,
            "predictions": predictions,
            "labels_source": labels_uri,
            "window": window,
            "join": joined,
            "labels": label_counts,
            "deployment_record": {"revision": record["revision"],
                                  "stable": stable, "canary": canary,
                                  "traffic": record["traffic"]},
            "versions": {str(k): v for k, v in versions.items()},
            "ab": ab,
            "drift": drift_result,
            "dataset": new_version,
            "decision": decision,
            "deployment": change,
            "thresholds": {"live": dict(config.evaluation.thresholds),
                           "min_new_rows": options.min_new_rows,
                           "min_labelled": options.min_labelled},
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 3),
        }
        from components.feedback.report import write_report

        write_report(os.path.join(staging, feedback_artifact.REPORT_FILE), result)
        feedback_artifact.write(staging, result)
    log.info("feedback on %s: %d predictions in the window, %d scored; retrain: %s (%s)",
             model_name, joined["in_window"], joined["matched"], decision["retrain"],
             "; ".join(decision["reasons"]) or "no reason")
    return result


def decision_threshold(registry_uri: str, model_name: str, version: int,
                       config: DatasetConfig) -> tuple[float, str]:
    """(threshold, source) a version's decisions follow when the log has none: the model's own
    (its `assets.extra/model_metadata.json` in the registry), else the config's value."""
    from components.common import documents
    from components.common.artifacts import model as model_artifact

    uri = storage.join(registry.version_uri(registry_uri, model_name, version),
                       model_artifact.METADATA_FILE)
    if storage.exists(uri):
        value = documents.read_json(uri, "model metadata").get("decision_threshold")
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value), "model"
    policy = config.evaluation.decision_threshold
    return float(getattr(policy, "value", policy)), "config"


def deployment_labels(record: dict, version: int) -> list[str]:
    return list(record.get("versions", {}).get(str(version), {}).get("labels", []))


def _dataset_of(index: dict, version: int | None) -> str | None:
    entry = registry.find_version(index, version=version) if version is not None else None
    return entry.get("dataset_version") if entry else None


def _stored_manifest(store: str, version: str | None) -> dict | None:
    if not version or not data_store.is_stored(store, version):
        return None
    from components.common import documents

    return documents.read_json(storage.join(store, version, data_store.MANIFEST),
                               "data store manifest")


def _new_dataset(new_rows: dataset.NewRows, work: str, store: str, stable_dataset: str | None,
                 combine: bool) -> dict:
    result = {"rows_scored": new_rows.count, "dataset_version": None, "uri": None,
              "status": "no new labelled rows", "combined_with": None}
    if not new_rows.count:
        return result
    base = None
    if combine:
        # The newest clean data version (what the last runs trained on; validate's baseline),
        # else the stable version's own training data.
        newest = data_store.previous_version(store, "")
        manifest = newest or _stored_manifest(store, stable_dataset)
        if manifest and manifest.get("snapshot"):
            base = manifest["snapshot"]
            result["combined_with"] = manifest["dataset_version"]
        else:
            result["note"] = (f"no training data in {store} (newest validated version, or the "
                              f"stable version's {stable_dataset}): the new version holds the "
                              "new rows only")
    version = dataset.build_version(new_rows, work, base)
    published = dataset.publish(version, store)
    result.update({key: version[key] for key in ("dataset_version", "sha256", "rows_new",
                                                 "rows_base", "skipped_known_ids")},
                  uri=published["uri"], status=published["status"])
    return result


def _drift(rows: list[dict], store: str, stable_dataset: str | None, config: DatasetConfig,
           staging: str, work: str) -> dict:
    if not rows:
        return {"skipped": "no logged inputs in the window", "drifted": []}
    manifest = _stored_manifest(store, stable_dataset)
    if manifest is None or not manifest.get("examples"):
        return {"skipped": f"the stable version's dataset version {stable_dataset} has no "
                           f"examples in {store}", "drifted": []}
    examples = data_store.fetch_examples(manifest, os.path.join(work, "training"))
    result = drift.drift_report(rows, examples, config,
                                os.path.join(staging, feedback_artifact.STATISTICS_DIR))
    result["training_dataset_version"] = stable_dataset
    return result


def decide(stable_metrics: dict | None, stable: int | None, drift_result: dict,
           new_version: dict, config: DatasetConfig, options: FeedbackOptions) -> dict:
    """retrain true when any check fails: drift above its threshold, a live metric of the
    stable version past its threshold (with at least --min-labelled scored predictions), or
    at least --min-new-rows newly labelled rows."""
    reasons, checks = [], []
    drifted = drift_result.get("drifted", [])
    if "skipped" in drift_result:
        checks.append({"check": "drift", "result": "not measured",
                       "detail": drift_result["skipped"]})
    else:
        details = ", ".join(
            f"{name} {drift_result['drift'][name]['value']:.3f} > "
            f"{drift_result['drift'][name]['threshold']:.3f}" for name in drifted)
        checks.append({"check": "drift", "result": "failed" if drifted else "passed",
                       "detail": details or "no feature above its threshold"})
        if drifted:
            reasons.append(f"drift above the config's threshold: {details}")
    scored = stable_metrics.get("n", 0) if stable_metrics else 0
    for metric, limit in sorted(config.evaluation.thresholds.items()):
        if metric not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
            checks.append({"check": f"live {metric}", "result": "not measured live"})
            continue
        value = live_metrics.scalar(stable_metrics, metric) if stable_metrics else None
        if value is None or scored < options.min_labelled:
            checks.append({"check": f"live {metric}", "result": "not enough labels",
                           "detail": f"{scored} scored predictions of the stable version "
                                     f"{stable}, {options.min_labelled} needed"})
            continue
        bad = value < limit if metric in HIGHER_IS_BETTER else value > limit
        word = "below" if metric in HIGHER_IS_BETTER else "above"
        detail = f"version {stable}: {metric} {value:.4f} ({scored} labelled), threshold {limit}"
        checks.append({"check": f"live {metric}", "result": "failed" if bad else "passed",
                       "detail": detail})
        if bad:
            reasons.append(f"live {metric} {word} threshold: {detail}")
    new_rows = new_version.get("rows_new") or 0
    enough = new_rows >= options.min_new_rows and new_rows > 0
    checks.append({"check": "new labelled rows", "result": "enough" if enough else "too few",
                   "detail": f"{new_rows} new rows, {options.min_new_rows} make a retrain"})
    if enough:
        reasons.append(f"enough new labelled rows: {new_rows} >= {options.min_new_rows} "
                       f"(dataset version {new_version['dataset_version']})")
    return {"retrain": bool(reasons), "reasons": reasons, "checks": checks}


def _auto_deploy(registry_uri: str, model_name: str, record: dict, ab: dict | None,
                 options: FeedbackOptions, index: dict) -> dict:
    """Promote the canary that wins / roll back the one that loses (local records only)."""
    change = {"action": "none", "reason": "auto-promote and auto-rollback are off"}
    if not (options.auto_promote or options.auto_rollback):
        return change
    if ab is None:
        return {"action": "none", "reason": "no canary deployed"}
    if not ab["significant"]:
        return {"action": "none", "reason": "the A/B verdict is not significant"}
    stable, canary = ab["stable"], ab["canary"]
    known = [e["version"] for e in index["versions"]]
    if ab["winner"] == canary and options.auto_promote:
        new = deployment.promote(record, canary, known_versions=known)
        action = "promote"
    elif ab["winner"] == stable and options.auto_rollback:
        history = record.get("history") or []
        previous = history[-1] if history else None
        if previous and previous["versions"] == {str(stable): {"labels": [deployment.STABLE]}}:
            new = deployment.rollback(record)
        else:
            new = deployment.promote(record, stable, known_versions=known)
        action = "rollback"
    else:
        flag = "--auto-promote" if ab["winner"] == canary else "--auto-rollback"
        return {"action": "none", "reason": f"the verdict calls for it but {flag} is off"}
    if deployment.load(registry_uri, model_name)["revision"] != record["revision"]:
        return {"action": "none", "reason": "the deployment record changed while feedback ran; "
                                            "nothing written"}
    uri = deployment.save(registry_uri, model_name, new)
    log.info("%s: %s (revision %d -> %d): traffic %s", uri, action, record["revision"],
             new["revision"], new["traffic"])
    return {"action": action, "version": canary if action == "promote" else stable,
            "revision": new["revision"], "traffic": new["traffic"], "record": uri}
