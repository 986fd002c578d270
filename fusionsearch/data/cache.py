"""The preprocessing cache: each sample is preprocessed once and memory-mapped by every trial.

An entry is keyed by the sample's files (resolved path, size, modification time) and the
preprocessing settings, so changing a setting or replacing a file rebuilds exactly the
entries it affects. Entries are ``.npy`` arrays written to a temporary name and renamed into
place, so a reader never sees half an entry and concurrent builders (trials, rounds, whole
searches, other nodes on shared storage) are safe: the last rename wins with identical bytes.

The cache's root is a local or shared folder, or a URI (``s3://``, ``gs://``: any pyarrow
filesystem). Trials never read the manifest or the images: the driver writes an *index* (one
row per sample: id, subject, label, entry key) into the cache, and a trial opens its fold from
the index. On a URI root, a node copies the entries it needs once into a node-local mirror
(``$FUSIONSEARCH_MIRROR``, default ``~/.cache/fusionsearch/mirror``) and memory-maps them there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
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

#: Bump when the meaning of an entry changes, so old entries are not reused.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class CacheStats:
    """What one :meth:`PreprocessCache.build` did."""

    built: int
    reused: int


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

    def keys(self, manifest: Manifest) -> list[str]:
        """The entry key of every sample of ``manifest``, in row order."""
        return [self.key(manifest.paths(row)) for row in range(len(manifest))]

    def build(self, manifest: Manifest, workers: int | None = None) -> CacheStats:
        """Preprocess every sample of ``manifest`` that has no entry yet.

        Args:
            workers: threads to preprocess with (default: one per CPU). Threads, not processes:
                decompression, resampling and numpy release the GIL, and a process pool pays
                seconds of imports per worker (measured slower for small datasets).
        """
        targets = [self.entry(k) for k in self.keys(manifest)]
        missing = [(row, t) for row, t in enumerate(targets) if not storage.exists(t)]
        workers = min(workers or os.cpu_count() or 1, max(len(missing), 1))
        log.info("preprocessing %d of %d samples with %d worker(s)", len(missing), len(targets), workers)
        ids = manifest.sample_ids
        jobs = [(ids[row], manifest.paths(row), self.config, t) for row, t in missing]
        progress = Progress("preprocessing", len(jobs))
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(lambda job: _build_entry(*job), jobs):
                progress.step()
        progress.close()
        return CacheStats(built=len(missing), reused=len(targets) - len(missing))

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
        """Memory-map the entries ``keys`` (samples ``ids`` with ``labels``)."""
        absent = [s for s, k in zip(ids, keys, strict=True) if not storage.exists(self.entry(k))]
        if absent:
            raise DataError(
                f"the preprocessing cache {self.root} has no entry for {len(absent)} sample(s) "
                f"(first: {absent[0]}); build it first with PreprocessCache.build or "
                "'fusionsearch data cache'"
            )
        return CachedDataset([np.load(self._local(k), mmap_mode="r") for k in keys], list(labels), list(ids))

    def _local(self, key: str) -> Path:
        """A local file holding entry ``key``: the entry itself, or its copy in the node's mirror."""
        if not storage.is_uri(self.root):
            return Path(self.entry(key))
        mirror = Path(os.environ.get("FUSIONSEARCH_MIRROR", "~/.cache/fusionsearch/mirror")).expanduser()
        local = mirror / key[:2] / f"{key}.npy"
        if not local.exists():  # entries are immutable (named by content), so a copy never goes stale
            local.parent.mkdir(parents=True, exist_ok=True)
            temporary = local.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
            temporary.write_bytes(storage.read_bytes(self.entry(key)))
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
) -> DataConfig:
    """Build ``manifest``'s cache under ``root`` and return the :class:`DataConfig` trials open it with."""
    cache = PreprocessCache(root, preprocess)
    stats = cache.build(manifest, workers=workers)
    log.info("preprocessing cache %s: %d built, %d reused", cache.root, stats.built, stats.reused)
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


def _build_entry(sample: str, paths: Mapping[str, Path], config: PreprocessConfig, target: str) -> None:
    try:
        array = preprocess_sample(paths, config)
    except Exception as error:  # MONAI/nibabel raise many kinds for bad files
        raise DataError(
            f"sample {sample}: preprocessing failed ({type(error).__name__}: {error}); run "
            "'fusionsearch data validate' on the manifest to list every bad file"
        ) from None
    buffer = io.BytesIO()
    np.save(buffer, array)
    storage.write_bytes(target, buffer.getvalue())


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
