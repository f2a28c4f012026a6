"""Every prediction as a JSON line in the store, batched, for the feedback loop.

    <log-store>/<model_name>/predictions/<YYYY-MM-DD>/<HHMMSS>-<n>-<uuid8>.jsonl

One line per example: {"request_id", "time", "model_version", "inputs": {feature: value},
"outputs": {"probability": p}} (plus "key" when the request had a routing key). Records queue in
memory and a background thread writes a new part file every `flush_records` records or
`flush_seconds` seconds (S3 has no append: each flush is one object, written atomically).

Personal fields never reach the file in clear: a `Redaction` (from the dataset config's
`privacy` section; `components.serve` and the log receiver always pass one) moves them out of
`inputs`, into `hashed` as keyed hashes (mode hash, key in PREDICTION_LOG_KEY) or nowhere (mode
drop, or hash without a key), and lists them in `redacted`
(`components/common/artifacts/prediction_log.py` has the format).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from components.common import storage
from components.common.artifacts.prediction_log import KEY_ENV, keyed_hash

log = logging.getLogger(__name__)
MIN_KEY_BYTES = 16


def json_line(entry: dict) -> str:
    """One JSON Lines record, UTF-8 text as it came. A string with a lone surrogate (JSON
    allows `"\\ud800"` in a request) cannot be written as UTF-8: that record is written with
    every non-ASCII character escaped instead, so it and the records batched with it are
    kept."""
    line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))
    return line


@dataclass(frozen=True)
class Redaction:
    """Which fields of a logged example are personal and what the log keeps of them.

    `mode` is what happens: `hash` (needs `key`) or `drop`; `requested` what the config asked
    (hash without a key becomes drop: a personal field is never stored in clear). `key_field`:
    the config's id when it is personal itself, so the routing key is redacted too.
    """

    fields: frozenset[str] = frozenset()
    mode: str = "drop"
    key: bytes | None = None
    requested: str = "drop"
    key_field: str | None = None

    @classmethod
    def from_config(cls, config, environ: Mapping[str, str] | None = None) -> Redaction:
        """The dataset config's `privacy` section with the key from PREDICTION_LOG_KEY."""
        environ = os.environ if environ is None else environ
        spec = config.privacy
        secret = environ.get(KEY_ENV, "")
        mode = spec.mode if spec.mode == "drop" or secret else "drop"
        personal = frozenset(spec.personal_fields)
        return cls(fields=personal, mode=mode,
                   key=secret.encode("utf-8") if mode == "hash" else None,
                   requested=spec.mode,
                   key_field=config.id_feature if config.id_feature in personal else None)

    def describe(self) -> str:
        """One sentence for the server's log at start."""
        if not self.fields:
            return "no personal fields configured: inputs are logged as received"
        names = ", ".join(sorted(self.fields))
        if self.mode == "hash":
            return f"personal fields {names} are logged as HMAC-SHA256 keyed hashes ({KEY_ENV})"
        if self.requested == "hash":
            return (f"{KEY_ENV} is not set: personal fields {names} are dropped from the log, "
                    "not hashed (set the key, e.g. from a Secret, to keep keyed hashes)")
        return f"personal fields {names} are dropped from the log"

    def apply(self, row: dict, key: str | None) -> tuple[dict, dict, list[str], str | None]:
        """(inputs without personal fields, their hashes, their names, the routing key)."""
        found = sorted(name for name in row if name in self.fields)
        if not found and self.key_field is None:
            return row, {}, [], key
        inputs = {name: value for name, value in row.items() if name not in self.fields}
        hashed = ({name: keyed_hash(self.key, row[name]) for name in found}
                  if self.mode == "hash" else {})
        if self.key_field is not None and key:
            key = keyed_hash(self.key, key) if self.mode == "hash" else None
            found = sorted({*found, self.key_field})
        return inputs, hashed, found, key


class PredictionLog:
    def __init__(self, store: str, model_name: str, *, flush_records: int = 500,
                 flush_seconds: float = 5.0, redaction: Redaction | None = None):
        self.redaction = redaction
        if redaction is not None:
            say = log.warning if redaction.requested != redaction.mode else log.info
            say("prediction log: %s", redaction.describe())
            if redaction.key is not None and len(redaction.key) < MIN_KEY_BYTES:
                log.warning("prediction log: %s has fewer than %d bytes; a short key can be "
                            "guessed and the hashes tried", KEY_ENV, MIN_KEY_BYTES)
        self.base = storage.join(store, model_name, "predictions")
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._parts = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, request_id: str, version: int, rows: list[dict], outputs: list[float],
               key: str | None = None, keys: list[str | None] | None = None) -> None:
        """One line per example; its key is its own (`keys`) when it has one, else `key`."""
        now = dt.datetime.now(dt.UTC).isoformat()
        lines = []
        keys = keys or [None] * len(rows)
        for row, probability, own in zip(rows, outputs, keys, strict=True):
            routing = own or key
            hashed, redacted = {}, []
            if self.redaction is not None:
                row, hashed, redacted, routing = self.redaction.apply(row, routing)
            entry = {"request_id": request_id, "time": now, "model_version": version,
                     "inputs": row, "outputs": {"probability": probability}}
            if hashed:
                entry["hashed"] = hashed
            if redacted:
                entry["redacted"] = redacted
            if routing:
                entry["key"] = routing
            lines.append(json_line(entry))
        with self._lock:
            self._pending.extend(lines)
            full = len(self._pending) >= self.flush_records
        if full:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
        if not lines:
            return
        now = dt.datetime.now(dt.UTC)
        self._parts += 1
        name = f"{now:%H%M%S}-{self._parts:06d}-{uuid.uuid4().hex[:8]}.jsonl"
        uri = storage.join(self.base, f"{now:%Y-%m-%d}", name)
        try:
            storage.write_bytes(uri, ("\n".join(lines) + "\n").encode("utf-8"))
            self.written += len(lines)
        except Exception as exc:  # never fail predictions because the log store is down
            log.error("prediction log: could not write %d records to %s: %s",
                      len(lines), uri, exc)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
