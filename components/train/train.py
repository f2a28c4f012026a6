"""Training core: fit the wide-and-deep model on the train split minus the calibration holdout,
calibrate its scores and choose the decision threshold on that holdout, and export a SavedModel
that takes raw features and answers calibrated probabilities (see calibration.py)."""

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
# Shuffling, in memory the step must hold: records are read round-robin from every shard (the
# shards cover different stretches of the source file), shuffled once in a buffer of
# SHUFFLE_BUFFER serialized records (about 1.5 KB each with a narrative: ~30 MB), and the
# preprocessed batches are reshuffled each epoch among BATCH_SHUFFLE of them (~35 MB). Larger
# buffers cost memory without a measurable gain in AUC (bench/README.md, bench_scale).
SHUFFLE_BUFFER = 20_000
BATCH_SHUFFLE = 64


def class_weights(label_counts: dict) -> dict[int, float]:
    """Balanced weights, so the ~25% minority class counts as much as the majority."""
    positive, negative = label_counts["positive"], label_counts["negative"]
    if not positive or not negative:
        raise StepError(
            f"the train split (without the calibration holdout) has {positive} positive and "
            f"{negative} negative rows; both "
            "classes are needed to train a classifier"
        )
    total = positive + negative
    return {0: total / (2 * negative), 1: total / (2 * positive)}


def _peak_rss_mib() -> float:
    """The process's peak resident memory so far (what a pod's memory limit is held against)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
                log.info("epoch %d: %d examples in %.1f s (%.0f examples/s) %s; peak memory "
                         "%.0f MiB", epoch + 1, rows, seconds, rows / max(seconds, 1e-9), shown,
                         _peak_rss_mib())

        return EpochLog()


class _EpochSummaries:
    """TensorBoard scalars once per epoch, as Keras' TensorBoard callback lays them out
    (`<logs>/train` and `<logs>/validation`, `epoch_<metric>`). That callback itself is not
    used: with it train's memory grew by about 70 MiB per epoch at 3.1 million rows (1,124 MiB
    after 4 epochs against a flat 808 MiB without it, bench/README.md)."""

    def __new__(cls, directory: str):
        import keras
        import tensorflow as tf

        class EpochSummaries(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.writers = {part: tf.summary.create_file_writer(os.path.join(directory, part))
                                for part in ("train", "validation")}

            def on_epoch_end(self, epoch, logs=None):
                for name, value in (logs or {}).items():
                    part, metric = (("validation", name[4:]) if name.startswith("val_")
                                    else ("train", name))
                    with self.writers[part].as_default():
                        tf.summary.scalar(f"epoch_{metric}", float(value), step=epoch)
                for writer in self.writers.values():
                    writer.flush()

            def on_train_end(self, logs=None):
                for writer in self.writers.values():
                    writer.close()

        return EpochSummaries()


def train_split_part(examples: str, config: DatasetConfig, part: str, batch_size: int,
                     shuffle_buffer: int = 0, seed: int | None = None):
    """Batches of (raw feature dict, label) of one part of the train split: `fit` (what the
    network trains on) or `holdout` (the calibration holdout, `calibration.holdout_mask` of
    the id). With `shuffle_buffer`, records are shuffled (seeded) before the split."""
    import tensorflow as tf

    from components.common.artifacts.examples import feature_spec, split_files
    from components.train.calibration import holdout_mask

    if part not in ("fit", "holdout"):
        raise ValueError(f"part must be fit or holdout, got {part!r}")
    spec = feature_spec(config)
    id_name, label = config.id_feature, config.label.feature
    id_is_feature = id_name in spec
    spec.setdefault(id_name, tf.io.FixedLenFeature([], tf.string, default_value=""))
    fraction, salt = config.calibration.holdout_fraction, config.split_salt

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        ids = parsed[id_name] if id_is_feature else parsed.pop(id_name)
        held = holdout_mask(ids, fraction, salt)
        keep = held if part == "holdout" else tf.logical_not(held)
        y = parsed.pop(label)
        return ({name: tf.boolean_mask(values, keep) for name, values in parsed.items()},
                tf.boolean_mask(y, keep))

    files = split_files(examples, "train")
    dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=len(files), block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    return (dataset.batch(1024).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .unbatch().batch(batch_size))


def _transformed(dataset, preprocessing, cache_path: str, shuffle_seed: int | None = None):
    """Batches preprocessed once (first epoch) and cached to disk, not redone every epoch."""
    import tensorflow as tf

    dataset = dataset.map(lambda x, y: (preprocessing(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.cache(cache_path)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(BATCH_SHUFFLE, seed=shuffle_seed,
                                  reshuffle_each_iteration=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _eval_dataset(examples: str, config: DatasetConfig, preprocessing, hparams: dict,
                  cache_dir: str):
    from components.common.artifacts.examples import raw_dataset

    evaluation = raw_dataset(examples, "eval", config, hparams["batch_size"])
    return _transformed(evaluation, preprocessing, os.path.join(cache_dir, "eval"))


def _datasets(examples: str, config: DatasetConfig, preprocessing, hparams: dict, cache_dir: str):
    """The fit part of the train split (shuffled fixed-size batches) and the eval split,
    preprocessed."""
    fit = train_split_part(examples, config, "fit", hparams["batch_size"],
                           shuffle_buffer=SHUFFLE_BUFFER, seed=hparams["seed"])
    return (_transformed(fit, preprocessing, os.path.join(cache_dir, "fit"), hparams["seed"]),
            _eval_dataset(examples, config, preprocessing, hparams, cache_dir))


def fit_arrays(examples: str, config: DatasetConfig, preprocessing, rows: int, directory: str):
    """The fit rows, preprocessed: ({feature: array}, labels), each a numpy memmap of `rows`
    rows in `directory`. DP-SGD samples each batch from all of them (Poisson sampling), which
    a stream cannot do; on disk, memory stays bounded by the pages a batch touches, however
    many rows there are. StepError when the split does not hold `rows` fit rows."""
    import numpy as np

    arrays: dict = {}
    labels = np.lib.format.open_memmap(os.path.join(directory, "labels.npy"), mode="w+",
                                       dtype=np.int64, shape=(rows,))
    filled = 0
    for features, y in train_split_part(examples, config, "fit", 1024):
        count = int(y.shape[0])
        if filled + count > rows:
            filled += count
            break
        for name, values in preprocessing(features).items():
            values = values.numpy()
            if name not in arrays:  # ids are vocabulary indices: int32 holds them
                dtype = np.int32 if values.dtype.kind in "iu" else values.dtype
                arrays[name] = np.lib.format.open_memmap(
                    os.path.join(directory, f"{len(arrays)}.npy"), mode="w+", dtype=dtype,
                    shape=(rows, *values.shape[1:]))
            arrays[name][filled:filled + count] = values
        labels[filled:filled + count] = y.numpy()
        filled += count
    if filled != rows:
        raise StepError(f"{examples}: the train split has {'more than ' if filled > rows else ''}"
                        f"{filled} fit rows, its metadata says {rows}; run ingest again")
    return arrays, labels


def _build_optimizer(model, variables) -> None:
    """The optimizer's slot variables made before `fit`: made inside the first traced training
    step, they make TensorFlow trace that step a second time (~0.9 s of every run)."""
    model.optimizer.build(variables)


def _fit(model, config: DatasetConfig, hparams: dict, examples: str, preprocessing,
         cache_dir: str, weights: dict, planned: dict | None, callbacks: list):
    """Train `model` (in place): Keras' own step with class weights, or DP-SGD (privacy.py)
    when `planned`. Returns (Keras history, eval metrics)."""
    if planned is None:
        train_ds, eval_ds = _datasets(examples, config, preprocessing, hparams, cache_dir)
        _build_optimizer(model, model.trainable_variables)
        history = model.fit(train_ds, validation_data=eval_ds, epochs=hparams["epochs"],
                            class_weight=weights, verbose=0, callbacks=callbacks)
        return history, model.evaluate(eval_ds, verbose=0, return_dict=True)

    from components.train import privacy
    from components.train.model import compile_options

    features, labels = fit_arrays(examples, config, preprocessing, planned["rows"],
                                  tempfile.mkdtemp(prefix="fit-rows-", dir=cache_dir))
    eval_ds = _eval_dataset(examples, config, preprocessing, hparams, cache_dir)
    trainer = privacy.dp_sgd_model(model, planned, weights)
    trainer.compile(**compile_options(hparams))
    _build_optimizer(trainer, model.trainable_variables)
    log.info("dp-sgd: %d fit rows memory-mapped, Poisson sampling rate %.4g (expected batch %.1f), "
             "%d steps per epoch, noise multiplier %g, clip %g; planned epsilon %.3g at delta "
             "%.3g", planned["rows"], planned["sampling_rate"], planned["expected_batch_size"],
             planned["steps_per_epoch"], planned["noise_multiplier"], planned["l2_clip"],
             planned["planned_epsilon"], planned["target_delta"])
    batches = privacy.poisson_batches(features, labels, planned["sampling_rate"],
                                      hparams["seed"])
    history = trainer.fit(batches, steps_per_epoch=planned["steps_per_epoch"],
                          validation_data=eval_ds, epochs=hparams["epochs"], verbose=0,
                          callbacks=callbacks)
    return history, trainer.evaluate(eval_ds, verbose=0, return_dict=True)


def holdout_label_counts(examples: str, config: DatasetConfig) -> dict[str, int]:
    """{"positive", "negative"} of the calibration holdout (ids and labels parsed only)."""
    import tensorflow as tf

    from components.common.artifacts.examples import split_files
    from components.train.calibration import holdout_mask

    id_name, label = config.id_feature, config.label.feature
    spec = {id_name: tf.io.FixedLenFeature([], tf.string, default_value=""),
            label: tf.io.FixedLenFeature([], tf.int64)}
    positive = total = 0
    records = tf.data.TFRecordDataset(split_files(examples, "train"), compression_type="GZIP")
    for batch in records.batch(4096):
        parsed = tf.io.parse_example(batch, spec)
        held = holdout_mask(parsed[id_name], config.calibration.holdout_fraction,
                            config.split_salt)
        y = tf.boolean_mask(parsed[label], held).numpy()
        positive += int(y.sum())
        total += int(y.size)
    return {"positive": positive, "negative": total - positive}


def holdout_scores(model, preprocessing, examples: str, config: DatasetConfig):
    """(labels, raw scores) of the calibration holdout as numpy arrays, scored as the serving
    functions score."""
    import numpy as np

    labels, scores = [], []
    for features, y in train_split_part(examples, config, "holdout", 1024):
        labels.append(y.numpy())
        scores.append(np.asarray(model(preprocessing(features), training=False)).reshape(-1))
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(labels), np.concatenate(scores)


def needs_holdout(config: DatasetConfig) -> bool:
    return (config.calibration.method != "none"
            or config.evaluation.decision_threshold.policy != "fixed")


def calibrate_and_choose(labels, raw, config: DatasetConfig, where: str) -> dict:
    """Fit the configured calibration on the holdout and choose the decision threshold on its
    calibrated probabilities. Returns the calibration parameters, the threshold and the
    holdout's figures before and after (for the lineage)."""
    import numpy as np

    from components.common import calibration as metrics
    from components.common.artifacts.model import DEFAULT_DECISION_THRESHOLD
    from components.train import calibration

    spec, policy = config.calibration, config.evaluation.decision_threshold
    if needs_holdout(config):
        calibration.check_holdout(int(np.sum(labels)), len(labels), where)
    parameters = calibration.fit(spec.method, labels, raw, where)
    calibrated = calibration.calibrate_numpy(raw, parameters) if len(raw) else raw
    threshold = calibration.choose_threshold(policy, labels, calibrated)
    # Figures at the threshold are the holdout's either way (none without a holdout).
    threshold["computed_on"] = ("config (fixed)" if policy.policy == "fixed"
                                else "calibration holdout")
    holdout = {"method": calibration.HOLDOUT_METHOD, "fraction": spec.holdout_fraction,
               "salt": config.split_salt, "rows": int(len(labels)),
               "positives": int(np.sum(labels))}
    if len(labels):
        # In-sample for the calibration (fitted on these rows); evaluate measures on eval.
        holdout["before"] = metrics.summary(labels, raw, DEFAULT_DECISION_THRESHOLD)
        holdout["after"] = metrics.summary(labels, calibrated, threshold["value"])
    return {"parameters": parameters, "threshold": threshold, "holdout": holdout}


def export_serving_model(model, preprocessing, config: DatasetConfig, path: str,
                         calibration_parameters: dict | None = None) -> dict:
    """SavedModel with `serving_default` (raw strings) and `serving_tf_example` signatures,
    both answering `probability` (calibrated by `calibration_parameters`, the identity when
    None) and `raw_probability` (the network's score)."""
    import keras
    import tensorflow as tf

    from components.common.artifacts.examples import feature_spec
    from components.train.calibration import calibrate

    features = config.feature_names
    parameters = calibration_parameters or {"method": "none"}
    archive = keras.export.ExportArchive()
    archive.track(preprocessing)
    archive.track(model)

    def predict(raw):
        score = tf.reshape(model(preprocessing(raw), training=False), [-1])
        return {model_artifact.OUTPUT: calibrate(score, parameters),
                model_artifact.RAW_OUTPUT: score}

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
    return model_artifact.serving_signatures(path)


def tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def train(examples: str, transform_dir: str, output: str, config: DatasetConfig,
          hparams: dict) -> dict:
    """Train, calibrate and export; `examples` and `transform_dir` may be s3:// URIs (a Katib
    trial pod reads them from MinIO): they are downloaded to temporary directories first."""
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
    held = holdout_label_counts(examples, config)
    if needs_holdout(config):  # before training: fail fast
        from components.train.calibration import check_holdout

        check_holdout(held["positive"], held["positive"] + held["negative"],
                      f"{examples}: train split")
    fit_counts = {k: metadata["label_counts"]["train"][k] - held[k]
                  for k in ("positive", "negative")}
    fit_rows = fit_counts["positive"] + fit_counts["negative"]
    weights = class_weights(fit_counts)
    from components.train import privacy

    planned = privacy.plan(hparams, fit_rows)  # refuses a too large epsilon before training
    with staged_output(output, last=model_artifact.TRAINING_FILE) as staging:
        cache_dir = tempfile.mkdtemp(prefix="train-cache-")
        try:
            model = build_model(config, transform_info["vocabulary_sizes"], hparams)
            history, evaluated = _fit(model, config, hparams, examples, preprocessing,
                                      cache_dir, weights, planned, callbacks=[
                                          _EpochLog(fit_rows),
                                          keras.callbacks.EarlyStopping(
                                              monitor="val_auc", mode="max",
                                              restore_best_weights=True,
                                              patience=hparams["early_stopping_patience"]),
                                          _EpochSummaries(os.path.join(
                                              staging, model_artifact.LOGS_DIR)),
                                      ])
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        metrics = {k: float(v) for k, v in evaluated.items()}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise StepError(f"training diverged (eval metrics {metrics}); lower learning_rate")
        labels, raw = holdout_scores(model, preprocessing, examples, config)
        calibrated = calibrate_and_choose(labels, raw, config, f"{examples}: train split")
        threshold = calibrated["threshold"]
        model_path = model_artifact.saved_model_dir(staging)
        signatures = export_serving_model(model, preprocessing, config, model_path,
                                          calibrated["parameters"])
        # Inside the SavedModel (before its id is computed): it travels with every version.
        model_artifact.write_model_metadata(model_path, {
            "decision_threshold": threshold["value"],
            "threshold_policy": threshold["policy"],
            "calibration": calibrated["parameters"]["method"],
            "outputs": {model_artifact.OUTPUT: "calibrated probability of the positive class",
                        model_artifact.RAW_OUTPUT: "the network's score before calibration"},
        })
        seconds = time.monotonic() - started
        epochs_run = len(history.epoch)
        privacy_record = (privacy.spent(planned, epochs_run) if planned
                          else {"mechanism": "none"})
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
            "rows": {"train": metadata["rows"]["train"], "fit": fit_rows,
                     "calibration": calibrated["holdout"]["rows"],
                     "eval": metadata["rows"]["eval"]},
            "calibration": {"method": calibrated["parameters"]["method"],
                            "parameters": calibrated["parameters"],
                            "holdout": calibrated["holdout"]},
            "decision_threshold": threshold,
            model_artifact.PRIVACY_FIELD: privacy_record,
            "architecture": "wide_and_deep",
            # which TensorFlow exported the SavedModel: what a server must be able to load
            "tensorflow_version": tf_version(),
            "code_version": code_version(),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "examples_per_second": round(fit_rows * epochs_run / max(seconds, 1e-9), 1),
        }
        model_artifact.write(staging, info, metrics)
    log.info("trained %s on %s in %d epochs, %.1f s: eval auc=%.4f; calibration %s on %d "
             "held-out rows, decision threshold %.4f (%s)", info["model_id"],
             info["dataset_version"], epochs_run, seconds, metrics.get("auc", float("nan")),
             info["calibration"]["method"], info["rows"]["calibration"], threshold["value"],
             threshold["policy"])
    if planned:
        log.info("dp-sgd: epsilon %.3g at delta %.3g after %d steps (%d epochs)",
                 privacy_record["epsilon"], privacy_record["target_delta"],
                 privacy_record["steps"], epochs_run)
    return info
