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


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[str]:
    """A local folder with the contents of ``location``: the folder itself, or a temporary copy of a URI."""
    if not is_uri(location):
        yield normalise(location)
        return
    with tempfile.TemporaryDirectory(prefix="fusionsearch-") as directory:
        pafs.copy_files(location, directory)
        yield directory
