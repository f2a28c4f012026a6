"""Labels that arrive after the predictions: a CSV with the id and the label columns.

The columns are found as ingest finds them, through the dataset config (`columns` of the id
feature and of the label, headers matched without regard to case and surrounding spaces), so a
later export of the same complaints works as it is: `Complaint ID,Consumer disputed?` or any
superset of columns. Values compare like ingest's: the config's positive/negative values;
a blank label is not known yet, anything else is invalid (both counted, neither used).
The same id twice: the later row wins (a correction), counted as a duplicate (same value) or a
conflict (another value).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from components.common import storage
from components.common.dataset_config import DatasetConfig
from components.common.errors import StepError


@dataclass
class Labels:
    values: dict[str, int] = field(default_factory=dict)  # id -> 1 positive / 0 negative
    rows: int = 0
    blank: int = 0
    invalid: int = 0
    missing_id: int = 0
    duplicates: int = 0
    conflicting: int = 0

    def counts(self) -> dict:
        return {"rows": self.rows, "ids": len(self.values), "blank": self.blank,
                "invalid": self.invalid, "missing_id": self.missing_id,
                "duplicates": self.duplicates, "conflicting": self.conflicting}


def column_index(header: list[str], headers: tuple[str, ...]) -> int | None:
    """The first column whose header matches one of `headers` (case and spaces ignored)."""
    normalized = [h.strip().lower() for h in header]
    for wanted in headers:
        if wanted.strip().lower() in normalized:
            return normalized.index(wanted.strip().lower())
    return None


def text_stream(stream) -> io.TextIOWrapper:
    """UTF-8 text (a BOM dropped) over a binary stream from `storage.open_read`."""
    if hasattr(stream, "auto_close"):  # urllib3's response (S3) would close itself at the end
        stream.auto_close = False      # of the body, under the buffered reader's feet
    raw = stream if isinstance(stream, io.BufferedIOBase) else io.BufferedReader(stream)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def read_labels(uri: str, config: DatasetConfig) -> Labels:
    label = config.label
    positive = {v.strip().lower() for v in label.positive}
    negative = {v.strip().lower() for v in label.negative}
    found = Labels()
    with storage.open_read(uri) as stream:
        reader = csv.reader(text_stream(stream), delimiter=config.delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise StepError(f"{uri}: the labels file is empty (expected a header row)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise StepError(f"{uri}: line 1: not a CSV header: {exc}") from exc
        columns = {}
        for feature in (config.id_feature, label.feature):
            index = column_index(header, config.columns[feature])
            if index is None:
                raise StepError(f"{uri}: no column for {feature!r} (looked for "
                                f"{list(config.columns[feature])}; header has "
                                f"{', '.join(repr(h) for h in header[:20])})")
            columns[feature] = index
        id_index, label_index = columns[config.id_feature], columns[label.feature]
        width = max(id_index, label_index) + 1
        try:
            for row in reader:
                if not row:
                    continue
                found.rows += 1
                if len(row) < width:
                    raise StepError(f"{uri}: row {found.rows} (line {reader.line_num}): "
                                    f"{len(row)} fields, expected {len(header)}")
                row_id = row[id_index].strip()
                value = row[label_index].strip().lower()
                if not row_id:
                    found.missing_id += 1
                    continue
                if value in positive:
                    known = 1
                elif value in negative:
                    known = 0
                else:
                    if value:
                        found.invalid += 1
                    else:
                        found.blank += 1
                    continue
                previous = found.values.get(row_id)
                if previous is not None:
                    if previous == known:
                        found.duplicates += 1
                    else:
                        found.conflicting += 1
                found.values[row_id] = known
        except (csv.Error, UnicodeDecodeError) as exc:
            raise StepError(f"{uri}: line {reader.line_num}: malformed CSV: {exc}") from exc
    return found
