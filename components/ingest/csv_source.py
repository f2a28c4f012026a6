"""Streaming RFC 4180 reading of a CSV source, with errors that say file, row and column.

Quoted fields may hold commas, quotes and newlines; the source may start with a UTF-8 BOM.
Bytes are decoded one physical line at a time so an invalid byte is reported at its exact
line and column, and the raw bytes pass through a hash on the way (the dataset version).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from typing import BinaryIO

from components.common.errors import StepError

BOM = "\ufeff"
OTHER_DELIMITERS = (";", "\t", "|")


class HashingReader:
    """Wraps a binary stream: counts and hashes every byte read through it."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def blocks(self) -> Iterator[bytes]:
        """About 1 MB at a time, each block ending at a newline (the last one may not):
        memory stays bounded by the block size plus the longest line."""
        pending = b""
        while True:
            chunk = self._stream.read(1 << 20)
            if not chunk:
                break
            self.sha256.update(chunk)
            self.bytes_read += len(chunk)
            cut = chunk.rfind(b"\n")
            if cut < 0:
                pending += chunk
                continue
            yield pending + chunk[:cut + 1]
            pending = chunk[cut + 1:]
        if pending:
            yield pending


class CsvRows:
    """Iterates the data rows of a CSV as lists of strings, checking shape as it goes.

    `row_number` is the 1-based data row (the header is row 0) and `line_number` the physical
    line where the current row ends, for messages a person can find in an editor.
    """

    def __init__(self, stream: BinaryIO, name: str, delimiter: str = ",",
                 max_field_bytes: int = 1 << 20):
        self.name = name
        self.delimiter = delimiter
        self.source = HashingReader(stream)
        self.row_number = 0
        csv.field_size_limit(max_field_bytes)
        self.max_field_bytes = max_field_bytes
        self._reader = csv.reader(self._decoded_lines(), delimiter=delimiter, strict=True)
        self.header = self._read_header()

    @property
    def line_number(self) -> int:
        """Physical lines consumed so far (the csv reader counts what it takes)."""
        return self._reader.line_num

    def _decoded_lines(self) -> Iterator[str]:
        """Lines split on "\n" only (a narrative may hold other line breaks such as U+2028),
        decoded a block at a time; an invalid byte is located at its exact line and byte."""
        lines_before = 0
        for block in self.source.blocks():
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError:
                self._raise_decode_error(block, lines_before)
            if lines_before == 0 and text.startswith(BOM):
                text = text[1:]
            lines = text.split("\n")
            last = lines.pop()  # "" when the block ends with a newline
            lines_before += len(lines)
            yield from [line + "\n" for line in lines]
            if last:
                lines_before += 1
                yield last

    def _raise_decode_error(self, block: bytes, lines_before: int) -> None:
        for number, raw in enumerate(block.split(b"\n"), start=lines_before + 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise StepError(
                    f"{self.name}: line {number}, byte {exc.start + 1}: "
                    f"invalid UTF-8 ({raw[exc.start:exc.start + 4]!r}); save the file as UTF-8"
                ) from exc
        raise StepError(f"{self.name}: invalid UTF-8 after line {lines_before}")

    def _next_record(self) -> list[str] | None:
        start_line = self.line_number + 1
        try:
            return next(self._reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            message = str(exc)
            if "field larger than field limit" in message:
                raise StepError(
                    f"{self.name}: row {self.row_number + 1} (from line {start_line}): a field "
                    f"is longer than {self.max_field_bytes} bytes, most likely an unterminated "
                    "quote"
                ) from exc
            if "unexpected end of data" in message:
                raise StepError(
                    f"{self.name}: row {self.row_number + 1} (from line {start_line}): "
                    "unterminated quoted field, the file ends inside quotes"
                ) from exc
            if "expected after '\"'" in message and start_line < self.line_number:
                raise StepError(
                    f"{self.name}: row {self.row_number + 1} (from line {start_line}): a quoted "
                    f"field is not closed (unterminated quote?); parsing broke at line "
                    f"{self.line_number}"
                ) from exc
            raise StepError(
                f"{self.name}: row {self.row_number + 1}, line {self.line_number}: "
                f"malformed CSV: {message}"
            ) from exc

    def _read_header(self) -> list[str]:
        header = self._next_record()
        if header is None or not any(h.strip() for h in header):
            raise StepError(f"{self.name}: the file is empty (expected a header row)")
        header = [h.strip() for h in header]
        if len(header) == 1:
            found = [d for d in OTHER_DELIMITERS if d in header[0]]
            if found:
                raise StepError(
                    f"{self.name}: line 1: the header has one column and contains {found[0]!r}; "
                    f"the file seems delimited by {found[0]!r}, expected {self.delimiter!r} "
                    "(set csv.delimiter in the dataset config)"
                )
        return header

    def __iter__(self) -> Iterator[list[str]]:
        width = len(self.header)
        while True:
            record = self._next_record()
            if record is None:
                return
            if not record:  # a blank line between records
                continue
            self.row_number += 1
            if len(record) != width:
                raise StepError(
                    f"{self.name}: row {self.row_number} (line {self.line_number}): "
                    f"{len(record)} fields, expected {width} as in the header"
                )
            yield record
