"""Reading ingested tf.Examples into tensors: the one parsing spec every TensorFlow step shares.

Raw features are strings exactly as in the CSV; a value absent from an example (blank in the
source) parses as "" (numeric features as NaN), which is also what serving receives.
"""

from __future__ import annotations

import glob
import math

from components.common.dataset_config import DatasetConfig
from components.common.errors import StepError
from components.common.examples import split_pattern


def feature_spec(config: DatasetConfig, with_label: bool = True) -> dict:
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


def split_files(examples_dir: str, split: str) -> list[str]:
    files = sorted(glob.glob(split_pattern(examples_dir, split)))
    if not files:
        raise StepError(f"{examples_dir}: no {split} TFRecord files ({split_pattern('', split)})")
    return files


def raw_dataset(examples_dir: str, split: str, config: DatasetConfig, batch_size: int,
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
