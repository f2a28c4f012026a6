"""Live metrics of a served version from its labelled predictions, and the A/B verdict.

Pure numpy and the standard library (statistics.NormalDist), so every number can be checked by
hand (tests/test_feedback.py does):

- AUC (Mann-Whitney, ties count half) with DeLong's variance: each positive's share of negatives
  scored below it (V10) and each negative's share of positives scored above it (V01);
  var(AUC) = var(V10)/m + var(V01)/n. The 95% interval is AUC +- 1.96 sd, clipped to [0, 1].
- precision, recall, accuracy at the decision threshold (or the server's own decision when the
  log has one) with Wilson score intervals; F1, log loss, Brier score.
- calibration: the predicted probability in 10 equal-width bins against the observed positive
  rate (Wilson interval per bin), the expected calibration error (ECE: the bins' mean
  |observed - predicted|, weighted by size) and calibration-in-the-large (mean predicted minus
  observed rate, with its interval).
- A/B: stable and canary are independent samples (each request went to one version), so the
  difference of their AUCs has variance var_s + var_c; z = diff / sd, two-sided p-value. The
  labelled predictions still needed: the smallest total n at which a difference of
  max(|diff|, min_effect) would be significant at `alpha` with `power`, by the Hanley-McNeil
  variance at the observed AUCs, positive rate and traffic split.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)
MIN_PER_CLASS = 10  # positives and negatives per version before an AUC interval means much
BINS = 10
EPSILON = 1e-7


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def auc_delong(scores: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """(AUC, its DeLong variance); (None, None) with only one class, variance None below two
    of each class."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    m, n = len(positives), len(negatives)
    if m == 0 or n == 0:
        return None, None
    ranks = midranks(np.concatenate([positives, negatives]))
    auc = (ranks[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    if m < 2 or n < 2:
        return float(auc), None
    v10 = (ranks[:m] - midranks(positives)) / n
    v01 = 1.0 - (ranks[m:] - midranks(negatives)) / m
    variance = v10.var(ddof=1) / m + v01.var(ddof=1) / n
    return float(auc), float(variance)


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; None without trials."""
    if total == 0:
        return None
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(successes: int, total: int) -> dict:
    interval = wilson(successes, total)
    return {"value": successes / total if total else None, "n": total,
            "ci": list(interval) if interval else None}


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Reliability bins, ECE and calibration-in-the-large."""
    total = len(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # the binning of components/common/calibration.py (a value on an edge: the lower bin)
    index = np.searchsorted(edges[1:-1], probabilities, side="left")
    rows, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        if not count:
            continue
        predicted = float(probabilities[mask].mean())
        positives = int(labels[mask].sum())
        observed = positives / count
        ece += count / total * abs(observed - predicted)
        interval = wilson(positives, count)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": count,
                     "mean_predicted": predicted, "observed": observed,
                     "observed_ci": list(interval) if interval else None})
    mean_predicted = float(probabilities.mean())
    observed_rate = float(labels.mean())
    sd = math.sqrt(observed_rate * (1 - observed_rate) / total)
    gap = mean_predicted - observed_rate
    return {"bins": rows, "ece": ece, "mean_predicted": mean_predicted,
            "observed_rate": observed_rate,
            "calibration_in_the_large": {"value": gap, "ci": [gap - Z95 * sd, gap + Z95 * sd]}}


def version_metrics(probabilities, labels, decisions=None, threshold: float = 0.5) -> dict:
    """Every live metric of one version from its labelled predictions (arrays or sequences).

    `decisions` (1/0, or -1 where the log has none) override `probability >= threshold`.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int8)
    total = len(y)
    if total == 0:
        return {"n": 0, "positives": 0}
    predicted = p >= threshold
    if decisions is not None:
        given = np.asarray(decisions, dtype=np.int8)
        predicted = np.where(given >= 0, given == 1, predicted)
    tp = int(np.sum(predicted & (y == 1)))
    fp = int(np.sum(predicted & (y == 0)))
    fn = int(np.sum(~predicted & (y == 1)))
    tn = total - tp - fp - fn
    positives = tp + fn
    auc, variance = auc_delong(p, y)
    auc_ci = None
    if auc is not None and variance is not None:
        sd = math.sqrt(max(variance, 0.0))
        auc_ci = [max(0.0, auc - Z95 * sd), min(1.0, auc + Z95 * sd)]
    precision = _rate(tp, tp + fp)
    recall = _rate(tp, positives)
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    clipped = np.clip(p, EPSILON, 1 - EPSILON)
    log_loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    return {
        "n": total,
        "positives": positives,
        "positive_rate": _rate(positives, total),
        "auc": {"value": auc, "variance": variance, "ci": auc_ci,
                "enough_data": min(positives, total - positives) >= MIN_PER_CLASS},
        "precision": precision,
        "recall": recall,
        "accuracy": _rate(tp + tn, total),
        "f1": f1,
        "log_loss": log_loss,
        "brier": float(np.mean((p - y) ** 2)),
        "calibration": calibration(p, y),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "threshold": threshold,
    }


def scalar(metrics: dict, name: str) -> float | None:
    """A metric's point value (`auc`, `precision`, ..., `ece`), None when undefined."""
    if not metrics.get("n"):
        return None
    if name == "ece":
        return metrics["calibration"]["ece"]
    value = metrics.get(name)
    return value.get("value") if isinstance(value, dict) else value


def hanley_mcneil_variance(auc: float, positives: float, negatives: float) -> float:
    """Var(AUC) for the given class sizes (Hanley & McNeil, 1982)."""
    auc = min(max(auc, 0.5), 1 - 1e-6)
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    return (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
            + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)


def labelled_needed(auc_a: float, auc_b: float, positive_rate: float, share_b: float,
                    effect: float, alpha: float, power: float) -> int | None:
    """Smallest total of labelled predictions (both versions) at which an AUC difference of
    `effect` is significant at `alpha` with probability `power`, when a share `share_b` of the
    labelled predictions are version b's and a share `positive_rate` are positive."""
    if effect <= 0 or not 0 < positive_rate < 1 or not 0 < share_b < 1:
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)

    def sd(total: float) -> float:
        a = total * (1 - share_b)
        b = total * share_b
        return math.sqrt(
            hanley_mcneil_variance(auc_a, a * positive_rate, a * (1 - positive_rate))
            + hanley_mcneil_variance(auc_b, b * positive_rate, b * (1 - positive_rate)))

    low, high = 4.0, 8.0
    while z * sd(high) > effect:
        low, high = high, high * 2
        if high > 1e12:
            return None
    while high - low > 1:
        middle = (low + high) / 2
        if z * sd(middle) > effect:
            low = middle
        else:
            high = middle
    return int(math.ceil(high))


def ab_verdict(stable: int, canary: int, stable_metrics: dict, canary_metrics: dict, *,
               alpha: float = 0.05, power: float = 0.8, min_effect: float = 0.02,
               canary_share: float | None = None) -> dict:
    """Stable vs canary on AUC: the difference, its interval, the test, the verdict, and how
    many more labelled predictions a conclusive test needs when it is too early to tell."""
    result = {"stable": stable, "canary": canary, "metric": "auc", "alpha": alpha,
              "power": power, "min_effect": min_effect, "difference": None, "ci": None,
              "z": None, "p_value": None, "significant": False, "winner": None,
              "labelled": {"stable": stable_metrics.get("n", 0),
                           "canary": canary_metrics.get("n", 0)},
              "labelled_needed_total": None, "labelled_still_needed": None}
    auc_s = stable_metrics.get("auc", {}) if stable_metrics.get("n") else {}
    auc_c = canary_metrics.get("auc", {}) if canary_metrics.get("n") else {}
    n_now = result["labelled"]["stable"] + result["labelled"]["canary"]
    positives = stable_metrics.get("positives", 0) + canary_metrics.get("positives", 0)
    rate = positives / n_now if n_now and 0 < positives < n_now else 0.25
    share = (result["labelled"]["canary"] / n_now if n_now and result["labelled"]["canary"]
             and result["labelled"]["stable"] else canary_share or 0.1)
    enough = bool(auc_s.get("enough_data") and auc_c.get("enough_data")
                  and auc_s.get("variance") is not None and auc_c.get("variance") is not None)
    if enough:
        difference = auc_c["value"] - auc_s["value"]
        sd = math.sqrt(auc_s["variance"] + auc_c["variance"])
        z = difference / sd if sd > 0 else math.copysign(math.inf, difference or 1.0)
        p_value = 2 * NormalDist().cdf(-abs(z)) if math.isfinite(z) else 0.0
        result.update(difference=difference, ci=[difference - Z95 * sd, difference + Z95 * sd],
                      z=z, p_value=p_value, significant=p_value < alpha)
        if result["significant"]:
            result["winner"] = canary if difference > 0 else stable
    difference = result["difference"] or 0.0
    effect = max(abs(difference), min_effect)
    base_s = auc_s.get("value") if auc_s.get("value") is not None else 0.75
    base_c = auc_c.get("value") if auc_c.get("value") is not None else base_s
    needed = labelled_needed(base_s, base_c, rate, share, effect, alpha, power)
    result["labelled_needed_total"] = needed
    if result["significant"]:
        result["labelled_still_needed"] = 0
    elif needed is not None:
        result["labelled_still_needed"] = max(0, needed - n_now)
    result["planning"] = {"effect": effect, "positive_rate": rate, "canary_share": share}
    result["verdict"] = _verdict_text(result, enough)
    return result


def _verdict_text(result: dict, enough: bool) -> str:
    stable, canary = result["stable"], result["canary"]
    if not enough:
        return (f"too early to tell: version {stable} (stable) and {canary} (canary) need at "
                f"least {MIN_PER_CLASS} labelled positives and negatives each; about "
                f"{result['labelled_still_needed']} more labelled predictions are needed to "
                f"detect an AUC difference of {result['planning']['effect']:.3f}")
    if result["significant"]:
        better, worse = (canary, stable) if result["winner"] == canary else (stable, canary)
        return (f"version {better} is better than version {worse}: AUC difference (canary - "
                f"stable) {result['difference']:+.4f}, p = {result['p_value']:.3g}")
    return (f"no significant difference yet (AUC difference {result['difference']:+.4f}, "
            f"p = {result['p_value']:.3g}); about {result['labelled_still_needed']} more "
            f"labelled predictions are needed to detect a difference of "
            f"{result['planning']['effect']:.3f}")
