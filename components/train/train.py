"""Training core: fit the wide-and-deep model, export a SavedModel that takes raw features."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import time

from components.common.artifacts import model as model_artifact
from components.common.artifacts.examples import read_metadata
from components.common.dataset_config import DatasetConfig
from components.common.errors import StepError
from components.common.staging import staged_output

log = logging.getLogger(__name__)
SHUFFLE_BUFFER = 50_000


def class_weights(label_counts: dict) -> dict[int, float]:
    """Balanced weights, so the ~25% minority class counts as much as the majority."""
    positive, negative = label_counts["positive"], label_counts["negative"]
    if not positive or not negative:
        raise StepError(
            f"the train split has {positive} positive and {negative} negative rows; both "
            "classes are needed to train a classifier"
        )
    total = positive + negative
    return {0: total / (2 * negative), 1: total / (2 * positive)}


class _EpochLog:
    """One log line per epoch with counts and rate (Keras' own bar is off in containers)."""

    def __new__(cls, rows: int):
        import keras

        class EpochLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.monotonic()

            def on_epoch_end(self, epoch, logs=None):
                seconds = time.monotonic() - self.started
                shown = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
                log.info("epoch %d: %d examples in %.1f s (%.0f examples/s) %s", epoch + 1, rows,
                         seconds, rows / max(seconds, 1e-9), shown)

        return EpochLog()


def _datasets(examples: str, config: DatasetConfig, preprocessing, hparams: dict, cache_dir: str):
    """Preprocessing runs once (first epoch) and is cached to disk, not redone every epoch."""
    import tensorflow as tf

    from components.common.artifacts.examples import raw_dataset

    def transformed(split: str, shuffle: bool):
        dataset = raw_dataset(examples, split, config, hparams["batch_size"],
                              shuffle_buffer=SHUFFLE_BUFFER if shuffle else 0,
                              seed=hparams["seed"])
        dataset = dataset.map(lambda x, y: (preprocessing(x), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.cache(os.path.join(cache_dir, split))
        if shuffle:
            dataset = dataset.shuffle(256, seed=hparams["seed"], reshuffle_each_iteration=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return transformed("train", True), transformed("eval", False)


def export_serving_model(model, preprocessing, config: DatasetConfig, path: str) -> dict:
    """SavedModel with `serving_default` (raw strings) and `serving_tf_example` signatures."""
    import keras
    import tensorflow as tf

    from components.common.artifacts.examples import feature_spec

    features = config.feature_names
    archive = keras.export.ExportArchive()
    archive.track(preprocessing)
    archive.track(model)

    def predict(raw):
        return {model_artifact.OUTPUT: tf.reshape(model(preprocessing(raw), training=False),
                                                  [-1])}

    def serve_examples(examples):
        return predict(tf.io.parse_example(examples, feature_spec(config, with_label=False)))

    archive.add_endpoint(
        model_artifact.RAW_SIGNATURE, predict,
        input_signature=[{n: tf.TensorSpec([None], tf.string, name=n) for n in features}],
    )
    archive.add_endpoint(
        model_artifact.EXAMPLE_SIGNATURE, serve_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
    )
    archive.write_out(path, verbose=False)
    loaded = tf.saved_model.load(path)
    return {
        name: {
            "inputs": {k: v.dtype.name for k, v in fn.structured_input_signature[1].items()},
            "outputs": {k: v.dtype.name for k, v in fn.structured_outputs.items()},
        }
        for name, fn in loaded.signatures.items()
    }


def tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def train(examples: str, transform_dir: str, output: str, config: DatasetConfig,
          hparams: dict) -> dict:
    """Train and export; `examples` and `transform_dir` may be s3:// URIs (a Katib trial pod
    reads them from MinIO): they are downloaded to temporary directories first."""
    from components.common import storage

    with storage.local_directory(examples, "examples-") as local_examples, \
            storage.local_directory(transform_dir, "transform-") as local_transform:
        return _train(local_examples, local_transform, output, config, hparams)


def _train(examples: str, transform_dir: str, output: str, config: DatasetConfig,
           hparams: dict) -> dict:
    import keras

    from components.common.artifacts import transform as transform_artifact
    from components.common.build_facts import code_version
    from components.train.model import build_model

    started = time.monotonic()
    metadata = read_metadata(examples)
    preprocessing, transform_info = transform_artifact.load(transform_dir)
    if transform_info["dataset_version"] != metadata["dataset_version"]:
        raise StepError(
            f"{transform_dir}: preprocessing was fitted on {transform_info['dataset_version']} "
            f"but the examples are {metadata['dataset_version']}; run transform on this data"
        )
    if not metadata["rows"].get("eval"):
        raise StepError(f"{examples}: the eval split is empty; early stopping needs it")
    import warnings

    # tf.data input is shuffled by us, and a cached first epoch has no known length: both fine.
    warnings.filterwarnings("ignore", message=r".*shuffle=True.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*ran out of data.*", category=UserWarning)
    keras.utils.set_random_seed(hparams["seed"])
    weights = class_weights(metadata["label_counts"]["train"])
    with staged_output(output, last=model_artifact.TRAINING_FILE) as staging:
        cache_dir = tempfile.mkdtemp(prefix="train-cache-")
        try:
            train_ds, eval_ds = _datasets(examples, config, preprocessing, hparams, cache_dir)
            model = build_model(config, transform_info["vocabulary_sizes"], hparams)
            history = model.fit(
                train_ds, validation_data=eval_ds, epochs=hparams["epochs"],
                class_weight=weights, verbose=0,
                callbacks=[
                    _EpochLog(metadata["rows"]["train"]),
                    keras.callbacks.EarlyStopping(
                        monitor="val_auc", mode="max", restore_best_weights=True,
                        patience=hparams["early_stopping_patience"]),
                    keras.callbacks.TensorBoard(
                        log_dir=os.path.join(staging, model_artifact.LOGS_DIR)),
                ],
            )
            evaluated = model.evaluate(eval_ds, verbose=0, return_dict=True)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        metrics = {k: float(v) for k, v in evaluated.items()}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise StepError(f"training diverged (eval metrics {metrics}); lower learning_rate")
        model_path = model_artifact.saved_model_dir(staging)
        signatures = export_serving_model(model, preprocessing, config, model_path)
        seconds = time.monotonic() - started
        epochs_run = len(history.history["loss"])
        info = {
            "model_id": model_artifact.model_id_of(model_path),
            "signature_hash": model_artifact.signature_hash_of(signatures),
            "signatures": signatures,
            "dataset_version": metadata["dataset_version"],
            "preprocessing_hash": transform_info["preprocessing_hash"],
            "hparams": hparams,
            "metrics": metrics,
            "epochs_run": epochs_run,
            "class_weights": weights,
            "rows": {"train": metadata["rows"]["train"], "eval": metadata["rows"]["eval"]},
            "architecture": "wide_and_deep",
            # which TensorFlow exported the SavedModel: what a server must be able to load
            "tensorflow_version": tf_version(),
            "code_version": code_version(),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "examples_per_second": round(
                metadata["rows"]["train"] * epochs_run / max(seconds, 1e-9), 1),
        }
        model_artifact.write(staging, info, metrics)
    log.info("trained %s on %s in %d epochs, %.1f s: eval auc=%.4f", info["model_id"],
             info["dataset_version"], epochs_run, seconds, metrics.get("auc", float("nan")))
    return info
