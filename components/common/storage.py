"""Reads and writes `s3://bucket/key` (MinIO, through the minio client) and local paths.

Endpoint and credentials come from the environment (on Kubernetes, from a Secret), never from
pipeline parameters: S3_ENDPOINT_URL (or AWS_ENDPOINT_URL, e.g. http://minio:9000),
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally AWS_REGION. Every single-object write
is atomic: a reader sees the old object, or the whole new one, never a part. Transient failures
are retried (see RETRIES); errors a person must fix are not.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import urlparse

from components.common.errors import StepError

S3_SCHEMES = ("s3://", "minio://")
PART_SIZE = 16 * 1024 * 1024


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEMES)


def join(base: str, *parts: str) -> str:
    """Join path parts under a local directory or an S3 prefix."""
    if is_s3(base):
        tail = "/".join(p.strip("/") for p in parts if p)
        return base.rstrip("/") + ("/" + tail if tail else "")
    return os.path.join(base, *parts)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StepError(f"{uri}: an S3 URI needs a bucket, like s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


# Transient S3 failures (no connection, 429 SlowDown, 5xx) are retried with exponential backoff
# (0.5 s, 1 s, 2 s, ...); a 4xx (bad credentials, no such key) is an answer, never retried.
RETRIES = 5
RETRY_BACKOFF_SECONDS = 0.5
RETRY_STATUS = (429, 500, 502, 503, 504)
# An endpoint that accepts the connection and then says nothing: each try waits READ_TIMEOUT
# seconds for an answer and such a silence is tried READ_RETRIES more times, so the step fails
# in about (1 + READ_RETRIES) x READ_TIMEOUT (1.5 min), not after every retry's full wait
# (6 min). S3_READ_TIMEOUT_SECONDS raises the wait for a slow store.
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 30.0
READ_RETRIES = 2


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise StepError(f"{name}={text!r}: expected a positive number of seconds")
    return value


@functools.lru_cache(maxsize=4)
def _client(endpoint_url: str, access_key: str | None, secret_key: str | None, region: str | None):
    import certifi
    import urllib3
    from minio import Minio

    parsed = urlparse(endpoint_url if "://" in endpoint_url else f"http://{endpoint_url}")
    http = urllib3.PoolManager(
        # an endpoint that accepts the connection and never answers fails, it does not hang
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=_seconds_from_env(
            "S3_READ_TIMEOUT_SECONDS", READ_TIMEOUT_SECONDS)),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=RETRIES, read=READ_RETRIES,
                              backoff_factor=RETRY_BACKOFF_SECONDS,
                              status_forcelist=RETRY_STATUS, raise_on_status=False),
    )
    return Minio(
        parsed.netloc,
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        secure=parsed.scheme == "https",
        http_client=http,
    )


def s3_client():
    """The minio client for the endpoint the environment names."""
    endpoint = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        raise StepError(
            "S3 URI given but no endpoint: set S3_ENDPOINT_URL (e.g. http://minio:9000) "
            "and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    return _client(
        endpoint,
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
        os.environ.get("AWS_REGION") or None,
    )


def _s3_error(uri: str, exc: Exception) -> StepError:
    code = getattr(exc, "code", None) or type(exc).__name__
    return StepError(f"{uri}: S3 error {code}: {getattr(exc, 'message', None) or exc}")


def _endpoint() -> str:
    return os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or "?"


def _short_reason(exc: Exception) -> str:
    """`Connection refused`, `timed out`, `Name or service not known` from urllib3's nesting."""
    reason = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the last failure
    text = " ".join(str(reason).split())
    errno_text = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno_text:
        return errno_text[-1].strip()
    if "timed out" in text.lower():
        return "timed out"
    return f"{type(reason).__name__}: {text[:200]}"


@contextlib.contextmanager
def _s3_call(uri: str) -> Iterator[None]:
    """An S3 endpoint that does not answer (refused, unknown host, timeout, broken connection,
    5xx after the retries, not S3 at all) as one line naming the URI and the endpoint."""
    import urllib3
    from minio.error import InvalidResponseError, ServerError

    try:
        yield
    except urllib3.exceptions.HTTPError as exc:
        reason = _short_reason(exc)
        last = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the last failure
        retries = (READ_RETRIES if isinstance(last, urllib3.exceptions.ReadTimeoutError)
                   else RETRIES)
        raise StepError(f"{uri}: S3 endpoint {_endpoint()} did not answer "
                        f"({reason}; {retries} retries); check S3_ENDPOINT_URL "
                        "and that the object store is up") from exc
    except ServerError as exc:
        raise StepError(f"{uri}: S3 endpoint {_endpoint()} failed with HTTP "
                        f"{exc.status_code} after {RETRIES} retries") from exc
    except InvalidResponseError as exc:
        raise StepError(f"{uri}: S3 endpoint {_endpoint()} did not answer as S3 does "
                        f"({' '.join(str(exc).split())[:200]}); check S3_ENDPOINT_URL") from exc


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return os.path.exists(uri)
    from minio.error import S3Error

    bucket, key = split_s3(uri)
    with _s3_call(uri):
        try:
            s3_client().stat_object(bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            if exc.code == "NoSuchBucket":
                return False
            raise _s3_error(uri, exc) from exc


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[BinaryIO]:
    """A binary stream of the object or file; read it in chunks, it is never loaded whole."""
    if not is_s3(uri):
        try:
            with open(uri, "rb") as handle:
                yield handle
        except FileNotFoundError as exc:
            raise StepError(f"{uri}: file not found") from exc
        except IsADirectoryError as exc:
            raise StepError(f"{uri}: is a directory, expected a file") from exc
        except PermissionError as exc:
            raise StepError(f"{uri}: permission denied: this user (uid {os.getuid()}) cannot "
                            "read it") from exc
        return
    from minio.error import S3Error

    bucket, key = split_s3(uri)
    with _s3_call(uri):
        try:
            response = s3_client().get_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise StepError(f"{uri}: object not found ({exc.code})") from exc
            raise _s3_error(uri, exc) from exc
    try:
        with _s3_call(uri):  # the connection may break while the caller reads
            yield response
    finally:
        response.close()
        response.release_conn()


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as handle:
        return handle.read()


def write_stream(uri: str, stream: BinaryIO) -> None:
    """Copy a stream to `uri` atomically (temp file + rename locally; one S3 object remotely)."""
    if is_s3(uri):
        from minio.error import S3Error

        bucket, key = split_s3(uri)
        client = s3_client()
        with _s3_call(uri):
            try:
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket)
                client.put_object(bucket, key, stream, length=-1, part_size=PART_SIZE)
            except S3Error as exc:
                raise _s3_error(uri, exc) from exc
        return
    directory = os.path.dirname(os.path.abspath(uri))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    except PermissionError as exc:
        raise StepError(f"{uri}: permission denied: this user (uid {os.getuid()}) cannot write "
                        f"in {directory}") from exc
    except (FileExistsError, NotADirectoryError) as exc:
        raise StepError(f"{uri}: cannot write it: a part of {directory} is a file, not a "
                        "directory") from exc
    try:
        # mkstemp makes 0600; a published file is readable by the model server or a step
        # running under another uid, as any file this user writes (the umask decides).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream, out, PART_SIZE)
        os.replace(tmp, uri)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(uri: str, data: bytes) -> None:
    import io

    write_stream(uri, io.BytesIO(data))


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write `data` at `uri` only if nothing is there yet: True when this call created it,
    False when the object or file already existed (someone else's). Atomic on both sides: a
    hard link of a complete temporary file locally; an S3 conditional write
    (`If-None-Match: *`) remotely, which AWS S3, MinIO and moto honour (`check_exclusive_create`
    finds a server that ignores it).

    `data` should be unique to the caller (e.g. hold a random token): a PUT retried after a lost
    answer finds its own first attempt there, and that counts as created by this call.
    """
    if is_s3(uri):
        from minio.error import S3Error

        bucket, key = split_s3(uri)
        client = s3_client()
        with _s3_call(uri):
            try:
                # minio's public put_object sends unknown headers as user metadata; the
                # conditional header has to reach S3 as it is, which its PutObject primitive
                # does.
                client._put_object(bucket, key, data, headers={
                    "If-None-Match": "*", "Content-Type": "application/json"})
                return True
            except S3Error as exc:
                if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return read_bytes(uri) == data
                raise _s3_error(uri, exc) from exc
    directory = os.path.dirname(os.path.abspath(uri))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            os.link(tmp, uri)
            return True
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_exclusive_create(prefix: str) -> None:
    """StepError unless `create_exclusive` refuses a second write under `prefix` (an object
    store that ignores `If-None-Match` would let two writers both believe they created it)."""
    import uuid

    probe = join(prefix, f".exclusive-create-probe-{uuid.uuid4().hex}")
    try:
        first = create_exclusive(probe, b"first")
        second = create_exclusive(probe, b"second")
    finally:
        with contextlib.suppress(Exception):
            delete(probe)
    if not first or second:
        raise StepError(f"{prefix}: the object store does not honour conditional writes "
                        "(If-None-Match: *), so two writers could both win; use AWS S3, MinIO "
                        "(RELEASE.2024-11 or later) or another store that does")


def list_uris(prefix: str) -> list[str]:
    """Every object (S3) or file (local, recursive) under a prefix, sorted."""
    if is_s3(prefix):  # one S3 listing: list_objects' (directory markers left out)
        return [uri for uri, _size, _tag in list_objects(prefix)]
    found = []
    for root, _dirs, files in os.walk(prefix):
        found.extend(os.path.join(root, name) for name in files)
    return sorted(found)


def list_objects(prefix: str) -> list[tuple[str, int, str]]:
    """(uri, size, version tag) of every object or file under a prefix, sorted by uri. The tag
    changes when the content is replaced: the ETag on S3, the modification time locally."""
    if is_s3(prefix):
        from minio.error import S3Error

        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        try:
            with _s3_call(prefix):
                client = s3_client()
                if not client.bucket_exists(bucket):
                    return []
                return sorted((f"s3://{bucket}/{o.object_name}", int(o.size or 0),
                               (o.etag or "").strip('"'))
                              for o in client.list_objects(bucket, prefix=key, recursive=True)
                              if not o.is_dir)
        except S3Error as exc:
            raise _s3_error(prefix, exc) from exc
    found = []
    for uri in list_uris(prefix):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile
            stat = os.stat(uri)
            found.append((uri, stat.st_size, str(stat.st_mtime_ns)))
    return found


def delete(uri: str) -> None:
    if is_s3(uri):
        from minio.error import S3Error

        bucket, key = split_s3(uri)
        with _s3_call(uri):
            try:
                s3_client().remove_object(bucket, key)
            except S3Error as exc:
                raise _s3_error(uri, exc) from exc
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uri)


def put_file(local_path: str, uri: str) -> None:
    """Copy one local file to a local path or an S3 object (atomically either way)."""
    with open(local_path, "rb") as handle:
        write_stream(uri, handle)


def relative_files(directory: str) -> list[str]:
    """POSIX paths of every file under a local directory, relative to it, sorted."""
    found = []
    for root, _dirs, names in os.walk(directory):
        found.extend(os.path.relpath(os.path.join(root, n), directory).replace(os.sep, "/")
                     for n in names)
    return sorted(found)


def upload_tree(directory: str, uri: str, last: tuple[str, ...] = ()) -> int:
    """Copy a local directory's files under `uri`; the `last` files go at the end (markers)."""
    files = sorted(relative_files(directory), key=lambda rel: (rel in last, rel))
    for relative in files:
        put_file(os.path.join(directory, *relative.split("/")), join(uri, relative))
    return len(files)


def download_tree(uri: str, destination: str) -> int:
    """Copy every object under an S3 prefix (or files under a local dir) into `destination`."""
    prefix = uri.rstrip("/") + "/"
    count = 0
    for source in list_uris(uri):
        relative = source[len(prefix):] if is_s3(uri) else os.path.relpath(source, uri)
        parts = relative.replace(os.sep, "/").split("/")
        if not relative or ".." in parts:
            continue
        local = os.path.join(destination, *parts)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open_read(source) as stream, open(local, "wb") as out:
            shutil.copyfileobj(stream, out, PART_SIZE)
        count += 1
    return count


@contextlib.contextmanager
def local_directory(uri: str, prefix: str = "download-") -> Iterator[str]:
    """A local directory with the files under `uri`: the directory itself, or a temporary
    download of the S3 prefix, removed on exit."""
    if not is_s3(uri):
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        if not download_tree(uri, directory):
            raise StepError(f"{uri}: no objects under this prefix")
        yield directory
