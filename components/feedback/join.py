"""Predictions meet their labels: one pass over the log, labels held by id.

Each record of the window (time >= since; everything without --since) is looked up by its key:

- matched: a label exists; the first prediction of a key counts (a key predicted again, e.g. a
  retried request, is a duplicate prediction: counted, not scored twice);
- pending: no label yet (the label may still come);
- unkeyed: the request had no key, or it was a batch request whose key (the first instance's
  id) the server gave every record of the request: the records after the first of a request
  with the same key cannot be joined and are counted as batch followers.

Records before the window are read for their keys only: a label for one of them is a *late*
label (its prediction belongs to an earlier window; counted and reported, not scored). A label
for an id never predicted is *unknown*: counted, not an error (the labels export covers more
than this model saw). Memory: the labels (id -> 0/1), the keys of the window, the scored
(probability, label) pairs per version and a bounded sample of inputs for drift; the records
themselves stream through.
"""

from __future__ import annotations

import datetime as dt
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from components.common.artifacts.prediction_log import Prediction
from components.feedback.labels import Labels


@dataclass
class VersionSamples:
    """What one version predicted in the window, and the scored (labelled) part of it."""

    predictions: int = 0
    probability_sum: float = 0.0
    probabilities: array = field(default_factory=lambda: array("d"))
    labels: array = field(default_factory=lambda: array("b"))
    decisions: array = field(default_factory=lambda: array("b"))  # -1: the log has none


class Reservoir:
    """A uniform sample of at most `size` items of a stream (Algorithm R), deterministic."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.items: list = []
        self.seen = 0
        self._random = random.Random(seed)

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = self._random.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item


class Join:
    def __init__(self, labels: Labels, since: dt.datetime | None = None,
                 on_matched: Callable[[Prediction, int], None] | None = None,
                 sample: Reservoir | None = None, sample_features: tuple[str, ...] = ()):
        self.labels = labels.values
        self.since = since
        self.on_matched = on_matched
        self.sample = sample
        self.sample_features = sample_features
        self.versions: dict[int, VersionSamples] = {}
        self.keys: set[str] = set()
        self.matched_keys: set[str] = set()
        self.earlier_labelled: set[str] = set()
        self.first_time: dt.datetime | None = None
        self.last_time: dt.datetime | None = None
        self.counts = {"records": 0, "in_window": 0, "before_window": 0, "unkeyed": 0,
                       "batch_followers": 0, "duplicate_predictions": 0, "matched": 0,
                       "pending": 0}
        self._request: tuple[str, str | None] | None = None

    def add(self, record: Prediction) -> None:
        counts = self.counts
        counts["records"] += 1
        request, self._request = self._request, (record.request_id, record.key)
        if self.since is not None and record.time < self.since:
            counts["before_window"] += 1
            if record.key is not None and record.key in self.labels:
                self.earlier_labelled.add(record.key)
            return
        counts["in_window"] += 1
        if self.first_time is None or record.time < self.first_time:
            self.first_time = record.time
        if self.last_time is None or record.time > self.last_time:
            self.last_time = record.time
        version = self.versions.setdefault(record.model_version, VersionSamples())
        version.predictions += 1
        version.probability_sum += record.probability
        if self.sample is not None:
            self.sample.add({f: record.inputs.get(f) for f in self.sample_features})
        key = record.key
        if key is None:
            counts["unkeyed"] += 1
            return
        if request == (record.request_id, key):
            counts["batch_followers"] += 1  # the first instance's key, repeated by the server
            return
        if key in self.keys:
            counts["duplicate_predictions"] += 1
            return
        self.keys.add(key)
        label = self.labels.get(key)
        if label is None:
            counts["pending"] += 1
            return
        counts["matched"] += 1
        self.matched_keys.add(key)
        version.probabilities.append(record.probability)
        version.labels.append(label)
        version.decisions.append(-1 if record.decision is None else record.decision)
        if self.on_matched is not None:
            self.on_matched(record, label)

    def label_counts(self) -> dict:
        """Labels by what became of them: scored, late (prediction before the window), for a
        key predicted but not scored (a duplicate), unknown id."""
        late = len(self.earlier_labelled - self.matched_keys - self.keys)
        unknown = sum(1 for key in self.labels
                      if key not in self.keys and key not in self.earlier_labelled)
        return {"scored": len(self.matched_keys), "late": late, "unknown": unknown}
