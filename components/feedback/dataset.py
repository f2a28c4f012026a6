"""The newly labelled rows as the next dataset version: a CSV ingest reads like any export.

Rows are the logged inputs of the scored predictions (personal fields, which the log keeps
only hashed or not at all, are blank), their key as the id and their label as
the config's first positive/negative value, under the config's first header of each column
(`Product`, ..., `Consumer disputed?`, `Complaint ID` for cfpb). They stream to a temporary
file during the join. With `combine` (the default) the new version is the deployed stable
version's training data (the exact source bytes the store kept for its dataset version) with
the new rows appended in that file's column order, ids already in it left out: the next run
trains on everything so far. The version is the hash of the bytes, computed as ingest computes
it, and the file waits at `<store>/incoming/<version>.csv` for the trigger (data_store.py). The
same rows give the same version, so running feedback twice writes nothing new.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os

from components.common import data_store, storage
from components.common.artifacts.prediction_log import Prediction
from components.common.dataset_config import DatasetConfig
from components.common.errors import StepError
from components.feedback.labels import column_index, text_stream

log = logging.getLogger(__name__)


def columns_of(config: DatasetConfig) -> list[str]:
    """Features, label, id: the columns a new rows file has (config names)."""
    return [*config.feature_names, config.label.feature, config.id_feature]


class NewRows:
    """The scored rows, streamed to `<directory>/new_rows.csv` as they are matched."""

    def __init__(self, directory: str, config: DatasetConfig):
        self.config = config
        self.path = os.path.join(directory, "new_rows.csv")
        self.count = 0
        self.redacted: dict[str, int] = {}  # feature -> rows where the log had it redacted
        self._handle = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._handle, delimiter=config.delimiter, lineterminator="\n")
        self._writer.writerow([config.columns[name][0] for name in columns_of(config)])

    def add(self, record: Prediction, label: int) -> None:
        config = self.config
        values = [_text(record.inputs.get(name)) for name in config.feature_names]
        values.append(config.label.positive[0] if label else config.label.negative[0])
        values.append(record.key or "")
        self._writer.writerow(values)
        self.count += 1
        for name in record.redacted:  # personal: not in the log in clear, so blank here
            self.redacted[name] = self.redacted.get(name, 0) + 1

    def close(self) -> None:
        self._handle.close()
        features = {name: rows for name, rows in self.redacted.items()
                    if name in self.config.feature_names}
        if features:
            log.warning("new rows: %s blank where the prediction log kept no clear value "
                        "(personal fields, privacy.personal_fields of the dataset config)",
                        ", ".join(f"{name} in {rows}" for name, rows in sorted(features.items())))


def _text(value) -> str:
    return "" if value is None else str(value)


class _Hashing:
    """A text sink that hashes the UTF-8 bytes it writes to a binary file."""

    def __init__(self, handle):
        self.handle = handle
        self.sha256 = hashlib.sha256()

    def write_bytes(self, data: bytes) -> None:
        self.sha256.update(data)
        self.handle.write(data)

    def write(self, text: str) -> int:
        self.write_bytes(text.encode("utf-8"))
        return len(text)


def build_version(new_rows: NewRows, directory: str, base_uri: str | None) -> dict:
    """The new dataset version's file (new rows, after the base's bytes when given):
    {path, dataset_version, sha256, rows_new, rows_base, skipped_known_ids}."""
    config = new_rows.config
    path = os.path.join(directory, "dataset.csv")
    base_ids: set[str] = set()
    rows_base = 0
    with open(path, "wb") as handle:
        sink = _Hashing(handle)
        if base_uri:
            header, ends_with_newline = None, True
            with storage.open_read(base_uri) as stream:
                reader = csv.reader(text_stream(stream), delimiter=config.delimiter)
                header = next(reader, None)
                if header is None:
                    raise StepError(f"{base_uri}: the training data file is empty")
                id_index = column_index(header, config.columns[config.id_feature])
                if id_index is None:
                    raise StepError(f"{base_uri}: no id column {config.id_feature!r}")
                for row in reader:
                    if row:
                        rows_base += 1
                        base_ids.add(row[id_index].strip())
            with storage.open_read(base_uri) as stream:
                last = b"\n"
                while chunk := stream.read(1 << 20):
                    sink.write_bytes(chunk)
                    last = chunk[-1:]
                ends_with_newline = last == b"\n"
            if not ends_with_newline:
                sink.write_bytes(b"\n")
            indexes = {}
            for name in columns_of(config):
                index = column_index(header, config.columns[name])
                if index is None:
                    raise StepError(f"{base_uri}: no column for {name!r} in the training data")
                indexes[name] = index
            width = len(header)
        else:
            indexes = {name: i for i, name in enumerate(columns_of(config))}
            width = len(indexes)
        writer = csv.writer(sink, delimiter=config.delimiter, lineterminator="\n")
        if not base_uri:
            writer.writerow([config.columns[name][0] for name in columns_of(config)])
        skipped = 0
        added = 0
        with open(new_rows.path, encoding="utf-8", newline="") as rows:
            reader = csv.reader(rows, delimiter=config.delimiter)
            next(reader)
            id_position = len(columns_of(config)) - 1
            for row in reader:
                if row[id_position].strip() in base_ids:
                    skipped += 1
                    continue
                out = [""] * width
                for position, name in enumerate(columns_of(config)):
                    out[indexes[name]] = row[position]
                writer.writerow(out)
                added += 1
    sha256_hex = sink.sha256.hexdigest()
    return {"path": path, "dataset_version": data_store.dataset_version(sha256_hex),
            "sha256": sha256_hex, "rows_new": added, "rows_base": rows_base,
            "skipped_known_ids": skipped, "base": base_uri}


def publish(version: dict, store: str) -> dict:
    """Put the file at `<store>/incoming/<version>.csv` unless the store already has it (as a
    stored version or waiting): {uri, status: written | waiting | already stored}."""
    name = version["dataset_version"]
    uri = data_store.incoming_uri(store, name)
    if data_store.is_stored(store, name):
        return {"uri": storage.join(store, name), "status": "already stored"}
    if storage.exists(uri):
        return {"uri": uri, "status": "waiting"}
    storage.put_file(version["path"], uri)  # atomic: a reader never sees half of it
    log.info("new dataset version %s (%d new rows) waits at %s", name, version["rows_new"], uri)
    return {"uri": uri, "status": "written"}
