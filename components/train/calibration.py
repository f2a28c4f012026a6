"""Calibration of the trained model's scores, and the choice of its decision threshold.

Class weights make the network's score larger than the chance of a positive. After training,
a calibration is fitted on the *calibration holdout*: train-split rows kept out of training,
chosen by a hash of the id (`holdout_mask`; the same rows on every run and machine). It is
exported as TensorFlow ops inside the SavedModel (`calibrate`), so both signatures, every
registry version and every server answer calibrated probabilities with no Python object.

- `platt`: p = sigmoid(a * logit(raw) + b), a and b by maximum likelihood (scikit-learn's
  logistic regression on the logit of the raw score, unregularized), with a >= 0: a score that
  does not rank the holdout at all becomes its base rate instead of being turned upside down.
  Strictly monotonic when a > 0: the ranking, hence the AUC, does not move.
- `isotonic`: scikit-learn's IsotonicRegression (non-decreasing, clipped to [0, 1] and to the
  fitted range), served as its piecewise-linear interpolation between the fitted knots.
  Monotonic but flat in places: scores inside one flat step tie, so the AUC can move a little.
- `none`: the identity (`probability` == `raw_probability`).

The threshold (`choose_threshold`) is chosen on the holdout's calibrated probabilities:
`fixed`, `max_f1` or `min_cost`. Candidates are the holdout's own probabilities (predict
positive iff p >= t) plus one just above the largest (nothing positive); among equally good
candidates the highest wins (the fewest positive predictions).
"""

from __future__ import annotations

import numpy as np

from components.common.calibration import label_arrays
from components.common.dataset_config import ThresholdPolicy
from components.common.errors import StepError

HOLDOUT_BUCKETS = 10_000
HOLDOUT_PREFIX = "calibration/"
HOLDOUT_METHOD = (f"to_hash_bucket_fast('{HOLDOUT_PREFIX}' + split salt + id, "
                  f"{HOLDOUT_BUCKETS}) < holdout_fraction * {HOLDOUT_BUCKETS} -> calibration")
EPSILON = 1e-7  # raw scores are clipped to [EPSILON, 1 - EPSILON] before their logit


# ---------------------------------------------------------------------------------------------
# Which rows.

def holdout_mask(ids, fraction: float, salt: str = ""):
    """A bool tensor: True for the ids in the calibration holdout.

    FarmHash64 through `tf.strings.to_hash_bucket_fast`, whose hash TensorFlow guarantees
    never to change; the prefix makes it independent of ingest's eval split (blake2b).
    """
    import tensorflow as tf

    buckets = tf.strings.to_hash_bucket_fast(tf.add(HOLDOUT_PREFIX + salt, ids),
                                             HOLDOUT_BUCKETS)
    return buckets < int(round(fraction * HOLDOUT_BUCKETS))


# ---------------------------------------------------------------------------------------------
# Fitting (scikit-learn, on numpy arrays).

def logit(raw) -> np.ndarray:
    p = np.clip(np.asarray(raw, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def check_holdout(positives: int, rows: int, where: str) -> None:
    """Both classes in the holdout, or a one-line error saying what to change."""
    if rows == 0 or positives in (0, rows):
        raise StepError(
            f"{where}: the calibration holdout has {rows} rows, {positives} positive; both "
            "classes are needed to calibrate and choose a threshold (raise "
            "calibration.holdout_fraction, add data, or set calibration.method: none and a "
            "fixed evaluation.decision_threshold)")


def fit(method: str, labels, raw, where: str = "calibration") -> dict:
    """The calibration's parameters (JSON-safe): {"method", ...}."""
    y, raw = label_arrays(labels, raw)
    if method == "none":
        return {"method": "none"}
    check_holdout(int(y.sum()), int(y.size), where)
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        x = logit(raw).reshape(-1, 1)
        regression = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(x, y)
        a, b = float(regression.coef_[0, 0]), float(regression.intercept_[0])
        if a <= 0.0:  # the best non-decreasing sigmoid: the base rate
            rate = y.mean()
            a, b = 0.0, float(np.log(rate) - np.log1p(-rate))
        return {"method": "platt", "a": a, "b": b}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        regression = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True,
                                        out_of_bounds="clip").fit(raw, y)
        return {"method": "isotonic",
                "x": [float(v) for v in regression.X_thresholds_],
                "y": [float(v) for v in regression.y_thresholds_]}
    raise StepError(f"{where}: unknown calibration method {method!r}")


# ---------------------------------------------------------------------------------------------
# The same maths as TensorFlow ops (what the SavedModel runs).

def calibrate(raw, parameters: dict):
    """Calibrated probabilities (float32) of raw scores (a float32 tensor), in float64 inside.

    Traced into the serving functions: the parameters become constants of the graph.
    """
    import tensorflow as tf

    method = parameters["method"]
    if method == "none":
        return tf.identity(raw)
    x = tf.cast(raw, tf.float64)
    if method == "platt":
        p = tf.clip_by_value(x, EPSILON, 1 - EPSILON)
        z = parameters["a"] * (tf.math.log(p) - tf.math.log1p(-p)) + parameters["b"]
        return tf.cast(tf.sigmoid(z), tf.float32)
    if method == "isotonic":
        xs, ys = list(parameters["x"]), list(parameters["y"])
        if len(xs) == 1:  # one knot: a constant
            xs, ys = xs * 2, ys * 2
        knots_x = tf.constant(xs, tf.float64)
        knots_y = tf.constant(ys, tf.float64)
        x = tf.clip_by_value(x, xs[0], xs[-1])
        # The last knot <= x (np.interp's segment), at most the second to last.
        i = tf.clip_by_value(tf.searchsorted(knots_x, x, side="right") - 1, 0, len(xs) - 2)
        x0, x1 = tf.gather(knots_x, i), tf.gather(knots_x, i + 1)
        y0, y1 = tf.gather(knots_y, i), tf.gather(knots_y, i + 1)
        span = x1 - x0
        weight = tf.where(span > 0, (x - x0) / tf.where(span > 0, span, 1.0), 0.0)
        return tf.cast(y0 + weight * (y1 - y0), tf.float32)
    raise ValueError(f"unknown calibration method {method!r}")


def calibrate_numpy(raw, parameters: dict) -> np.ndarray:
    """`calibrate` run eagerly on a numpy array: what the SavedModel answers for these scores."""
    import tensorflow as tf

    return calibrate(tf.constant(np.asarray(raw, dtype=np.float32)), parameters).numpy()


# ---------------------------------------------------------------------------------------------
# The decision threshold.

def _counts(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(TP, FP, FN) when predicting positive iff p >= t, for each t."""
    ordered = np.sort(p)
    positives_ordered = np.sort(p[y == 1])
    predicted = p.size - np.searchsorted(ordered, thresholds, side="left")
    tp = positives_ordered.size - np.searchsorted(positives_ordered, thresholds, side="left")
    return tp, predicted - tp, positives_ordered.size - tp


def threshold_stats(labels, probabilities, threshold: float) -> dict:
    """Precision, recall, F1, errors and the predicted positive rate at one threshold."""
    y, p = label_arrays(labels, probabilities)
    tp, fp, fn = (int(v[0]) for v in _counts(y, p, np.array([threshold])))
    return {
        "rows": int(y.size), "positives": int(y.sum()),
        "true_positives": tp, "false_positives": fp, "false_negatives": fn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "predicted_positive_rate": (tp + fp) / y.size if y.size else None,
    }


def choose_threshold(policy: ThresholdPolicy, labels, probabilities) -> dict:
    """The decision threshold by `policy` on (labels, calibrated probabilities), with the
    holdout's figures at it: {"policy", "value", ..., "precision", "recall", "f1", ...}."""
    y, p = label_arrays(labels, probabilities)
    chosen = {"policy": policy.policy}
    if policy.policy == "fixed":
        value = policy.value
    else:
        if y.size == 0:
            raise ValueError("no examples to choose a threshold on")
        candidates = np.unique(p)
        above = np.nextafter(candidates[-1], np.inf)
        if above <= 1.0:
            candidates = np.append(candidates, above)  # nothing predicted positive
        tp, fp, fn = _counts(y, p, candidates)
        if policy.policy == "max_f1":
            denominator = 2 * tp + fp + fn
            score = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
            best = np.flatnonzero(score >= score.max() - 1e-12)[-1]
        elif policy.policy == "min_cost":
            cost = policy.cost_false_positive * fp + policy.cost_false_negative * fn
            best = np.flatnonzero(cost <= cost.min() * (1 + 1e-12))[-1]
            chosen.update(
                cost_false_positive=policy.cost_false_positive,
                cost_false_negative=policy.cost_false_negative,
                cost=float(cost[best]), cost_per_row=float(cost[best] / y.size),
                # For reference: the best threshold of perfectly calibrated probabilities.
                bayes_threshold=policy.cost_false_positive
                / (policy.cost_false_positive + policy.cost_false_negative))
        else:
            raise ValueError(f"unknown threshold policy {policy.policy!r}")
        value = float(candidates[best])
    return {**chosen, "value": float(value), **threshold_stats(y, p, value)}
