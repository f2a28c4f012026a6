"""Rows to serialized `tf.Example`s in column batches, written as gzip TFRecord shards.

Encoding goes through tfx-bsl's C++ Arrow-to-Example encoder and the TFRecord framing is
written here, so ingestion needs neither TensorFlow's import (about 10 s) nor a Python proto
per row: together that is three times faster than building `tf.train.Example`s one by one.
Tests read the files back with TensorFlow's own TFRecordDataset.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import struct
import sys
import time
import zlib
from operator import itemgetter

from components.common.artifacts.examples import shard_name
from components.common.errors import StepError

log = logging.getLogger(__name__)
CRC_MASK_DELTA = 0xA282EAD8


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord: length (u64), masked CRC32C of the length, data, masked CRC32C of data."""
    length = struct.pack("<Q", len(record))
    return b"".join((length, struct.pack("<I", _masked_crc32c(length)), record,
                     struct.pack("<I", _masked_crc32c(record))))


def tfrecord_frames(records: list[bytes]) -> bytes:
    """`tfrecord_frame` of every record, concatenated: lengths and CRCs computed a batch at a
    time (numpy, and google_crc32c mapped in C), so no Python step runs per record."""
    import google_crc32c
    import numpy as np

    count = len(records)
    if not count:
        return b""
    lengths = np.fromiter(map(len, records), dtype="<u8", count=count)
    headers = np.empty(count, dtype=[("length", "<u8"), ("crc", "<u4")])
    headers["length"] = lengths
    headers["crc"] = _masked(np.fromiter(map(google_crc32c.value, lengths.view("V8").tolist()),
                                         dtype=np.uint32, count=count))
    footers = _masked(np.fromiter(map(google_crc32c.value, records), dtype=np.uint32,
                                  count=count)).astype("<u4")
    return b"".join(itertools.chain.from_iterable(
        zip(headers.view("V12").tolist(), records, footers.view("V4").tolist(), strict=True)))


def _masked(crc):
    """TFRecord's CRC mask (as _masked_crc32c), on a uint32 array; the sum wraps at 2**32."""
    import numpy as np

    crc = crc.astype(np.uint32)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(CRC_MASK_DELTA)


SEPARATOR = "\x00"
SEPARATOR_BYTE = b"\x00"  # SEPARATOR in UTF-8 (no other character's UTF-8 holds a 0 byte)


class ColumnBatch:
    """Rows of one split until they are encoded together: the string values of each row as one
    tuple (taken with one C call a row), the numeric values and labels as columns. `columns`
    are all the columns, strings first."""

    def __init__(self, strings: int, numbers: int):
        self.rows: list[tuple[str, ...]] = []
        self.numbers: list[list[float | None]] = [[] for _ in range(numbers)]
        self.labels: list[int] = []
        self._strings = strings
        self._packed: list[bytes | list[str]] | None = None  # once shipped to the writer

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def columns(self) -> list[list]:
        strings = [item.decode("utf-8").split(SEPARATOR) if isinstance(item, bytes) else item
                   for item in self.string_columns()]
        return strings + self.numbers

    def string_columns(self) -> list[bytes | list[str]]:
        """Each string column as the UTF-8 of its values joined by SEPARATOR, or as a list when
        a value holds a SEPARATOR itself."""
        if self._packed is not None:
            return self._packed
        packed: list[bytes | list[str]] = []
        strings = zip(*self.rows, strict=True) if self.rows else ([] for _ in range(self._strings))
        for column in strings:
            joined = SEPARATOR.join(column).encode("utf-8")
            if joined.count(SEPARATOR_BYTE) == len(column) - 1:  # no NUL inside a value
                packed.append(joined)
            else:
                packed.append(list(column))
        return packed

    def __getstate__(self):
        """Ship string columns to the writer as one joined UTF-8 string each: pickling a column
        of thousands of small strings costs the parsing process about three times as much, and
        the writer makes its Arrow arrays from those bytes as they are."""
        return self.string_columns(), self.numbers, self.labels

    def __setstate__(self, state):
        self._packed, self.numbers, self.labels = state
        self.rows = []
        self._strings = len(self._packed)


def _joined_string_array(data: bytes):
    """The Arrow string array of the values joined in `data` (UTF-8; no value holds
    SEPARATOR), straight from the bytes: the separators are dropped and the offsets computed
    with numpy, no Python object per value. None when the bytes exceed 32-bit offsets."""
    import numpy as np
    import pyarrow as pa

    if len(data) >= 2**31 - 1:
        return None
    separators = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0)
    count = len(separators) + 1
    text = data.replace(SEPARATOR_BYTE, b"")
    offsets = np.empty(count + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1:count] = separators - np.arange(count - 1)
    offsets[count] = len(text)
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(text))


class RowCollector:
    """Gathers rows into column batches, checking values a person must fix (with row/column).

    `take(row)` is the tuple of a row's string values; `add` does the whole row, and a caller
    may instead append `take(row)` to `batch.rows` and the label to `batch.labels` itself when
    `numeric_names` is empty (ingest's loop does: one call a row fewer)."""

    def __init__(self, string_columns: dict[str, int], numeric_columns: dict[str, int],
                 source_name: str, header: list[str]):
        self.string_names = list(string_columns)
        self.numeric_names = list(numeric_columns)
        self._strings = list(string_columns.values())
        self._numerics = list(numeric_columns.values())
        self._source_name = source_name
        self._header = header
        if len(self._strings) > 1:
            self.take = itemgetter(*self._strings)
        elif self._strings:
            index = self._strings[0]
            self.take = lambda row: (row[index],)
        else:
            self.take = lambda row: ()

    def new_batch(self) -> ColumnBatch:
        return ColumnBatch(len(self._strings), len(self._numerics))

    def add(self, batch: ColumnBatch, row: list[str], label: int, row_number: int) -> None:
        batch.rows.append(self.take(row))
        for j, index in enumerate(self._numerics):
            text = row[index].strip()
            value = None
            if text:
                try:
                    value = float(text)
                except ValueError:
                    raise StepError(
                        f"{self._source_name}: row {row_number}, column "
                        f"{self._header[index]!r}: {text[:40]!r} is not a number"
                    ) from None
            batch.numbers[j].append(value)
        batch.labels.append(label)


class BatchEncoder:
    """Encodes a ColumnBatch into serialized tf.Examples: raw strings, no feature engineering.

    Blank values carry no value (a missing feature to TensorFlow's parser and to TFDV);
    numeric features become float_list, the label int64 0/1.
    """

    def __init__(self, string_names: list[str], numeric_names: list[str], label_feature: str):
        # Every import the writer needs, at once: it starts before the first batch arrives.
        import google_crc32c  # noqa: F401
        import numpy  # noqa: F401
        import pyarrow.compute  # noqa: F401
        from tfx_bsl.coders import example_coder

        self._encoder = example_coder.RecordBatchToExamplesEncoder()
        self._string_names = string_names
        self._numeric_names = numeric_names
        self._label = label_feature

    @staticmethod
    def _strings(values: bytes | list[str]):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        array = _joined_string_array(values) if isinstance(values, bytes) else None
        if array is None:
            if isinstance(values, bytes):
                values = values.decode("utf-8").split(SEPARATOR)
            array = pa.array(values, type=pa.string())
        # blank: empty or only whitespace (utf8_is_space stops at the first other character;
        # the same values as "nothing left after utf8_trim_whitespace", without copying them)
        present = pc.and_(pc.greater(pc.binary_length(array), 0),
                          pc.invert(pc.utf8_is_space(array)))
        kept = pc.cast(pc.filter(array, present), pa.binary())
        offsets = np.zeros(len(array) + 1, dtype=np.int32)
        np.cumsum(present.to_numpy(zero_copy_only=False), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), kept, mask=pc.invert(present))

    @staticmethod
    def _numbers(values: list[float | None]):
        import numpy as np
        import pyarrow as pa

        present = np.array([v is not None for v in values], dtype=bool)
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum(present, out=offsets[1:])
        numbers = pa.array([v for v in values if v is not None], type=pa.float32())
        return pa.ListArray.from_arrays(pa.array(offsets), numbers, mask=pa.array(~present))

    def encode(self, batch: ColumnBatch) -> list[bytes]:
        import numpy as np
        import pyarrow as pa

        arrays = [self._strings(c) for c in batch.string_columns()]
        arrays += [self._numbers(c) for c in batch.numbers]
        labels = np.asarray(batch.labels, dtype=np.int64)
        arrays.append(pa.ListArray.from_arrays(
            pa.array(np.arange(len(labels) + 1, dtype=np.int32)), pa.array(labels)))
        names = [*self._string_names, *self._numeric_names, self._label]
        return self._encoder.encode(pa.RecordBatch.from_arrays(arrays, names))


class ShardedTFRecordWriter:
    """Writes gzip TFRecord shards (`examples.shard_name`) of at most `rows_per_shard` records.

    With `background` (a one-thread executor, so its jobs run one after another in order), gzip
    and the file writes run on that thread, beside the next batch's encoding (zlib lets go of
    the GIL): the writer process then uses the CPU the parsing process leaves idle while it
    waits on a full queue. At most MAX_BACKGROUND_JOBS framed batches wait for it."""

    MAX_BACKGROUND_JOBS = 4

    def __init__(self, directory: str, split: str, rows_per_shard: int,
                 compression_level: int = 1, background=None):
        self.directory = directory
        self.split = split
        self.rows_per_shard = rows_per_shard
        self.compression_level = compression_level
        self.files: list[str] = []
        self.rows = 0
        self._file = None
        self._compressor = None
        self._in_shard = 0
        self._shard_started = 0.0
        self._background = background
        self._jobs: collections.deque = collections.deque()
        os.makedirs(directory, exist_ok=True)

    def _open(self) -> None:
        name = shard_name(len(self.files))
        self._file = open(os.path.join(self.directory, name), "wb")  # noqa: SIM115
        # wbits 31: a gzip container, which TFRecordDataset(compression_type="GZIP") reads.
        self._compressor = zlib.compressobj(self.compression_level, zlib.DEFLATED, 31)
        self.files.append(name)
        self._in_shard = 0
        self._shard_started = time.monotonic()

    def _run(self, job, *args) -> None:
        """`job(*args)` here, or queued on the background thread (whose failures surface on the
        next call that waits for it)."""
        if self._background is None:
            job(*args)
            return
        self._jobs.append(self._background.submit(job, *args))
        while self._jobs and (len(self._jobs) > self.MAX_BACKGROUND_JOBS or self._jobs[0].done()):
            self._jobs.popleft().result()

    @staticmethod
    def _compress(file, compressor, framed: bytes) -> None:
        file.write(compressor.compress(framed))

    def write(self, records: list[bytes]) -> None:
        start = 0
        while start < len(records):
            if self._file is None:
                self._open()
            take = min(len(records) - start, self.rows_per_shard - self._in_shard)
            self._run(self._compress, self._file, self._compressor,
                      tfrecord_frames(records[start:start + take]))
            self._in_shard += take
            self.rows += take
            start += take
            if self._in_shard >= self.rows_per_shard:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._file is None:
            return
        self._run(self._finish, self._file, self._compressor, self.files[-1], self._in_shard,
                  self._shard_started)
        self._file = None

    def _finish(self, file, compressor, name: str, rows: int, started: float) -> None:
        file.write(compressor.flush())
        file.close()
        seconds = max(time.monotonic() - started, 1e-9)
        log.info("%s shard %s: %d rows in %.1f s (%.0f rows/s)", self.split, name, rows,
                 seconds, rows / seconds)

    def close(self) -> list[str]:
        self._close_shard()
        while self._jobs:
            self._jobs.popleft().result()
        return self.files


def _encode_and_write(batches, results, encoder_args: tuple, writer_args: dict) -> None:
    """The writer process: encode each submitted batch and append it to its split's shards
    (gzip on a second thread, see ShardedTFRecordWriter)."""
    from concurrent.futures import ThreadPoolExecutor

    # pyarrow imports pandas, when installed, on its first array (only to recognise pandas
    # objects; none come here): 0.3 to 0.5 s of start-up in this process for nothing. The ingest
    # image has no pandas; where there is one, this process does without it.
    sys.modules.setdefault("pandas", None)
    try:
        encoder = BatchEncoder(*encoder_args)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-gzip") as background:
            writers = {split: ShardedTFRecordWriter(*args, background=background)
                       for split, args in writer_args.items()}
            while (item := batches.get()) is not None:
                split, batch = item
                writers[split].write(encoder.encode(batch))
            result = {split: (w.close(), w.rows) for split, w in writers.items()}
        results.put(result)
    except BaseException as exc:  # report to the parent, which raises it as its own failure
        results.put({"error": f"{type(exc).__name__}: {exc}"})


class ExampleWriterProcess:
    """Encoding and compression in a second process, overlapping with CSV parsing.

    The queue is bounded, so at most a few batches wait in memory whatever the file size.
    """

    def __init__(self, encoder_args: tuple, writer_args: dict, max_pending: int = 16):
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._batches = context.Queue(maxsize=max_pending)
        self._results = context.Queue()
        self._process = context.Process(
            target=_encode_and_write, name="ingest-writer", daemon=True,
            args=(self._batches, self._results, encoder_args, writer_args),
        )
        self._process.start()

    def submit(self, split: str, batch: ColumnBatch) -> None:
        while True:
            try:
                self._batches.put((split, batch), timeout=1.0)
                return
            except Exception:  # queue.Full: the writer is behind, or it died
                if not self._process.is_alive():
                    self._raise_failure()

    def close(self) -> dict[str, tuple[list[str], int]]:
        self._batches.put(None)
        result = self._results.get()
        self._process.join()
        if "error" in result:
            raise RuntimeError(f"ingest writer process failed: {result['error']}")
        return result

    def _raise_failure(self) -> None:
        try:
            result = self._results.get(timeout=1.0)
        except Exception:
            result = {"error": f"exit code {self._process.exitcode}"}
        raise RuntimeError(f"ingest writer process failed: {result.get('error')}")

    def abort(self) -> None:
        """Stop the writer at once (an error or SIGTERM in the parent). Batches still queued
        are dropped: without cancel_join_thread, interpreter exit would wait for the queue's
        feeder thread to push them into a pipe nobody reads any more, forever."""
        self._batches.cancel_join_thread()
        self._results.cancel_join_thread()
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
