"""Model analysis over arrays: overall metrics, slices, fairness gaps, counterfactual summaries.

Pure functions of numpy arrays and lists (no TensorFlow), every metric computed by
scikit-learn. A prediction is positive when its probability is >= the decision threshold,
the same rule as the ROC curve's thresholds. A metric that is undefined on the data (AUC of a
one-class set, recall of a slice without positives) is None, with a note saying why, never NaN.
"""

from __future__ import annotations

import collections
import math
import random
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from components.common.calibration import CALIBRATION_BINS, label_arrays, reliability

MAX_ROC_POINTS = 200
MISSING = "(missing)"  # how an absent slice value is shown
CLASS_NAMES = ("negative", "positive")


def _float(value) -> float | None:
    """A JSON-safe float: None for NaN/inf/None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _quiet(func, *args, **kwargs):
    """Call a scikit-learn metric without its warnings (undefined cases are handled here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


def predictions(probabilities, threshold: float) -> np.ndarray:
    """Positive iff probability >= threshold (`artifacts.model.decide`'s rule, vectorized)."""
    return (np.asarray(probabilities) >= threshold).astype(np.int64)


def thin_indices(n: int, limit: int = MAX_ROC_POINTS) -> np.ndarray:
    """At most `limit` evenly spread indices of 0..n-1, first and last always kept."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, limit)).astype(int))


def roc_points(labels, probabilities, limit: int = MAX_ROC_POINTS) -> dict | None:
    """sklearn's ROC curve thinned to at most `limit` points; None for a one-class set.

    The first threshold sklearn returns is +inf (nothing predicted positive); it is reported
    as 1.0 so the curve stays JSON (and ML Metadata) safe.
    """
    from sklearn.metrics import roc_curve

    y, p = label_arrays(labels, probabilities)
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(y, p, pos_label=1)
    keep = thin_indices(len(fpr), limit)
    return {
        "fpr": [float(v) for v in fpr[keep]],
        "tpr": [float(v) for v in tpr[keep]],
        "thresholds": [float(min(max(v, 0.0), 1.0)) for v in thresholds[keep]],
    }


def calibration(labels, probabilities, n_bins: int = CALIBRATION_BINS) -> dict:
    """The reliability curve and expected calibration error (`common.calibration`)."""
    return reliability(labels, probabilities, n_bins)


def roc_auc(labels, probabilities) -> float | None:
    """ROC AUC, None for a one-class set."""
    from sklearn.metrics import roc_auc_score

    y, p = label_arrays(labels, probabilities)
    return None if len(np.unique(y)) < 2 else _float(roc_auc_score(y, p))


def overall_metrics(labels, probabilities, threshold: float) -> dict:
    """Every overall metric of binary predictions, computed by scikit-learn."""
    from sklearn import metrics as m

    y, p = label_arrays(labels, probabilities)
    if y.size == 0:
        raise ValueError("no examples to evaluate")
    y_hat = predictions(p, threshold)
    positives = int(y.sum())
    one_class = positives in (0, y.size)
    notes = []
    if one_class:
        only = "positive" if positives else "negative"
        notes.append(f"the eval set has only {only} labels: AUC and the ROC curve are undefined")
    if positives == 0:
        notes.append("no positive labels: PR AUC is undefined and recall is reported as 0")
    auc = None if one_class else _float(m.roc_auc_score(y, p))
    pr_auc = None if positives == 0 else _float(_quiet(m.average_precision_score, y, p))
    calibration_curve = calibration(y, p)
    matrix = m.confusion_matrix(y, y_hat, labels=[0, 1])
    return {
        "count": int(y.size),
        "positives": positives,
        "positive_rate": float(positives / y.size),
        "predicted_positive_rate": float(y_hat.mean()),
        "mean_probability": float(p.mean()),  # the positive rate the probabilities promise
        "decision_threshold": float(threshold),
        "auc": auc,
        "pr_auc": pr_auc,
        "accuracy": float(m.accuracy_score(y, y_hat)),
        "precision": float(m.precision_score(y, y_hat, zero_division=0)),
        "recall": float(m.recall_score(y, y_hat, zero_division=0)),
        "f1": float(m.f1_score(y, y_hat, zero_division=0)),
        "log_loss": float(m.log_loss(y, p, labels=[0, 1])),
        "brier": float(m.brier_score_loss(y, p, pos_label=1)),
        "ece": calibration_curve["ece"],
        "calibration": calibration_curve,
        # rows: true class (negative, positive); columns: predicted class
        "confusion_matrix": {"labels": list(CLASS_NAMES),
                             "matrix": [[int(v) for v in row] for row in matrix]},
        "roc_curve": roc_points(y, p),
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------
# Slices and fairness
# ------------------------------------------------------------------------------------------


def _slice_row(value: str, y: np.ndarray, p: np.ndarray, threshold: float,
               min_size: int) -> dict:
    from sklearn import metrics as m

    y_hat = predictions(p, threshold)
    positives = int(y.sum())
    negatives = int(y.size - positives)
    (tn, fp), (_fn, _tp) = m.confusion_matrix(y, y_hat, labels=[0, 1])
    return {
        "value": value,
        "count": int(y.size),
        "positives": positives,
        "auc": _float(m.roc_auc_score(y, p)) if positives and negatives else None,
        "recall": _float(_quiet(m.recall_score, y, y_hat, zero_division=np.nan))
        if positives else None,
        "fpr": float(fp / (fp + tn)) if negatives else None,
        "precision": _float(_quiet(m.precision_score, y, y_hat, zero_division=np.nan))
        if y_hat.any() else None,
        "eligible": bool(y.size >= min_size),
    }


def slice_metrics(labels, probabilities, values: Sequence[str], threshold: float,
                  min_size: int) -> list[dict]:
    """Metrics per value of one feature, largest slice first (ties by value).

    Every slice is listed; `eligible` says whether it is large enough (>= min_size examples)
    to be compared in the fairness gaps. A blank value is its own slice, `(missing)`.
    """
    y, p = label_arrays(labels, probabilities)
    shown = np.array([v if v else MISSING for v in values], dtype=object)
    if shown.size != y.size:
        raise ValueError(f"{shown.size} slice values but {y.size} labels")
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for index, value in enumerate(shown):
        groups[value].append(index)
    rows = [_slice_row(value, y[idx], p[idx], threshold, min_size)
            for value, idx in ((v, np.asarray(i)) for v, i in groups.items())]
    rows.sort(key=lambda r: (-r["count"], r["value"]))
    return rows


FAIRNESS_METRICS = ("recall", "fpr")


def fairness_gaps(slices: Iterable[dict]) -> dict:
    """Largest difference in recall and in false-positive rate between eligible slices.

    Slices below the minimum size, and slices where the metric is undefined (recall without
    positives, FPR without negatives), are not compared. Fewer than two comparable slices: the
    gap is None.
    """
    slices = list(slices)
    gaps = {}
    for metric in FAIRNESS_METRICS:
        comparable = [s for s in slices if s["eligible"] and s.get(metric) is not None]
        entry = {"gap": None, "max": None, "min": None, "slices_compared": len(comparable)}
        if len(comparable) >= 2:
            # Ties go to the larger slice (slices arrive largest first).
            high = max(comparable, key=lambda s: s[metric])
            low = min(comparable, key=lambda s: s[metric])
            entry.update(
                gap=float(high[metric] - low[metric]),
                max={"slice": high["value"], "value": high[metric], "count": high["count"]},
                min={"slice": low["value"], "value": low[metric], "count": low["count"]},
            )
        else:
            entry["note"] = (f"{len(comparable)} slice(s) with a defined {metric} and enough "
                             "examples; a gap needs two")
        gaps[metric] = entry
    return gaps


# ------------------------------------------------------------------------------------------
# Feature dependence (counterfactual flips)
# ------------------------------------------------------------------------------------------


class ReservoirSample:
    """A uniform, seeded sample of k items from a stream of unknown length (Algorithm R):
    memory stays at k items, and the same stream and seed give the same sample."""

    def __init__(self, k: int, seed: int):
        self.k = k
        self.items: list = []
        self.seen = 0
        self._random = random.Random(seed)

    def offer(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(item)
            return
        slot = self._random.randrange(self.seen)
        if slot < self.k:
            self.items[slot] = item


def replacement_values(values: Sequence[str], k: int = 3) -> list[str]:
    """The values a feature is swapped to: its k most common non-blank values in the sample
    (ties in order of first appearance), then blank."""
    counts = collections.Counter(v for v in values if v)
    return [v for v, _ in counts.most_common(k)] + [""]


def counterfactual_inputs(sample: dict[str, Sequence[str]], features: Sequence[str], k: int = 3
                          ) -> tuple[dict[str, list[str]], list[tuple[int, str, str]],
                                     dict[str, list[str]]]:
    """Every single-feature change of every sampled example, as one batch of raw inputs.

    `sample` holds the raw strings of every model input (one list per input, aligned). Each
    example is copied once per (feature, replacement) where the replacement differs from its
    own value. Returns the inputs, per row (example index, feature, replacement value), and
    the replacement values of each feature.
    """
    names = list(sample)
    n = len(sample[names[0]]) if names else 0
    inputs: dict[str, list[str]] = {name: [] for name in names}
    rows: list[tuple[int, str, str]] = []
    replacements = {}
    for feature in features:
        candidates = replacements[feature] = replacement_values(sample[feature], k)
        for index in range(n):
            for value in candidates:
                if value == sample[feature][index]:
                    continue
                for name in names:
                    inputs[name].append(value if name == feature else sample[name][index])
                rows.append((index, feature, value))
    return inputs, rows, replacements


def summarise_counterfactuals(base, changed, rows: Sequence[tuple[int, str, str]],
                              features: Sequence[str], threshold: float,
                              replacements: dict[str, list[str]] | None = None
                              ) -> dict[str, dict]:
    """Per feature: mean and max |change in probability| and the share of changes that flip
    the decision at the threshold, over all of that feature's counterfactual rows."""
    base = np.asarray(base, dtype=np.float64)
    changed = np.asarray(changed, dtype=np.float64)
    by_feature: dict[str, list[int]] = collections.defaultdict(list)
    tried: dict[str, list[str]] = {k: list(v) for k, v in (replacements or {}).items()}
    for position, (_index, feature, value) in enumerate(rows):
        by_feature[feature].append(position)
        if value not in tried.setdefault(feature, []):
            tried[feature].append(value)
    summary = {}
    for feature in features:
        positions = np.asarray(by_feature.get(feature, []), dtype=np.int64)
        if positions.size == 0:
            summary[feature] = {"counterfactuals": 0, "mean_abs_delta": None,
                                "max_abs_delta": None, "flip_rate": None,
                                "values_tried": tried.get(feature, [])}
            continue
        originals = base[[rows[i][0] for i in positions]]
        delta = changed[positions] - originals
        flips = predictions(originals, threshold) != predictions(changed[positions], threshold)
        summary[feature] = {
            "counterfactuals": int(positions.size),
            "mean_abs_delta": float(np.mean(np.abs(delta))),
            "max_abs_delta": float(np.max(np.abs(delta))),
            "mean_delta": float(np.mean(delta)),
            "flip_rate": float(np.mean(flips)),
            "values_tried": tried[feature],
        }
    return summary
