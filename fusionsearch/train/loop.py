"""Training a candidate: a plain loop with a report callback (the Ray trainable wraps it)."""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from fusionsearch.cache import CachedDataset, PreprocessCache, read_index
from fusionsearch.checkpoint import TRAINING_FILE, load_state_dict, read_meta, save_checkpoint
from fusionsearch.config import to_dict
from fusionsearch.device import DevicePolicy
from fusionsearch.errors import UserError
from fusionsearch.mask import FusionMask
from fusionsearch.network import FusionNet
from fusionsearch.settings import CandidateConfig, DataConfig
from fusionsearch.splits import make_folds
from fusionsearch.warm_start import warm_start

log = logging.getLogger(__name__)

#: ``report(metrics, checkpoint_dir)``: called after every epoch and once at the end. The
#: directory exists only during the call; a Ray trainable hands it to ``tune.report``.
ReportFn = Callable[[dict[str, Any], Path | None], None]


def make_optimizer(
    model: nn.Module, policy: DevicePolicy, lr: float, weight_decay: float = 1e-2
) -> torch.optim.Optimizer:
    """AdamW; the fused CUDA kernel on GPUs."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=policy.is_cuda)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    policy: DevicePolicy,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """One forward/backward/update on a batch already on the device; returns the loss tensor.

    The loss stays on the device so the caller decides when to synchronise.
    """
    with policy.autocast():
        loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass(frozen=True)
class FoldData:
    """The samples of one fold's parts, memory-mapped from the cache (``None``: not opened)."""

    modalities: tuple[str, ...]
    train: CachedDataset | None = None
    val: CachedDataset | None = None
    test: CachedDataset | None = None

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
        return FoldData(modalities=(modality,), **parts)


def load_fold(config: DataConfig, fold: int, parts: tuple[str, ...] = ("train", "val")) -> FoldData:
    """Open ``parts`` of fold ``fold`` from the preprocessing cache (which must be built already).

    Selection and training read the training and validation parts only; the test part is
    opened once, after selection (:mod:`fusionsearch.evaluation`).
    """
    table = read_index(config.index)
    index = table.to_pydict()
    rows = make_folds(index["label"], index["subject_id"], config.folds, config.split_seed)[fold]
    cache = PreprocessCache(config.cache, config.preprocess)
    columns = ("key", "label", "sample_id")
    opened = {p: cache.open_keys(*([index[c][r] for r in getattr(rows, p)] for c in columns)) for p in parts}
    return FoldData(modalities=tuple(json.loads(table.schema.metadata[b"modalities"])), **opened)


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


@torch.inference_mode()
def predict_logits(model: nn.Module, batches: Batches) -> torch.Tensor:
    """Logits (on the CPU, float32) of every sample of ``batches``, in order."""
    model.eval()
    logits = []
    for images, _ in batches(np.arange(len(batches))):
        with batches.policy.autocast():
            logits.append(model(images).float())
    return torch.cat(logits).cpu()


def evaluate(model: nn.Module, batches: Batches) -> dict[str, Any]:
    """Validation loss (mean cross-entropy), accuracy and AUC."""
    logits = predict_logits(model, batches)
    labels = batches.data.labels
    metrics = {
        "val_loss": nn.functional.cross_entropy(logits, labels).item(),
        "val_accuracy": (logits.argmax(1) == labels).float().mean().item(),
        "val_auc": float("nan"),
    }
    if len(np.unique(labels)) > 1:
        probabilities = logits.softmax(dim=1).numpy()
        scores = probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities
        metrics["val_auc"] = float(roc_auc_score(labels.numpy(), scores, multi_class="ovr"))
    return metrics


def candidate_seed(candidate: CandidateConfig) -> int:
    """A seed per (run seed, mask), so candidates differ but reruns repeat."""
    return candidate.settings.train.seed * 1_000_003 + int(candidate.mask, 2)


def fit(
    candidate: CandidateConfig,
    report: ReportFn,
    *,
    resume: Path | None = None,
    parent: Path | None = None,
    data: FoldData | None = None,
    policy: DevicePolicy | None = None,
) -> dict[str, Any]:
    """Train one candidate; return its final metrics (those of its best epoch).

    Starts from ``resume`` (this candidate's own checkpoint: a retried trial) if given, else
    warm-starts from ``parent`` (the parent candidate's final checkpoint), else from scratch.
    Epoch 0 is the model before any update, so a warm-started child's epoch-0 validation loss
    is its parent's. After every epoch ``report`` gets the epoch's metrics and a checkpoint
    that resumes training; at the end it gets the best epoch's metrics and weights. Given its
    own final checkpoint as ``resume``, it reports that result again without training.
    """
    resumed = read_meta(resume) if resume is not None else None
    if resumed and resumed["metrics"].get("final"):
        # Finished before a driver crash (Tune restored the trial from its final checkpoint):
        # report the same result again instead of training more.
        report(resumed["metrics"], resume)
        return resumed["metrics"]
    started = time.time()
    settings, train = candidate.settings, candidate.settings.train
    policy = policy or DevicePolicy.select()
    data = data or load_fold(settings.data, candidate.fold)
    if candidate.modality is not None:
        data = data.single(candidate.modality)
    model_config = replace(settings.model, modalities=len(data.modalities))
    torch.manual_seed(candidate_seed(candidate))
    model = FusionNet(model_config, candidate.mask)
    meta = {name: getattr(candidate, name) for name in ("parent", "parent_mask", "fold", "role", "modality")}
    meta["settings"] = to_dict(settings)
    # The loop's progress: the last finished epoch and the metrics of the best epoch so far.
    state: dict[str, Any] = {"epoch": 0, "best": {"val_loss": float("inf")}}
    training = None
    if resume is not None:
        model.load_state_dict(load_state_dict(resume), strict=True)
        training = load_state_dict(resume, TRAINING_FILE)
        state = resumed["loop"]
        log.info("candidate %s resumes after epoch %d", candidate.mask, state["epoch"])
    elif parent is not None:
        parent_mask = FusionMask.parse(read_meta(parent)["mask"])
        if not parent_mask.is_subset(FusionMask.parse(candidate.mask)):
            raise UserError(f"cannot warm-start {candidate.mask} from {parent_mask}: not a subset")
        warm_start(model, load_state_dict(parent))
    model = policy.module(model)
    train_batches, val = (
        Batches(data.train, policy, train.batch_size),
        Batches(data.val, policy, train.batch_size),
    )
    optimizer = make_optimizer(model, policy, train.lr, train.weight_decay)
    best_weights = None
    if training is not None:
        optimizer.load_state_dict(training["optimizer"])
        best_weights = training["best_weights"]

    def checkpoint_and_report(metrics: dict[str, Any], weights_model: FusionNet, extra: dict | None) -> None:
        with tempfile.TemporaryDirectory(prefix="fusionsearch-ckpt-") as directory:
            save_checkpoint(directory, weights_model, meta | {"metrics": metrics, "loop": state}, extra)
            report(metrics, Path(directory))

    def improve(metrics: dict[str, Any]) -> None:
        nonlocal best_weights
        if metrics["val_loss"] < state["best"]["val_loss"]:
            state["best"] = metrics
            best_weights = copy.deepcopy(model.state_dict())

    if resume is None:
        initial = {"epoch": 0, **evaluate(model, val)}
        improve(initial)
        report(initial, None)
    for epoch in range(state["epoch"] + 1, train.epochs + 1):
        model.train()
        order = np.random.default_rng([candidate_seed(candidate), epoch]).permutation(len(data.train))
        tick = time.perf_counter()
        losses = [train_step(model, optimizer, policy, x, y) for x, y in train_batches(order)]
        metrics = {
            "epoch": epoch,
            "train_loss": torch.stack(losses).mean().item(),
            "samples_per_second": len(order) / (time.perf_counter() - tick),
            **evaluate(model, val),
        }
        improve(metrics)
        state["epoch"] = epoch
        if epoch - state["best"]["epoch"] >= train.patience or epoch == train.epochs:
            break
        checkpoint_and_report(
            metrics, model, {"optimizer": optimizer.state_dict(), "best_weights": best_weights}
        )
    model.load_state_dict(best_weights)
    final = {
        **state["best"],  # val_loss, val_accuracy, val_auc of the best epoch
        "best_epoch": state["best"]["epoch"],
        "epoch": state["epoch"],
        "epochs_trained": state["epoch"],
        "train_seconds": time.time() - started,
        "started_at": started,
        "finished_at": time.time(),
        "final": True,
    }
    checkpoint_and_report(final, model, None)
    return final


@dataclass(frozen=True)
class StepRate:
    """Timing of the bare model step on random inputs."""

    step_seconds: float
    volumes_per_second: float
    final_loss: float


def measure_step_rate(
    model: nn.Module,
    policy: DevicePolicy,
    *,
    size: int,
    batch: int,
    steps: int,
    warmup: int = 2,
    lr: float = 1e-3,
    seed: int = 0,
) -> StepRate:
    """Mean time of ``steps`` training steps, after ``warmup`` steps, on fixed random data.

    The data already sit on the device, so this is the model-only rate that a training loop
    (with its data loading) is compared against.
    """
    generator = torch.Generator().manual_seed(seed)
    channels = len(model.streams)
    images = policy.batch(torch.randn(batch, channels, size, size, size, generator=generator))
    labels = torch.randint(0, model.config.num_classes, (batch,), generator=generator).to(policy.device)
    model = policy.module(model).train()
    optimizer = make_optimizer(model, policy, lr)
    for _ in range(warmup):
        train_step(model, optimizer, policy, images, labels)
    policy.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = train_step(model, optimizer, policy, images, labels)
    policy.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    return StepRate(step_seconds=elapsed, volumes_per_second=batch / elapsed, final_loss=float(loss))
