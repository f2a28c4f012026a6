"""Ingestion core: CSV in, versioned gzip TFRecord train/eval splits out, all or nothing."""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import time
from array import array
from dataclasses import dataclass

from components.common import data_store, storage
from components.common.artifacts import examples
from components.common.artifacts.examples import METADATA_FILE, SPLITS
from components.common.dataset_config import DatasetConfig, check_eval_fraction
from components.common.errors import StepError
from components.common.staging import staged_output
from components.ingest import split
from components.ingest.csv_source import CsvRows
from components.ingest.tfrecord_writer import ExampleWriterProcess, RowCollector

log = logging.getLogger(__name__)
PROGRESS_EVERY = 100_000
ENCODE_BATCH = 8192
MAX_DROPPED_VALUES = 20


DUPLICATE_POLICIES = ("keep-last", "keep-first", "error")
MAX_DUPLICATE_EXAMPLES = 10
CONTENT_ID_PREFIX = "content-"


@dataclass(frozen=True)
class IngestOptions:
    eval_fraction: float | None = None  # None: the dataset config's split.eval_fraction
    store: str | None = None
    rows_per_shard: int = 250_000
    compression_level: int = 1  # gzip level: 1 is ~3x faster than 6 for ~15% larger files
    rerun: bool = False  # data the store already has counts as new (a run that failed later)
    # Rows that share an id: keep the last (the CFPB export's updates), the first, or fail
    # when their content differs.
    on_duplicate_id: str = "keep-last"


def normalized_header(name: str) -> str:
    """A header as it is matched: case, spaces, hyphens and underscores ignored."""
    return re.sub(r"[\s_-]+", "", name).lower()


@dataclass(frozen=True)
class ColumnLayout:
    """Where each feature's value is in a row. A column the source lacks (an optional feature;
    the id) points past the header, at a value `complete` appends to every row."""

    header: list[str]  # the source's header, then a name per appended value
    indices: dict[str, int]
    mapping: dict[str, str | None]  # feature -> the source header it is read from (None: none)
    missing_optional: tuple[str, ...] = ()
    content_id: bool = False  # no id column: each row's id is a hash of its content

    @property
    def appends(self) -> bool:
        return bool(self.missing_optional) or self.content_id

    def complete(self, row: list[str]) -> list[str]:
        row.extend("" for _ in self.missing_optional)
        if self.content_id:
            digest = hashlib.blake2b("\x1f".join(row).encode("utf-8", "surrogatepass"),
                                     digest_size=8).hexdigest()
            row.append(CONTENT_ID_PREFIX + digest)
        return row


def resolve_columns(header: list[str], config: DatasetConfig, source: str) -> ColumnLayout:
    """Feature name -> column, matching headers ignoring case, spaces, hyphens and
    underscores. Two columns that match one feature are an error naming both; a missing column
    is an error unless the feature is optional (then missing values) or the id (then a hash of
    each row's content)."""
    by_name: dict[str, list[int]] = {}
    for index, name in enumerate(header):
        if name:
            by_name.setdefault(normalized_header(name), []).append(index)
    indices: dict[str, int] = {}
    missing = []
    for feature, candidates in config.columns.items():
        found = sorted({i for c in candidates for i in by_name.get(normalized_header(c), ())})
        if len(found) > 1:
            shown = " and ".join(f"{header[i]!r} (column {i + 1})" for i in found[:4])
            raise StepError(
                f"{source}: columns {shown} all match the feature {feature!r} (headers match "
                "ignoring case, spaces, hyphens and underscores); which one is meant is a "
                "guess, so remove or rename the others")
        if found:
            indices[feature] = found[0]
        else:
            missing.append(feature)
    optional = set(config.optional_features)
    for feature in missing:
        if feature in optional or feature == config.id_feature:
            continue
        candidates = config.columns[feature]
        role = "label" if feature == config.label.feature else "feature"
        shown = ", ".join(repr(h) for h in header[:20])
        raise StepError(
            f"{source}: no column for the {role} {feature!r} (looked for {list(candidates)}; "
            f"header has {shown}); map it under columns in the dataset config"
        )
    mapping: dict[str, str | None] = {f: header[i] for f, i in indices.items()}
    extended = list(header)
    missing_optional = tuple(f for f in missing if f in optional)
    for feature in missing_optional:
        indices[feature] = len(extended)
        mapping[feature] = None
        extended.append(f"(no column: {feature})")
    content_id = config.id_feature in missing
    if content_id:
        indices[config.id_feature] = len(extended)
        mapping[config.id_feature] = None
        extended.append(f"(content hash: {config.id_feature})")
    return ColumnLayout(extended, indices, mapping, missing_optional, content_id)


def ingest(source: str, output: str, config: DatasetConfig,
           options: IngestOptions = IngestOptions()) -> dict:
    """Run ingestion; returns the metadata that is also written to `<output>/metadata.json`,
    plus `new_data`: false when the store already held this dataset version (true without a
    store)."""
    eval_fraction = check_eval_fraction(
        config.eval_fraction if options.eval_fraction is None else options.eval_fraction,
        "--eval-fraction",
    )
    if options.on_duplicate_id not in DUPLICATE_POLICIES:
        raise StepError(f"--on-duplicate-id: {options.on_duplicate_id!r} is not one of "
                        f"{', '.join(DUPLICATE_POLICIES)}")
    with staged_output(output, last=METADATA_FILE) as staging:
        metadata = _ingest_to(source, staging, config, eval_fraction, options)
    return metadata


@dataclass
class _Pass:
    """What one read of the source found (and wrote)."""

    rows_read: int
    sha256: str
    source_bytes: int
    layout: ColumnLayout
    r_row_names: bool
    cr_line_endings: bool
    written: dict
    dropped: collections.Counter
    dropped_values: collections.Counter
    label_counts: dict
    # hash(id) of every row with an id, for finding ids on more than one row (first pass
    # only): 8 bytes a row.
    id_hashes: array | None = None


def _write_pass(source: str, staging: str, config: DatasetConfig, eval_fraction: float,
                options: IngestOptions, skip: frozenset[int] = frozenset(),
                track: bool = False) -> _Pass:
    """Read the source once, writing the examples of every usable row not in `skip`."""
    label_spec = config.label
    positive = {v.strip().lower() for v in label_spec.positive}
    negative = {v.strip().lower() for v in label_spec.negative}
    dropped: collections.Counter[str] = collections.Counter()
    dropped_values: collections.Counter[str] = collections.Counter()
    label_counts = {s: {"positive": 0, "negative": 0} for s in SPLITS}
    id_hashes = array("q")
    numeric = list(config.features.get("numeric", ()))
    strings = [f for f in [*config.feature_names, config.id_feature] if f not in numeric]
    # Started before the source is opened: the writer's imports (numpy, pyarrow, tfx-bsl) run
    # while this process opens the source and parses the first rows.
    writer = ExampleWriterProcess(
        (strings, numeric, label_spec.feature),
        {s: (os.path.join(staging, s), s, options.rows_per_shard, options.compression_level)
         for s in SPLITS},
    )
    try:
        with storage.open_read(source) as stream:
            rows = CsvRows(stream, source, config.delimiter, config.max_field_bytes)
            layout = resolve_columns(rows.header, config, source)
            columns = layout.indices
            label_index = columns[label_spec.feature]
            id_index = columns[config.id_feature]
            track = track and not layout.content_id
            collector = RowCollector({f: columns[f] for f in strings},
                                     {f: columns[f] for f in numeric}, source, layout.header)
            batches = {s: collector.new_batch() for s in SPLITS}
            # Bound once: the loop below runs a million times.
            take, add, quick = collector.take, collector.add, not numeric
            appends, is_eval, salt = layout.appends, split.is_eval, config.split_salt
            started = time.monotonic()
            for row in rows:
                if skip and rows.row_number in skip:
                    dropped["duplicate_id"] += 1
                    continue
                if appends:
                    row = layout.complete(row)
                row_id = row[id_index].strip()
                if track and row_id:
                    id_hashes.append(hash(row_id))
                raw_label = row[label_index].strip().lower()
                if raw_label in positive:
                    label = 1
                elif raw_label in negative:
                    label = 0
                else:
                    dropped["blank_label" if not raw_label else "invalid_label"] += 1
                    shown = row[label_index].strip()[:40]
                    if shown and (shown in dropped_values
                                  or len(dropped_values) < MAX_DROPPED_VALUES):
                        dropped_values[shown] += 1
                    continue
                if not row_id:
                    dropped["missing_id"] += 1
                    continue
                split_name = "eval" if is_eval(row_id, eval_fraction, salt) else "train"
                batch = batches[split_name]
                if quick:
                    batch.rows.append(take(row))
                    batch.labels.append(label)
                else:
                    add(batch, row, label, rows.row_number)
                if len(batch.labels) >= ENCODE_BATCH:
                    _count_labels(label_counts[split_name], batch)
                    writer.submit(split_name, batch)
                    batches[split_name] = collector.new_batch()
                if rows.row_number % PROGRESS_EVERY == 0:
                    log.info("read %d rows (%.0f rows/s overall, %.1f MB)", rows.row_number,
                             rows.row_number / max(time.monotonic() - started, 1e-9),
                             rows.source.bytes_read / 1e6)
            for split_name, batch in batches.items():
                if len(batch):
                    _count_labels(label_counts[split_name], batch)
                    writer.submit(split_name, batch)
            written = writer.close()
    except BaseException:
        writer.abort()
        raise
    return _Pass(rows.row_number, rows.source.sha256.hexdigest(), rows.source.bytes_read,
                 layout, rows.r_row_names, rows.cr_line_endings, written, dropped,
                 dropped_values, label_counts, id_hashes if track else None)


def _count_labels(counts: dict[str, int], batch) -> None:
    positives = sum(batch.labels)  # 1 positive, 0 negative
    counts["positive"] += positives
    counts["negative"] += len(batch.labels) - positives


def _repeated_id_hashes(first: _Pass) -> set[int]:
    """hash(id) values seen on more than one row (candidates: a second read confirms)."""
    if not first.id_hashes:
        return set()
    import numpy as np

    ordered = np.sort(np.frombuffer(first.id_hashes, dtype=np.int64))
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    return set(np.unique(repeated).tolist())


def _rows_sharing_ids(source: str, config: DatasetConfig, candidates: set[int],
                      sha256: str) -> dict[str, list[tuple[int, int]]]:
    """id -> [(row number, hash(row)), ...] for every id on more than one row (a second read
    of the source, parsing only)."""
    groups: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    with storage.open_read(source) as stream:
        rows = CsvRows(stream, source, config.delimiter, config.max_field_bytes)
        layout = resolve_columns(rows.header, config, source)
        id_index = layout.indices[config.id_feature]
        for row in rows:
            if layout.appends:
                row = layout.complete(row)
            row_id = row[id_index].strip()
            if row_id and hash(row_id) in candidates:
                groups[row_id].append((rows.row_number, hash(tuple(row))))
        _same_source(source, sha256, rows.source.sha256.hexdigest())
    return {row_id: group for row_id, group in groups.items() if len(group) > 1}


def _same_source(source: str, expected: str, found: str) -> None:
    if found != expected:
        raise StepError(f"{source}: the file changed while ingest read it (its sha256 differs "
                        "between two reads); run ingest again once it is complete")


def _resolve_duplicates(groups: dict[str, list[tuple[int, int]]], policy: str, source: str,
                        id_header: str) -> tuple[set[int], dict]:
    """The rows to leave out (all but one per id) and what metadata.json says about them."""
    conflicting = {i for i, group in groups.items() if len({c for _, c in group}) > 1}
    ordered = sorted(groups, key=lambda i: groups[i][0][0])
    if policy == "error" and conflicting:
        first = next(i for i in ordered if i in conflicting)
        numbers = [r for r, _ in groups[first]]
        others = (f", and so do the rows of {len(conflicting) - 1} other id(s)"
                  if len(conflicting) > 1 else "")
        raise StepError(
            f"{source}: rows {numbers[0]} and {numbers[1]} share the id {first[:60]!r} (column "
            f"{id_header!r}) but differ{others} (--on-duplicate-id error); keep-last keeps "
            "each id's last row (the CFPB export's updates), keep-first its first")
    skip: set[int] = set()
    for group in groups.values():
        keep = group[0][0] if policy == "keep-first" else group[-1][0]
        if policy == "error":  # identical rows only: any one of them
            keep = group[0][0]
        skip.update(r for r, _ in group if r != keep)
    report = {
        "policy": policy,
        "ids": len(groups),
        "conflicting": len(conflicting),
        "identical": len(groups) - len(conflicting),
        "rows_dropped": len(skip),
        "examples": [{"id": i, "rows": [r for r, _ in groups[i]], "differ": i in conflicting}
                     for i in ordered[:MAX_DUPLICATE_EXAMPLES]],
    }
    return skip, report


def _ingest_to(source: str, staging: str, config: DatasetConfig, eval_fraction: float,
               options: IngestOptions) -> dict:
    started = time.monotonic()
    result = _write_pass(source, staging, config, eval_fraction, options, track=True)
    duplicates = {"policy": options.on_duplicate_id, "ids": 0, "conflicting": 0,
                  "identical": 0, "rows_dropped": 0, "examples": []}
    candidates = _repeated_id_hashes(result)
    result.id_hashes = None
    if candidates:
        groups = _rows_sharing_ids(source, config, candidates, result.sha256)
        id_header = result.layout.mapping[config.id_feature] or config.id_feature
        skip, duplicates = _resolve_duplicates(groups, options.on_duplicate_id, source,
                                               id_header)
        if skip:
            log.warning(
                "%s: %d id(s) are on more than one row (%d with different content, %d "
                "identical): kept the %s row of each, left out %d rows (--on-duplicate-id %s)",
                source, duplicates["ids"], duplicates["conflicting"], duplicates["identical"],
                "first" if options.on_duplicate_id == "keep-first" else "last",
                len(skip), options.on_duplicate_id)
            for split_name in SPLITS:
                shutil.rmtree(os.path.join(staging, split_name), ignore_errors=True)
            first_sha256 = result.sha256
            result = _write_pass(source, staging, config, eval_fraction, options,
                                 skip=frozenset(skip))
            _same_source(source, first_sha256, result.sha256)
    layout = result.layout
    rows_read, sha256_hex, source_bytes = result.rows_read, result.sha256, result.source_bytes
    written, dropped = result.written, result.dropped
    dropped_values, label_counts = result.dropped_values, result.label_counts
    label_index = layout.indices[config.label.feature]
    id_index = layout.indices[config.id_feature]
    if rows_read == 0:
        raise StepError(f"{source}: the file has a header but no data rows")
    files = {s: written[s][0] for s in SPLITS}
    kept = {s: written[s][1] for s in SPLITS}
    if kept["train"] == 0 and kept["eval"]:
        raise StepError(
            f"{source}: all {kept['eval']} usable rows fell in the eval split; the data is too "
            "small for the eval fraction (add rows or lower --eval-fraction)"
        )
    if kept["train"] == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items()))
        checks = []
        if dropped["blank_label"] or dropped["invalid_label"]:
            checks.append(f"the label column {layout.header[label_index]!r} and "
                          "label.positive/negative in the config")
        if dropped["missing_id"]:
            checks.append(f"the id column {layout.header[id_index]!r} (id_feature "
                          f"{config.id_feature!r}), blank in {dropped['missing_id']} rows")
        raise StepError(
            f"{source}: none of {rows_read} rows is usable for training ({reasons}); check "
            + (" and ".join(checks) or "the rows")
        )
    for split_name in SPLITS:
        if kept[split_name] == 0:
            os.rmdir(os.path.join(staging, split_name))
    version = data_store.dataset_version(sha256_hex)
    missing_columns = {feature: rows_read for feature in layout.missing_optional}
    if missing_columns:
        log.warning("%s: no column for the optional feature(s) %s (looked for %s): read as "
                    "missing values in all %d rows", source, ", ".join(missing_columns),
                    [list(config.columns[f]) for f in missing_columns], rows_read)
    if layout.content_id:
        log.warning("%s: no id column (looked for %s): each row's %s is a hash of its "
                    "content, and so is its split; a row whose content changes in a later "
                    "file moves", source, list(config.columns[config.id_feature]),
                    config.id_feature)
    if result.r_row_names:
        log.info("%s: every row has one field more than the header and starts with an "
                 "increasing number (R's row names): that first field was dropped", source)
    if result.cr_line_endings:
        log.info("%s: lines end with CR alone (an old Mac file); read as line breaks", source)
    summary = {
        "rows": {"read": rows_read, "kept": kept["train"] + kept["eval"], **kept},
        "dropped": dict(sorted(dropped.items())),
        "label_counts": label_counts,
    }
    seconds = time.monotonic() - started
    metadata = {
        "dataset_version": version,
        "source": source,
        "source_sha256": sha256_hex,
        "source_bytes": source_bytes,
        "snapshot": storage.join(options.store, version) if options.store else None,
        **summary,
        "dropped_label_values": dict(dropped_values.most_common()),
        "label": {"feature": config.label.feature, "positive": list(config.label.positive),
                  "negative": list(config.label.negative),
                  "encoding": "int64: 1 positive, 0 negative"},
        "id_feature": config.id_feature,
        "features": {role: list(names) for role, names in config.features.items() if names},
        "column_mapping": layout.mapping,
        "missing_columns": missing_columns,
        "id_source": ("content hash (no id column)" if layout.content_id
                      else f"column {layout.mapping[config.id_feature]!r}"),
        "duplicate_ids": duplicates,
        "r_row_names_dropped": result.r_row_names,
        "line_endings": "CR" if result.cr_line_endings else "LF or CRLF",
        "dataset_config": {"name": config.name, "source": config.source,
                           "fingerprint": config.fingerprint()},
        "split": {"method": split.SPLIT_METHOD, "eval_fraction": eval_fraction,
                  "salt": config.split_salt},
        "files": {s: [f"{s}/{name}" for name in files[s]] for s in SPLITS},
        "format": "gzip TFRecord of tf.Example",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    examples.write_metadata(staging, metadata)
    new_data = True  # without a store every run's data counts as new
    if options.store:
        _, new_data = data_store.snapshot(source, options.store, version, sha256_hex, summary,
                                          examples_dir=staging)
    log.info(
        "ingested %s as %s: %d rows read, %d train, %d eval, dropped %s, %.1f s (%.0f rows/s)",
        source, version, rows_read, kept["train"], kept["eval"], dict(dropped) or "none",
        seconds, rows_read / max(seconds, 1e-9),
    )
    if not new_data and options.rerun:
        log.info("%s is already in the store %s; --rerun: the run goes on as for new data",
                 version, options.store)
        new_data = True
    elif not new_data:
        log.info("no new data: %s is already in the store %s; the rest of the run skips itself "
                 "(--rerun true runs it again)", version, options.store)
    # Not in metadata.json (the examples are the same either way): the run's view of the data.
    return {**metadata, "new_data": new_data}

