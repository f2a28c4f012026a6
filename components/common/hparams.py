"""The training contract a tuner drives: hyperparameters in, metric lines out.

In: one JSON object (`train --hparams`), defaults below, unknown keys and bad values refused.
Out: train prints its eval metrics on stdout, one `name=value` per line, the format Katib's
StdOut metrics collector parses with its default filter (METRIC_FILTER); the local tuner parses
the same lines with the same expression. Shared by train and tune, which never import each other.
"""

from __future__ import annotations

import json
import math
import re

from components.common.errors import StepError

DEFAULTS = {
    "learning_rate": 0.001,   # Adam
    "hidden_units": [64, 32],  # deep tower layer sizes
    "embedding_dim": 16,      # per categorical feature and for narrative tokens
    "dropout": 0.2,           # after each hidden layer
    "epochs": 10,             # upper bound; early stopping on eval AUC usually ends sooner
    "batch_size": 256,
    "early_stopping_patience": 2,
    "seed": 42,
    # Differentially private training (components/train/privacy.py; also `train --privacy`...).
    "privacy": "none",        # none | dp-sgd
    "noise_multiplier": 1.0,  # dp-sgd: Gaussian noise of std noise_multiplier * l2_clip per batch
    "l2_clip": 1.0,           # dp-sgd: each example's gradient clipped to this L2 norm
    "target_delta": None,     # dp-sgd: the delta of (epsilon, delta); null: 1 / training rows
    "max_epsilon": None,      # dp-sgd: refuse, before training, a planned epsilon above it
}
PRIVACY_MODES = ("none", "dp-sgd")
# Keys whose default is null ("not set") take numbers: their type for a search space.
_NULLABLE = {"target_delta": float, "max_epsilon": float}


def kind_of(name: str) -> type:
    """The type a hyperparameter's values have (float for the null-default numbers)."""
    return _NULLABLE.get(name) or type(DEFAULTS[name])


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


def parse_hparams(text: str | None, overrides: dict | None = None) -> dict:
    """Defaults overridden by the given JSON, then by `overrides` (train's own flags, e.g.
    `--privacy`); unknown keys and bad values are errors."""
    given = {}
    if text:
        try:
            given = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StepError(f"--hparams is not valid JSON: {exc}") from exc
        if not isinstance(given, dict):
            raise StepError("--hparams must be a JSON object, e.g. {\"learning_rate\": 0.01}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise StepError(f"--hparams: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    hparams = {**DEFAULTS, **given, **(overrides or {})}
    if isinstance(hparams["hidden_units"], int | str):
        try:
            hparams["hidden_units"] = [int(u) for u in str(hparams["hidden_units"]).split(",")
                                       if u.strip()]
        except ValueError:
            raise StepError(f"--hparams: hidden_units={hparams['hidden_units']!r} is not "
                            "valid (layer sizes like \"64,32\")") from None
    checks = {
        "learning_rate": lambda v: isinstance(v, int | float) and 0 < v < 1,
        "hidden_units": lambda v: isinstance(v, list) and v and all(
            isinstance(u, int) and u > 0 for u in v),
        "embedding_dim": lambda v: isinstance(v, int) and v > 0,
        "dropout": lambda v: isinstance(v, int | float) and 0 <= v < 1,
        "epochs": lambda v: isinstance(v, int) and v > 0,
        "batch_size": lambda v: isinstance(v, int) and v > 0,
        "early_stopping_patience": lambda v: isinstance(v, int) and v >= 0,
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
        "privacy": lambda v: v in PRIVACY_MODES,
        "noise_multiplier": lambda v: _number(v) and v > 0,
        "l2_clip": lambda v: _number(v) and v > 0,
        "target_delta": lambda v: v is None or (_number(v) and 0 < v < 1),
        "max_epsilon": lambda v: v is None or (_number(v) and v > 0),
    }
    hints = {"privacy": f"one of {', '.join(PRIVACY_MODES)}",
             "noise_multiplier": "a number > 0", "l2_clip": "a number > 0",
             "target_delta": "null or a number in (0, 1)", "max_epsilon": "null or a number > 0"}
    for key, ok in checks.items():
        if not ok(hparams[key]):
            hint = f" (expected {hints[key]})" if key in hints else ""
            raise StepError(f"--hparams: {key}={hparams[key]!r} is not valid{hint}")
    return hparams


# Katib v1beta1's default metrics filter (pkg/metricscollector/v1beta1/common/const.go).
METRIC_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
# What train prints: the metrics its model is compiled with, evaluated on the eval split.
METRICS = ("auc", "accuracy", "precision", "recall", "loss")


def metric_lines(metrics: dict[str, float]) -> str:
    """`auc=0.712345` lines, sorted by name."""
    return "".join(f"{name}={value:.6f}\n" for name, value in sorted(metrics.items()))


def parse_metric_lines(text: str) -> dict[str, float]:
    """Every `name=value` of the text, as Katib's collector reads it; the last value wins."""
    found = {}
    for match in re.finditer(METRIC_FILTER, text):
        try:
            found[match.group(1)] = float(match.group(2))
        except ValueError:  # "x=" with no digits
            continue
    return found
