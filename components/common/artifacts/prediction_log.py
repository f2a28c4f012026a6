"""The prediction log, read back: what the model server answered, one JSON line per example.

    <log-store>/<model_name>/predictions/<YYYY-MM-DD>/<HHMMSS>-<n>-<id>.jsonl   (UTC date)

    {"request_id": "9f2c...", "time": "2026-11-27T17:00:00.123456+00:00", "model_version": 3,
     "inputs": {"product": "Mortgage", ...}, "outputs": {"probability": 0.42, ...},
     "key": "3309951"}

`key` is the request's routing key (REST header `X-Request-Key`, else the first instance's
`id`/`complaint_id`), present when the request had one: the feedback step joins labels on it.

Personal fields (the dataset config's `privacy.personal_fields`) are never in `inputs`. With
`privacy.mode: hash` and a key they are in `hashed`, as `keyed_hash` gives them
(`"hmac-sha256:<64 hex digits>"`, HMAC-SHA256 under the key in PREDICTION_LOG_KEY: equal values
give equal hashes, and without the key a value cannot be tried against them); otherwise they
are dropped. `redacted` lists the fields of the example kept out of `inputs` either way:

    {..., "inputs": {"product": "Mortgage", ...}, "hashed": {"narrative": "hmac-sha256:9a1f..."},
     "redacted": ["narrative", "zip_code"], ...}

Readers see a redacted field as missing from `Prediction.inputs` (so feedback writes it blank
into new rows and leaves it out of drift), its hash in `Prediction.hashed`.
Two writers produce exactly this format: the model server (`components/serve/prediction_log.py`,
one part file per flush) and, on a cluster, the log receiver that turns KServe's payload-logger
CloudEvents into the same lines (`components/serve/log_receiver.py`). This module is the reader:
records stream part file by part file (a part is small: one flush), never the whole log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from components.common import storage
from components.common.errors import StepError

PREDICTIONS_DIR = "predictions"
KEY_ENV = "PREDICTION_LOG_KEY"  # the key of the keyed hash (a Secret on a cluster)
HASH_PREFIX = "hmac-sha256:"
PART_SUFFIX = ".jsonl"
DATE_DIR = re.compile(r"/(\d{4}-\d{2}-\d{2})/[^/]+$")
MAX_SHOWN_BAD_LINES = 5


def keyed_hash(key: bytes, value) -> str:
    """THE hash of a personal field's value in the log: HMAC-SHA256 under `key` of the value's
    text (a string as it is, anything else as compact JSON)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                          separators=(",", ":"))
    # surrogatepass: a lone surrogate (valid in JSON input) hashes too; other text as UTF-8
    digest = hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest


def predictions_uri(log_store: str, model_name: str) -> str:
    """Where the model server writes the log of `model_name` under `--log-store`."""
    return storage.join(log_store, model_name, PREDICTIONS_DIR)


@dataclass(frozen=True)
class Prediction:
    request_id: str
    time: dt.datetime
    model_version: int
    inputs: dict
    probability: float
    key: str | None
    decision: int | None  # the answer's decision when the server gave one (else None)
    hashed: dict = field(default_factory=dict)  # personal field -> keyed hash
    redacted: tuple[str, ...] = ()  # personal fields kept out of `inputs`


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time; naive times are UTC."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _utf8_text(value):
    """A string as UTF-8 can hold it: a lone surrogate (JSON's `"\\ud800"`, which a client
    may send and the server logs escaped) becomes U+FFFD, so no reader of the log fails on
    it. Anything else as it is."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value


def parse_line(line: str | bytes) -> Prediction:
    """One log line as a Prediction; ValueError (with the reason) when it is not one."""
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    try:
        outputs = entry["outputs"]
        probability = float(outputs["probability"])
        version = entry["model_version"]
        if isinstance(version, bool) or not str(version).isdigit():
            raise ValueError(f"model_version {version!r} is not a version number")
        inputs = entry["inputs"]
        if not isinstance(inputs, dict):
            raise ValueError("inputs is not an object")
        decision = outputs.get("decision")
        key = entry.get("key")
        hashed = entry.get("hashed") or {}
        redacted = entry.get("redacted") or []
        if not isinstance(hashed, dict) or not isinstance(redacted, list):
            raise ValueError("hashed is not an object or redacted not a list")
        return Prediction(
            request_id=str(entry["request_id"]), time=parse_time(entry["time"]),
            model_version=int(version),
            inputs={name: _utf8_text(value) for name, value in inputs.items()},
            probability=probability,
            key=str(key) if key not in (None, "") else None,
            decision=None if decision is None else int(bool(decision)),
            hashed=hashed, redacted=tuple(str(name) for name in redacted),
        )
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]!r}") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(str(exc)) from None


def part_uris(prefix: str) -> list[str]:
    """Every part file under `prefix` (a predictions folder or anything above it), in order."""
    if not storage.is_s3(prefix) and not storage.exists(prefix):
        raise StepError(f"{prefix}: no such prediction log folder")
    return [uri for uri in storage.list_uris(prefix) if uri.endswith(PART_SUFFIX)]


def part_date(uri: str) -> dt.date | None:
    """The UTC date folder a part file sits in, if it sits in one."""
    match = DATE_DIR.search(uri.replace("\\", "/"))
    return dt.date.fromisoformat(match.group(1)) if match else None


class LogReader:
    """Streams the log's records; counts (and shows a few of) the lines that are not records.

    A bad line is skipped, not fatal: one broken write must not block the feedback loop. A log
    with lines but no readable record is an error (the wrong folder, or not this format).
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.parts = part_uris(prefix)
        self.lines = 0
        self.bad_lines = 0
        self.bad_examples: list[str] = []

    def records(self, before_date: dt.date | None = None,
                from_date: dt.date | None = None) -> Iterator[Prediction]:
        """Records of the part files whose date folder is before `before_date` / on or after
        `from_date` (parts outside a date folder are always read)."""
        for uri in self.parts:
            day = part_date(uri)
            if day is not None and before_date is not None and day >= before_date:
                continue
            if day is not None and from_date is not None and day < from_date:
                continue
            data = storage.read_bytes(uri)
            for number, line in enumerate(data.splitlines(), start=1):
                if not line.strip():
                    continue
                self.lines += 1
                try:
                    yield parse_line(line)
                except ValueError as exc:
                    self.bad_lines += 1
                    if len(self.bad_examples) < MAX_SHOWN_BAD_LINES:
                        self.bad_examples.append(f"{uri}:{number}: {exc}")

    def check(self) -> None:
        if self.lines and self.bad_lines == self.lines:
            raise StepError(f"{self.prefix}: none of {self.lines} lines is a prediction record "
                            f"(first: {self.bad_examples[0]})")
