"""Push core: a blessed model goes into the registry with its lineage and its model card;
anything else does not.

Reads train's output and evaluate's output through their artifact modules. No TensorFlow:
files are copied, JSON read, the card written (artifacts/model_card.py) before the index lists
the version, so a published version always has its card.
"""

from __future__ import annotations

import json
import logging
import os

from components.common import documents, registry, storage
from components.common.artifacts import evaluation, model_card
from components.common.artifacts import model as model_artifact
from components.common.build_facts import code_version
from components.common.errors import StepError
from components.common.html_report import e, page

log = logging.getLogger(__name__)

STATUS_PUBLISHED = "published"
STATUS_ALREADY = "already published"
STATUS_NOT_BLESSED = "skipped: not blessed"


def parse_pipeline_images(text: str | None) -> dict[str, str] | None:
    """`--pipeline-images`: a JSON object {step: image}; None when not given."""
    if not text:
        return None
    try:
        images = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StepError(f"--pipeline-images is not valid JSON: {exc}") from exc
    if not isinstance(images, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in images.items()):
        raise StepError("--pipeline-images must be a JSON object of step -> image name")
    return images


def push(model_dir: str, evaluation_dir: str, registry_uri: str, model_name: str,
         config=None, pipeline_images: dict[str, str] | None = None) -> dict:
    """Publish a blessed model with its model card; returns the result recorded as push.json.

    Result: pushed (the model is a registry version now, published by this run or before),
    status (published / already published / skipped: not blessed), version (0 when not pushed),
    semver, uri, model_id, model_name, registry, model_card (the version's card folder, "" when
    not pushed). `config`: the dataset config (its `model_card` section says what the model is
    for; None: the built-in one); `pipeline_images`: the images the pipeline was compiled with.
    """
    registry.check_model_name(model_name)
    if config is None:
        from components.common.dataset_config import load_dataset_config

        config = load_dataset_config()
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
        "model_card": "",
    }
    if not blessing["blessed"]:
        failed = evaluation.failed_checks(blessing)
        log.info("model %s is not blessed (%s); nothing written to the registry", model_id,
                 "; ".join(failed) or "no reasons given")
        return {**result, "failed_checks": failed, "why": model_card.why_blessed(blessing)}

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
        model_artifact.PRIVACY_FIELD: (training.get(model_artifact.PRIVACY_FIELD)
                                       or {"mechanism": "none"}),
        "trained_at": training.get("created_at"),
        "source": {"model": os.path.abspath(model_dir),
                   "evaluation": os.path.abspath(evaluation_dir)},
    }
    metrics = (evaluation.read_metrics(evaluation_dir)
               if os.path.isfile(os.path.join(evaluation_dir, evaluation.METRICS_FILE)) else {})
    intended_use = {"intended_use": config.model_card.intended_use,
                    "out_of_scope": config.model_card.out_of_scope, "dataset_config": config.name}

    def write_card(record: dict) -> None:  # before the index lists the version
        card = model_card.build(lineage=record, training=training, metrics=metrics,
                                blessing=blessing, intended_use=intended_use,
                                code_version=code_version(), pipeline_images=pipeline_images)
        model_card.write(registry.card_uri(registry_uri, model_name, record["version"]), card)

    published = registry.publish(registry_uri, model_name, saved_model, lineage,
                                 evaluated_against=(baseline or {}).get("version"),
                                 before_index=write_card)
    return {
        **result,
        "pushed": True,
        "status": STATUS_PUBLISHED if published.created else STATUS_ALREADY,
        "version": published.version,
        "semver": published.semver,
        "uri": published.uri,
        "model_card": registry.card_uri(registry_uri, model_name, published.version),
    }


def card_page(result: dict) -> bytes:
    """The KFP HTML artifact: the version's model card, or a page saying why there is none."""
    folder = result.get("model_card")
    if folder and storage.exists(storage.join(folder, model_card.HTML_FILE)):
        return model_card.html_of(folder)
    if result["pushed"]:
        text = (f"Version {result['version']} of {result['model_name']} was published before "
                "model cards were written; it has no card.")
    else:
        text = f"Model {result['model_id']} was not published: {result.get('why', '')}"
    title = f"Model card: {result['model_name']}"
    return "\n".join(page(title, [f"<h1>{e(title)}</h1>", f"<p>{e(text)}</p>"])).encode()


def write_result(path: str, result: dict) -> None:
    """push.json: the step's outcome, for people and for the KFP `pushed_model` artifact."""
    documents.write_json(path, result)
