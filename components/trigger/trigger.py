"""New data starts a run: find objects the store has not ingested, claim each once, run it.

State lives in the data store, beside the data (so every trigger that shares the store shares
it, on a laptop or a cluster):

    <store>/trigger/seen/<object id>.json        the dataset version of an object (object id:
                                                 hash of its URI, size and ETag / mtime), so an
                                                 object is hashed once, not on every poll
    <store>/trigger/claims/<dataset version>.json  created with an exclusive write (a hard link
                                                 locally, `If-None-Match: *` on S3): the one
                                                 trigger that creates it starts the run; it
                                                 then records `started` / `finished` / `failed`

A poll: list the sources (every `--source` prefix and the store's `incoming/`, where the
feedback step leaves newly labelled data), skip hidden files, and for each object: its dataset
version (the hash of its bytes, as ingest computes it); skip it when the store has that version
(ingested) or a claim exists (another trigger has it, or had it); else claim it and start the
run. At most once per version: two triggers race for the claim and one wins; a trigger that
dies between its claim and the end of its run leaves the claim in place and the object is
never run twice (a claim still `claimed` after `--stale-minutes` is reported: a person checks
whether the run started, then deletes the claim to let it run again). A failed run keeps its
claim too (not retried blindly; delete the claim to retry).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import posixpath
import socket
import uuid
from collections.abc import Callable

from components.common import data_store, documents, storage

log = logging.getLogger(__name__)
STATE_DIR = "trigger"
SEEN_DIR = "seen"
CLAIMS_DIR = "claims"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def object_id(uri: str, size: int, tag: str) -> str:
    return hashlib.sha256(f"{uri}\n{size}\n{tag}".encode()).hexdigest()[:32]


def claim_uri(store: str, version: str) -> str:
    return storage.join(store, STATE_DIR, CLAIMS_DIR, f"{version}.json")


def seen_uri(store: str, oid: str) -> str:
    return storage.join(store, STATE_DIR, SEEN_DIR, f"{oid}.json")


def _hidden(uri: str, prefix: str) -> bool:
    relative = uri[len(prefix.rstrip("/")) + 1:] if uri.startswith(prefix) else uri
    return any(part.startswith(".") for part in relative.replace(os.sep, "/").split("/"))


def candidates(sources: list[str], store: str) -> list[tuple[str, int, str]]:
    """Every visible object under the sources and the store's incoming/, in order."""
    found = {}
    for prefix in [*sources, storage.join(store, data_store.INCOMING)]:
        if not storage.is_s3(prefix) and not os.path.isdir(prefix):
            continue
        for uri, size, tag in storage.list_objects(prefix):
            if not _hidden(uri, prefix) and size > 0:
                found[uri] = (uri, size, tag)
    return [found[uri] for uri in sorted(found)]


def version_of(store: str, uri: str, size: int, tag: str) -> str:
    """The object's dataset version, hashed once per object id and remembered in the store."""
    location = seen_uri(store, object_id(uri, size, tag))
    if storage.exists(location):
        return documents.read_json(location, "trigger state")["dataset_version"]
    version, sha256_hex = data_store.source_version(uri)
    documents.write_json(location, {"uri": uri, "size": size, "tag": tag,
                                    "dataset_version": version, "sha256": sha256_hex,
                                    "seen_at": now()})
    return version


class Trigger:
    """One trigger process: `poll()` once, or repeatedly (`__main__`)."""

    def __init__(self, sources: list[str], store: str, start_run: Callable[[str, str], dict],
                 stale_minutes: float = 60.0):
        self.sources = sources
        self.store = store
        self.start_run = start_run
        self.stale_minutes = stale_minutes
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "token": uuid.uuid4().hex}
        self._reported: set[str] = set()

    def poll(self) -> list[dict]:
        """Start one run per new object found now; returns what each started run reported."""
        started = []
        for uri, size, tag in candidates(self.sources, self.store):
            version = version_of(self.store, uri, size, tag)
            if data_store.is_stored(self.store, version):
                continue
            location = claim_uri(self.store, version)
            if storage.exists(location):
                self._report_claim(location)
                continue
            claim = {"dataset_version": version, "uri": uri, "state": "claimed",
                     "claimed_at": now(), "owner": self.owner}
            if not storage.create_exclusive(location, _json_bytes(claim)):
                log.info("%s (%s): claimed by another trigger", uri, version)
                continue
            log.info("new data: %s (%s): starting a run", uri, version)
            documents.write_json(location, {**claim, "state": "starting"})
            try:
                outcome = self.start_run(uri, version)
            except Exception as exc:
                documents.write_json(location, {**claim, "state": "failed", "finished_at": now(),
                                                "error": " ".join(str(exc).split())[:500]})
                log.error("%s (%s): the run could not start: %s", uri, version, exc)
                started.append({"dataset_version": version, "uri": uri, "state": "failed",
                                "error": str(exc)})
                continue
            state = outcome.get("state", "started")
            documents.write_json(location, {**claim, **outcome, "state": state,
                                            "recorded_at": now()})
            log.info("%s (%s): %s %s", uri, version, state,
                     outcome.get("url") or outcome.get("summary") or "")
            started.append({"dataset_version": version, "uri": uri, **outcome, "state": state})
        return started

    def _report_claim(self, location: str) -> None:
        """Say once per process when a claim looks abandoned or its run failed."""
        if location in self._reported:
            return
        claim = documents.read_json(location, "trigger claim")
        state = claim.get("state")
        if state == "failed":
            self._reported.add(location)
            log.warning("%s (%s): its run failed (%s); delete %s to run it again",
                        claim.get("uri"), claim.get("dataset_version"),
                        claim.get("error") or claim.get("summary") or "see the run", location)
            return
        if state in ("claimed", "starting"):
            claimed = dt.datetime.fromisoformat(claim["claimed_at"])
            age = (dt.datetime.now(dt.UTC) - claimed).total_seconds() / 60
            if age >= self.stale_minutes:
                self._reported.add(location)
                owner = claim.get("owner", {})
                log.warning("%s (%s): claimed by %s (pid %s) %.0f minutes ago and no run was "
                            "recorded: that trigger stopped mid-way. If no run exists for it, "
                            "delete %s to run it again", claim.get("uri"),
                            claim.get("dataset_version"), owner.get("host"), owner.get("pid"),
                            age, location)


def _json_bytes(value: dict) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def status(store: str) -> list[dict]:
    """Every claim in the store (for `--status`)."""
    prefix = storage.join(store, STATE_DIR, CLAIMS_DIR)
    if not storage.is_s3(prefix) and not os.path.isdir(prefix):
        return []
    return [documents.read_json(uri, "trigger claim") for uri in storage.list_uris(prefix)
            if posixpath.basename(uri).endswith(".json")]
