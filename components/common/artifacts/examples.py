"""The examples artifact: ingest's output, read by every later step.

    <dir>/train/part-NNNNN.tfrecord.gz   gzip TFRecord of tf.Example: raw feature strings as in
    <dir>/eval/part-NNNNN.tfrecord.gz    the CSV (a blank cell carries no value), numeric
                                         features as floats, the label as int64 0/1
    <dir>/metadata.json                  written last: its presence marks a finished dataset

Raw features parse as "" when absent (numeric ones as NaN), which is also what serving receives.
"""

from __future__ import annotations

import glob
import math
import os

from components.common import documents
from components.common.errors import StepError

SPLITS = ("train", "eval")
METADATA_FILE = "metadata.json"
SHARD_SUFFIX = ".tfrecord.gz"


def shard_name(index: int) -> str:
    return f"part-{index:05d}{SHARD_SUFFIX}"


def split_dir(examples_dir: str, split: str) -> str:
    return os.path.join(examples_dir, split)


def split_pattern(examples_dir: str, split: str) -> str:
    return os.path.join(examples_dir, split, "*" + SHARD_SUFFIX)


def split_files(examples_dir: str, split: str) -> list[str]:
    files = sorted(glob.glob(split_pattern(examples_dir, split)))
    if not files:
        raise StepError(f"{examples_dir}: no {split} TFRecord files ({split_pattern('', split)})")
    return files


def read_metadata(examples_dir: str) -> dict:
    """The dataset's metadata; its absence means the directory is not a finished dataset."""
    return documents.read_json(os.path.join(examples_dir, METADATA_FILE), METADATA_FILE,
                               "ingest")


def write_metadata(examples_dir: str, metadata: dict) -> None:
    """The last file written: it publishes the dataset."""
    documents.write_json(os.path.join(examples_dir, METADATA_FILE), metadata)


def feature_spec(config, with_label: bool = True) -> dict:
    """The one parsing spec every TensorFlow step shares (tf.io.parse_example)."""
    import tensorflow as tf

    numeric = set(config.features.get("numeric", ()))
    spec = {
        name: tf.io.FixedLenFeature([], tf.float32, default_value=math.nan) if name in numeric
        else tf.io.FixedLenFeature([], tf.string, default_value="")
        for name in config.feature_names
    }
    if with_label:
        spec[config.label.feature] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def raw_dataset(examples_dir: str, split: str, config, batch_size: int,
                with_label: bool = True, shuffle_buffer: int = 0, seed: int | None = None):
    """Batches of (raw feature dict, label) or raw feature dicts, streamed from gzip TFRecords.

    With `shuffle_buffer`, records are shuffled (seeded, so runs repeat) before batching.
    """
    import tensorflow as tf

    spec = feature_spec(config, with_label)
    label = config.label.feature

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        if not with_label:
            return parsed
        y = parsed.pop(label)
        return parsed, y

    files = split_files(examples_dir, split)
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    return dataset.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
