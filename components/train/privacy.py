"""Differentially private training: DP-SGD with Poisson sampling, accounted with dp-accounting.

`train --privacy dp-sgd --noise-multiplier Z --l2-clip C [--target-delta D] [--max-epsilon E]`
(or the same keys in `--hparams`) trains the network on the fit rows (the train split minus the
calibration holdout, n rows) as follows, a Keras `train_step` of our own (TensorFlow Privacy
has no release for TensorFlow 2.16 with Keras 3):

- Sampling: **Poisson**. Each step every fit row joins the batch independently with probability
  q = batch_size / n, so a batch has batch_size rows on average, not exactly (`poisson_batches`).
  An epoch is ceil(n / batch_size) such steps. This is the sampling the accountant assumes (the
  Poisson-subsampled Gaussian mechanism), not shuffled fixed-size batches, whose accounting
  would be another (and is often wrongly taken for this one).
- Per-example gradients, vectorized: `tf.vectorized_map` of one example's GradientTape over the
  batch (`per_example_gradients`); embedding gradients are made dense per example.
- Clipping: each example's whole gradient (all variables together) is scaled to L2 norm at most
  C (`clip_gradients`). Class weights scale each example's loss before its gradient is clipped,
  so they change how hard an example pulls, never beyond C: they are kept.
- Noise: Gaussian of standard deviation Z * C added to the sum of the clipped gradients, once
  per batch and coordinate; the update is that noisy sum divided by the *expected* batch size
  q * n (dividing by the actual size would make the update depend on it). Adam then uses it.
- Dropout is not applied in the per-example pass (the network runs in inference mode there:
  inside `vectorized_map` a dropout mask would be one per batch, not per example); the noise
  regularizes instead. The `dropout` hyperparameter still shapes the network but is inactive.
- Nothing computed on the training rows is reported during training (no training loss or
  AUC in the logs or TensorBoard): only eval-split figures, which the guarantee does not cover.

Accounting (`epsilon`): dp-accounting's RDP accountant, `SelfComposedDpEvent(PoissonSampled
DpEvent(q, GaussianDpEvent(Z)), steps)` under add-or-remove-one neighbouring datasets; delta is
`target_delta`, else 1/n. Before training, `plan` computes epsilon for the largest number of
steps the run may take (epochs x steps per epoch) and refuses settings above `max_epsilon`;
after training, `spent` records epsilon for the steps actually run (early stopping can only
lower it). Selecting the best epoch on eval AUC, calibrating on the calibration holdout and
choosing the threshold there use no fit row: they spend no budget (those rows are not
protected by it either).
"""

from __future__ import annotations

import logging
import math

from components.common.errors import StepError

log = logging.getLogger(__name__)

MECHANISM = "dp-sgd"
SAMPLING = "poisson"
ACCOUNTANT = "dp_accounting RDP accountant (Poisson-subsampled Gaussian, add-or-remove-one)"
NEIGHBOURING = "add or remove one fit row (one complaint)"


# ---------------------------------------------------------------------------------------------
# Accounting (numbers only; no TensorFlow).

def sampling_rate(rows: int, batch_size: int) -> float:
    """q: the chance a fit row is in a batch (the expected batch size is batch_size)."""
    if rows <= 0:
        raise StepError("dp-sgd: no fit rows to train on")
    return min(1.0, batch_size / rows)


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Steps of one epoch: ceil(n / batch_size) (on average every row is seen once)."""
    return max(1, math.ceil(rows / batch_size))


def epsilon(noise_multiplier: float, rate: float, steps: int, delta: float) -> float:
    """Epsilon at `delta` of `steps` Poisson-subsampled Gaussian steps, by dp-accounting's RDP
    accountant (add-or-remove-one neighbours)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
        int(steps))
    accountant = RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def dp_accounting_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dp-accounting")
    except PackageNotFoundError:  # pragma: no cover - installed with the model extra
        return "unknown"


def plan(hparams: dict, rows: int) -> dict | None:
    """The DP-SGD settings of a run on `rows` fit rows, with the epsilon of its largest possible
    number of steps; None when the run is not private. StepError, before any training, when
    that epsilon exceeds `max_epsilon`."""
    if hparams.get("privacy", "none") != MECHANISM:
        return None
    batch_size, epochs = hparams["batch_size"], hparams["epochs"]
    rate = sampling_rate(rows, batch_size)
    per_epoch = steps_per_epoch(rows, batch_size)
    delta = hparams.get("target_delta")
    delta_source = "target_delta"
    if delta is None:
        delta, delta_source = 1.0 / rows, "1/n"
    planned = epsilon(hparams["noise_multiplier"], rate, epochs * per_epoch, delta)
    ceiling = hparams.get("max_epsilon")
    if not math.isfinite(planned):
        raise StepError(
            f"dp-sgd: noise multiplier {hparams['noise_multiplier']:g} gives no finite epsilon "
            f"for {epochs} epochs of {per_epoch} steps (sampling rate {rate:.4g}); raise it")
    if ceiling is not None and not planned <= ceiling:
        raise StepError(
            f"dp-sgd: epsilon {planned:.3g} at delta {delta:.3g} for up to {epochs} epochs of "
            f"{per_epoch} steps (sampling rate {rate:.4g}, noise multiplier "
            f"{hparams['noise_multiplier']:g}, {rows} fit rows) exceeds max_epsilon "
            f"{ceiling:g}; raise noise_multiplier, lower epochs or batch_size, or add data")
    if rate >= 1.0:
        log.warning("dp-sgd: batch_size %d >= %d fit rows: every step sees every row (no "
                    "amplification by sampling)", batch_size, rows)
    return {
        "mechanism": MECHANISM,
        "sampling": SAMPLING,
        "noise_multiplier": float(hparams["noise_multiplier"]),
        "l2_clip": float(hparams["l2_clip"]),
        "noise_stddev": float(hparams["noise_multiplier"] * hparams["l2_clip"]),
        "rows": int(rows),
        "expected_batch_size": rate * rows,
        "sampling_rate": rate,
        "steps_per_epoch": per_epoch,
        "max_epochs": int(epochs),
        "target_delta": float(delta),
        "delta_source": delta_source,
        "planned_epsilon": planned,
        "max_epsilon": ceiling,
    }


def spent(planned: dict, epochs_run: int) -> dict:
    """The privacy record of the run (training.json's `privacy`): the plan with the epsilon of
    the steps actually run."""
    steps = int(epochs_run) * planned["steps_per_epoch"]
    return {
        **planned,
        "epochs_run": int(epochs_run),
        "steps": steps,
        "epsilon": epsilon(planned["noise_multiplier"], planned["sampling_rate"], steps,
                           planned["target_delta"]),
        "accountant": ACCOUNTANT,
        "neighbouring": NEIGHBOURING,
        "dp_accounting_version": dp_accounting_version(),
        "class_weights": "kept: they scale each example's loss before its gradient is clipped",
        "dropout": "not applied in the DP-SGD step",
        "early_stopping": "on eval AUC: the eval split is not training data (not protected)",
        "not_covered": [
            "the preprocessing (vocabularies fitted by transform on the whole train split)",
            "the calibration holdout (calibration and threshold are fitted on it)",
            "the eval split (early stopping, metrics)",
        ],
    }


# ---------------------------------------------------------------------------------------------
# Training (TensorFlow).

def poisson_batches(features: dict, labels, rate: float, seed: int):
    """An endless tf.data.Dataset of Poisson-sampled batches of the fit rows (arrays, in
    memory or memory-mapped): each batch takes every row independently with probability
    `rate` (seeded numpy generator). Integer features come as int64, the others as float32."""
    import numpy as np
    import tensorflow as tf

    rows = int(labels.shape[0])
    rng = np.random.default_rng(seed)
    dtypes = {name: (np.int64 if values.dtype.kind in "iu" else np.float32)
              for name, values in features.items()}

    def sample():
        while True:
            chosen = np.flatnonzero(rng.random(rows) < rate)
            yield ({name: values[chosen].astype(dtypes[name])
                    for name, values in features.items()},
                   np.asarray(labels[chosen], dtype=np.int64))

    signature = ({name: tf.TensorSpec((None, *values.shape[1:]), tf.as_dtype(dtypes[name]))
                  for name, values in features.items()},
                 tf.TensorSpec((None,), tf.int64))
    return tf.data.Dataset.from_generator(sample, output_signature=signature).prefetch(2)


def _dense(gradient, variable):
    """A gradient as a dense tensor of the variable's shape (embeddings give IndexedSlices)."""
    import tensorflow as tf

    if isinstance(gradient, tf.IndexedSlices):
        return tf.math.unsorted_segment_sum(gradient.values, gradient.indices,
                                            num_segments=variable.shape[0])
    if gradient is None:
        return tf.zeros(variable.shape, variable.dtype)
    return gradient


def per_example_gradients(network, features: dict, labels, weights) -> list:
    """The gradient of each example's weighted loss, one tensor [batch, *variable shape] per
    trainable variable, vectorized over the batch (`tf.vectorized_map`)."""
    import keras
    import tensorflow as tf

    variables = network.trainable_variables

    def one(args):
        x, y, w = args
        x = {name: tf.expand_dims(value, 0) for name, value in x.items()}
        with tf.GradientTape() as tape:
            p = network(x, training=False)
            loss = w * keras.losses.binary_crossentropy(tf.reshape(y, [1, 1]), p)[0]
        return [_dense(g, v) for g, v in zip(tape.gradient(loss, variables), variables,
                                             strict=True)]

    labels = tf.cast(labels, tf.float32)
    gradients = tf.vectorized_map(one, (features, labels, tf.cast(weights, tf.float32)))
    # The variables' shapes, also for an empty batch (Poisson sampling can draw one).
    return [tf.reshape(g, [-1, *v.shape]) for g, v in zip(gradients, variables, strict=True)]


def _clip_factors(gradients: list, l2_clip: float):
    """(min(1, C / norm) per example, the norms): each example's gradient over all variables
    together."""
    import tensorflow as tf

    squares = [tf.reduce_sum(tf.reshape(tf.square(g), [-1, math.prod(g.shape[1:])]), axis=1)
               for g in gradients]
    norms = tf.sqrt(tf.add_n(squares))
    return l2_clip / tf.maximum(norms, l2_clip), norms


def clip_gradients(gradients: list, l2_clip: float):
    """(clipped per-example gradients, their norms before clipping): each example's gradient
    over all variables together scaled to L2 norm at most C."""
    import tensorflow as tf

    factors, norms = _clip_factors(gradients, l2_clip)
    return [g * tf.reshape(factors, [-1] + [1] * (len(g.shape) - 1)) for g in gradients], norms


def clipped_sum(gradients: list, l2_clip: float) -> list:
    """The sum over the batch of `clip_gradients`' clipped gradients, without holding them (one
    product of the clip factors with each variable's per-example gradients)."""
    import tensorflow as tf

    factors, _ = _clip_factors(gradients, l2_clip)
    return [tf.tensordot(factors, g, axes=1) for g in gradients]


def noisy_mean(sums: list, noise_stddev: float, expected_batch_size: float) -> list:
    """(sum of the clipped gradients + N(0, stddev^2) per coordinate) / expected batch size."""
    import tensorflow as tf

    return [(total + tf.random.normal(tf.shape(total), stddev=noise_stddev, dtype=total.dtype))
            / expected_batch_size for total in sums]


def dp_sgd_model(network, planned: dict, class_weights: dict[int, float]):
    """A Keras model around `network` whose `train_step` is DP-SGD (compile and fit it as usual;
    the network's own weights are the ones trained). Its training step reports only the number
    of steps taken."""
    import keras
    import tensorflow as tf

    weight_of_class = tf.constant([class_weights[0], class_weights[1]], tf.float32)

    class DpSgd(keras.Model):
        def __init__(self):
            super().__init__(name="dp_sgd")
            self.network = network

        def call(self, inputs, training=False):
            return self.network(inputs, training=training)

        def get_metrics_result(self):
            # The compiled (eval) metrics are built by the first validation, after the first
            # training epoch: until then there is nothing to report.
            if not all(getattr(metric, "built", True) for metric in self.metrics):
                return {}
            return super().get_metrics_result()

        def train_step(self, data):
            features, labels = data
            weights = tf.gather(weight_of_class, tf.cast(labels, tf.int32))
            gradients = per_example_gradients(self.network, features, labels, weights)
            update = noisy_mean(clipped_sum(gradients, planned["l2_clip"]),
                                planned["noise_stddev"], planned["expected_batch_size"])
            self.optimizer.apply_gradients(zip(update, self.network.trainable_variables,
                                               strict=True))
            # No figure of the training rows (loss, AUC): they would not be private. The step
            # count (public: what the accountant counts) is what Keras gets to log.
            return {"dp_steps": self.optimizer.iterations}

    return DpSgd()
