"""The layout of an ingested dataset, which every step after ingestion reads.

    <dir>/train/part-NNNNN.tfrecord.gz   gzip TFRecord of tf.Example
    <dir>/eval/part-NNNNN.tfrecord.gz
    <dir>/metadata.json                  written last: its presence marks a finished dataset
"""

from __future__ import annotations

import contextlib
import json
import os

from components.common.errors import StepError

SPLITS = ("train", "eval")
METADATA_FILE = "metadata.json"


def split_pattern(examples_dir: str, split: str) -> str:
    return os.path.join(examples_dir, split, "*.tfrecord.gz")


def read_metadata(examples_dir: str) -> dict:
    """The dataset's metadata; its absence means the directory is not a finished dataset."""
    path = os.path.join(examples_dir, METADATA_FILE)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
            open(path, encoding="utf-8") as handle:
        return json.load(handle)
    raise StepError(f"{examples_dir}: no {METADATA_FILE}; not the output of a finished ingest step")
