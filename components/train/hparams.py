"""Hyperparameters: one JSON object, so a tuner (Katib) can drive training with one argument."""

from __future__ import annotations

import json

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
}


def parse_hparams(text: str | None) -> dict:
    """Defaults overridden by the given JSON; unknown keys and bad values are errors."""
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
    hparams = {**DEFAULTS, **given}
    if isinstance(hparams["hidden_units"], int | str):
        hparams["hidden_units"] = [int(u) for u in str(hparams["hidden_units"]).split(",") if u]
    checks = {
        "learning_rate": lambda v: isinstance(v, int | float) and 0 < v < 1,
        "hidden_units": lambda v: isinstance(v, list) and v and all(
            isinstance(u, int) and u > 0 for u in v),
        "embedding_dim": lambda v: isinstance(v, int) and v > 0,
        "dropout": lambda v: isinstance(v, int | float) and 0 <= v < 1,
        "epochs": lambda v: isinstance(v, int) and v > 0,
        "batch_size": lambda v: isinstance(v, int) and v > 0,
        "early_stopping_patience": lambda v: isinstance(v, int) and v >= 0,
        "seed": lambda v: isinstance(v, int),
    }
    for key, ok in checks.items():
        if not ok(hparams[key]):
            raise StepError(f"--hparams: {key}={hparams[key]!r} is not valid")
    return hparams
