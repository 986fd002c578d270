"""The preprocessing cache: each sample is preprocessed once and memory-mapped by every trial.

An entry is keyed by the sample's files (resolved path, size, modification time) and the
preprocessing settings, so changing a setting or replacing a file rebuilds exactly the
entries it affects. Entries are ``.npy`` arrays written to a temporary name and renamed into
place, so a reader never sees half an entry and concurrent builders (trials, rounds, whole
searches, other nodes on shared storage) are safe: the last rename wins with identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionsearch.config import to_dict
from fusionsearch.errors import DataError
from fusionsearch.manifest import Manifest
from fusionsearch.preprocess import PreprocessConfig, preprocess_sample

log = logging.getLogger(__name__)

#: Bump when the meaning of an entry changes, so old entries are not reused.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class CacheStats:
    """What one :meth:`PreprocessCache.build` did."""

    built: int
    reused: int


class PreprocessCache:
    """Preprocessed samples under ``root``, one ``.npy`` file per (files, settings) key."""

    def __init__(self, root: str | os.PathLike, config: PreprocessConfig) -> None:
        self.root = Path(root)
        self.config = config

    def key(self, paths: Mapping[str, Path]) -> str:
        files = []
        for modality, path in paths.items():
            stat = Path(path).stat()
            files.append([modality, str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
        blob = json.dumps({"format": CACHE_FORMAT, "settings": to_dict(self.config), "files": files})
        return hashlib.sha256(blob.encode()).hexdigest()

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def entries(self, manifest: Manifest) -> list[Path]:
        """The entry path of every sample of ``manifest``, in row order."""
        return [self.entry(self.key(manifest.paths(row))) for row in range(len(manifest))]

    def build(self, manifest: Manifest, workers: int | None = None) -> CacheStats:
        """Preprocess every sample of ``manifest`` that has no entry yet.

        Args:
            workers: threads to preprocess with (default: one per CPU). Threads, not processes:
                decompression, resampling and numpy release the GIL, and a process pool pays
                seconds of imports per worker (measured slower for small datasets).
        """
        targets = self.entries(manifest)
        missing = [(row, t) for row, t in enumerate(targets) if not t.exists()]
        workers = min(workers or os.cpu_count() or 1, max(len(missing), 1))
        log.info("preprocessing %d of %d samples with %d worker(s)", len(missing), len(targets), workers)
        ids = manifest.sample_ids
        jobs = [(ids[row], manifest.paths(row), self.config, t) for row, t in missing]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda job: _build_entry(*job), jobs))
        return CacheStats(built=len(missing), reused=len(targets) - len(missing))

    def open(self, manifest: Manifest) -> CachedDataset:
        """Memory-map the entries of ``manifest`` (built beforehand with :meth:`build`)."""
        entries = self.entries(manifest)
        absent = [s for s, e in zip(manifest.sample_ids, entries, strict=True) if not e.exists()]
        if absent:
            raise DataError(
                f"the preprocessing cache {self.root} has no entry for {len(absent)} sample(s) "
                f"(first: {absent[0]}); build it first with PreprocessCache.build or "
                "'fusionsearch data cache'"
            )
        return CachedDataset([np.load(e, mmap_mode="r") for e in entries], manifest.labels)


def _build_entry(sample: str, paths: Mapping[str, Path], config: PreprocessConfig, target: Path) -> None:
    try:
        array = preprocess_sample(paths, config)
    except Exception as error:  # MONAI/nibabel raise many kinds for bad files
        raise DataError(
            f"sample {sample}: preprocessing failed ({type(error).__name__}: {error}); run "
            "'fusionsearch data validate' on the manifest to list every bad file"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.stem}.{uuid.uuid4().hex}.tmp")
    with temporary.open("wb") as f:
        np.save(f, array)
    os.replace(temporary, target)


class CachedDataset(Dataset):
    """Memory-mapped preprocessed samples: item ``i`` is ``(float32 (N, D, H, W) tensor, label)``.

    Trials on one node share the pages of the memory-mapped files through the OS page cache
    instead of holding a copy each.
    """

    def __init__(self, arrays: list[np.ndarray], labels: list[int]) -> None:
        self.arrays = arrays
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.arrays[index].astype(np.float32)), self.labels[index]
