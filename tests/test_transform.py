"""Transform fits every vocabulary in one pass, and gets exactly what Keras' `adapt` gets.

Serving equality (what training applied is what serving applies) is in tests/test_train.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from components.common.dataset_config import load_dataset_config
from components.ingest.ingest import ingest
from components.transform.preprocessing import count_values, fit_preprocessing, most_frequent

CONFIG = load_dataset_config()
# Small vocabularies, so that truncation and ties between equal counts decide what is kept.
SMALL = dataclasses.replace(CONFIG, preprocessing=dataclasses.replace(
    CONFIG.preprocessing, vocabulary_size=6, vocabulary_sizes={"state": 9},
    zip_vocabulary_size=25, text_max_tokens=40))


def adapted(examples_dir: str, config) -> dict[str, list[str]]:
    """The vocabularies as the step fitted them before the one-pass counting: one Keras
    `adapt` pass per feature over the train split."""
    import keras

    from components.common.artifacts.examples import raw_dataset
    from components.common.preprocessing_layers import ZipPrefix

    spec = config.preprocessing
    train = raw_dataset(examples_dir, "train", config, 512, with_label=False)
    vocabularies = {}
    for name in config.features["categorical"]:
        lookup = keras.layers.StringLookup(
            max_tokens=spec.vocabulary_size_of(name) + spec.oov_buckets,
            num_oov_indices=spec.oov_buckets)
        lookup.adapt(train.map(lambda batch, n=name: batch[n]))
        vocabularies[name] = lookup.get_vocabulary()
    for name in config.features["bucketized"]:
        prefix = ZipPrefix(spec.zip_prefix_digits)
        lookup = keras.layers.StringLookup(max_tokens=spec.zip_vocabulary_size + spec.oov_buckets,
                                           num_oov_indices=spec.oov_buckets)
        lookup.adapt(train.map(lambda batch, n=name, p=prefix: p(batch[n])))
        vocabularies[name] = lookup.get_vocabulary()
    for name in config.features["text"]:
        vectorizer = keras.layers.TextVectorization(
            max_tokens=spec.text_max_tokens, output_sequence_length=spec.text_sequence_length)
        vectorizer.adapt(train.map(lambda batch, n=name: batch[n]))
        vocabularies[name] = vectorizer.get_vocabulary()
    return vocabularies


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    from tests.conftest import run_cli

    work = tmp_path_factory.mktemp("transform")
    result = run_cli("datagen", "--rows", "2500", "--seed", "11", "--out", str(work / "data.csv"))
    assert result.returncode == 0, result.stderr
    ingest(str(work / "data.csv"), str(work / "examples"), CONFIG)
    return str(work / "examples")


@pytest.mark.parametrize("config", [CONFIG, SMALL], ids=["cfpb", "small-vocabularies"])
def test_one_pass_vocabularies_equal_adapt(examples, config):
    model, vocabularies = fit_preprocessing(examples, config)
    expected = adapted(examples, config)
    assert vocabularies.keys() == expected.keys()
    for name, vocabulary in expected.items():
        assert vocabularies[name] == vocabulary, name
    # the layers in the saved model hold those vocabularies, special tokens first
    assert model.get_layer("state_lookup").get_vocabulary() == expected["state"]
    assert model.get_layer("narrative_tokens").get_vocabulary() == expected["narrative"]
    if config is SMALL:  # truncated to the configured sizes
        assert len(vocabularies["narrative"]) == 40
        assert len(vocabularies["issue"]) == 6 + config.preprocessing.oov_buckets


def test_counting_merges_batches_exactly_like_adapt():
    """Ties, blanks, the OOV token as a value, punctuation, case, Unicode, runs of spaces,
    all spread over several batches: the counts merged per batch give `adapt`'s order."""
    import keras
    import tensorflow as tf

    categories = ["b", "a", "", "[UNK]", "c", "a", "b", "", "d", "é", "c", "A"] * 5 + ["z"]
    texts = ["The cat, the DOG!", "  dog   cat  ", "", "[UNK] unk ünïcödé", "a-b a.b ab",
             "x", "cat", "Dog's bone", "zebra zebra", "émile"] * 3
    for values, make in (
        (categories, lambda: keras.layers.StringLookup(max_tokens=6, num_oov_indices=2)),
        (categories, lambda: keras.layers.StringLookup(max_tokens=None, num_oov_indices=1)),
        (texts, lambda: keras.layers.TextVectorization(max_tokens=7)),
        (texts, lambda: keras.layers.TextVectorization()),
    ):
        reference = make()
        reference.adapt(tf.data.Dataset.from_tensor_slices(values).batch(4))
        layer = make()
        if isinstance(layer, keras.layers.TextVectorization):
            tokens = layer._preprocess
        else:
            def tokens(batch):
                return batch
        data = tf.data.Dataset.from_tensor_slices({"f": values}).batch(7)
        counts, rows = count_values(data, {"f": lambda batch, t=tokens: t(batch["f"])})
        assert rows == len(values)
        vocabulary, seen = most_frequent(layer, *counts["f"])
        layer.set_vocabulary(vocabulary)
        assert layer.get_vocabulary() == reference.get_vocabulary()
        assert seen >= len(vocabulary)


def test_no_text_in_train_keeps_the_placeholder(tmp_path, real_sample):
    """The 2013 export has no narratives: the vocabulary is the placeholder, as before."""
    ingest(str(real_sample), str(tmp_path / "ex"), CONFIG)
    _, vocabularies = fit_preprocessing(str(tmp_path / "ex"), CONFIG)
    assert vocabularies["narrative"] == ["", "[UNK]", "<no text in train split>"]
    assert vocabularies["product"] == adapted(str(tmp_path / "ex"), CONFIG)["product"]
