"""A fold's samples from the preprocessing cache, and batches of them on the training device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from fusionsearch.data.cache import CachedDataset, PreprocessCache, read_index
from fusionsearch.data.splits import make_folds, validation_halves
from fusionsearch.errors import UserError
from fusionsearch.model.device import DevicePolicy
from fusionsearch.settings import DataConfig


@dataclass(frozen=True)
class FoldData:
    """The samples of one fold's parts, memory-mapped from the cache (``None``: not opened).

    ``val_select``: which validation samples form the selection half (``None``: all of them;
    :func:`~fusionsearch.data.splits.validation_halves`).
    """

    modalities: tuple[str, ...]
    train: CachedDataset | None = None
    val: CachedDataset | None = None
    test: CachedDataset | None = None
    val_select: np.ndarray | None = None

    def single(self, modality: str) -> FoldData:
        """The same samples with one modality's channel only (a unimodal baseline's input)."""
        if modality not in self.modalities:
            raise UserError(f"modality {modality!r} is not in the data: choose one of {self.modalities}")
        c = self.modalities.index(modality)
        parts = {
            name: CachedDataset([a[c : c + 1] for a in part.arrays], part.labels.tolist(), part.ids)
            for name in ("train", "val", "test")
            if (part := getattr(self, name)) is not None
        }
        return FoldData(modalities=(modality,), val_select=self.val_select, **parts)


def load_fold(config: DataConfig, fold: int, parts: tuple[str, ...] = ("train", "val")) -> FoldData:
    """Open ``parts`` of fold ``fold`` from the preprocessing cache (which must be built already).

    Selection and training read the training and validation parts only; the test part is
    opened once, after selection (:mod:`fusionsearch.evaluation`).
    """
    table = read_index(config.index)
    index = table.to_pydict()
    rows = make_folds(index["label"], index["subject_id"], config.folds, config.split_seed, config.layout)[
        fold
    ]
    cache = PreprocessCache(config.cache, config.preprocess)
    columns = ("key", "label", "sample_id")
    opened = {p: cache.open_keys(*([index[c][r] for r in getattr(rows, p)] for c in columns)) for p in parts}
    select = None
    if "val" in parts:
        labels, subjects = ([index[c][r] for r in rows.val] for c in ("label", "subject_id"))
        select = validation_halves(labels, subjects, config.split_seed)
    modalities = tuple(json.loads(table.schema.metadata[b"modalities"]))
    return FoldData(modalities=modalities, val_select=select, **opened)


def development_rows(
    config: DataConfig, labels: list[int], subjects: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the development samples (every fold's training and validation parts) and of
    the rest, the samples no fold ever trained or selected on (the reserved layout's part 0;
    none with the rotating layout, where every sample is some fold's validation sample)."""
    folds = make_folds(labels, subjects, config.folds, config.split_seed, config.layout)
    development = np.unique(np.concatenate([np.concatenate([f.train, f.val]) for f in folds]))
    return development, np.setdiff1d(np.arange(len(labels)), development)


def load_development(config: DataConfig) -> FoldData:
    """The development samples as ``train`` and the samples outside them as ``test`` (empty with
    the rotating layout), from the preprocessing cache; ``val`` is empty: a final model trains a
    fixed number of epochs and selects nothing."""
    table = read_index(config.index)
    index = table.to_pydict()
    development, held_out = development_rows(config, index["label"], index["subject_id"])
    cache = PreprocessCache(config.cache, config.preprocess)
    columns = ("key", "label", "sample_id")
    train, test = (
        cache.open_keys(*([index[c][r] for r in rows] for c in columns)) for rows in (development, held_out)
    )
    modalities = tuple(json.loads(table.schema.metadata[b"modalities"]))
    return FoldData(modalities=modalities, train=train, val=CachedDataset([], [], []), test=test)


class Batches:
    """One part's samples in batches on the device, prepared once per trial.

    On CUDA, when the part fits in a quarter of the free GPU memory, it is copied there once
    (float16, as cached) and every batch is gathered on the device: no host work and no copies
    per step. Otherwise batches are stacked from the memory-mapped cache by a background
    thread (into pinned memory on CUDA, copied without blocking) while the previous step
    runs, so loading overlaps compute.
    """

    def __init__(self, data: CachedDataset, policy: DevicePolicy, batch_size: int) -> None:
        self.data, self.policy, self.batch_size = data, policy, batch_size
        self.labels = data.labels.to(policy.device)
        self.resident: torch.Tensor | None = None
        if policy.is_cuda and len(data):
            size = sum(a.nbytes for a in data.arrays)
            if size < torch.cuda.mem_get_info(policy.device)[0] / 4:
                self.resident = torch.from_numpy(np.stack(data.arrays)).to(policy.device)

    def __len__(self) -> int:
        return len(self.data)

    def __call__(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, labels)`` on the device, ``images`` float32 ``(B, N, D, H, W)``, in ``order``."""
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.resident is not None:
            for chunk in chunks:
                index = torch.as_tensor(chunk, device=self.policy.device)
                images = self.resident.index_select(0, index).float()
                yield images.contiguous(memory_format=self.policy.memory_format), self.labels[index]
            return
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._stack, chunks[0]) if chunks else None
            for k, chunk in enumerate(chunks):
                images = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(self._stack, chunks[k + 1])
                yield (
                    self.policy.batch(images),
                    self.labels[torch.as_tensor(chunk, device=self.policy.device)],
                )

    def _stack(self, chunk: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(np.stack([self.data.arrays[i] for i in chunk]).astype(np.float32))
        return images.pin_memory() if self.policy.is_cuda else images
