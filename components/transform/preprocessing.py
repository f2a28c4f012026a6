"""Fitting the preprocessing on the train split and fingerprinting it.

The result is a Keras model from raw strings (as they come from the CSV) to model-ready ids:
a vocabulary lookup with out-of-vocabulary buckets per categorical feature, ZIP codes bucketized
by prefix, the narrative as token ids. Training wraps this model into the exported SavedModel,
so serving applies exactly what training applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from components.common.dataset_config import DatasetConfig
from components.common.errors import StepError

log = logging.getLogger(__name__)
# The modules that define the preprocessing: editing one invalidates processed data.
CODE_MODULES = ("components.common.preprocessing_layers", "components.transform.preprocessing")
EMPTY_VOCABULARY_TOKEN = "<no text in train split>"


def preprocessing_code_hash() -> str:
    """Hash of the code that defines the preprocessing: editing it invalidates processed data."""
    import importlib.util

    digest = hashlib.sha256()
    for name in CODE_MODULES:
        digest.update(name.encode())
        digest.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()[:16]


def _string_features(config: DatasetConfig) -> list[str]:
    roles = ("categorical", "bucketized", "text")
    return [f for role in roles for f in config.features.get(role, ())]


def fit_preprocessing(examples_dir: str, config: DatasetConfig, batch_size: int = 4096):
    """Fit every layer on the train split only, in one streamed pass; returns (keras model,
    vocabularies).

    The layers get exactly the vocabulary their own `adapt` would give (see `count_values` and
    `most_frequent`), but the train split is read once for all of them, not once per feature.
    """
    import keras

    from components.common.artifacts.examples import raw_dataset
    from components.common.preprocessing_layers import ZipPrefix

    if config.features.get("numeric"):
        raise StepError(
            f"{config.source}: numeric features {list(config.features['numeric'])} are not "
            "supported by the transform step yet; list them as categorical or drop them"
        )
    spec = config.preprocessing
    inputs = {name: keras.Input(shape=(), dtype="string", name=name)
              for name in _string_features(config)}
    layers, values_of, outputs = {}, {}, {}
    for name in config.features.get("categorical", ()):
        lookup = keras.layers.StringLookup(
            max_tokens=spec.vocabulary_size_of(name) + spec.oov_buckets,
            num_oov_indices=spec.oov_buckets, name=f"{name}_lookup",
        )
        layers[name], values_of[name] = lookup, _column(name)
        outputs[name] = lookup(inputs[name])
    for name in config.features.get("bucketized", ()):
        prefix = ZipPrefix(spec.zip_prefix_digits, name=f"{name}_prefix")
        lookup = keras.layers.StringLookup(
            max_tokens=spec.zip_vocabulary_size + spec.oov_buckets,
            num_oov_indices=spec.oov_buckets, name=f"{name}_lookup",
        )
        layers[name], values_of[name] = lookup, _column(name, prefix)
        outputs[name] = lookup(prefix(inputs[name]))
    for name in config.features.get("text", ()):
        vectorizer = keras.layers.TextVectorization(
            max_tokens=spec.text_max_tokens, output_sequence_length=spec.text_sequence_length,
            name=f"{name}_tokens",
        )
        layers[name], values_of[name] = vectorizer, _column(name, _text_tokens(vectorizer))
        outputs[name] = vectorizer(inputs[name])

    started = time.monotonic()
    train = raw_dataset(examples_dir, "train", config, batch_size, with_label=False)
    counts, rows = count_values(train, values_of)
    log.info("counted the values of %d features in one pass over %d train rows in %.1f s",
             len(values_of), rows, time.monotonic() - started)

    vocabularies: dict[str, list[str]] = {}
    for name, layer in layers.items():
        values, seen = most_frequent(layer, *counts[name])
        if len(values):
            layer.set_vocabulary(values)
        if name in config.features.get("text", ()) and layer.vocabulary_size() <= 2:
            # Only padding and [UNK]: no text in train. An empty vocabulary cannot be saved;
            # this token cannot survive standardization, so every narrative maps to [UNK] and
            # the model learns nothing from the feature.
            log.warning("%s: no text in the train split; the feature carries no signal", name)
            layer.set_vocabulary([EMPTY_VOCABULARY_TOKEN])
        vocabularies[name] = [str(v) for v in layer.get_vocabulary()]
        log.info("vocabulary of %s: %d of %d distinct values kept (+%d special)", name,
                 len(values), seen, len(vocabularies[name]) - len(values))
    return keras.Model(inputs, outputs, name="preprocessing"), vocabularies


def _column(name: str, transform=None):
    """Batch -> the values of feature `name` to count, after `transform` (a graph function)."""
    if transform is None:
        return lambda batch: batch[name]
    return lambda batch: transform(batch[name])


def _text_tokens(vectorizer):
    """Strings -> their tokens, through the layer's own standardization and split (what its
    `adapt` and its call apply), so the counted tokens are exactly the ones it will look up.
    `_preprocess` is Keras' internal step; tests/test_transform.py checks the result against
    `adapt` on every Keras version the lock installs."""
    return vectorizer._preprocess


def count_values(dataset, values_of: dict) -> tuple[dict, int]:
    """One pass over `dataset` (batches of feature dicts) counting, per name in `values_of`,
    each distinct value `values_of[name](batch)` yields (a dense or ragged string tensor).

    Memory grows with the distinct values, never with the rows: each batch is reduced to
    (value, count) pairs in the tf.data pipeline (in parallel with reading), then added to one
    hash table per feature, the same table type and update `adapt` uses. Returns
    ({name: (values, counts) as NumPy arrays}, rows read).
    """
    import tensorflow as tf

    def reduce_batch(batch):
        reduced = {}
        for name, values_fn in values_of.items():
            values = values_fn(batch)
            flat = values.flat_values if isinstance(values, tf.RaggedTensor) else \
                tf.reshape(values, [-1])
            unique, _, counts = tf.unique_with_counts(flat, out_idx=tf.int64)
            reduced[name] = (unique, counts)
        rows = tf.shape(next(iter(batch.values())), out_type=tf.int64)[0]
        return reduced, rows

    tables = {name: tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, 0)
              for name in values_of}
    reduced_batches = dataset.map(reduce_batch, num_parallel_calls=tf.data.AUTOTUNE)

    # One trace for every batch (the number of distinct values varies from batch to batch).
    @tf.function(input_signature=[reduced_batches.element_spec[0]])
    def add(reduced):
        for name, (unique, counts) in reduced.items():
            tables[name].insert(unique, counts + tables[name].lookup(unique))

    rows = 0
    for reduced, batch_rows in reduced_batches.prefetch(tf.data.AUTOTUNE):
        add(reduced)
        rows += int(batch_rows)
    return {name: tuple(t.numpy() for t in table.export()) for name, table in tables.items()}, rows


def most_frequent(layer, values, counts):
    """What `adapt` would set on the lookup `layer` (StringLookup or TextVectorization) from
    these value counts: its special tokens (mask, OOV) left out, the most frequent values
    first, ties broken by value, high to low (Keras' own `np.lexsort` order), at most
    max_tokens minus the special slots. Returns (vocabulary without the special tokens,
    distinct values seen)."""
    import numpy as np

    special = layer.get_vocabulary()  # an unfitted layer holds only its special tokens
    keep = ~np.isin(values, np.array([s.encode() for s in special], dtype=object))
    values, counts = values[keep], counts[keep]
    order = np.lexsort((values, counts))[::-1]
    max_tokens = layer.get_config()["max_tokens"]
    if max_tokens:
        order = order[:max_tokens - len(special)]
    return values[order], len(values)


def preprocessing_hash(config: DatasetConfig, vocabularies: dict[str, list[str]]) -> str:
    """Configuration + fitted vocabularies + preprocessing code: change any, the hash changes."""
    payload = {
        "features": {role: list(names) for role, names in config.features.items()},
        "preprocessing": asdict(config.preprocessing),
        "vocabularies": vocabularies,
        "code": preprocessing_code_hash(),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
