"""Training a candidate: a plain loop with a report callback (the Ray trainable wraps it)."""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionsearch.errors import UserError
from fusionsearch.mask import FusionMask
from fusionsearch.model.checkpoint import (
    TRAINING_FILE,
    load_state_dict,
    read_meta,
    save_checkpoint,
    update_metrics,
)
from fusionsearch.model.device import DevicePolicy
from fusionsearch.model.network import build_network
from fusionsearch.model.pretrained import load_streams, stream_state_dict
from fusionsearch.model.warm_start import warm_start
from fusionsearch.settings import TrainConfig, to_dict
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.folds import Batches, FoldData, load_fold
from fusionsearch.train.inference import logit_metrics, predict_logits, sample_losses
from fusionsearch.train.parallel import Shard
from fusionsearch.train.recipe import Augmentation, augment, augmentation, class_weights, learning_rate

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
    class_weights: torch.Tensor | None = None,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """One forward/backward/update on a batch already on the device; returns the loss tensor.

    The loss stays on the device so the caller decides when to synchronise. ``scale`` multiplies
    it: a data-parallel worker's share of the batch (:meth:`Shard.split`).
    """
    with policy.autocast():
        loss = nn.functional.cross_entropy(model(images), labels, weight=class_weights) * scale
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def candidate_seed(candidate: CandidateConfig) -> int:
    """The seed of a candidate's new weights: per (run seed, mask, replicate), so candidates and
    replicates differ but reruns repeat."""
    seed = candidate.settings.train.seed * 1_000_003 + int(candidate.mask, 2)
    return seed if not candidate.trial.repeat else _seed([seed], candidate.trial.repeat)


def batch_seed(candidate: CandidateConfig, epoch: int, batch: int | None = None) -> int:
    """The seed of an epoch's data order (``batch=None``) and of each batch's augmentation.

    Common random numbers: it depends on the run seed, fold, round and replicate, not on the mask,
    so a round's children and its control see the same batches in the same order with the same
    augmentation draws, and their paired difference measures the fusion point. Nor on the
    extension: a round tried again with twice the budget replays its first attempt's epochs,
    then continues.
    """
    trial = candidate.trial
    key = [candidate.settings.train.seed, trial.fold, trial.round, 0, epoch]  # 0: where the extension was
    return _seed(key + ([] if batch is None else [batch]), trial.repeat)


def _seed(entropy: list[int], repeat: int) -> int:
    """A 32-bit seed from ``entropy``; replicates beyond the first draw from their own spawned stream."""
    spawn = (repeat,) if repeat else ()
    return int(np.random.SeedSequence(entropy, spawn_key=spawn).generate_state(1)[0])


@dataclass
class LoopState:
    """The loop's progress: the last finished epoch, the best epoch's metrics, where the time went.

    ``step_seconds`` is the time inside training steps, ``eval_seconds`` in validation,
    ``checkpoint_seconds`` in writing and reporting checkpoints, ``setup_seconds`` in building the
    network, its optimizer and its batches (summed over the trial and its resumptions).
    ``initial_losses`` and ``best_losses`` are the per-sample validation losses of epoch 0 and
    of the best epoch: :attr:`gain_se` is the standard error of their paired difference. The best
    epoch is the one with the lowest ``val_loss``, the mean loss of the validation part's
    selection half.
    """

    epoch: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"val_loss": float("inf")})
    initial_losses: list[float] = field(default_factory=list)  # per validation sample, epoch 0
    best_losses: list[float] = field(default_factory=list)  # per validation sample, the best epoch
    step_seconds: float = 0.0
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    setup_seconds: float = 0.0

    @property
    def timings(self) -> dict[str, float]:
        return {
            "step_seconds": self.step_seconds,
            "eval_seconds": self.eval_seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
            "setup_seconds": self.setup_seconds,
        }

    def improve(self, metrics: dict[str, Any]) -> bool:
        """Record ``metrics`` if they are the best so far; whether they were."""
        if metrics["val_loss"] < self.best["val_loss"]:
            self.best = metrics
            return True
        return False

    @property
    def gain_se(self) -> float:
        """Standard error of the mean per-sample loss decrease from epoch 0 to the best epoch.

        0 when the best epoch is epoch 0 (no gain) or fewer than two samples were validated.
        """
        n = len(self.initial_losses)
        if n < 2 or len(self.best_losses) != n or self.best.get("epoch", 0) == 0:
            return 0.0
        gains = [a - b for a, b in zip(self.initial_losses, self.best_losses, strict=True)]
        return statistics.stdev(gains) / math.sqrt(n)

    def validates(self, train: TrainConfig) -> bool:
        """Whether the epoch just trained is validated: every ``eval_every``-th, and where the loop stops."""
        return self.epoch % train.eval_every == 0 or self.done(train)

    def left(self, train: TrainConfig) -> int:
        """Epochs the loop will surely still train: the rest of its budget, or of its patience."""
        since_best = self.epoch - self.best.get("epoch", 0)
        return max(0, min(train.epochs - self.epoch, train.patience - since_best))

    def done(self, train: TrainConfig) -> bool:
        """Whether the loop stops here: the last epoch, or ``patience`` epochs without improving."""
        return self.epoch >= train.epochs or self.epoch - self.best.get("epoch", 0) >= train.patience


@dataclass
class _Run:
    """A candidate's model, optimizer, batches and state while it trains."""

    candidate: CandidateConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: Batches
    val: Batches
    state: LoopState
    best_weights: dict[str, torch.Tensor] | None
    meta: dict[str, Any]
    augmentation: Augmentation | None
    class_weights: torch.Tensor | None
    select: np.ndarray  # which validation samples form the selection half
    shard: Shard  # this worker among the candidate's data-parallel workers
    step_model: nn.Module  # the model the training steps run: ``model``, or DDP across workers
    last_losses: list[float] = field(default_factory=list)  # per validation sample, the last evaluation


def fit(
    candidate: CandidateConfig,
    report: ReportFn,
    *,
    resume: Path | None = None,
    parent: Path | None = None,
    data: FoldData | None = None,
    policy: DevicePolicy | None = None,
    pause: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train one candidate; return its final metrics (those of its best epoch).

    Starts from ``resume`` (this candidate's own checkpoint: a retried trial) if given, else
    warm-starts from ``parent`` (the parent candidate's final checkpoint), else from scratch.
    Epoch 0 is the model before any update, so a warm-started child's epoch-0 validation loss
    is its parent's. After every validated epoch (every ``eval_every``-th, and the last),
    ``report`` gets the epoch's metrics, with a checkpoint that resumes training once
    ``checkpoint_interval`` seconds have passed since the last one; at the end it gets the best
    epoch's metrics and weights (``final: True``). Given its own final checkpoint as ``resume``,
    it reports that result again without training. Every epoch's metrics say how many more epochs
    it will surely train (``epochs_left``) and how long an epoch took since the last report
    (``epoch_seconds``, training and validation). If ``pause`` (asked after every validated epoch but the
    last; data-parallel workers all ask together) says so, it reports that epoch with a checkpoint
    and returns its metrics (no ``final``): resumed from that checkpoint, on any number of workers,
    it trains on as if it had not stopped.
    """
    resumed = read_meta(resume) if resume is not None else None
    if resumed and resumed["metrics"].get("final"):
        # Finished before a driver crash (Tune restored the trial from its final checkpoint):
        # report the same result again instead of training more.
        report(resumed["metrics"], resume)
        return resumed["metrics"]
    started, tick = time.time(), time.perf_counter()
    train = candidate.settings.train
    run = _prepare(candidate, resume, resumed, parent, data, policy or DevicePolicy.select())
    run.state.setup_seconds += time.perf_counter() - tick
    if resume is None:
        initial = {"epoch": 0, **_evaluate(run)}
        run.state.initial_losses = run.last_losses
        _keep_if_best(run, initial)
        report(initial, None)
    last_checkpoint = last_report = time.monotonic()
    reported_epoch = run.state.epoch
    while not run.state.done(train):
        metrics = _train_epoch(run, run.state.epoch + 1)
        run.state.epoch = metrics["epoch"]
        if not run.state.validates(train):
            continue  # not validated: nothing to report (Tune's metric is the validation loss)
        metrics |= _evaluate(run)
        _keep_if_best(run, metrics)
        now, epochs = time.monotonic(), run.state.epoch - reported_epoch
        seconds = (now - last_report) / epochs  # since the last report: training and validation
        metrics = metrics | {"epochs_left": run.state.left(train), "epoch_seconds": seconds}
        last_report, reported_epoch = now, run.state.epoch
        pausing = pause is not None and not run.state.done(train) and pause()
        if pausing or time.monotonic() - last_checkpoint >= train.checkpoint_interval:
            extra = {"optimizer": run.optimizer.state_dict(), "best_weights": run.best_weights}
            _checkpoint_and_report(run, metrics, report, extra)
            last_checkpoint = time.monotonic()
        else:
            report(metrics, None)
        if pausing:
            return metrics  # resumable from the checkpoint just reported
    run.model.load_state_dict(run.best_weights)
    best = run.state.best
    test_half = ~run.select
    final = {
        **best,  # val_loss (selection half), val_loss_all, val_accuracy, val_auc of the best epoch
        "best_epoch": best["epoch"],
        "val_loss_gain_se": run.state.gain_se,
        "val_loss_start": _mean(run.state.initial_losses, run.select),
        "holdout_losses": np.asarray(run.state.best_losses)[test_half].tolist(),
        "start_losses": np.asarray(run.state.initial_losses)[test_half].tolist(),
        "chance_losses": _chance_losses(run)[test_half].tolist(),
        "epoch": run.state.epoch,
        "epochs_trained": run.state.epoch,
        "started_at": started,
        "final": True,
    }
    _checkpoint_and_report(run, final, report, None, final=True, started=started)
    return final


def train_epochs(
    candidate: CandidateConfig,
    epochs: int,
    data: FoldData,
    out: Path,
    *,
    parent: Path | None = None,
    policy: DevicePolicy | None = None,
    meta: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``candidate`` on ``data.train`` for exactly ``epochs`` epochs, validating and selecting
    nothing, and save its last weights as a checkpoint in ``out``; return its metrics.

    A stage of a final model (:mod:`fusionsearch.report.final`): warm-started from ``parent`` (a
    checkpoint) or from scratch, with the search's recipe, learning-rate schedule and seeds, as
    :func:`fit` would train it, minus the validation. ``meta`` is added to the checkpoint's
    metadata; ``on_epoch`` gets each epoch's metrics.
    """
    started = time.time()
    run = _prepare(candidate, None, None, parent, data, policy or DevicePolicy.select())
    metrics: dict[str, Any] = {"epoch": 0}
    for epoch in range(1, epochs + 1):
        metrics = _train_epoch(run, epoch)
        if on_epoch is not None:
            on_epoch(metrics)
    metrics |= {"epochs_trained": epochs, "train_seconds": time.time() - started, "final": True}
    save_checkpoint(out, run.model, run.meta | (meta or {}) | {"metrics": metrics})
    return metrics


def _prepare(
    candidate: CandidateConfig,
    resume: Path | None,
    resumed: dict[str, Any] | None,
    parent: Path | None,
    data: FoldData | None,
    policy: DevicePolicy,
) -> _Run:
    """Build the model (resumed, warm-started or fresh), its optimizer and its batches."""
    settings, train = candidate.settings, candidate.settings.train
    data = data or load_fold(settings.data, candidate.trial.fold)
    if candidate.trial.modality is not None:
        data = data.single(candidate.trial.modality)
    torch.manual_seed(candidate_seed(candidate))
    config = replace(settings.model, modalities=len(data.modalities))
    loaded = resume is not None or parent is not None  # every stream weight comes from a checkpoint
    model = build_network(config, candidate.mask, policy.device, streams_loaded=loaded)
    state, training = LoopState(), None
    if resume is not None:
        model.load_state_dict(load_state_dict(resume, mmap=True), strict=True)
        training = load_state_dict(resume, TRAINING_FILE)
        state = LoopState(**resumed["loop"])
        log.info("candidate %s resumes after epoch %d", candidate.mask, state.epoch)
    elif parent is not None:
        parent_mask = FusionMask.parse(read_meta(parent)["mask"])
        if not parent_mask.is_subset(FusionMask.parse(candidate.mask)):
            raise UserError(f"cannot warm-start {candidate.mask} from {parent_mask}: not a subset")
        warm_start(model, load_state_dict(parent, mmap=True))
    elif train.init_streams:
        load_streams(model.streams, stream_state_dict(train.init_streams), train.init_streams)
    shard = Shard.current()
    model = policy.module(shard.prepare(model, policy.device))
    optimizer = make_optimizer(model, policy, train.lr, train.weight_decay)
    best_weights = None
    if training is not None:
        optimizer.load_state_dict(training["optimizer"])
        best_weights = {k: v.to(policy.device) for k, v in training["best_weights"].items()}
    trial = candidate.trial
    meta = {
        "parent": candidate.parent,
        "parent_mask": trial.parent_mask,
        "fold": trial.fold,
        "role": trial.role,
        "modality": trial.modality,
        "settings": to_dict(settings),
    }
    shape = data.train.arrays[0].shape[1:] if len(data.train) else (1, 1, 1)
    weights = class_weights(train, data.train.labels.numpy(), settings.model.num_classes)
    return _Run(
        candidate,
        model,
        optimizer,
        Batches(data.train, policy, train.batch_size),
        Batches(data.val, policy, train.batch_size),
        state,
        best_weights,
        meta,
        augmentation(train, shape),
        None if weights is None else weights.to(policy.device),
        _selection_half(data),
        shard,
        shard.wrap(model, policy.device),
    )


def _selection_half(data: FoldData) -> np.ndarray:
    """The validation samples that choose the best epoch: the fold's selection half, or all of them
    when the part has fewer than 4 samples (or the data came without halves)."""
    n = len(data.val)
    if data.val_select is None or n < 4:
        return np.ones(n, dtype=bool)
    return np.asarray(data.val_select, dtype=bool)


def _chance_losses(run: _Run) -> np.ndarray:
    """Each validation sample's loss under a prediction of the training part's class frequencies."""
    classes = run.candidate.settings.model.num_classes
    counts = np.bincount(run.train.data.labels.numpy(), minlength=classes) + 1.0  # add-one: no log(0)
    return -np.log(counts / counts.sum())[run.val.data.labels.numpy()]


def _mean(losses: list[float], select: np.ndarray) -> float:
    return float(np.asarray(losses)[select].mean()) if len(losses) else math.nan


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One pass over the training part in this epoch's seeded order."""
    run.model.train()
    order = np.random.default_rng(batch_seed(run.candidate, epoch)).permutation(len(run.train))
    if (
        len(order) > 1
        and len(order) % run.train.batch_size == 1
        and run.candidate.settings.model.norm == "batch"
    ):
        # Batch norm cannot train on a last batch of one sample (torch raises): that sample sits
        # this epoch out, and each epoch's order leaves out another.
        order = order[:-1]
    policy = run.train.policy
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(run.candidate.settings.train, epoch)
    tick = time.perf_counter()
    losses = []
    for k, (x, y) in enumerate(run.train(order)):
        # The augmented batch is contiguous: lay it out for the device (without augmentation the
        # batch is laid out already, and this returns it as is). Every data-parallel worker
        # augments the whole batch with the same draws, then trains on its share.
        images = policy.batch(augment(run.augmentation, x, batch_seed(run.candidate, epoch, k)))
        images, labels, scale = run.shard.split(images, y, run.class_weights)
        losses.append(
            train_step(run.step_model, run.optimizer, policy, images, labels, run.class_weights, scale)
        )
    train_loss = run.shard.mean(torch.stack(losses)).mean().item()  # waits for the device: the steps are done
    seconds = time.perf_counter() - tick
    run.state.step_seconds += seconds
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "samples_per_second": len(order) / seconds,
    }


def _evaluate(run: _Run) -> dict[str, Any]:
    tick = time.perf_counter()
    logits = predict_logits(run.model, run.val)
    labels = run.val.data.labels
    losses = sample_losses(logits, labels)  # once: for the metrics and the paired error
    metrics = logit_metrics(logits, labels, losses)
    run.last_losses = losses.tolist()
    # The best epoch is chosen on the selection half; the test half judges the gain afterwards.
    metrics["val_loss_all"] = metrics["val_loss"]
    metrics["val_loss"] = _mean(run.last_losses, run.select)
    run.state.eval_seconds += time.perf_counter() - tick
    return metrics


def _keep_if_best(run: _Run, metrics: dict[str, Any]) -> None:
    """Keep the weights (on the device) if ``metrics`` are the best so far.

    The copy goes into the buffers of the previous best: no new allocation after the first.
    """
    if run.state.improve(metrics):
        if run.best_weights is None:
            run.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        else:
            for key, value in run.model.state_dict().items():
                run.best_weights[key].copy_(value)
        run.state.best_losses = run.last_losses


def _checkpoint_and_report(
    run: _Run,
    metrics: dict[str, Any],
    report: ReportFn,
    extra: dict | None,
    final: bool = False,
    started: float = 0.0,
) -> None:
    """Write a checkpoint and report ``metrics`` with it; the time it takes counts as checkpoint time.

    The final report also carries the trial's timings, ``train_seconds`` (its wall time, so far as
    this process saw it) and ``finished_at``, measured after the checkpoint is written.
    """
    tick = time.perf_counter()

    def timed() -> None:  # the final report's timings
        metrics.update(run.state.timings, train_seconds=time.time() - started, finished_at=time.time())

    if not run.shard.writes:  # another data-parallel worker: worker 0 writes the checkpoint
        if final:
            timed()
        report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="fusionsearch-ckpt-") as directory:
        loop = dataclasses.asdict(run.state)
        save_checkpoint(directory, run.model, run.meta | {"metrics": metrics, "loop": loop}, extra)
        if final:
            run.state.checkpoint_seconds += time.perf_counter() - tick
            timed()
            update_metrics(directory, metrics)
        report(metrics, Path(directory))
    if not final:
        run.state.checkpoint_seconds += time.perf_counter() - tick
