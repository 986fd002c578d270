"""The preprocessing cache: each sample is preprocessed once and memory-mapped by every trial.

An entry is keyed by the sample's files (resolved path, size, modification time) and the
preprocessing settings, so changing a setting or replacing a file rebuilds exactly the
entries it affects. Entries are ``.npy`` arrays written to a temporary name and renamed into
place, so a reader never sees half an entry and concurrent builders (trials, rounds, whole
searches, other nodes on shared storage) are safe: the last rename wins with identical bytes.

Each entry has a *record* beside it (``<key>.json``, written after the array): the sample, the
array's shape and dtype, its byte length and its SHA-256. An entry without a record is
unfinished. Building checks every entry before it is served: its length always (a truncated
copy, a full disk), its hash too when asked (``verify``: bytes overwritten with other values of
the right size), and rebuilds a damaged entry from its source volume, saying which. Trials open
entries with the length check, so a damaged one is an error naming the sample, never numpy's
``mmap length is greater than file size``.

The cache's root is a local or shared folder, or a URI (``s3://``, ``gs://``: any pyarrow
filesystem). Trials never read the manifest or the images: the driver writes an *index* (one
row per sample: id, subject, label, entry key) into the cache, and a trial opens its fold from
the index. On a URI root, a node copies the entries it needs once into a node-local mirror
(``$FUSIONSEARCH_MIRROR``, default ``~/.cache/fusionsearch/mirror``) and memory-maps them there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from fusionsearch import storage
from fusionsearch.console import Progress
from fusionsearch.data.manifest import Manifest
from fusionsearch.data.preprocess import preprocess_sample
from fusionsearch.errors import DataError
from fusionsearch.settings import DataConfig, PreprocessConfig, to_dict

log = logging.getLogger(__name__)

#: Bump when the meaning of an entry changes, so old entries are not reused (2: entries have records).
CACHE_FORMAT = 2
#: Bytes read at a time when hashing an entry.
_CHUNK = 8 << 20
#: Entries of a remote cache copied into a node's mirror at once (each copy waits on 3 requests).
MIRROR_THREADS = 16


@dataclass(frozen=True)
class CacheStats:
    """What one :meth:`PreprocessCache.build` did: entries built (new or ``repaired``), reused, and the
    bytes and seconds of the hash verification (0 when not asked)."""

    built: int
    reused: int
    repaired: int = 0
    verified_bytes: int = 0
    verify_seconds: float = 0.0


@dataclass(frozen=True)
class EntryRecord:
    """What a cache entry must be: written beside it when it is built."""

    sample: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    sha256: str


class PreprocessCache:
    """Preprocessed samples under ``root`` (a folder or URI), one ``.npy`` per (files, settings) key."""

    def __init__(self, root: str | os.PathLike, config: PreprocessConfig) -> None:
        self.root = storage.normalise(root)
        self.config = config

    def key(self, paths: Mapping[str, Path]) -> str:
        files = []
        for modality, path in paths.items():
            stat = Path(path).stat()
            files.append([modality, str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
        blob = json.dumps({"format": CACHE_FORMAT, "settings": to_dict(self.config), "files": files})
        return hashlib.sha256(blob.encode()).hexdigest()

    def entry(self, key: str) -> str:
        return storage.join(self.root, key[:2], f"{key}.npy")

    def record(self, key: str) -> str:
        return storage.join(self.root, key[:2], f"{key}.json")

    def damage(self, key: str, *, deep: bool = False) -> str | None:
        """What is wrong with entry ``key`` (``None``: intact): missing, unfinished (no record), a length
        other than recorded, or (``deep``) a hash other than recorded."""
        return self._inspect(key, deep)[0]

    def _inspect(self, key: str, deep: bool) -> tuple[str | None, int]:
        """:meth:`damage`, and the bytes hashed to find it (0 unless ``deep`` and intact)."""
        if not storage.exists(self.record(key)):
            return ("missing" if not storage.exists(self.entry(key)) else "unfinished (no record)"), 0
        expected = EntryRecord(**storage.read_json(self.record(key)))
        size = storage.size(self.entry(key))
        if size is None:
            return "missing", 0
        if size != expected.bytes:
            return f"{size} bytes instead of {expected.bytes}", 0
        if deep and _sha256(self.entry(key)) != expected.sha256:
            return "its bytes differ from those written (SHA-256)", 0
        return None, size if deep else 0

    def keys(self, manifest: Manifest) -> list[str]:
        """The entry key of every sample of ``manifest``, in row order."""
        return [self.key(manifest.paths(row)) for row in range(len(manifest))]

    def build(
        self,
        manifest: Manifest,
        workers: int | None = None,
        *,
        verify: bool = False,
        map_jobs: MapJobs | None = None,
    ) -> CacheStats:
        """Preprocess every sample of ``manifest`` whose entry is missing or damaged.

        Every existing entry's length is checked against its record; with ``verify`` its SHA-256
        too. A damaged entry is rebuilt from its source volume (logged with the sample and what
        was wrong).

        Args:
            workers: threads to preprocess (and hash) with (default: one per CPU). Threads, not
                processes: decompression, resampling, numpy and hashlib release the GIL, and a
                process pool pays seconds of imports per worker (measured slower for small datasets).
            map_jobs: runs the preprocessing elsewhere instead of in these threads: called with
                :func:`build_job` and the jobs, it yields once per finished job, in any order (a
                cluster's workers: :func:`fusionsearch.tune.cluster_cache.cluster_map`). Every
                worker must see the source volumes at the manifest's paths and the cache's root.
        """
        keys, ids = self.keys(manifest), manifest.sample_ids
        workers = workers or os.cpu_count() or 1
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            inspected = list(pool.map(lambda k: self._inspect(k, verify), keys))
        seconds = time.perf_counter() - started
        damage, verified = [d for d, _ in inspected], sum(n for _, n in inspected)
        repaired = [(ids[row], d) for row, d in enumerate(damage) if d not in (None, "missing")]
        for sample, what in repaired:
            log.warning(
                "cache entry of sample %s is damaged (%s): rebuilding it from its source", sample, what
            )
        todo = [row for row, d in enumerate(damage) if d is not None]
        workers = min(workers, max(len(todo), 1))
        log.info("preprocessing %d of %d samples with %d worker(s)", len(todo), len(keys), workers)
        jobs = [(ids[row], manifest.paths(row), self.config, self.entry(keys[row]), self.record(keys[row]))
                for row in todo]  # fmt: skip
        progress = Progress("preprocessing", len(jobs))
        with ThreadPoolExecutor(workers) as pool:
            for _ in (map_jobs or pool.map)(build_job, jobs):
                progress.step()
        progress.close()
        return CacheStats(len(todo), len(keys) - len(todo), len(repaired), verified, seconds)

    def write_index(self, manifest: Manifest) -> str:
        """Record ``manifest``'s samples and entry keys in the cache; returns the index's location.

        The index is named by its content, so writing the same one twice is harmless.
        """
        table = pa.table(
            {
                "sample_id": manifest.sample_ids,
                "subject_id": manifest.subjects,
                "label": pa.array(manifest.labels, pa.int64()),
                "key": self.keys(manifest),
            },
            metadata={"modalities": json.dumps(manifest.modalities)},
        )
        digest = hashlib.sha256(json.dumps([table.to_pydict(), manifest.modalities]).encode()).hexdigest()
        location = storage.join(self.root, "index", f"{digest}.parquet")
        if not storage.exists(location):
            storage.write_table(location, table)
        return location

    def open(self, manifest: Manifest) -> CachedDataset:
        """Memory-map the entries of ``manifest`` (built beforehand with :meth:`build`)."""
        return self.open_keys(self.keys(manifest), manifest.labels, manifest.sample_ids)

    def open_keys(self, keys: Sequence[str], labels: Sequence[int], ids: Sequence[str]) -> CachedDataset:
        """Memory-map the entries ``keys`` (samples ``ids`` with ``labels``).

        Each entry's length is checked against its ``.npy`` header where it is read (the local file,
        or the node's mirror copy, which was hashed when it was made): no request per entry to a
        remote cache, and a damaged entry is an error naming the sample.
        """
        if storage.is_uri(self.root):  # the first open on a node copies entries: requests, in parallel
            with ThreadPoolExecutor(MIRROR_THREADS) as pool:
                local = list(pool.map(self._local, keys))
        else:
            local = [self._local(k) for k in keys]
        damaged = [(s, d) for s, path in zip(ids, local, strict=True) if (d := _length_damage(path))]
        if damaged:
            sample, what = damaged[0]
            raise DataError(
                f"the preprocessing cache {self.root} has {len(damaged)} missing or damaged entr(y/ies) "
                f"(first: sample {sample}, {what}); build or repair it with 'fusionsearch data cache "
                "--verify' (or PreprocessCache.build), which every 'fusionsearch run' also does"
            )
        return CachedDataset([np.load(path, mmap_mode="r") for path in local], list(labels), list(ids))

    def _local(self, key: str) -> Path:
        """A local file holding entry ``key``: the entry itself, or its copy in the node's mirror."""
        if not storage.is_uri(self.root):
            return Path(self.entry(key))
        mirror = Path(os.environ.get("FUSIONSEARCH_MIRROR", "~/.cache/fusionsearch/mirror")).expanduser()
        local = mirror / key[:2] / f"{key}.npy"
        if not local.exists() and storage.exists(self.record(key)):  # entries are immutable (named by
            # content), so a copy never goes stale; without a record the entry is missing or unfinished
            data, expected = (
                storage.read_bytes(self.entry(key)),
                EntryRecord(**storage.read_json(self.record(key))),
            )
            if hashlib.sha256(data).hexdigest() != expected.sha256:
                raise DataError(
                    f"the cache entry of sample {expected.sample} in {self.root} is damaged (its bytes "
                    "differ from those written); repair it with 'fusionsearch data cache --verify'"
                )
            local.parent.mkdir(parents=True, exist_ok=True)
            temporary = local.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, local)
        return local


def cache_manifest(
    manifest: Manifest,
    root: str | os.PathLike,
    preprocess: PreprocessConfig,
    *,
    folds: int = 5,
    split_seed: int = 0,
    workers: int | None = None,
    verify: bool | None = None,
    map_jobs: MapJobs | None = None,
) -> DataConfig:
    """Build (and check) ``manifest``'s cache under ``root``; the :class:`DataConfig` trials open it with.

    ``verify``: check every entry's SHA-256 too (default: on a local or shared folder, where it
    costs about a second per GB; on a URI only the lengths are checked, and each node's mirror
    copy is hashed when it is made). ``map_jobs``: where the entries are built
    (:meth:`PreprocessCache.build`; default: this process's threads).
    """
    cache = PreprocessCache(root, preprocess)
    verify = not storage.is_uri(cache.root) if verify is None else verify
    stats = cache.build(manifest, workers=workers, verify=verify, map_jobs=map_jobs)
    checked = (
        f"; {stats.verified_bytes / 1e9:.2f} GB verified in {stats.verify_seconds:.1f} s" if verify else ""
    )
    log.info("preprocessing cache %s: %d built (%d repaired), %d reused%s", cache.root, stats.built,
             stats.repaired, stats.reused, checked)  # fmt: skip
    return DataConfig(
        index=cache.write_index(manifest),
        cache=cache.root,
        preprocess=preprocess,
        folds=folds,
        split_seed=split_seed,
    )


def read_index(location: str) -> pa.Table:
    """The index :meth:`PreprocessCache.write_index` wrote (modality names in its metadata)."""
    if not storage.exists(location):
        raise DataError(f"no cache index at {location}; run the search again so the driver writes it")
    return storage.read_table(location)


#: The ``.npy`` header reader of each format version (``np.save`` writes 1.0, or 2.0 for huge headers).
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _length_damage(path: Path) -> str | None:
    """``None`` if the ``.npy`` file at ``path`` exists and is as long as its header says."""
    try:
        with open(path, "rb") as f:
            shape, _, dtype = _HEADER_READERS[np.lib.format.read_magic(f)](f)
            expected, size = f.tell() + math.prod(shape) * dtype.itemsize, os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, KeyError) as error:  # a header cut short or overwritten
        return f"unreadable header ({error})"
    return None if size == expected else f"{size} bytes instead of {expected}"


def _sha256(location: str) -> str:
    digest = hashlib.sha256()
    with storage.open_input(location) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


#: One entry to build: (sample id, its volumes by modality, settings, entry location, record location).
BuildJob = tuple[str, Mapping[str, Path], PreprocessConfig, str, str]
#: Runs a function over jobs elsewhere, yielding once per finished job (see :meth:`PreprocessCache.build`).
MapJobs = Callable[[Callable[[BuildJob], None], Sequence[BuildJob]], Iterable[None]]


def build_job(job: BuildJob) -> None:
    """Preprocess one sample into its cache entry, then write its record (any process, any node)."""
    _build_entry(*job)


def _build_entry(
    sample: str, paths: Mapping[str, Path], config: PreprocessConfig, target: str, record: str
) -> None:
    try:
        array = preprocess_sample(paths, config)
    except Exception as error:  # MONAI/nibabel raise many kinds for bad files
        raise DataError(
            f"sample {sample}: preprocessing failed ({type(error).__name__}: {error}); run "
            "'fusionsearch data validate' on the manifest to list every bad file"
        ) from None
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    storage.write_bytes(target, data)  # the array, then its record: an entry without one is unfinished
    entry = EntryRecord(
        sample, tuple(array.shape), str(array.dtype), len(data), hashlib.sha256(data).hexdigest()
    )
    storage.write_json(record, dataclasses.asdict(entry))


class CachedDataset(Dataset):
    """Memory-mapped preprocessed samples: item ``i`` is ``(float32 (N, D, H, W) tensor, label)``.

    Trials on one node share the pages of the memory-mapped files through the OS page cache
    instead of holding a copy each.
    """

    def __init__(self, arrays: list[np.ndarray], labels: list[int], ids: list[str]) -> None:
        self.arrays = arrays
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = ids

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.arrays[index].astype(np.float32)), self.labels[index]
