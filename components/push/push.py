"""Push core: a blessed model goes into the registry with its lineage; anything else does not.

Reads `<model>/training.json` and `<model>/model/` (train's output) and `<evaluation>/
blessing.json` and `metrics.json` (evaluate's output). No TensorFlow: files are copied, JSON read.
"""

from __future__ import annotations

import json
import logging
import math
import os

from components.common import registry, storage
from components.common.code_version import code_version
from components.common.errors import StepError

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"
MODEL_SUBDIR = "model"
BLESSING_FILE = "blessing.json"
METRICS_FILE = "metrics.json"
STATUS_PUBLISHED = "published"
STATUS_ALREADY = "already published"
STATUS_NOT_BLESSED = "skipped: not blessed"


def _read_json_file(path: str, what: str, producer: str) -> dict:
    if not os.path.isfile(path):
        raise StepError(f"{path}: no {what}; not the output of a finished {producer} step")
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StepError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise StepError(f"{path}: expected a JSON object")
    return value


def read_training(model_dir: str) -> dict:
    training = _read_json_file(os.path.join(model_dir, TRAINING_FILE), TRAINING_FILE, "train")
    for key in ("model_id", "signature_hash"):
        if not training.get(key):
            raise StepError(f"{os.path.join(model_dir, TRAINING_FILE)}: missing {key!r}")
    return training


def read_blessing(evaluation_dir: str) -> dict:
    path = os.path.join(evaluation_dir, BLESSING_FILE)
    blessing = _read_json_file(path, BLESSING_FILE, "evaluate")
    if not isinstance(blessing.get("blessed"), bool):
        raise StepError(f"{path}: 'blessed' must be true or false, got {blessing.get('blessed')!r}")
    if not blessing.get("model_id"):
        raise StepError(f"{path}: missing 'model_id' (which model was evaluated?)")
    return blessing


def scalar_metrics(values) -> dict:
    """Finite numbers only (AUC, loss...); curves, matrices and slices stay in metrics.json."""
    if not isinstance(values, dict):
        return {}
    return {str(k): v for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def evaluation_metrics(evaluation_dir: str) -> dict:
    """The overall metrics of metrics.json (its `overall` object, else its top level)."""
    path = os.path.join(evaluation_dir, METRICS_FILE)
    if not os.path.isfile(path):
        log.warning("%s: missing; the lineage will have no evaluation metrics", path)
        return {}
    metrics = _read_json_file(path, METRICS_FILE, "evaluate")
    overall = metrics.get("overall")
    return scalar_metrics(overall if isinstance(overall, dict) else metrics)


def _failed_checks(blessing: dict) -> list[str]:
    reasons = blessing.get("reasons") or []
    return [str(r.get("check", r)) if isinstance(r, dict) else str(r)
            for r in reasons if not (isinstance(r, dict) and r.get("passed"))]


def push(model_dir: str, evaluation_dir: str, registry_uri: str, model_name: str) -> dict:
    """Publish a blessed model; returns the result recorded as push.json.

    Result: pushed (the model is a registry version now, published by this run or before),
    status (published / already published / skipped: not blessed), version (0 when not pushed),
    semver, uri, model_id, model_name, registry.
    """
    registry.check_model_name(model_name)
    training = read_training(model_dir)
    blessing = read_blessing(evaluation_dir)
    model_id = training["model_id"]
    if blessing["model_id"] != model_id:
        raise StepError(
            f"{os.path.join(evaluation_dir, BLESSING_FILE)} is about model {blessing['model_id']}, "
            f"but {os.path.join(model_dir, TRAINING_FILE)} is model {model_id}: the evaluation "
            "is of another model; wire push to the evaluate step that evaluated this model"
        )
    result = {
        "pushed": False, "status": STATUS_NOT_BLESSED, "version": 0, "semver": "", "uri": "",
        "model_id": model_id, "model_name": model_name, "registry": registry_uri,
    }
    if not blessing["blessed"]:
        failed = _failed_checks(blessing)
        log.info("model %s is not blessed (%s); nothing written to the registry", model_id,
                 "; ".join(failed) or "no reasons given")
        return {**result, "failed_checks": failed}

    saved_model = os.path.join(model_dir, MODEL_SUBDIR)
    baseline = blessing.get("baseline") if isinstance(blessing.get("baseline"), dict) else None
    _warn_if_baseline_moved(registry_uri, model_name, baseline)
    lineage = {
        "model_id": model_id,
        "signature_hash": training["signature_hash"],
        "dataset_version": training.get("dataset_version"),
        "preprocessing_hash": training.get("preprocessing_hash"),
        "hparams": training.get("hparams") or {},
        "metrics": {
            "evaluation": evaluation_metrics(evaluation_dir),
            "training": scalar_metrics(training.get("metrics")),
        },
        "baseline": baseline,
        "baseline_version": (baseline or {}).get("version"),
        "blessing": {"reasons": blessing.get("reasons") or [],
                     "dataset_version": blessing.get("dataset_version")},
        "code_version": training.get("code_version") or code_version(),
        "push_code_version": code_version(),
        "trained_at": training.get("created_at"),
        "source": {"model": os.path.abspath(model_dir),
                   "evaluation": os.path.abspath(evaluation_dir)},
    }
    published = registry.publish(registry_uri, model_name, saved_model, lineage)
    return {
        **result,
        "pushed": True,
        "status": STATUS_PUBLISHED if published.created else STATUS_ALREADY,
        "version": published.version,
        "semver": published.semver,
        "uri": published.uri,
    }


def _warn_if_baseline_moved(registry_uri: str, model_name: str, baseline: dict | None) -> None:
    """The model beat the baseline it was evaluated against; say so if current moved since."""
    current = registry.read_index(registry_uri, model_name).get("current")
    evaluated = (baseline or {}).get("version")
    if current is not None and evaluated != current:
        log.warning("model was evaluated against baseline version %s, but the registry's "
                    "current version is now %s", evaluated, current)


def write_result(path: str, result: dict) -> None:
    """push.json: the step's outcome, for people and for the KFP `pushed_model` artifact."""
    storage.write_bytes(path, (json.dumps(result, indent=2, sort_keys=True) + "\n").encode())
