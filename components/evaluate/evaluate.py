"""Evaluate core: predict on the eval split with the model (and the baseline), analyse, bless.

Reads the eval TFRecords once, streamed in batches through the model's `serving_tf_example`
signature (and the baseline's, on the very same batches); keeps only labels, probabilities
(calibrated `probability` and, when the model has it, `raw_probability`), slice values and a
seeded reservoir sample of serialized examples, so memory does not grow with the examples'
size. Decisions use each model's own decision threshold (its metadata), the config's
`evaluation.decision_threshold.value` for a model that records none. The sample then goes
through `serving_default` (raw strings) for the counterfactual flips. Outputs are staged beside
`<output>` and moved into place when complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from components.common import storage
from components.common.artifacts import evaluation
from components.common.artifacts import model as model_artifact
from components.common.artifacts.examples import read_metadata
from components.common.build_facts import code_version
from components.common.dataset_config import DatasetConfig
from components.common.errors import StepError
from components.common.staging import staged_output
from components.evaluate import analysis, blessing

log = logging.getLogger(__name__)

EXAMPLE_SIGNATURE = model_artifact.EXAMPLE_SIGNATURE
RAW_SIGNATURE = model_artifact.RAW_SIGNATURE
PROBABILITY = model_artifact.OUTPUT
RAW_PROBABILITY = model_artifact.RAW_OUTPUT
BATCH_SIZE = 1024
REPLACEMENTS = 3  # common values tried per feature in the counterfactuals (plus blank)
DEFAULT_SEED = 0
SIGNATURE_TOLERANCE = 1e-4  # max |p(serving_default) - p(serving_tf_example)| on the sample


# ------------------------------------------------------------------------------------------
# Finding models
# ------------------------------------------------------------------------------------------


def _registry_entry(saved_model_dir: str) -> dict | None:
    """The index entry of `<registry>/<name>/<N>/` when the directory is a registry version."""
    from components.common import registry

    directory = os.path.abspath(saved_model_dir)
    model_dir = os.path.dirname(directory)
    if not os.path.basename(directory).isdigit() or \
            not os.path.isfile(os.path.join(model_dir, registry.INDEX_FILE)):
        return None
    try:
        index = registry.read_index(os.path.dirname(model_dir), os.path.basename(model_dir))
    except StepError:
        return None
    return registry.find_version(index, version=int(os.path.basename(directory)))


def describe_local_model(path: str, role: str) -> tuple[str, dict]:
    """A train output or a bare SavedModel directory (for example a registry version
    `<registry>/<name>/<N>/`) -> (SavedModel dir, info)."""
    if storage.is_s3(path):
        raise StepError(f"{path}: {role} must be a local directory (S3 models are read through "
                        "the model registry)")
    if not os.path.isdir(path):
        raise StepError(f"{path}: {role} not found (expected a train output or a SavedModel "
                        "directory)")
    info: dict = {"uri": path, "version": None, "semver": None, "training": None}
    try:
        saved_model_dir, training = model_artifact.locate(path)
    except StepError as exc:
        raise StepError(f"{role}: {exc}") from None
    if training is not None:
        info["training"] = training
        info["model_id"] = training.get("model_id") or model_artifact.model_id_of(saved_model_dir)
        info["model_id_source"] = (model_artifact.TRAINING_FILE if training.get("model_id")
                                   else "computed")
        return saved_model_dir, info
    entry = _registry_entry(saved_model_dir)
    if entry is not None:
        info.update(version=entry.get("version"), semver=entry.get("semver"),
                    model_id=entry.get("model_id") or model_artifact.model_id_of(saved_model_dir),
                    model_id_source="registry index", registry_entry=entry)
        return saved_model_dir, info
    info["model_id"] = model_artifact.model_id_of(saved_model_dir)
    info["model_id_source"] = "computed"
    return saved_model_dir, info


def resolve_baseline(ref: str, download_dir: str | None = None) -> tuple[str | None, dict]:
    """A baseline reference -> (local SavedModel dir, or None when there is none yet; info).

    `ref` may be `<registry>/<name>` (its current blessed version), `<registry>/<name>/<N>` or a
    local train output / SavedModel dir; the registry resolves it to (local dir, index entry or
    None), or None when the model has no blessed version yet (first run: only absolute
    thresholds apply). S3 versions are downloaded under `download_dir`.
    """
    from components.common.registry import resolve_model_ref

    resolved = resolve_model_ref(ref, download_dir)
    if resolved is None:
        return None, {"uri": ref, "version": None, "model_id": None,
                      "note": "no blessed version in the registry yet; no baseline"}
    saved_model_dir, entry = resolved
    if not entry:
        saved_model_dir, info = describe_local_model(saved_model_dir, "--baseline-model")
        return saved_model_dir, {**info, "uri": ref}
    return saved_model_dir, {
        "uri": entry.get("uri") or ref, "ref": ref, "version": entry.get("version"),
        "semver": entry.get("semver"),
        "model_id": entry.get("model_id") or model_artifact.model_id_of(saved_model_dir),
        "model_id_source": "registry index", "registry_entry": entry,
    }


# ------------------------------------------------------------------------------------------
# Predicting
# ------------------------------------------------------------------------------------------


def _first_line(exc: Exception) -> str:
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    return text[:300]


class Predictor:
    """A loaded SavedModel's two contract signatures, returning probabilities as numpy."""

    def __init__(self, saved_model_dir: str, role: str, need_raw: bool):
        import tensorflow as tf

        self.dir = saved_model_dir
        self.role = role
        try:
            self._loaded = tf.saved_model.load(saved_model_dir)  # keeps the functions alive
        except Exception as exc:  # a broken SavedModel raises many types
            raise StepError(f"{saved_model_dir}: cannot load the {role} SavedModel: "
                            f"{_first_line(exc)}") from exc
        signatures = self._loaded.signatures
        wanted = [EXAMPLE_SIGNATURE, RAW_SIGNATURE] if need_raw else [EXAMPLE_SIGNATURE]
        for name in wanted:
            if name not in signatures:
                raise StepError(f"{saved_model_dir}: the {role} has no {name!r} signature "
                                f"(it has {sorted(signatures)})")
        for name in signatures:
            if name in wanted and PROBABILITY not in signatures[name].structured_outputs:
                raise StepError(f"{saved_model_dir}: the {role}'s {name!r} signature has no "
                                f"{PROBABILITY!r} output (it has "
                                f"{sorted(signatures[name].structured_outputs)})")
        self._examples_fn = signatures[EXAMPLE_SIGNATURE]
        # Models trained before calibration answer `probability` only.
        self.has_raw = RAW_PROBABILITY in self._examples_fn.structured_outputs
        self.metadata = model_artifact.read_model_metadata(saved_model_dir)
        example_inputs = self._examples_fn.structured_input_signature[1]
        if len(example_inputs) != 1:
            raise StepError(f"{saved_model_dir}: the {role}'s {EXAMPLE_SIGNATURE!r} signature "
                            f"must take one input (serialized tf.Example), it takes "
                            f"{sorted(example_inputs)}")
        self._examples_input = next(iter(example_inputs))
        self._raw_fn = signatures[RAW_SIGNATURE] if need_raw else None
        self.raw_inputs = ({name: spec.dtype.name for name, spec in
                            self._raw_fn.structured_input_signature[1].items()}
                           if self._raw_fn is not None else {})

    def decision_threshold(self, fallback: float) -> tuple[float, str]:
        """(threshold, source): the model's own, else `fallback` (the config's value)."""
        if self.metadata is None:
            return float(fallback), "config (the model records none)"
        return float(self.metadata["decision_threshold"]), "model"

    def _probabilities(self, outputs, expected: int, signature: str,
                       name: str = PROBABILITY) -> np.ndarray:
        p = np.asarray(outputs[name].numpy(), dtype=np.float64).reshape(-1)
        if p.size != expected:
            raise StepError(f"{self.dir}: the {self.role}'s {signature!r} returned {p.size} "
                            f"'{name}' values for {expected} examples")
        if not np.all(np.isfinite(p)) or p.min() < -1e-6 or p.max() > 1 + 1e-6:
            raise StepError(f"{self.dir}: the {self.role}'s {signature!r} returned "
                            f"'{name}' values outside [0, 1] (min {np.nanmin(p):.4g}, "
                            f"max {np.nanmax(p):.4g})")
        return np.clip(p, 0.0, 1.0)

    def predict_examples(self, serialized) -> np.ndarray:
        """Probabilities for a batch (a tf.string tensor) of serialized tf.Examples."""
        return self.predict_examples_with_raw(serialized)[0]

    def predict_examples_with_raw(self, serialized) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, raw probabilities or None) for a batch of serialized tf.Examples."""
        try:
            outputs = self._examples_fn(**{self._examples_input: serialized})
        except Exception as exc:  # tf.errors.* from inside the graph
            raise StepError(f"{self.dir}: the {self.role}'s {EXAMPLE_SIGNATURE!r} failed on the "
                            f"eval examples: {_first_line(exc)}") from exc
        expected = int(serialized.shape[0])
        raw = (self._probabilities(outputs, expected, EXAMPLE_SIGNATURE, RAW_PROBABILITY)
               if self.has_raw else None)
        return self._probabilities(outputs, expected, EXAMPLE_SIGNATURE), raw

    def predict_raw(self, inputs: dict[str, list[str]]) -> np.ndarray:
        """Probabilities for raw string inputs through `serving_default`, in batches."""
        import tensorflow as tf

        n = len(next(iter(inputs.values()))) if inputs else 0
        out = []
        for start in range(0, n, BATCH_SIZE):
            batch = {name: tf.constant(values[start:start + BATCH_SIZE], dtype=tf.string)
                     for name, values in inputs.items()}
            try:
                outputs = self._raw_fn(**batch)
            except Exception as exc:
                raise StepError(f"{self.dir}: the {self.role}'s {RAW_SIGNATURE!r} failed on raw "
                                f"eval features: {_first_line(exc)}") from exc
            out.append(self._probabilities(outputs, min(BATCH_SIZE, n - start), RAW_SIGNATURE))
        return np.concatenate(out) if out else np.zeros(0)


@dataclass
class EvalPass:
    labels: np.ndarray
    probabilities: np.ndarray
    raw_probabilities: np.ndarray | None  # before calibration (None: the model has no such output)
    baseline_probabilities: np.ndarray | None
    slice_values: dict[str, list[str]]
    sample: list[bytes] = field(default_factory=list)


def predict_eval_split(examples: str, config: DatasetConfig, model: Predictor,
                       baseline: Predictor | None, sample_size: int, seed: int) -> EvalPass:
    """One streamed pass over the eval split: labels, both models' probabilities, slice values
    and a seeded reservoir sample of serialized examples."""
    import tensorflow as tf

    from components.common.artifacts.examples import split_files

    label = config.label.feature
    slices = list(config.evaluation.slices)
    spec = {label: tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
    spec.update({name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in slices})
    files = split_files(examples, "eval")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(BATCH_SIZE)
    labels, probs, raw_probs, base_probs = [], [], [], []
    values: dict[str, list[str]] = {name: [] for name in slices}
    reservoir = analysis.ReservoirSample(sample_size, seed)
    where = os.path.join(examples, "eval")
    try:
        for batch in dataset.prefetch(2):
            try:
                parsed = tf.io.parse_example(batch, spec)
            except tf.errors.InvalidArgumentError as exc:
                raise StepError(f"{where}: not tf.Examples as ingest writes them: "
                                f"{_first_line(exc)}") from exc
            y = parsed[label].numpy()
            if np.any(y < 0):
                raise StepError(f"{where}: {int(np.sum(y < 0))} eval examples have no {label!r} "
                                "label")
            if np.any(y > 1):
                raise StepError(f"{where}: label {label!r} must be 0 or 1, found "
                                f"{sorted(set(y.tolist()) - {0, 1})}")
            labels.append(y)
            p, raw = model.predict_examples_with_raw(batch)
            probs.append(p)
            if raw is not None:
                raw_probs.append(raw)
            if baseline is not None:
                base_probs.append(baseline.predict_examples(batch))
            for name in slices:
                values[name].extend(v.decode("utf-8", "replace") for v in parsed[name].numpy())
            for record in batch.numpy():
                reservoir.offer(record)
    except (tf.errors.DataLossError, tf.errors.NotFoundError) as exc:
        raise StepError(f"{where}: cannot read the eval TFRecords: {_first_line(exc)}") from exc
    if not labels:
        raise StepError(f"{where}: the eval split has no examples")
    return EvalPass(
        labels=np.concatenate(labels),
        probabilities=np.concatenate(probs),
        raw_probabilities=np.concatenate(raw_probs) if model.has_raw else None,
        baseline_probabilities=np.concatenate(base_probs) if baseline is not None else None,
        slice_values=values,
        sample=list(reservoir.items),
    )


def feature_dependence(model: Predictor, sample: list[bytes], config: DatasetConfig,
                       threshold: float, seed: int) -> dict:
    """Counterfactual flips on the sample through `serving_default` (raw strings, "" when a
    feature is absent from the example), summarised per feature."""
    import tensorflow as tf

    notes = []
    string_inputs = [n for n, dtype in model.raw_inputs.items() if dtype == "string"]
    other = sorted(set(model.raw_inputs) - set(string_inputs))
    result = {"sample_size": len(sample), "seed": seed, "replacements": REPLACEMENTS,
              "features": {}, "signature_max_abs_diff": None, "notes": notes}
    if other:
        notes.append(f"serving_default inputs {other} are not strings; counterfactuals need raw "
                     "string inputs and were skipped")
        return result
    if not sample:
        notes.append("no examples sampled")
        return result
    spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="")
            for name in string_inputs}
    serialized = tf.constant(sample, dtype=tf.string)
    parsed = tf.io.parse_example(serialized, spec)
    raw = {name: [v.decode("utf-8", "replace") for v in parsed[name].numpy()]
           for name in string_inputs}
    features = [f for f in config.feature_names if f in raw]
    missing = [f for f in config.feature_names if f not in raw]
    if missing:
        notes.append(f"features {missing} are not inputs of serving_default")
    base = model.predict_raw(raw)
    # The book's lesson, checked: raw-string serving applies the preprocessing of the
    # tf.Example path exactly, so both signatures agree on the same examples.
    via_examples = model.predict_examples(serialized)
    diff = float(np.max(np.abs(base - via_examples)))
    result["signature_max_abs_diff"] = diff
    if diff > SIGNATURE_TOLERANCE:
        notes.append(f"serving_default and serving_tf_example disagree by up to {diff:.3g} on "
                     "the same examples: the two signatures do not preprocess alike")
    inputs, rows, replacements = analysis.counterfactual_inputs(raw, features, REPLACEMENTS)
    changed = model.predict_raw(inputs) if rows else np.zeros(0)
    result["features"] = analysis.summarise_counterfactuals(base, changed, rows, features,
                                                            threshold, replacements)
    return result


# ------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------


def blessing_rules(config: DatasetConfig, thresholds_path: str | None) -> dict[str, dict]:
    """The configured thresholds and tolerances, checked; `--thresholds` sections override."""
    source = f"{config.source}: evaluation"
    rules = {
        "thresholds": blessing.check_section(dict(config.evaluation.thresholds), "thresholds",
                                             source),
        "baseline_tolerance": blessing.check_section(dict(config.evaluation.baseline_tolerance),
                                                     "baseline_tolerance", source),
    }
    if thresholds_path:
        rules.update(blessing.load_overrides(thresholds_path))
    return rules


def classification_metadata(overall: dict, class_names: tuple[str, str]) -> dict:
    """What kfp's ClassificationMetrics.log_roc_curve and log_confusion_matrix produce."""
    matrix = overall["confusion_matrix"]["matrix"]
    metadata = {"confusionMatrix": {
        "annotationSpecs": [{"displayName": name} for name in class_names],
        "rows": [{"row": list(row)} for row in matrix],
    }}
    roc = overall["roc_curve"]
    if roc:
        metadata["confidenceMetrics"] = [
            {"confidenceThreshold": t, "recall": r, "falsePositiveRate": f}
            for f, r, t in zip(roc["fpr"], roc["tpr"], roc["thresholds"], strict=True)
        ]
    return metadata


def kfp_scalars(metrics: dict) -> dict[str, float]:
    """The KFP Metrics artifact: overall scalars, fairness gaps, the baseline's scalars."""
    keys = evaluation.SCALAR_METRICS
    overall = metrics["overall"]
    scalars = {**evaluation.scalar_metrics(overall, keys),
               "eval_examples": metrics["eval_examples"],
               "decision_threshold": metrics["decision_threshold"],
               **evaluation.scalar_metrics(overall, ("positive_rate", "predicted_positive_rate",
                                                     "mean_probability"))}
    raw = (metrics.get("calibration") or {}).get("before")
    if raw:
        scalars.update({f"raw_{k}": v for k, v in evaluation.scalar_metrics(
            raw, ("ece", "brier", "mean_probability", "predicted_positive_rate")).items()})
    for feature, entry in metrics["slices"].items():
        for metric, gap in entry["fairness"].items():
            if gap["gap"] is not None:
                scalars[f"{metric}_gap_{feature}"] = gap["gap"]
    if metrics["baseline"]:
        baseline = evaluation.scalar_metrics(metrics["baseline"]["overall"], keys)
        scalars.update({f"baseline_{k}": v for k, v in baseline.items()})
    # The privacy budget of a model trained with DP (dp_epsilon, dp_delta, ...).
    scalars.update(model_artifact.dp_scalars((metrics.get("model") or {}).get("training")))
    return scalars


def _training_summary(info: dict) -> dict | None:
    training = info.get("training")
    if not training:
        return None
    keys = ("dataset_version", "preprocessing_hash", "signature_hash", "code_version",
            "created_at", "hparams", "metrics", "decision_threshold",
            model_artifact.PRIVACY_FIELD)
    return {k: training.get(k) for k in keys if k in training}


def calibration_before_after(data: EvalPass, threshold: float, fallback: float) -> dict | None:
    """Calibration of the raw score (before, decided at the config's `value`: what a model
    without calibration answered) and of `probability` (after, at the model's threshold), with
    the AUC of both (a monotonic calibration keeps the ranking). None without a raw output."""
    from components.common.calibration import summary

    if data.raw_probabilities is None:
        return None
    out = {}
    for name, p, t in (("before", data.raw_probabilities, fallback),
                       ("after", data.probabilities, threshold)):
        out[name] = summary(data.labels, p, t)
        out[name]["auc"] = analysis.roc_auc(data.labels, p)
    return out


def evaluate(model: str, examples: str, output: str, config: DatasetConfig,
             baseline_ref: str | None = None, thresholds_path: str | None = None,
             seed: int = DEFAULT_SEED) -> dict:
    """Run the analysis and write metrics.json, blessing.json and report.html to `output`."""
    from components.common.staging import check_empty_output

    started = time.monotonic()
    check_empty_output(output)
    metadata = read_metadata(examples)
    if not metadata.get("rows", {}).get("eval"):
        raise StepError(f"{examples}: the eval split is empty; nothing to evaluate on")
    rules = blessing_rules(config, thresholds_path)
    saved_model_dir, model_info = describe_local_model(model, "--model")
    spec = config.evaluation
    fallback = spec.decision_threshold.value
    # S3 registry versions are downloaded here; loaded models no longer need their files.
    with tempfile.TemporaryDirectory(prefix="evaluate-baseline-") as download_dir:
        baseline_dir, baseline_info = (resolve_baseline(baseline_ref, download_dir)
                                       if baseline_ref else (None, None))
        predictor = Predictor(saved_model_dir, "model", need_raw=True)
        baseline = Predictor(baseline_dir, "baseline", need_raw=False) if baseline_dir else None
    threshold, threshold_source = predictor.decision_threshold(fallback)
    baseline_threshold = baseline.decision_threshold(fallback)[0] if baseline else None
    loaded = time.monotonic()  # after TensorFlow's import and model loading
    data = predict_eval_split(examples, config, predictor, baseline,
                              spec.counterfactual_sample, seed)
    seconds = time.monotonic() - loaded
    log.info("predicted %d eval examples in %.1f s (%.0f examples/s)%s", data.labels.size,
             seconds, data.labels.size / max(seconds, 1e-9),
             " with the baseline too" if baseline else "")

    overall = analysis.overall_metrics(data.labels, data.probabilities, threshold)
    slices = {}
    for name in spec.slices:
        rows = analysis.slice_metrics(data.labels, data.probabilities, data.slice_values[name],
                                      threshold, spec.min_slice_size)
        slices[name] = {"min_slice_size": spec.min_slice_size, "slices": rows,
                        "fairness": analysis.fairness_gaps(rows)}
    dependence = feature_dependence(predictor, data.sample, config, threshold, seed)
    baseline_overall = (analysis.overall_metrics(data.labels, data.baseline_probabilities,
                                                 baseline_threshold) if baseline else None)
    calibration_report = calibration_before_after(data, threshold, fallback)
    decision = blessing.decide(overall, rules["thresholds"], rules["baseline_tolerance"],
                               baseline_overall)
    if baseline_ref and baseline is None:
        decision["note"] = "no baseline model yet: only the absolute thresholds apply"
    elif not baseline_ref:
        decision["note"] = "no baseline given: only the absolute thresholds apply"

    created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    model_entry = {"uri": model, "saved_model": saved_model_dir,
                   "model_id": model_info["model_id"],
                   "model_id_source": model_info.get("model_id_source"),
                   "version": model_info.get("version"),
                   "training": _training_summary(model_info)}
    baseline_entry = {"uri": baseline_info.get("uri") if baseline_info else None,
                      "version": baseline_info.get("version") if baseline_info else None,
                      "semver": baseline_info.get("semver") if baseline_info else None,
                      "model_id": baseline_info.get("model_id") if baseline_info else None}
    if baseline_info and baseline_info.get("note"):
        baseline_entry["note"] = baseline_info["note"]
    metrics = {
        "model": model_entry,
        "dataset_version": metadata.get("dataset_version"),
        "examples": examples,
        "eval_examples": int(data.labels.size),
        "decision_threshold": threshold,
        "decision_threshold_source": threshold_source,
        "overall": overall,
        "calibration": calibration_report,
        "slices": slices,
        "feature_dependence": dependence,
        "baseline": ({**baseline_entry, "overall": baseline_overall}
                     if baseline_overall is not None else None),
        "code_version": code_version(),
        "created_at": created_at,
    }
    trained_on = (model_entry["training"] or {}).get("dataset_version")
    blessing_doc = {
        "blessed": decision["blessed"],
        "reasons": decision["reasons"],
        "model_id": model_entry["model_id"],
        "model": {k: model_entry[k] for k in ("uri", "model_id", "version")}
        | {"trained_on": trained_on},
        "baseline": baseline_entry,
        "dataset_version": metadata.get("dataset_version"),
        "thresholds": rules["thresholds"],
        "baseline_tolerance": rules["baseline_tolerance"],
        "decision_threshold": threshold,
        "note": decision.get("note"),
        "code_version": code_version(),
        "created_at": created_at,
    }
    metrics["seconds"] = round(time.monotonic() - started, 3)

    from components.evaluate.report import write_report

    with staged_output(output, last=evaluation.BLESSING_FILE) as staging:
        write_report(os.path.join(staging, evaluation.REPORT_FILE), metrics, blessing_doc, config)
        evaluation.write(staging, metrics, blessing_doc)
    log.info("evaluated %s on %s (%d eval examples): auc %s, ece %s (before calibration %s), "
             "threshold %.4g (%s); %s; %.1f s", model_entry["model_id"],
             metadata.get("dataset_version"), data.labels.size, overall["auc"], overall["ece"],
             (calibration_report or {}).get("before", {}).get("ece"), threshold,
             threshold_source, blessing.one_line(decision), time.monotonic() - started)
    class_names = (config.label.negative[0], config.label.positive[0])
    return {"metrics": metrics, "blessing": blessing_doc,
            "classification_metrics": classification_metadata(overall, class_names)}
