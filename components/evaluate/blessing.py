"""The blessing decision: absolute thresholds, then no regression against the baseline.

A threshold is a minimum for metrics where higher is better (auc, accuracy, precision, recall,
f1, pr_auc) and a maximum where lower is better (log_loss, brier, ece). Against a baseline, for
each metric in `baseline_tolerance`: higher-is-better metrics must reach baseline - tolerance,
lower-is-better ones stay within baseline + tolerance. A metric that is undefined on the eval
set (AUC of a one-class set) fails its check: a model is blessed on evidence only.
"""

from __future__ import annotations

import math

from components.common.errors import StepError

HIGHER_IS_BETTER = ("auc", "accuracy", "precision", "recall", "f1", "pr_auc")
LOWER_IS_BETTER = ("log_loss", "brier", "ece")
SUPPORTED = HIGHER_IS_BETTER + LOWER_IS_BETTER
BOUNDED = {*HIGHER_IS_BETTER, "brier", "ece"}  # values in [0, 1]
SECTIONS = ("thresholds", "baseline_tolerance")


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StepError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise StepError(f"{where}: expected a finite number, got {value!r}")
    return value


def check_section(values, section: str, source: str) -> dict[str, float]:
    """A `thresholds` or `baseline_tolerance` mapping, checked: known metrics, sane numbers."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise StepError(f"{source}: {section}: expected a mapping of metric -> number, "
                        f"got {values!r}")
    checked = {}
    for metric, raw in values.items():
        where = f"{source}: {section}.{metric}"
        if metric not in SUPPORTED:
            raise StepError(f"{where}: unknown metric; use one of {list(SUPPORTED)}")
        value = _number(raw, where)
        if section == "baseline_tolerance" and value < 0:
            raise StepError(f"{where}: a tolerance cannot be negative, got {value}")
        if section == "thresholds" and metric in BOUNDED and not 0.0 <= value <= 1.0:
            raise StepError(f"{where}: must be between 0 and 1, got {value}")
        if section == "thresholds" and value < 0:
            raise StepError(f"{where}: cannot be negative, got {value}")
        checked[str(metric)] = value
    return checked


def parse_overrides(raw, source: str) -> dict[str, dict[str, float]]:
    """The `--thresholds` YAML: `thresholds` and/or `baseline_tolerance` at the top level, or
    under `evaluation:` (a copy of the dataset config's section). Only the sections given
    replace the configuration's; an empty mapping means no checks of that kind."""
    if raw is None:
        raise StepError(f"{source}: empty thresholds file; give thresholds and/or "
                        "baseline_tolerance")
    if not isinstance(raw, dict):
        raise StepError(f"{source}: expected a mapping with thresholds and/or baseline_tolerance")
    if set(raw) == {"evaluation"}:
        raw = raw["evaluation"]
        source = f"{source}: evaluation"
        if not isinstance(raw, dict):
            raise StepError(f"{source}: expected a mapping")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise StepError(f"{source}: unknown key(s) {unknown}; use {list(SECTIONS)}")
    if not raw:
        raise StepError(f"{source}: give thresholds and/or baseline_tolerance")
    return {section: check_section(raw[section], section, source)
            for section in SECTIONS if section in raw}


def load_overrides(path: str) -> dict[str, dict[str, float]]:
    from components.common import documents

    return parse_overrides(documents.read_yaml(path, "thresholds file"), path)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _check(kind: str, metric: str, value, bound: float, suffix: str = "", **extra) -> dict:
    lower = metric in LOWER_IS_BETTER
    op = "<=" if lower else ">="
    if value is None:
        passed = False
        extra["note"] = f"{metric} is undefined on the eval set"
    else:
        passed = bool(value <= bound if lower else value >= bound)
    return {"check": f"{metric} {op} {_fmt(bound)}{suffix}", "kind": kind, "metric": metric,
            "passed": passed, "value": value, "threshold": bound, **extra}


def decide(metrics: dict, thresholds: dict[str, float], tolerance: dict[str, float],
           baseline_metrics: dict | None) -> dict:
    """`blessed` iff every threshold holds and (with a baseline) no metric in `tolerance`
    regressed beyond it. Returns {"blessed", "reasons": [one entry per check]}."""
    reasons = []
    for metric, bound in thresholds.items():
        reasons.append(_check("threshold", metric, metrics.get(metric), bound))
    if baseline_metrics is not None:
        for metric, tol in tolerance.items():
            base = baseline_metrics.get(metric)
            if base is None:
                reasons.append({
                    "check": f"{metric} vs baseline", "kind": "baseline", "metric": metric,
                    "passed": False, "value": metrics.get(metric), "threshold": None,
                    "baseline": None, "tolerance": tol,
                    "note": f"the baseline's {metric} is undefined on the eval set",
                })
                continue
            bound = base + tol if metric in LOWER_IS_BETTER else base - tol
            sign = "+" if metric in LOWER_IS_BETTER else "-"
            reasons.append(_check(
                "baseline", metric, metrics.get(metric), bound,
                f" (baseline {_fmt(base)} {sign} {_fmt(tol)})", baseline=base, tolerance=tol,
            ))
    return {"blessed": all(r["passed"] for r in reasons), "reasons": reasons}


def one_line(decision: dict) -> str:
    """`not blessed: auc >= 0.69 (baseline 0.7 - 0.01): got 0.5` (the failed checks, or all)."""
    failed = [r for r in decision["reasons"] if not r["passed"]]
    shown = failed if failed else decision["reasons"]
    parts = [f"{r['check']}: got {'undefined' if r['value'] is None else _fmt(r['value'])}"
             for r in shown]
    head = "blessed" if decision["blessed"] else "not blessed"
    return f"{head}: " + ("; ".join(parts) if parts else "no checks configured")
