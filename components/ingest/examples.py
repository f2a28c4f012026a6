"""Rows to `tf.Example`s, written as gzip TFRecord shards with a progress line per shard."""

from __future__ import annotations

import logging
import os
import time

from components.common.errors import StepError

log = logging.getLogger(__name__)


class ExampleEncoder:
    """Encodes one CSV row as a serialized tf.Example: raw strings, no feature engineering.

    Blank values are left out (absent = missing, which is how TFDV counts missingness);
    numeric features become float_list, the label int64 0/1.
    """

    def __init__(self, string_columns: dict[str, int], numeric_columns: dict[str, int],
                 label_feature: str, source_name: str, header: list[str]):
        from tensorflow.core.example import example_pb2

        self._example_cls = example_pb2.Example
        self._strings = list(string_columns.items())
        self._numerics = list(numeric_columns.items())
        self._label = label_feature
        self._source_name = source_name
        self._header = header

    def encode(self, row: list[str], label: int, row_number: int) -> bytes:
        example = self._example_cls()
        features = example.features.feature
        for name, index in self._strings:
            value = row[index]
            if value and not value.isspace():
                features[name].bytes_list.value.append(value.encode("utf-8"))
        for name, index in self._numerics:
            value = row[index].strip()
            if value:
                try:
                    number = float(value)
                except ValueError:
                    raise StepError(
                        f"{self._source_name}: row {row_number}, column "
                        f"{self._header[index]!r}: {value[:40]!r} is not a number"
                    ) from None
                features[name].float_list.value.append(number)
        features[self._label].int64_list.value.append(label)
        return example.SerializeToString()


class ShardedTFRecordWriter:
    """Writes gzip TFRecord shards `part-NNNNN.tfrecord.gz` of at most `rows_per_shard` records."""

    def __init__(self, directory: str, split: str, rows_per_shard: int,
                 compression_level: int = 6):
        self.directory = directory
        self.split = split
        self.rows_per_shard = rows_per_shard
        self.compression_level = compression_level
        self.files: list[str] = []
        self.rows = 0
        self._writer = None
        self._in_shard = 0
        self._shard_started = 0.0
        os.makedirs(directory, exist_ok=True)

    def _open(self) -> None:
        import tensorflow as tf

        name = f"part-{len(self.files):05d}.tfrecord.gz"
        options = tf.io.TFRecordOptions(
            compression_type="GZIP", compression_level=self.compression_level
        )
        self._writer = tf.io.TFRecordWriter(os.path.join(self.directory, name), options)
        self.files.append(name)
        self._in_shard = 0
        self._shard_started = time.monotonic()

    def write(self, record: bytes) -> None:
        if self._writer is None:
            self._open()
        self._writer.write(record)
        self._in_shard += 1
        self.rows += 1
        if self._in_shard >= self.rows_per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        seconds = max(time.monotonic() - self._shard_started, 1e-9)
        log.info("%s shard %s: %d rows in %.1f s (%.0f rows/s)", self.split, self.files[-1],
                 self._in_shard, seconds, self._in_shard / seconds)
        self._writer = None

    def close(self) -> list[str]:
        self._close_shard()
        return self.files
