"""The model artifact: train's output, what evaluate analyses and push publishes.

    <dir>/model/          the SavedModel (what the registry versions and TF Serving serves),
                          with `assets.extra/model_metadata.json` (the decision threshold and
                          the calibration; see `write_model_metadata`)
    <dir>/metrics.json    eval metrics at the end of training
    <dir>/logs/           TensorBoard
    <dir>/training.json   written last: the lineage (model_id, signature_hash, dataset_version,
                          preprocessing_hash, hparams, metrics, code_version, `privacy`, ...)

`privacy` says how the network was trained: `{"mechanism": "none"}`, or for DP-SGD
(components/train/privacy.py) `{"mechanism": "dp-sgd", "epsilon", "target_delta",
"noise_multiplier", "l2_clip", "sampling": "poisson", "sampling_rate", "steps", ...}`:
`privacy_of` reads it for evaluate, push and the model card; `DP_SCALARS` are the figures a
KFP Metrics artifact shows.

Also the model's identity (`model_id_of`, `signature_hash_of`: THE definitions, which train,
evaluate, push, the registry and deploy all use) and its serving contract: two signatures,
`serving_default` taking one raw string tensor per feature and `serving_tf_example` taking
serialized tf.Examples, both answering `probability` (calibrated: the chance of a positive)
and `raw_probability` (the network's own score before calibration, for analysis). A prediction
is positive when `probability >= decision_threshold` (`decide`); the threshold is the model's
own (its metadata file), `DEFAULT_DECISION_THRESHOLD` for a model that records none.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping

from components.common import documents
from components.common.errors import StepError

MODEL_DIR = "model"
TRAINING_FILE = "training.json"
METRICS_FILE = "metrics.json"
LOGS_DIR = "logs"
SAVED_MODEL_FILE = "saved_model.pb"
# Copied last: a reader that finds saved_model.pb finds the variables and assets too.
LAST_FILES = ("fingerprint.pb", SAVED_MODEL_FILE)
RAW_SIGNATURE = "serving_default"
EXAMPLE_SIGNATURE = "serving_tf_example"
OUTPUT = "probability"  # calibrated
RAW_OUTPUT = "raw_probability"  # before calibration
# Inside the SavedModel directory, so the registry copies it with every version (TF Serving
# ignores assets.extra/ files other than its warm-up requests).
METADATA_FILE = "assets.extra/model_metadata.json"
# The threshold of a model without metadata (trained before thresholds were chosen).
DEFAULT_DECISION_THRESHOLD = 0.5
REQUIRED_LINEAGE = ("model_id", "signature_hash")
PRIVACY_FIELD = "privacy"
# KFP Metrics name -> the privacy record's field, for a model trained with DP.
DP_SCALARS = {"dp_epsilon": "epsilon", "dp_delta": "target_delta",
              "dp_noise_multiplier": "noise_multiplier", "dp_l2_clip": "l2_clip"}


# ---------------------------------------------------------------------------------------------
# Layout.

def saved_model_dir(train_output: str) -> str:
    return os.path.join(train_output, MODEL_DIR)


def is_saved_model(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, SAVED_MODEL_FILE))


def write(directory: str, training: dict, metrics: dict) -> None:
    """metrics.json, then training.json (the marker of a finished train output)."""
    documents.write_json(os.path.join(directory, METRICS_FILE), metrics)
    documents.write_json(os.path.join(directory, TRAINING_FILE), training)


def read_training(train_output: str) -> dict:
    """training.json of a train output, with the identity fields every consumer relies on."""
    path = os.path.join(train_output, TRAINING_FILE)
    training = documents.read_json(path, TRAINING_FILE, "train")
    for key in REQUIRED_LINEAGE:
        if not training.get(key):
            raise StepError(f"{path}: missing {key!r}")
    return training


def locate(path: str) -> tuple[str, dict | None]:
    """A train output (`<dir>/model/` + `<dir>/training.json`) or a bare SavedModel directory
    -> (SavedModel directory, training.json or None).

    A SavedModel named `model/` inside a train output finds its training.json beside it.
    """
    if is_saved_model(saved_model_dir(path)):
        return saved_model_dir(path), _training_if_any(path)
    if is_saved_model(path):
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.basename(os.path.abspath(path)) == MODEL_DIR:
            return path, _training_if_any(parent)
        return path, None
    raise StepError(f"{path}: neither a train output ({MODEL_DIR}/{SAVED_MODEL_FILE}) nor a "
                    f"SavedModel directory ({SAVED_MODEL_FILE})")


def _training_if_any(train_output: str) -> dict | None:
    if not os.path.isfile(os.path.join(train_output, TRAINING_FILE)):
        return None
    return documents.read_json(os.path.join(train_output, TRAINING_FILE), TRAINING_FILE, "train")


def privacy_of(training: dict | None) -> dict | None:
    """The DP record of a training.json (or of any lineage carrying its `privacy` field) when
    the model was trained with differential privacy; None otherwise (also for older models)."""
    record = (training or {}).get(PRIVACY_FIELD)
    if not isinstance(record, dict) or record.get("mechanism") in (None, "none"):
        return None
    epsilon = record.get("epsilon")
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise StepError(f"{TRAINING_FILE}: {PRIVACY_FIELD}.epsilon must be a number for a "
                        f"model trained with {record.get('mechanism')}, got {epsilon!r}")
    return record


def dp_scalars(training: dict | None) -> dict[str, float]:
    """{"dp_epsilon": ..., "dp_delta": ..., ...} of a DP model (finite numbers only); {} else."""
    record = privacy_of(training) or {}
    return {name: float(record[key]) for name, key in DP_SCALARS.items()
            if isinstance(record.get(key), int | float) and math.isfinite(record[key])}


def write_model_metadata(saved_model: str, metadata: dict) -> None:
    """`assets.extra/model_metadata.json` of a SavedModel: `decision_threshold` (required, in
    [0, 1]), its `threshold_policy`, the `calibration` method. Written by train before the
    model's id is computed (the file is part of the model)."""
    path = os.path.join(saved_model, METADATA_FILE)
    _check_threshold(metadata.get("decision_threshold"), path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    documents.write_json(path, metadata)


def read_model_metadata(saved_model: str) -> dict | None:
    """The SavedModel's metadata, checked; None for a model that has none (an older model)."""
    path = os.path.join(saved_model, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    metadata = documents.read_json(path, "model metadata", "train")
    _check_threshold(metadata.get("decision_threshold"), path)
    return metadata


def decision_threshold_of(saved_model: str) -> tuple[float, str]:
    """(threshold, source): the model's own (source "model"), else the default ("default")."""
    metadata = read_model_metadata(saved_model)
    if metadata is None:
        return DEFAULT_DECISION_THRESHOLD, "default"
    return float(metadata["decision_threshold"]), "model"


def _check_threshold(value, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise StepError(f"{path}: decision_threshold must be a number in [0, 1], got {value!r}")


def decide(probabilities: Iterable[float], threshold: float) -> list[bool]:
    """THE decision rule: positive iff probability >= threshold. The server calls it; train's
    threshold choice and evaluate's metrics count with the same `>=` on arrays."""
    return [float(p) >= threshold for p in probabilities]


def signature_defs(saved_model: str) -> dict:
    """The SavedModel's SignatureDef map (protos, as TF Serving reports them)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model, SAVED_MODEL_FILE), "rb") as handle:
        saved.ParseFromString(handle.read())
    return dict(saved.meta_graphs[0].signature_def)


INIT_OP_SIGNATURE = "__saved_model_init_op"  # in every SignatureDef map, not a serving function


def serving_signatures(saved_model: str) -> dict[str, dict[str, dict[str, str]]]:
    """{signature: {"inputs": {name: dtype}, "outputs": {name: dtype}}}, dtypes as TensorFlow
    names them ("string", "float32"): the interface `signature_hash_of` hashes, read from
    saved_model.pb alone (loading the SavedModel to ask it took ~0.7 s of every training run)."""
    import tensorflow as tf

    return {
        name: {part: {key: tf.dtypes.as_dtype(tensor.dtype).name
                      for key, tensor in getattr(signature, part).items()}
               for part in ("inputs", "outputs")}
        for name, signature in signature_defs(saved_model).items()
        if name != INIT_OP_SIGNATURE
    }


# ---------------------------------------------------------------------------------------------
# Identity.

def model_id_of(model_dir: str) -> str:
    """The identity of a SavedModel: sha256 over its files, first 16 hex digits.

    Every file under `model_dir` counts: its path relative to `model_dir` (POSIX separators),
    its size and its bytes, in sorted path order; directories themselves and file times do
    not. So the same files give the same id wherever they are copied, and a changed byte, a
    renamed or added file changes it.
    """
    if not os.path.isdir(model_dir):
        raise StepError(f"{model_dir}: not a directory; expected a SavedModel directory")
    digest = hashlib.sha256()
    files = []
    for root, dirs, names in os.walk(model_dir):
        dirs.sort()
        for name in names:
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, model_dir).replace(os.sep, "/"), path))
    if not files:
        raise StepError(f"{model_dir}: empty directory; expected a SavedModel")
    for relative, path in sorted(files):
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(os.path.getsize(path).to_bytes(8, "big"))
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def signature_hash_of(signatures: Mapping[str, Mapping[str, Mapping[str, str]]]) -> str:
    """The hash of a model's serving interface, first 16 hex digits of a sha256.

    `signatures` is `{signature_name: {"inputs": {name: dtype}, "outputs": {name: dtype}}}` with
    dtype names as TensorFlow prints them (`tf.string.name` == "string", "float32"). Names and
    dtypes count, their order does not; shapes do not (batch size is not an interface change).
    A different hash makes the next registry version a new major version.
    """
    canonical = {
        str(name): {
            part: {str(k): str(v) for k, v in dict(spec.get(part) or {}).items()}
            for part in ("inputs", "outputs")
        }
        for name, spec in signatures.items()
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
