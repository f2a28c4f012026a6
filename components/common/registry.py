"""The model registry: versioned SavedModels in a directory or under s3://bucket/prefix.

    <registry>/<model_name>/<N>/               SavedModel files; N = 1, 2, 3 ... (TF Serving layout)
    <registry>/<model_name>/lineage/<N>.json   lineage of version N (written before the index)
    <registry>/<model_name>/cards/<N>/         version N's model card (artifacts/model_card.py;
                                               written before the index, by `before_index`)
    <registry>/<model_name>/index.json         {"model_name", "current", "versions": [...]}

A version exists for readers only once it is listed in index.json, which is written last (one
atomic write). Locally a version is copied into `<model_name>/.staging-<uuid>/` and renamed to
`<N>/` in one step, so a numeric directory is never partial; pushes to one local registry are
serialized by a lock file. On S3 the files are uploaded under `<N>/` (saved_model.pb last), then
the lineage, then the index; objects of a number the index does not list are ignored. Either way
the next number is one more than the highest number seen in the index *or* among the existing
directories/prefixes, so the leftovers of a crashed push are never reused or mixed with a new model.

Nothing here imports TensorFlow: publishing copies files and reads JSON. TF 2.16 has no S3
filesystem, so `resolve_baseline` downloads S3 versions to a local directory for loading.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.common import documents, storage
from components.common.artifacts import model as model_artifact
from components.common.artifacts.model import model_id_of
from components.common.errors import StepError

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
LINEAGE_DIR = "lineage"
CARDS_DIR = "cards"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".lock"
SAVED_MODEL_FILE = model_artifact.SAVED_MODEL_FILE
LAST_FILES = model_artifact.LAST_FILES
FIRST_SEMVER = "1.0.0"
# The lineage fields repeated in every index entry (the lineage file has them all).
INDEX_FIELDS = (
    "version", "semver", "model_id", "signature_hash", "dataset_version", "preprocessing_hash",
    "hparams", "metrics", "baseline_version", "code_version", "pushed_at", "blessed", "uri",
    "tensorflow_version",
)
# What the semantic version policy compares (see `change_level`).
MINOR_FIELDS = ("dataset_version", "preprocessing_hash", "hparams")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


# ---------------------------------------------------------------------------------------------
# Layout.

def check_model_name(model_name: str) -> str:
    """A model name is one path segment: letters, digits, `.`, `_`, `-`; not only digits."""
    if not MODEL_NAME.match(model_name or "") or model_name.isdigit() or model_name in (".", ".."):
        raise StepError(
            f"model name {model_name!r}: use letters, digits, '.', '_' and '-' (one path "
            "segment, not only digits), e.g. cfpb-dispute"
        )
    return model_name


def _normalize_root(registry: str) -> str:
    if not registry:
        raise StepError("registry: give a directory or s3://bucket/prefix")
    if storage.is_s3(registry):
        storage.split_s3(registry)  # needs a bucket
        return registry.rstrip("/")
    if os.path.isfile(registry):
        raise StepError(f"{registry}: is a file; the registry is a directory (or "
                        "s3://bucket/prefix)")
    return os.path.abspath(registry)


def model_uri(registry: str, model_name: str) -> str:
    """`<registry>/<model_name>`: TF Serving's model base path."""
    return storage.join(_normalize_root(registry), check_model_name(model_name))


def version_uri(registry: str, model_name: str, version: int) -> str:
    return storage.join(model_uri(registry, model_name), str(int(version)))


def lineage_uri(registry: str, model_name: str, version: int) -> str:
    return storage.join(model_uri(registry, model_name), LINEAGE_DIR, f"{int(version)}.json")


def card_uri(registry: str, model_name: str, version: int) -> str:
    """The folder of version N's model card: beside `<N>/`, whose files are the model_id."""
    return storage.join(model_uri(registry, model_name), CARDS_DIR, str(int(version)))


def index_uri(registry: str, model_name: str) -> str:
    return storage.join(model_uri(registry, model_name), INDEX_FILE)


# ---------------------------------------------------------------------------------------------
# Index and lineage.

def empty_index(model_name: str) -> dict:
    return {"model_name": model_name, "current": None, "versions": []}


def read_index(registry: str, model_name: str) -> dict:
    """The registry index of a model; an empty index when the model has no version yet."""
    uri = index_uri(registry, model_name)
    if not storage.exists(uri):
        return empty_index(model_name)
    index = documents.read_json(uri, "registry index", object_only=False)
    if not isinstance(index, dict) or not isinstance(index.get("versions"), list):
        raise StepError(f"{uri}: not a registry index (expected an object with 'versions')")
    for entry in index["versions"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("version"), int):
            raise StepError(f"{uri}: a version entry has no integer 'version': {entry!r}")
    index.setdefault("model_name", model_name)
    index.setdefault("current", None)
    return index


def write_index(registry: str, model_name: str, index: dict) -> None:
    """Replace the index in one atomic write (the publish marker of a version)."""
    index = {**index, "versions": sorted(index["versions"], key=lambda e: e["version"])}
    documents.write_json(index_uri(registry, model_name), index)


def read_lineage(registry: str, model_name: str, version: int) -> dict:
    index = read_index(registry, model_name)
    if find_version(index, version=version) is None:
        raise StepError(_unknown_version(registry, model_name, version, index))
    return documents.read_json(lineage_uri(registry, model_name, version), "lineage")


def find_version(index: dict, *, version: int | None = None,
                 model_id: str | None = None) -> dict | None:
    """The index entry with this version number or model_id, if any."""
    for entry in index.get("versions", []):
        if version is not None and entry.get("version") == version:
            return entry
        if model_id is not None and entry.get("model_id") == model_id:
            return entry
    return None


def current_entry(index: dict) -> dict | None:
    """The current (newest blessed) version's entry, or None when there is none."""
    current = index.get("current")
    return None if current is None else find_version(index, version=current)


def existing_version_numbers(registry: str, model_name: str) -> set[int]:
    """Numbers of the `<N>` directories (local) or `<N>/` prefixes (S3), listed or not."""
    base = model_uri(registry, model_name)
    if storage.is_s3(base):
        numbers = set()
        for uri in storage.list_uris(base):
            first = uri[len(base) + 1:].split("/", 1)[0]
            if first.isdigit():
                numbers.add(int(first))
        return numbers
    if not os.path.isdir(base):
        return set()
    return {int(name) for name in os.listdir(base)
            if name.isdigit() and os.path.isdir(os.path.join(base, name))}


def next_version(registry: str, model_name: str, index: dict | None = None) -> int:
    """One more than the highest number in the index or among existing version directories."""
    index = read_index(registry, model_name) if index is None else index
    listed = {entry["version"] for entry in index["versions"]}
    return max(listed | existing_version_numbers(registry, model_name), default=0) + 1


# ---------------------------------------------------------------------------------------------
# Semantic version policy (pure).

def change_level(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> str:
    """How a candidate differs from the current version: initial, major, minor or patch.

    - initial: there is no current version;
    - major: the serving signature changed (`signature_hash`), clients must change;
    - minor: new data, preprocessing or hyperparameters (`dataset_version`,
      `preprocessing_hash`, `hparams`), same interface;
    - patch: the same data, preprocessing and hyperparameters exported again (re-export without
      retraining: new files, same training inputs).
    """
    if current is None:
        return "initial"
    if candidate.get("signature_hash") != current.get("signature_hash"):
        return "major"
    if any(_canonical(candidate.get(f)) != _canonical(current.get(f)) for f in MINOR_FIELDS):
        return "minor"
    return "patch"


def next_semver(candidate: Mapping[str, Any], current: Mapping[str, Any] | None,
                taken: Iterable[str] = ()) -> str:
    """The candidate's semantic version: 1.0.0 first, then `change_level` against `current`.

    The bump applies to the highest semantic version among `current` and `taken` (the versions
    already in the registry), so a number is never given twice even if `current` is not newest.
    """
    level = change_level(candidate, current)
    if level == "initial":
        highest = max((_parse_semver(s) for s in taken if SEMVER.match(str(s))), default=None)
        return FIRST_SEMVER if highest is None else f"{highest[0] + 1}.0.0"
    semvers = [str(current.get("semver") or "0.0.0"), *map(str, taken)]
    major, minor, patch = max(_parse_semver(s) for s in semvers if SEMVER.match(s))
    if level == "major":
        return f"{major + 1}.0.0"
    if level == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def _parse_semver(text: str) -> tuple[int, int, int]:
    match = SEMVER.match(text)
    if not match:
        raise ValueError(f"not a semantic version: {text!r}")
    return int(match[1]), int(match[2]), int(match[3])


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------------------------
# Publishing.

@dataclass(frozen=True)
class Published:
    """The outcome of `publish`: `created` is False when the model_id was already a version."""

    version: int
    semver: str
    uri: str
    model_id: str
    created: bool
    entry: dict


def _put_file(source: str, destination: str) -> None:
    """The one place publish writes model bytes (tests interrupt it to simulate crashes)."""
    storage.put_file(source, destination)


def _files_of(model_dir: str) -> list[str]:
    """Relative POSIX paths of a SavedModel's files, saved_model.pb (the entry point) last."""
    found = storage.relative_files(model_dir)
    return sorted(found, key=lambda rel: (LAST_FILES.index(rel) + 1 if rel in LAST_FILES else 0,
                                          rel))


@contextlib.contextmanager
def _local_lock(base: str) -> Iterator[None]:
    """One local push at a time per model (released by the kernel if the process dies)."""
    import fcntl

    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, LOCK_FILE), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clean_staging(base: str) -> None:
    """Remove staging directories left by crashed pushes (called with the lock held)."""
    for name in os.listdir(base):
        if name.startswith(STAGING_PREFIX):
            log.warning("removing %s left by an interrupted push", os.path.join(base, name))
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


UNCHECKED = object()


def publish(registry: str, model_name: str, model_dir: str,
            lineage: Mapping[str, Any], *, evaluated_against=UNCHECKED,
            before_index: Callable[[dict], None] | None = None) -> Published:
    """Publish the SavedModel in `model_dir` as the next version of `model_name`; current = it.

    `lineage` holds what is known about the model: at least `model_id` (== `model_id_of(
    model_dir)`, checked) and `signature_hash`, plus dataset_version, preprocessing_hash,
    hparams, metrics, baseline, code_version... This adds version, semver (by `next_semver`
    against the current version), pushed_at, blessed and uri, writes it to lineage/<N>.json and
    its INDEX_FIELDS to the index. A model_id that is already a version is not published again:
    the existing version comes back with created=False.

    `evaluated_against`: the current version the model was compared with (None: none). When
    the registry's current version is another one now (another push came first), the blessing
    is stale and nothing is published: checked under the lock (local registries), so two
    concurrent pushes cannot both pass it.

    `before_index(record)`: called with the version's lineage record once its files and
    lineage are in place and before the index lists it (push writes the model card there);
    if it fails, the version is not published (its number is never reused).
    """
    check_model_name(model_name)
    if not os.path.isfile(os.path.join(model_dir, SAVED_MODEL_FILE)):
        raise StepError(f"{model_dir}: no {SAVED_MODEL_FILE}; not a SavedModel directory")
    for key in ("model_id", "signature_hash"):
        if not lineage.get(key):
            raise StepError(f"lineage has no {key}; cannot publish to the registry")
    model_id = lineage["model_id"]
    actual = model_id_of(model_dir)
    if actual != model_id:
        raise StepError(
            f"{model_dir}: files hash to model_id {actual}, not {model_id}; the SavedModel "
            "changed after it was trained and evaluated"
        )
    base = model_uri(registry, model_name)
    if storage.is_s3(base):
        return _publish(registry, model_name, model_dir, dict(lineage), _upload_version,
                        evaluated_against, before_index)
    with _local_lock(base):
        _clean_staging(base)
        return _publish(registry, model_name, model_dir, dict(lineage), _rename_version,
                        evaluated_against, before_index)


def _publish(registry: str, model_name: str, model_dir: str, lineage: dict, place,
             evaluated_against=UNCHECKED, before_index=None) -> Published:
    index = read_index(registry, model_name)
    existing = find_version(index, model_id=lineage["model_id"])
    if existing is not None:
        log.info("model %s is already %s version %d (%s); nothing to publish",
                 lineage["model_id"], model_name, existing["version"], existing.get("semver"))
        return Published(existing["version"], existing.get("semver", ""), existing["uri"],
                         existing["model_id"], False, existing)
    current = index.get("current")
    if evaluated_against is not UNCHECKED and evaluated_against != current:
        compared = (f"version {evaluated_against}" if evaluated_against is not None
                    else "no baseline")
        raise StepError(
            f"{model_uri(registry, model_name)}: model {lineage['model_id']} was evaluated "
            f"against {compared}, but the registry's current version is {current} now (pushed "
            f"since): the blessing is stale; evaluate it against version {current} again")
    listed = {entry["version"] for entry in index["versions"]}
    orphans = existing_version_numbers(registry, model_name) - listed
    if orphans:
        log.warning("%s: ignoring version directories not in the index (interrupted pushes): %s",
                    model_uri(registry, model_name), sorted(orphans))
    version = max(listed | orphans, default=0) + 1
    current = current_entry(index)
    if current is None and index["versions"]:
        current = max(index["versions"], key=lambda e: e["version"])
    semver = next_semver(lineage, current, [e.get("semver", "") for e in index["versions"]])
    uri = version_uri(registry, model_name, version)
    record = {
        **lineage,
        "model_name": model_name,
        "version": version,
        "semver": semver,
        "change": change_level(lineage, current),
        "previous_version": current["version"] if current else None,
        "pushed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "blessed": True,
        "uri": uri,
    }
    record.setdefault("baseline_version", (lineage.get("baseline") or {}).get("version"))
    place(registry, model_name, model_dir, version, lineage["model_id"])
    documents.write_json(lineage_uri(registry, model_name, version), record)
    if before_index is not None:
        before_index(record)
    entry = {key: record.get(key) for key in INDEX_FIELDS}
    write_index(registry, model_name, {
        **index, "model_name": model_name, "current": version,
        "versions": [*index["versions"], entry],
    })
    written = find_version(read_index(registry, model_name), version=version)
    if written is None or written.get("model_id") != lineage["model_id"]:
        raise StepError(f"{uri}: the index was changed by another push at the same time; "
                        "push again (one push per model name at a time)")
    log.info("published %s version %d (%s, %s change) at %s", model_name, version, semver,
             record["change"], uri)
    return Published(version, semver, uri, lineage["model_id"], True, entry)


def _rename_version(registry: str, model_name: str, model_dir: str, version: int,
                    model_id: str) -> None:
    """Local: copy into a staging directory beside the versions, then rename it to <N>."""
    base = model_uri(registry, model_name)
    staging = os.path.join(base, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    target = os.path.join(base, str(version))
    if os.path.exists(target):  # cannot happen under the lock; never rename onto a version
        raise StepError(f"{target}: already exists; not overwriting a version")
    try:
        for relative in _files_of(model_dir):
            _put_file(os.path.join(model_dir, relative), os.path.join(staging, relative))
        if model_id_of(staging) != model_id:
            raise StepError(f"{staging}: the copy differs from {model_dir}; nothing published")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _upload_version(registry: str, model_name: str, model_dir: str, version: int,
                    _model_id: str) -> None:
    """S3: upload under <N>/, saved_model.pb last; on failure remove what was uploaded."""
    target = version_uri(registry, model_name, version)
    uploaded = []
    try:
        for relative in _files_of(model_dir):
            destination = storage.join(target, relative)
            _put_file(os.path.join(model_dir, relative), destination)
            uploaded.append(destination)
    except BaseException:
        for uri in reversed(uploaded):
            with contextlib.suppress(Exception):
                storage.delete(uri)
        raise


# ---------------------------------------------------------------------------------------------
# Baseline resolution.

@dataclass(frozen=True)
class Baseline:
    """A model to compare against: `path` is a local SavedModel directory to load."""

    path: str
    uri: str
    model_id: str
    version: int | None = None
    semver: str | None = None
    model_name: str | None = None
    entry: dict | None = field(default=None, compare=False)  # the index entry of a version

    def to_json(self) -> dict:
        """The `baseline` field of blessing.json."""
        return {"version": self.version, "model_id": self.model_id, "uri": self.uri,
                "semver": self.semver}


def _unknown_version(registry: str, model_name: str, version: int, index: dict) -> str:
    listed = [e["version"] for e in index["versions"]]
    return (f"{model_uri(registry, model_name)}: no version {version} in the registry index "
            f"(versions: {listed or 'none'})")


def _split_ref(ref: str) -> tuple[str, str]:
    """`<parent>/<last>` of a local path (made absolute) or an S3 URI."""
    if storage.is_s3(ref):
        parent, _, last = ref.rstrip("/").rpartition("/")
        return parent, last
    ref = os.path.abspath(ref)
    return os.path.dirname(ref), os.path.basename(ref)


def resolve_baseline(ref: str, download_dir: str, *, allow_empty: bool = False) -> Baseline | None:
    """Resolve a baseline reference to a local SavedModel directory.

    `ref` may be:
    - `<registry>/<model_name>`: the current version (the newest blessed one);
    - `<registry>/<model_name>/<N>`: version N, which must be listed in the index;
    - a SavedModel directory (or a train output directory with `model/` in it).
    A registry may be a local directory or s3://bucket/prefix; S3 versions are downloaded into a
    new directory under `download_dir` (the caller owns it). Registry versions are checked
    against the model_id the index recorded.

    When the registry has no current version (first run) this is a StepError, unless
    `allow_empty`: then a `<registry>/<model_name>` reference with no index or no current
    version gives None (evaluate then applies only the absolute thresholds).
    """
    if not ref:
        raise StepError("baseline reference is empty")
    parent, last = _split_ref(ref)
    if last.isdigit() and storage.exists(storage.join(parent, INDEX_FILE)):
        registry, model_name = _split_ref(parent)
        return _resolve_version(registry, model_name, int(last), download_dir)
    if storage.exists(storage.join(ref, INDEX_FILE)):
        registry, model_name = _split_ref(ref)
        index = read_index(registry, model_name)
        current = index.get("current")
        if current is None:
            if allow_empty:
                log.info("%s: no blessed version yet; no baseline", ref)
                return None
            raise StepError(f"{ref}: the registry has no blessed (current) version yet; "
                            "no baseline to compare with")
        return _resolve_version(registry, model_name, int(current), download_dir)
    for candidate in (ref, storage.join(ref, model_artifact.MODEL_DIR)):
        if storage.exists(storage.join(candidate, SAVED_MODEL_FILE)):
            path = local_copy(candidate, download_dir)
            return Baseline(path=path, uri=candidate, model_id=model_id_of(path))
    if allow_empty and not _anything_at(ref):
        log.info("%s: no registry index there yet; no baseline", ref)
        return None
    raise StepError(
        f"{ref}: not a baseline model: expected <registry>/<model_name> (with {INDEX_FILE}), "
        f"<registry>/<model_name>/<N> or a SavedModel directory ({SAVED_MODEL_FILE})"
    )


@contextlib.contextmanager
def open_baseline(ref: str, *, allow_empty: bool = False) -> Iterator[Baseline | None]:
    """`resolve_baseline` with a temporary download directory removed on exit."""
    with tempfile.TemporaryDirectory(prefix="baseline-") as download_dir:
        yield resolve_baseline(ref, download_dir, allow_empty=allow_empty)


def resolve_model_ref(ref: str, download_dir: str | None = None
                      ) -> tuple[str, dict | None] | None:
    """`resolve_baseline(ref, allow_empty=True)` as (local SavedModel dir, index entry).

    The entry is the registry index entry of the version (version, semver, model_id, uri...),
    or None when `ref` is a plain SavedModel or train output directory. None (no tuple) when
    the registry has no blessed version yet. S3 downloads go under `download_dir`, by default
    a new temporary directory that lives as long as the process (the caller may remove it).
    """
    download_dir = download_dir or tempfile.mkdtemp(prefix="baseline-")
    baseline = resolve_baseline(ref, download_dir, allow_empty=True)
    if baseline is None:
        return None
    return baseline.path, baseline.entry


def _anything_at(ref: str) -> bool:
    if storage.is_s3(ref):
        return bool(storage.list_uris(ref))
    return os.path.exists(ref)


def _resolve_version(registry: str, model_name: str, version: int, download_dir: str) -> Baseline:
    index = read_index(registry, model_name)
    entry = find_version(index, version=version)
    if entry is None:
        raise StepError(_unknown_version(registry, model_name, version, index))
    uri = version_uri(registry, model_name, version)
    if not storage.is_s3(uri) and not os.path.isfile(os.path.join(uri, SAVED_MODEL_FILE)):
        raise StepError(f"{uri}: version {version} is in the index but its files are missing")
    path = local_copy(uri, download_dir)
    actual = model_id_of(path)
    if entry.get("model_id") and actual != entry["model_id"]:
        raise StepError(f"{uri}: files hash to model_id {actual}, but the index recorded "
                        f"{entry['model_id']}; the version was changed after publishing")
    return Baseline(path=path, uri=uri, model_id=actual, version=version,
                    semver=entry.get("semver"), model_name=model_name, entry=entry)


def local_copy(uri: str, download_dir: str) -> str:
    """A local directory with the SavedModel at `uri`: itself, or a download of the S3 prefix
    into a new directory under `download_dir`."""
    if not storage.is_s3(uri):
        return os.path.abspath(uri)
    objects = storage.list_uris(uri)
    if not objects:
        raise StepError(f"{uri}: no objects; the version's files are missing")
    os.makedirs(download_dir, exist_ok=True)
    destination = tempfile.mkdtemp(prefix="model-", dir=download_dir)
    storage.download_tree(uri, destination)
    log.info("downloaded %s (%d files) to %s", uri, len(objects), destination)
    return destination
