"""Experiment storage through pyarrow filesystems: a local path, NFS, or ``s3://``/``gs://`` URI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fusionsearch.errors import UserError


def is_uri(path: str) -> bool:
    return "://" in path


def normalise(path: str | os.PathLike) -> str:
    """An absolute local path, or the URI unchanged."""
    path = str(path)
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _resolve(path: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(path if is_uri(path) else normalise(path))


def exists(path: str) -> bool:
    fs, inner = _resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary name, then rename it into place.

    Readers never see half a file, and concurrent writers of the same bytes are safe. (On object
    stores the rename is a copy; each object is still written whole.)
    """
    fs, inner = _resolve(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    temporary = f"{inner}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(temporary) as f:
        f.write(data)
    fs.move(temporary, inner)


def size(path: str) -> int | None:
    """The byte length of the file at ``path`` (``None``: no such file)."""
    fs, inner = _resolve(path)
    info = fs.get_file_info(inner)
    return None if info.type == pafs.FileType.NotFound else info.size


def open_input(path: str) -> Any:
    """A binary input stream of the file at ``path`` (a context manager)."""
    fs, inner = _resolve(path)
    return fs.open_input_stream(inner)


def read_bytes(path: str) -> bytes:
    fs, inner = _resolve(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_table(path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes(path, buffer.getvalue())


def read_table(path: str) -> pa.Table:
    return pq.read_table(io.BytesIO(read_bytes(path)))


def write_json(path: str, value: Any) -> None:
    write_bytes(path, json.dumps(value, indent=2, default=str).encode())


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def probe(location: str, what: str) -> None:
    """Write a small file under ``location``, read it back and delete it: the location is reachable
    and writable, checked in seconds before anything expensive starts.

    Raises:
        StorageUnusable: naming ``what`` (``--storage``, ``--cache``), the location, the error and
            the fix.
    """
    path = join(normalise(location), f".fusionsearch-probe-{uuid.uuid4().hex}")
    created = None if is_uri(location) else _first_missing(normalise(location))
    try:
        fs, inner = _resolve(path)
        if isinstance(fs, pafs.S3FileSystem) and "?" not in location:
            fs = _impatient_s3(fs.region)
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as f:
            f.write(b"fusionsearch")
        with fs.open_input_stream(inner) as f:
            if f.read() != b"fusionsearch":
                raise OSError("what was read back differs from what was written")
        fs.delete_file(inner)
    except (OSError, ValueError, pa.ArrowException) as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        fix = (
            "check the bucket name, the endpoint (AWS_ENDPOINT_URL for an S3-compatible store), the "
            "network and the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the instance's role)"
            if is_uri(location)
            else "check that the folder's disk is mounted, has space and that you may write there"
        )
        raise StorageUnusable(
            f"{what} {location}: cannot write there ({reason}); {fix}. Nothing was started"
        ) from None
    finally:
        if created is not None:  # leave no folder behind that was not there: the probe is not a build
            _remove_empty(normalise(location), created)


def _first_missing(folder: str) -> str | None:
    """The outermost folder of ``folder``'s path that does not exist yet (``None``: it exists)."""
    missing = None
    while not os.path.exists(folder):
        missing, parent = folder, os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _remove_empty(folder: str, up_to: str) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` while they are empty."""
    while True:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
        if folder == up_to or os.path.dirname(folder) == folder:
            return
        folder = os.path.dirname(folder)


def _impatient_s3(region: str) -> pafs.S3FileSystem:
    """An S3 filesystem like ``from_uri``'s (region, endpoint from ``AWS_ENDPOINT_URL``), which gives
    up after one retry instead of about ten seconds of them."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = {}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        where = {"endpoint_override": host, "scheme": scheme or "https"}
    retries = pafs.AwsStandardS3RetryStrategy(max_attempts=2)
    return pafs.S3FileSystem(
        region=region, retry_strategy=retries, connect_timeout=5, request_timeout=20, **where
    )


class StorageUnusable(UserError):
    """A storage location that cannot be written, found before anything starts."""


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[str]:
    """A local folder with the contents of ``location``: the folder itself, or a temporary copy of a URI."""
    if not is_uri(location):
        yield normalise(location)
        return
    with tempfile.TemporaryDirectory(prefix="fusionsearch-") as directory:
        pafs.copy_files(location, directory)
        yield directory
