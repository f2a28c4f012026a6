"""Data versioning: a version is the hash of the source bytes; a snapshot keeps those bytes.

Store layout (local directory or s3://bucket/prefix):
    <store>/<dataset_version>/source/<file name>   the exact bytes that were ingested
    <store>/<dataset_version>/manifest.json        written last: a version without it is
                                                   not published and is ignored
Versions are immutable: storing one that exists writes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import posixpath

from components.common import storage
from components.common.errors import StepError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def dataset_version(sha256_hex: str) -> str:
    """Content-derived: the same bytes give the same version on every machine."""
    return f"ds-{sha256_hex[:16]}"


class _HashingStream:
    """A read-through stream that hashes what the upload consumes."""

    def __init__(self, stream):
        self._stream = stream
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.sha256.update(data)
        return data


def snapshot(source: str, store: str, version: str, sha256_hex: str,
             summary: dict) -> tuple[str, bool]:
    """Keep the source's bytes under its version; returns (version uri, newly stored)."""
    version_uri = storage.join(store, version)
    manifest_uri = storage.join(version_uri, MANIFEST)
    if storage.exists(manifest_uri):
        stored = json.loads(storage.read_bytes(manifest_uri))
        if stored.get("source_sha256") != sha256_hex:
            raise StepError(
                f"{manifest_uri}: holds sha256 {stored.get('source_sha256')} but this data has "
                f"{sha256_hex}; the store is inconsistent, refusing to overwrite it"
            )
        log.info("dataset version %s already stored at %s: nothing written", version, version_uri)
        return version_uri, False
    file_name = posixpath.basename(source.rstrip("/")) or "source.csv"
    data_uri = storage.join(version_uri, "source", file_name)
    with storage.open_read(source) as stream:
        hashing = _HashingStream(stream)
        storage.write_stream(data_uri, hashing)
    if hashing.sha256.hexdigest() != sha256_hex:
        storage.delete(data_uri)
        raise StepError(f"{source}: the file changed while it was being ingested; run again")
    manifest = {
        "dataset_version": version,
        "source": source,
        "source_sha256": sha256_hex,
        "snapshot": data_uri,
        "stored_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **summary,
    }
    storage.write_bytes(manifest_uri, json.dumps(manifest, indent=2).encode())
    log.info("stored dataset version %s at %s", version, version_uri)
    return version_uri, True


def list_versions(store: str) -> list[dict]:
    """Published versions in the store, oldest first (by the time they were stored)."""
    manifests = [u for u in storage.list_uris(store) if u.endswith("/" + MANIFEST)]
    versions = [json.loads(storage.read_bytes(u)) for u in manifests]
    return sorted(versions, key=lambda m: (m.get("stored_at", ""), m["dataset_version"]))
