"""Streaming RFC 4180 reading of a CSV source, with errors that say file, row and column.

Quoted fields may hold commas, quotes and newlines; the source may start with a UTF-8 BOM.
Lines end with LF or CRLF, or with CR alone (classic Mac files: recognised from the first
block). Bytes are decoded one physical line at a time so an invalid byte is reported at its
exact line and column, and the raw bytes pass through a hash on the way (the dataset version).

A file written by R's `write.table` (row names on, the header one field short of every row) is
recognised only when every row is exactly one field longer than the header and starts with an
increasing integer; the row names are then dropped. Anything else that is ragged is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from components.common.errors import StepError

BOM = "\ufeff"
OTHER_DELIMITERS = (";", "\t", "|")
BLOCK_BYTES = 1 << 20


class HashingReader:
    """Wraps a binary stream: counts and hashes every byte read through it."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0
        self.newline = b"\n"  # b"\r" for a file whose lines end with CR alone

    def blocks(self) -> Iterator[bytes]:
        """About 1 MB at a time, each block ending at a line break (the last one may not):
        memory stays bounded by the block size plus the longest line."""
        pending = b""
        first = True
        while True:
            chunk = self._stream.read(BLOCK_BYTES)
            if not chunk:
                break
            self.sha256.update(chunk)
            self.bytes_read += len(chunk)
            if first:
                first = False
                if b"\n" not in chunk and b"\r" in chunk:
                    self.newline = b"\r"
            cut = chunk.rfind(self.newline)
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
    `r_row_names` is True once R's row names were recognised (and are being dropped).
    """

    def __init__(self, stream: BinaryIO, name: str, delimiter: str = ",",
                 max_field_bytes: int = 1 << 20):
        self.name = name
        self.delimiter = delimiter
        self.source = HashingReader(stream)
        self.row_number = 0
        self.r_row_names = False
        csv.field_size_limit(max_field_bytes)
        self.max_field_bytes = max_field_bytes
        self._reader = csv.reader(self._decoded_lines(), delimiter=delimiter, strict=True)
        self.header = self._read_header()

    @property
    def line_number(self) -> int:
        """Physical lines consumed so far (the csv reader counts what it takes)."""
        return self._reader.line_num

    @property
    def cr_line_endings(self) -> bool:
        return self.source.newline == b"\r"

    def _decoded_lines(self) -> Iterator[str]:
        """Lines split on the file's line break only (a narrative may hold other line breaks
        such as U+2028), decoded a block at a time; an invalid byte is located at its exact
        line and byte."""
        return itertools.chain.from_iterable(self._decoded_blocks())

    def _decoded_blocks(self) -> Iterator[Iterable[str]]:
        """Each block's lines, with their line breaks. Where no CR is in the block (the file's
        break is LF), io.StringIO(newline="") splits exactly there and the csv reader pulls the
        lines without a Python step per line; otherwise the block is split on the break."""
        first = True
        for block in self.source.blocks():
            newline = self.source.newline.decode()
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError:
                # the csv reader has taken every line of the blocks before this one
                self._raise_decode_error(block, self._reader.line_num)
            if first and text.startswith(BOM):
                text = text[1:]
            first = False
            if newline == "\n" and b"\r" not in block:
                yield io.StringIO(text, newline="")
                continue
            lines = text.split(newline)
            last = lines.pop()  # "" when the block ends with a line break
            yield [line + newline for line in lines]
            if last:
                yield (last,)

    def _raise_decode_error(self, block: bytes, lines_before: int) -> None:
        for number, raw in enumerate(block.split(self.source.newline), start=lines_before + 1):
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
            raise self._csv_error(exc, start_line) from exc

    def _csv_error(self, exc: csv.Error, start_line: int) -> StepError:
        """What a csv.Error means, for the record that starts at `start_line`."""
        where = (f"row {self.row_number + 1} (from line {start_line})" if self.row_number or
                 start_line > 1 else "the header (line 1)")
        message = str(exc)
        if "field larger than field limit" in message:
            spanned = self.line_number - start_line + 1
            hint = (f"; it spans lines {start_line} to {self.line_number}, so a quote "
                    f"opened there and never closed is the likelier cause"
                    if spanned > 100 else "")
            return StepError(
                f"{self.name}: {where}: a field is over the limit of "
                f"{self.max_field_bytes} bytes; if such long fields are real, raise "
                f"csv.max_field_bytes in the dataset config{hint}"
            )
        if "unexpected end of data" in message:
            return StepError(
                f"{self.name}: {where}: unterminated quoted field, the file ends inside "
                "quotes"
            )
        if "expected after '\"'" in message and start_line < self.line_number:
            return StepError(
                f"{self.name}: {where}: a quoted field is not closed (unterminated "
                f"quote?); parsing broke at line {self.line_number}"
            )
        if "new-line character seen in unquoted field" in message:
            return StepError(
                f"{self.name}: {where}: a carriage return (CR) inside an unquoted field at "
                f"line {self.line_number}: the file mixes line endings (CR alone and LF); "
                "save it with one kind of line ending, or quote fields that hold line "
                "breaks"
            )
        return StepError(
            f"{self.name}: {where}, line {self.line_number}: malformed CSV: {message}"
        )

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
        seen: dict[str, int] = {}
        repeated = []
        for column, name in enumerate(header, start=1):
            if name and name in seen:
                repeated.append(f"{name!r} (columns {seen[name]} and {column})")
            seen.setdefault(name, column)
        if repeated:
            raise StepError(
                f"{self.name}: line 1: the header names {', '.join(repeated[:5])} more than "
                "once; which column is meant is a guess, so rename or remove the extra one"
            )
        return header

    def __iter__(self) -> Iterator[list[str]]:
        width = len(self.header)
        reader = self._reader
        previous_name = -1
        r_row_names = self.r_row_names
        end_line = reader.line_num  # where the record before ended
        try:
            for record in reader:
                if not record:  # a blank line between records
                    end_line = reader.line_num
                    continue
                self.row_number += 1
                if r_row_names or len(record) != width:
                    if (self.row_number == 1 and len(record) == width + 1
                            and _row_name(record[0]) > 0):
                        # confirmed row by row: any misfit is an error below
                        r_row_names = self.r_row_names = True
                    if not r_row_names:
                        raise StepError(
                            f"{self.name}: row {self.row_number} (line {self.line_number}): "
                            f"{len(record)} fields, expected {width} as in the header"
                        )
                    name = _row_name(record[0]) if len(record) == width + 1 else -1
                    if name <= previous_name:
                        raise StepError(
                            f"{self.name}: row {self.row_number} (line {self.line_number}): "
                            + (f"{len(record)} fields, expected {width + 1} as in every row "
                               f"before (the header's {width} and R's row names)"
                               if len(record) != width + 1 else
                               f"first field {record[0][:20]!r} does not continue the "
                               f"increasing row numbers of the rows before (R's row names; "
                               f"the header has {width} fields)"))
                    previous_name = name
                    record = record[1:]
                end_line = reader.line_num
                yield record
        except csv.Error as exc:
            raise self._csv_error(exc, end_line + 1) from exc


def _row_name(text: str) -> int:
    """R's row name as a number (>= 0), or -1 when the field is not one."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else -1
