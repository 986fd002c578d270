"""Experiment storage through pyarrow filesystems: a local path, NFS, or ``s3://``/``gs://`` URI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
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


#: ``type_name`` of the filesystem :func:`tune_filesystem` gives for a local path.
WHOLE_FILES_TYPE = "py::local-whole-files"


def tune_filesystem(path: str) -> pafs.FileSystem | None:
    """The filesystem Ray Tune should write an experiment at ``path`` through: for a local path, one
    whose files appear whole or not at all (:class:`WholeFiles`); for a URI, ``None`` (Tune's own:
    an object store already writes each object whole).

    Tune uploads its experiment state over the previous copy in place; with a local filesystem a
    disk that fills up mid-upload leaves that state truncated, and the search could not be resumed.
    """
    return None if is_uri(path) else pafs.PyFileSystem(WholeFiles())


class WholeFiles(pafs.FileSystemHandler):
    """The local filesystem, except that a file being written appears only once written in full.

    Each output stream writes ``.<name>.<random>.partial`` beside its file and renames it over the
    file when closed; a failed write (a full disk, a killed process) leaves the previous version
    in place, and the partial file is removed where the process survives to do so. Appending is
    not atomic (nothing here appends).
    """

    def __init__(self) -> None:
        self._fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeFiles)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, WholeFiles)

    def __hash__(self) -> int:
        return hash(WholeFiles)

    def __reduce__(self) -> tuple:  # to Ray's workers, rebuilt there
        return (WholeFiles, ())

    def get_type_name(self) -> str:
        return WHOLE_FILES_TYPE.removeprefix("py::")  # pyarrow adds the prefix

    def normalize_path(self, path: str) -> str:
        return self._fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the root directory")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self._fs.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            shutil.copyfileobj(source, target)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_WholeFile(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self._fs.open_append_stream(path)


class _WholeFile(io.RawIOBase):
    """A binary file written under a temporary name and renamed to ``path`` when closed."""

    def __init__(self, path: str) -> None:
        folder, name = os.path.split(path)
        self._path = path
        self._temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.partial")
        self._file = open(self._temporary, "wb")  # noqa: SIM115 (closed in close())
        self._failed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except BaseException:
            self._failed = True
            self._discard()  # now: the failed stream may be closed only when collected
            raise

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.remove(self._temporary)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._failed:
                raise OSError(f"{self._path}: not replaced, writing it failed")
            self._file.close()  # a full disk can first show here, flushing
            os.replace(self._temporary, self._path)
        except BaseException:
            self._discard()
            raise
        finally:
            super().close()


def exists(path: str) -> bool:
    fs, inner = _resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def names(folder: str) -> list[str]:
    """The names of the files directly in ``folder`` (none where it does not exist)."""
    fs, inner = _resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


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
