"""How well probabilities read as probabilities: the reliability curve and the expected
calibration error, one definition for train (its lineage), evaluate (its metrics, blessing and
report) and the benchmarks.

Pure functions of numpy arrays; scikit-learn computes the curve.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_BINS = 10


def label_arrays(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int64) and scores (float64) as flat arrays of the same length."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    return y, p


def reliability(labels, probabilities, n_bins: int = CALIBRATION_BINS) -> dict:
    """sklearn's calibration curve (uniform bins) with each bin's count, and the expected
    calibration error: the count-weighted mean |observed rate - mean predicted probability|
    over the non-empty bins (None without examples)."""
    from sklearn.calibration import calibration_curve

    y, p = label_arrays(labels, probabilities)
    if p.size == 0:
        return {"bins": n_bins, "strategy": "uniform", "mean_predicted": [],
                "observed_rate": [], "count": [], "ece": None}
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform",
                                             pos_label=1)
    # The same binning calibration_curve uses, for the counts it does not return.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    return {
        "bins": n_bins,
        "strategy": "uniform",
        "mean_predicted": [float(v) for v in prob_pred],
        "observed_rate": [float(v) for v in prob_true],
        "count": [int(v) for v in counts],
        "ece": float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred))),
    }


def summary(labels, probabilities, threshold: float) -> dict:
    """ECE, Brier score, log loss, the mean probability (the positive rate the scores
    promise), the predicted positive rate at `threshold` against the actual positive rate,
    and the reliability curve."""
    from sklearn import metrics as m

    y, p = label_arrays(labels, probabilities)
    if y.size == 0:
        raise ValueError("no examples")
    curve = reliability(y, p)
    return {
        "count": int(y.size),
        "ece": curve["ece"],
        "brier": float(m.brier_score_loss(y, p, pos_label=1)),
        "log_loss": float(m.log_loss(y, p, labels=[0, 1])),
        "mean_probability": float(p.mean()),
        "positive_rate": float(y.mean()),
        "decision_threshold": float(threshold),
        "predicted_positive_rate": float(np.mean(p >= threshold)),
        "calibration": curve,
    }
