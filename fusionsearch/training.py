"""Training a candidate: a plain loop with a report callback (the Ray trainable wraps it)."""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from collections.abc import Callable
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


def _batches(data: CachedDataset, batch_size: int, order: np.ndarray, policy: DevicePolicy):
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        images = torch.from_numpy(np.stack([data.arrays[i] for i in index]).astype(np.float32))
        yield policy.batch(images), data.labels[index].to(policy.device, non_blocking=True)


@torch.inference_mode()
def evaluate(model: nn.Module, data: CachedDataset, policy: DevicePolicy, batch_size: int) -> dict[str, Any]:
    """Validation loss (mean cross-entropy), accuracy and AUC."""
    model.eval()
    logits = []
    for images, _ in _batches(data, batch_size, np.arange(len(data)), policy):
        with policy.autocast():
            logits.append(model(images).float())
    logits = torch.cat(logits).cpu()
    labels = data.labels
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
        initial = {"epoch": 0, **evaluate(model, data.val, policy, train.batch_size)}
        improve(initial)
        report(initial, None)
    for epoch in range(state["epoch"] + 1, train.epochs + 1):
        model.train()
        order = np.random.default_rng([candidate_seed(candidate), epoch]).permutation(len(data.train))
        tick = time.perf_counter()
        losses = [
            train_step(model, optimizer, policy, x, y)
            for x, y in _batches(data.train, train.batch_size, order, policy)
        ]
        metrics = {
            "epoch": epoch,
            "train_loss": torch.stack(losses).mean().item(),
            "samples_per_second": len(order) / (time.perf_counter() - tick),
            **evaluate(model, data.val, policy, train.batch_size),
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
