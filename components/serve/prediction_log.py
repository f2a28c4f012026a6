"""Every prediction as a JSON line in the store, batched, for the feedback loop.

    <log-store>/<model_name>/predictions/<YYYY-MM-DD>/<HHMMSS>-<n>-<uuid8>.jsonl

One line per example: {"request_id", "time", "model_version", "inputs": {feature: value},
"outputs": {"probability": p}} (plus "key" when the request had a routing key). Records queue in
memory and a background thread writes a new part file every `flush_records` records or
`flush_seconds` seconds (S3 has no append: each flush is one object, written atomically).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid

from components.common import storage

log = logging.getLogger(__name__)


class PredictionLog:
    def __init__(self, store: str, model_name: str, *, flush_records: int = 500,
                 flush_seconds: float = 5.0):
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
            entry = {"request_id": request_id, "time": now, "model_version": version,
                     "inputs": row, "outputs": {"probability": probability}}
            if own or key:
                entry["key"] = own or key
            lines.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))
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
