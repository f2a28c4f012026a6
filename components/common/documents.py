"""JSON and YAML documents in local files or S3 objects: read with errors that name the file
and what it should have been, written atomically (a reader sees the old or the new document).

Every artifact module, the registry and the data store read and write their JSON through here.
"""

from __future__ import annotations

import json

from components.common import storage
from components.common.errors import StepError


def read_json(uri: str, what: str, producer: str | None = None, *, object_only: bool = True):
    """The JSON document at `uri`.

    A missing file says which step should have written it (`producer`); invalid JSON, or (with
    `object_only`) anything but an object, is a StepError naming the file.
    """
    if not storage.exists(uri):
        if producer:
            parent, _, name = uri.rstrip("/").rpartition("/")
            raise StepError(f"{parent or '.'}: no {name}; not the output of a finished "
                            f"{producer} step")
        raise StepError(f"{uri}: {what} not found")
    try:
        value = json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StepError(f"{uri}: {what} is not valid JSON ({exc})") from exc
    if object_only and not isinstance(value, dict):
        raise StepError(f"{uri}: {what} must be a JSON object")
    return value


def write_json(uri: str, value) -> None:
    """Indented, keys sorted, one atomic write (temp file + rename, or one S3 object)."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    storage.write_bytes(uri, text.encode("utf-8"))


def read_yaml(uri: str, what: str):
    """The YAML document at `uri` (a local path or an S3 object)."""
    import yaml

    if not storage.is_s3(uri) and not storage.exists(uri):
        raise StepError(f"{uri}: {what} not found")
    try:
        return yaml.safe_load(storage.read_bytes(uri))
    except yaml.YAMLError as exc:
        raise StepError(f"{uri}: not valid YAML: {' '.join(str(exc).split())}") from exc
