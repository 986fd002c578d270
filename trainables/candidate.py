"""The Ray Tune trainable: a thin wrapper around :func:`fusionsearch.train.loop.fit`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from fusionsearch.errors import UserError
from fusionsearch.model.checkpoint import META_FILE, CheckpointError, read_meta
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.loop import ReportFn, fit
from fusionsearch.tune.compat import quiet_storage_logs, trial_storage

log = logging.getLogger(__name__)

#: Set to 1 on nodes whose GPUs are logical (a test cluster): a trial given a GPU that CUDA cannot
#: see then trains on the CPU instead of failing.
CPU_FALLBACK = "FUSIONSEARCH_CPU_FALLBACK"

# Ray logs every persisted checkpoint at INFO level in the worker; the driver shows progress.
quiet_storage_logs()


def _report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    tune.report(metrics | {"node_id": ray.get_runtime_context().get_node_id(), "peak_rss_mb": _peak_rss_mb()},
                checkpoint=checkpoint)  # fmt: skip


def _reset_peak_rss() -> None:
    # The actor may have trained earlier trials (reuse_actors): start this trial's peak afresh.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """Peak resident memory of this trial's process since :func:`_reset_peak_rss`, in MiB.

    The cache is memory-mapped, so its pages count here but are shared with every trial on
    the node. Where /proc is missing, the process's lifetime peak (Linux reports KiB).
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_candidate(config: dict[str, Any], per_worker: dict[str, float] | None = None) -> None:
    """Train the candidate ``config`` describes (a :class:`CandidateConfig` as Ray's flat dict).

    A retried trial resumes from its own last checkpoint (``tune.get_checkpoint()``); otherwise
    the candidate warm-starts from ``parent``, a checkpoint location on the shared storage;
    otherwise it starts from scratch. Uses the GPU Ray assigned, else the CPU.

    A mistake that a retry would repeat (a :class:`UserError`: bad settings or data, a parent
    checkpoint that is missing or corrupt, a GPU that CUDA cannot see) is not retried: the trial
    ends with one report ``{"val_loss": nan, "failed": True, "error": message}``, which the
    searcher records as a failed candidate. Anything else (a lost node, an out-of-memory kill, a
    storage hiccup) raises, and Tune retries the trial from its last checkpoint.

    A trial the searcher gave several workers (``workers`` > 1) trains data-parallel on that
    many Ray Train workers, ``per_worker`` resources each (:mod:`trainables.data_parallel`).
    """
    _import_once_per_process()
    try:
        candidate = CandidateConfig.from_config(config)
        _reset_peak_rss()
        _check_gpu()
        if (
            torch.cuda.is_available()
        ):  # release an earlier trial's cached blocks: Batches sizes by free memory
            torch.cuda.empty_cache()
        if candidate.trial.workers > 1 or candidate.grants:
            from trainables.data_parallel import train_data_parallel

            per_worker = per_worker or {"cpu": 1.0, "gpu": 0.0}
            train_data_parallel(candidate, per_worker.get("gpu", 0), per_worker["cpu"])
            return
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        fit_from(candidate, own_checkpoint(), _report)
    except UserError as error:
        tune.report(failure(error, config.get("mask")))


def own_checkpoint() -> tune.Checkpoint | None:
    """The running trial's own checkpoint to resume from: the one Tune restored it with, unless the
    trial's folder in the storage holds a later one that is final.

    A trial that finished just before its driver was killed, after Tune's last save of its state,
    is restored without its final checkpoint; resumed from that checkpoint, :func:`fit` reports
    the result again instead of training again."""
    restored = tune.get_checkpoint()
    folder, filesystem = trial_storage()
    final = latest_final(folder, filesystem)
    if final is None or (restored is not None and restored.path == final):
        return restored
    log.warning("trial restored without its final checkpoint %s: reporting that one again", final)
    return tune.Checkpoint(final, filesystem=filesystem)


def latest_final(folder: str, filesystem: pafs.FileSystem) -> str | None:
    """The newest of Tune's ``checkpoint_NNNNNN`` folders under ``folder`` if its metrics are a
    trial's final ones, else ``None`` (also when the storage cannot be read: Tune's own then holds)."""
    try:
        entries = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        names = [e.base_name for e in entries if e.type == pafs.FileType.Directory]
        checkpoints = [n for n in names if re.fullmatch(r"checkpoint_\d+", n)]
        checkpoints.sort(key=lambda n: int(n[11:]))
        if not checkpoints:
            return None
        newest = f"{folder.rstrip('/')}/{checkpoints[-1]}"
        with filesystem.open_input_stream(f"{newest}/{META_FILE}") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return newest if meta.get("metrics", {}).get("final") else None


def fit_from(
    candidate: CandidateConfig,
    own: tune.Checkpoint | None,
    report: ReportFn,
    pause: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """:func:`fit` resumed from the trial's ``own`` checkpoint (a retry, a trial that grew), else
    warm-started from its parent, else from scratch; its metrics (``final`` unless ``pause`` stopped it)."""
    with contextlib.ExitStack() as stack:
        resume = Path(stack.enter_context(own.as_directory())) if own else None
        parent = open_parent(candidate.parent, stack) if resume is None and candidate.parent else None
        return fit(candidate, report, resume=resume, parent=parent, pause=pause)


def failure(error: UserError, mask: str | None) -> dict[str, Any]:
    """The one report of a candidate that failed for a reason a retry would repeat (logged)."""
    message = " ".join(str(error).split())
    log.error("candidate %s failed: %s", mask, message)
    return {"val_loss": float("nan"), "failed": True, "error": f"{type(error).__name__}: {message}"}


def _import_once_per_process() -> None:
    """Import ``torch._dynamo`` now, before the trial's clock starts.

    torch.optim imports it when the first optimizer is built (its methods are wrapped in
    ``torch._disable_dynamo``): about 1 s on 2 cores, once per process. Like the actor's own
    imports (Ray, torch, MONAI), it is a cost of starting the actor, not of the trial: counted in
    the first trial's setup, it made that setup 1.47 s instead of 0.47 s (width 1, 16^3, 2 cores).
    The driver does not pay it: it never builds an optimizer.
    """
    import torch._dynamo  # noqa: F401


def open_parent(location: str, stack: contextlib.ExitStack) -> Path:
    """The parent's final checkpoint as a local folder; a :class:`CheckpointError` naming it if unreadable."""
    try:
        folder = Path(stack.enter_context(tune.Checkpoint(location).as_directory()))
    except FileNotFoundError as error:  # gone: retrying cannot bring it back
        raise CheckpointError(f"the parent checkpoint {location} cannot be opened ({error})") from None
    # Anything else (an unreachable store) raises: Tune retries the trial.
    try:
        read_meta(folder)
    except CheckpointError as error:
        raise CheckpointError(
            f"the parent checkpoint {location} is missing or corrupt ({error}); the child does not train "
            "from scratch instead: retrain the parent (a new search) or restore its checkpoint, then resume"
        ) from None
    return folder


def _check_gpu() -> None:
    """A trial given a GPU must see one: otherwise it fails once, naming its node."""
    gpus = tune.get_context().get_trial_resources().required_resources.get("GPU", 0)
    if gpus and not torch.cuda.is_available() and os.environ.get(CPU_FALLBACK) != "1":
        context = ray.get_runtime_context()
        raise UserError(
            f"this trial was given {gpus:g} GPU(s) on node {ray.util.get_node_ip_address()} "
            f"({context.get_node_id()}), but torch {torch.__version__} there sees no CUDA device "
            f"(CUDA build: {torch.version.cuda or 'none'}; CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}); install torch's CUDA build matching the "
            f"node's driver, or, for a cluster of logical GPUs (tests), set {CPU_FALLBACK}=1 on its nodes"
        )
