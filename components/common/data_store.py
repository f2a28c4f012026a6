"""The data store: every ingested data version, kept immutably so models trace back to it.

A version is the hash of the source bytes. Layout (local directory or s3://bucket/prefix):
    <store>/<dataset_version>/source/<file name>   the exact bytes that were ingested
    <store>/<dataset_version>/examples/...         the ingested splits (metadata.json last), so a
                                                   later run can validate against this version
    <store>/<dataset_version>/manifest.json        written last: a version without it is
                                                   not published and is ignored
    <store>/<dataset_version>/validated.json       written by validation when the version had
                                                   no anomalies: only such versions serve as
                                                   the baseline of later data
Versions are immutable: storing one that exists writes nothing.

    <store>/incoming/<dataset_version>.csv         data waiting for a run: the feedback step's
                                                   newly labelled rows, named by the version
                                                   ingest will give them (same bytes, same
                                                   name); the trigger starts one run per file
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import posixpath

from components.common import documents, storage
from components.common.artifacts.examples import METADATA_FILE
from components.common.errors import StepError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
EXAMPLES = "examples"
VALIDATED = "validated.json"
INCOMING = "incoming"
HASH_CHUNK = 1 << 20


def dataset_version(sha256_hex: str) -> str:
    """Content-derived: the same bytes give the same version on every machine."""
    return f"ds-{sha256_hex[:16]}"


def source_version(uri: str) -> tuple[str, str]:
    """(dataset version, sha256 hex) of a source's bytes: the version ingest would give it,
    read in chunks (never loaded whole)."""
    digest = hashlib.sha256()
    with storage.open_read(uri) as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return dataset_version(digest.hexdigest()), digest.hexdigest()


def is_stored(store: str, version: str) -> bool:
    """The version is published in the store (its manifest exists)."""
    return storage.exists(storage.join(store, version, MANIFEST))


def incoming_uri(store: str, version: str) -> str:
    """Where data for the next run waits: `<store>/incoming/<version>.csv`."""
    return storage.join(store, INCOMING, f"{version}.csv")


class _HashingStream:
    """A read-through stream that hashes what the upload consumes."""

    def __init__(self, stream):
        self._stream = stream
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.sha256.update(data)
        return data


def snapshot(source: str, store: str, version: str, sha256_hex: str, summary: dict,
             examples_dir: str | None = None) -> tuple[str, bool]:
    """Keep the source's bytes (and its examples) under its version.

    Returns (version uri, newly stored).
    """
    version_uri = storage.join(store, version)
    manifest_uri = storage.join(version_uri, MANIFEST)
    if storage.exists(manifest_uri):
        stored = documents.read_json(manifest_uri, "data store manifest")
        if stored.get("source_sha256") != sha256_hex:
            raise StepError(
                f"{manifest_uri}: holds sha256 {stored.get('source_sha256')} but this data has "
                f"{sha256_hex}; the store is inconsistent, refusing to overwrite it"
            )
        log.info("dataset version %s already stored at %s: nothing written", version, version_uri)
        return version_uri, False
    if examples_dir:
        examples_uri = storage.join(version_uri, EXAMPLES)
        count = storage.upload_tree(examples_dir, examples_uri, last=(METADATA_FILE,))
        log.info("stored %d example files of %s at %s", count, version, examples_uri)
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
        "examples": storage.join(version_uri, EXAMPLES) if examples_dir else None,
        "stored_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **summary,
    }
    documents.write_json(manifest_uri, manifest)
    log.info("stored dataset version %s at %s", version, version_uri)
    return version_uri, True


def list_versions(store: str) -> list[dict]:
    """Published versions in the store, oldest first (by the time they were stored)."""
    manifests = [u for u in storage.list_uris(store) if u.endswith("/" + MANIFEST)]
    versions = [documents.read_json(u, "data store manifest") for u in manifests]
    return sorted(versions, key=lambda m: (m.get("stored_at", ""), m["dataset_version"]))


def mark_validated(store: str, version: str, summary: dict) -> None:
    """Record that a stored version passed validation, making it a baseline for later data."""
    documents.write_json(storage.join(store, version, VALIDATED), summary)


def previous_version(store: str, version: str) -> dict | None:
    """The last version stored before `version` (or the newest, if `version` is not stored)
    that kept its examples and passed validation: what new data is compared with.

    Anomalous versions are skipped, so one bad delivery does not become the new normal.
    """
    versions = list_versions(store)
    ids = [m["dataset_version"] for m in versions]
    if version in ids:
        versions = versions[:ids.index(version)]
    for manifest in reversed(versions):
        validated = storage.join(store, manifest["dataset_version"], VALIDATED)
        if manifest.get("examples") and storage.exists(validated):
            return manifest
    return None


def fetch_examples(manifest: dict, download_dir: str) -> str:
    """A local directory with a stored version's examples (downloaded when the store is S3)."""
    uri = manifest["examples"]
    if not storage.is_s3(uri):
        return uri
    destination = os.path.join(download_dir, manifest["dataset_version"])
    count = storage.download_tree(uri, destination)
    log.info("downloaded %d example files of %s", count, manifest["dataset_version"])
    return destination
