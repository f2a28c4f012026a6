"""Push core: a blessed model goes into the registry with its lineage; anything else does not.

Reads train's output and evaluate's output through their artifact modules. No TensorFlow:
files are copied, JSON read.
"""

from __future__ import annotations

import logging
import os

from components.common import documents, registry
from components.common.artifacts import evaluation
from components.common.artifacts import model as model_artifact
from components.common.build_facts import code_version
from components.common.errors import StepError

log = logging.getLogger(__name__)

STATUS_PUBLISHED = "published"
STATUS_ALREADY = "already published"
STATUS_NOT_BLESSED = "skipped: not blessed"


def push(model_dir: str, evaluation_dir: str, registry_uri: str, model_name: str) -> dict:
    """Publish a blessed model; returns the result recorded as push.json.

    Result: pushed (the model is a registry version now, published by this run or before),
    status (published / already published / skipped: not blessed), version (0 when not pushed),
    semver, uri, model_id, model_name, registry.
    """
    registry.check_model_name(model_name)
    training = model_artifact.read_training(model_dir)
    blessing = evaluation.read_blessing(evaluation_dir)
    model_id = training["model_id"]
    if blessing["model_id"] != model_id:
        raise StepError(
            f"{os.path.join(evaluation_dir, evaluation.BLESSING_FILE)} is about model "
            f"{blessing['model_id']}, but {os.path.join(model_dir, model_artifact.TRAINING_FILE)} "
            f"is model {model_id}: the evaluation is of another model; wire push to the "
            "evaluate step that evaluated this model"
        )
    result = {
        "pushed": False, "status": STATUS_NOT_BLESSED, "version": 0, "semver": "", "uri": "",
        "model_id": model_id, "model_name": model_name, "registry": registry_uri,
    }
    if not blessing["blessed"]:
        failed = evaluation.failed_checks(blessing)
        log.info("model %s is not blessed (%s); nothing written to the registry", model_id,
                 "; ".join(failed) or "no reasons given")
        return {**result, "failed_checks": failed}

    saved_model = model_artifact.saved_model_dir(model_dir)
    baseline = blessing.get("baseline") if isinstance(blessing.get("baseline"), dict) else None
    lineage = {
        "model_id": model_id,
        "signature_hash": training["signature_hash"],
        "dataset_version": training.get("dataset_version"),
        "preprocessing_hash": training.get("preprocessing_hash"),
        "hparams": training.get("hparams") or {},
        "tensorflow_version": training.get("tensorflow_version"),
        "metrics": {
            "evaluation": evaluation.overall_scalars(evaluation_dir),
            "training": evaluation.scalar_metrics(training.get("metrics")),
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
    published = registry.publish(registry_uri, model_name, saved_model, lineage,
                                 evaluated_against=(baseline or {}).get("version"))
    return {
        **result,
        "pushed": True,
        "status": STATUS_PUBLISHED if published.created else STATUS_ALREADY,
        "version": published.version,
        "semver": published.semver,
        "uri": published.uri,
    }


def write_result(path: str, result: dict) -> None:
    """push.json: the step's outcome, for people and for the KFP `pushed_model` artifact."""
    documents.write_json(path, result)
