"""The Ray Tune trainable: a thin wrapper around :func:`fusionsearch.training.fit`."""

from __future__ import annotations

import contextlib
import logging
import resource
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from fusionsearch.config import from_dict
from fusionsearch.settings import CandidateConfig
from fusionsearch.training import fit

# Ray logs every persisted checkpoint at INFO level in the worker; the driver shows progress.
logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


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


def train_candidate(config: dict[str, Any]) -> None:
    """Train the candidate ``config`` describes (keys: mask, parent, parent_mask, round, settings).

    A retried trial resumes from its own last checkpoint (``tune.get_checkpoint()``); otherwise
    the candidate warm-starts from ``parent``, a checkpoint location on the shared storage;
    otherwise it starts from scratch. Uses the GPU Ray assigned, else the CPU.
    """
    candidate = from_dict(CandidateConfig, config)
    _reset_peak_rss()
    if torch.cuda.is_available():  # release an earlier trial's cached blocks: Batches sizes by free memory
        torch.cuda.empty_cache()
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    own = tune.get_checkpoint()
    with contextlib.ExitStack() as stack:
        resume = Path(stack.enter_context(own.as_directory())) if own else None
        parent = None
        if resume is None and candidate.parent:
            parent = Path(stack.enter_context(tune.Checkpoint(candidate.parent).as_directory()))
        fit(candidate, _report, resume=resume, parent=parent)
