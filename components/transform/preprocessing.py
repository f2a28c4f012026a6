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
    """Adapt every layer on the train split only; returns (keras model, vocabularies)."""
    import keras
    import tensorflow as tf

    from components.common.artifacts.examples import raw_dataset
    from components.common.preprocessing_layers import ZipPrefix

    if config.features.get("numeric"):
        raise StepError(
            f"{config.source}: numeric features {list(config.features['numeric'])} are not "
            "supported by the transform step yet; list them as categorical or drop them"
        )
    spec = config.preprocessing
    train = raw_dataset(examples_dir, "train", config, batch_size, with_label=False)
    inputs = {name: keras.Input(shape=(), dtype="string", name=name)
              for name in _string_features(config)}
    outputs = {}
    vocabularies: dict[str, list[str]] = {}
    for name in config.features.get("categorical", ()):
        started = time.monotonic()
        lookup = keras.layers.StringLookup(
            max_tokens=spec.vocabulary_size_of(name) + spec.oov_buckets,
            num_oov_indices=spec.oov_buckets, name=f"{name}_lookup",
        )
        lookup.adapt(train.map(lambda batch, n=name: batch[n]))
        outputs[name] = lookup(inputs[name])
        vocabularies[name] = [str(v) for v in lookup.get_vocabulary()]
        log.info("vocabulary of %s: %d values (+%d OOV buckets) in %.1f s", name,
                 lookup.vocabulary_size() - spec.oov_buckets, spec.oov_buckets,
                 time.monotonic() - started)
    for name in config.features.get("bucketized", ()):
        prefix = ZipPrefix(spec.zip_prefix_digits, name=f"{name}_prefix")
        lookup = keras.layers.StringLookup(
            max_tokens=spec.zip_vocabulary_size + spec.oov_buckets,
            num_oov_indices=spec.oov_buckets, name=f"{name}_lookup",
        )
        lookup.adapt(train.map(lambda batch, n=name, p=prefix: p(batch[n])))
        outputs[name] = lookup(prefix(inputs[name]))
        vocabularies[name] = [str(v) for v in lookup.get_vocabulary()]
        log.info("buckets of %s: %d prefixes of %d digits", name,
                 lookup.vocabulary_size() - spec.oov_buckets, spec.zip_prefix_digits)
    for name in config.features.get("text", ()):
        started = time.monotonic()
        vectorizer = keras.layers.TextVectorization(
            max_tokens=spec.text_max_tokens, output_sequence_length=spec.text_sequence_length,
            name=f"{name}_tokens",
        )
        vectorizer.adapt(train.map(lambda batch, n=name: batch[n]))
        if vectorizer.vocabulary_size() <= 2:  # only padding and [UNK]: no text in train
            # An empty vocabulary cannot be saved; this token cannot survive standardization,
            # so every narrative maps to [UNK] and the model learns nothing from the feature.
            log.warning("%s: no text in the train split; the feature carries no signal", name)
            vectorizer.set_vocabulary([EMPTY_VOCABULARY_TOKEN])
        outputs[name] = vectorizer(inputs[name])
        vocabularies[name] = [str(v) for v in vectorizer.get_vocabulary()]
        log.info("text vocabulary of %s: %d tokens in %.1f s", name,
                 vectorizer.vocabulary_size(), time.monotonic() - started)
    del tf
    return keras.Model(inputs, outputs, name="preprocessing"), vocabularies


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
