"""A candidate trained data-parallel by several workers: Ray Train inside the Tune trial.

When the searcher gives a trial more than one worker (``--gpus-per-trial``: a round narrower than
the cluster), :func:`trainables.candidate.train_candidate` hands it here. A Ray Train
``TorchTrainer`` starts the workers (one GPU each, or CPUs on a cluster without CUDA) and their
process group; each runs :func:`fusionsearch.train.loop.fit`, which trains its share of every
batch (:mod:`fusionsearch.train.parallel`). Worker 0's reports reach Tune as the trial's
progress; its checkpoints go to the Train run's folder inside the trial's folder, so a retried
trial resumes there (Ray Train restores a run of the same name from its storage). The final
result is reported to Tune once more with the final checkpoint, where the searcher finds every
trial's weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from fusionsearch.errors import UserError
from fusionsearch.model.checkpoint import read_meta
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.tune.compat import trial_storage
from fusionsearch.tune.grants import granted
from trainables.candidate import CPU_FALLBACK, failure, fit_from

#: The Train run's folder inside the trial's folder.
RUN_NAME = "data-parallel"


class _Progress(TuneReportCallback):
    """Worker 0's epoch reports (and a failure's) as the Tune trial's progress; the final one is
    reported by the trial, with its checkpoint."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics[0].get("final"):
            super().after_report(run_context, metrics, None)


def train_data_parallel(candidate: CandidateConfig, gpus: float, cpus: float) -> dict[str, Any]:
    """Train ``candidate`` on its trial's workers (Ray Train workers with ``gpus`` GPUs and ``cpus``
    CPUs each), and report its final result with its checkpoint to Tune; return that result.

    A trial with ``grants`` (:class:`CandidateConfig`) grows: when the searcher grants it more
    workers, its workers stop at the end of a validated epoch with a checkpoint, which is reported
    to Tune (a retried trial resumes there), and a wider worker group resumes from it."""
    path, filesystem = trial_storage()
    # A cluster of logical GPUs (tests, CPU_FALLBACK on its nodes): gloo on the CPUs. Otherwise NCCL,
    # decided here, on whatever node this trial's process runs (a CPU head does not see CUDA).
    logical = os.environ.get(CPU_FALLBACK) == "1" and not torch.cuda.is_available()
    config, address, workers = candidate.config(), candidate.grants, candidate.trial.workers
    resume, epoch = tune.get_checkpoint(), None
    if resume is not None:  # a retried trial: the epoch its last checkpoint reached
        with resume.as_directory() as folder:
            epoch = read_meta(Path(folder))["metrics"].get("epoch")
    while True:
        workers = max(workers, (granted(address) or 0) if address else 0)
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"candidate": config, "resume": resume, "workers": workers},
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=gpus > 0,
                resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})},
            ),
            torch_config=TorchConfig(backend="gloo" if logical or gpus == 0 else "nccl"),
            run_config=RunConfig(
                # One Train run per worker group, named by the epoch it resumes from: a retried
                # trial finds the run it lost by that name, and its latest checkpoint in it.
                name=RUN_NAME if epoch is None else f"{RUN_NAME}-from-epoch-{epoch}",
                storage_path=path,
                storage_filesystem=filesystem,
                callbacks=[_Progress()],
                failure_config=FailureConfig(max_failures=0),  # Tune retries the trial, which resumes
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:  # a UserError: its report reached Tune as the trial's last result
            return {}
        node = ray.get_runtime_context().get_node_id()
        metrics = dict(result.metrics) | {"node_id": node, "workers": workers}
        with result.checkpoint.as_directory() as folder:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        if metrics.get("final"):
            return metrics
        resume, epoch = result.checkpoint, metrics["epoch"]  # stopped to grow


def _worker(job: dict[str, Any]) -> None:
    """One worker: :func:`fit` in the process group Ray Train started, resumed from the run's last
    checkpoint if it has one, else from the checkpoint the trial's last worker group stopped at, else
    warm-started from the parent. ``job``: ``candidate`` (its config), ``resume`` (a checkpoint or
    ``None``), ``workers`` (this group's size)."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    config = job["candidate"]
    try:
        candidate = CandidateConfig.from_config(config)
        pause = _grant_asker(candidate.grants, job["workers"]) if candidate.grants else None
        fit_from(candidate, ray.train.get_checkpoint() or job.get("resume"), _report, pause)
    except UserError as error:
        ray.train.report(failure(error, config.get("mask")))


def _grant_asker(address: str, workers: int) -> Callable[[], bool]:
    """Whether the searcher granted this trial more than ``workers`` workers: worker 0 asks, every
    worker gets its answer (they must all stop at the same epoch)."""

    def more() -> bool:
        asked = (granted(address) or 0) > workers if ray.train.get_context().get_world_rank() == 0 else False
        if workers == 1:
            return asked
        flag = torch.tensor([int(asked)], device=ray.train.torch.get_device())
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    return more


def _report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)
