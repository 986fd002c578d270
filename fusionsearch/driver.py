"""Run a fusion-mask search on Ray Tune: ``run_search`` and ``resume_search``."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
from ray import tune

from fusionsearch import storage
from fusionsearch.errors import UserError
from fusionsearch.mask import FusionMask
from fusionsearch.network import NUM_POINTS
from fusionsearch.warm_actors import keep_warm
from searchers import CANDIDATES_FILE

log = logging.getLogger(__name__)

RUN_FILE = "fusionsearch-run.json"
# Keeping one checkpoint per trial forces a state snapshot per checkpoint, which is what we
# want (a resumed search sees every finished candidate); Tune warns about it each time.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass(frozen=True)
class SearchResult:
    """A finished (or stopped) search: the chosen mask and one table row per candidate."""

    best_mask: FusionMask | None
    table: pa.Table
    experiment_dir: str
    wall_seconds: float


class ProgressLog(tune.Callback):
    """Logs each candidate's epochs: round, mask, parent, epoch, validation loss."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        config = trial.config
        if result.get("final") or "epoch" not in result:
            return
        log.info(
            "round %s  %s (from %s)  epoch %s  val_loss %.4f  val_accuracy %.3f",
            config.get("round"),
            config.get("mask"),
            config.get("parent_mask") or "scratch",
            result.get("epoch"),
            result.get("val_loss", float("nan")),
            result.get("val_accuracy", float("nan")),
        )


def trial_dirname(trial: Any) -> str:
    """Trial folders are named after the trial id, so checkpoint locations are predictable."""
    return trial.trial_id


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Use the running Ray session, connect to ``address``, or start a local Ray."""
    if ray.is_initialized():
        return
    try:
        if address:
            if address != "auto":
                _check_listening(address)
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, logging_level=logging.WARNING
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({error}); start it with 'ray start --head', "
            "check the address (HOST:PORT of the head's GCS, or 'auto' on a cluster node) and, for "
            "clusters with token authentication, set RAY_AUTH_MODE=token"
        ) from None


def _check_listening(address: str, timeout: float = 5.0) -> None:
    # Against an address where nothing listens, ray.init retries for about 13 minutes.
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as error:
        raise ConnectionError(f"nothing accepts connections at {host}:{port}: {error}") from None


def _with_resources(trainable: Callable | None, resources: dict[str, float] | None) -> Callable:
    if trainable is None:
        from trainables import train_candidate

        trainable = train_candidate
    return tune.with_resources(trainable, resources) if resources else trainable


def run_search(
    searcher: Any,
    *,
    trainable: Callable | None = None,
    config: dict[str, Any] | None = None,
    storage_path: str | os.PathLike,
    name: str,
    resources: dict[str, float] | None = None,
    max_concurrent: int | None = None,
    max_failures: int = 2,
    callbacks: Sequence[tune.Callback] = (),
    metadata: dict[str, Any] | None = None,
) -> SearchResult:
    """Run ``searcher`` (e.g. :class:`searchers.SFSASearcher`) to completion on Ray Tune.

    Args:
        trainable: a function trainable reading ``mask``/``parent`` from its config and ending
            with a report that carries the metric and a checkpoint; default
            :func:`trainables.train_candidate`.
        config: constant config entries every trial gets (e.g. ``{"settings": ...}``).
        storage_path: where results, checkpoints and state live (local, NFS, or a URI).
        name: the experiment's name; its folder is ``<storage_path>/<name>``.
        resources: per-trial resources for ``tune.with_resources``, e.g. ``{"cpu": 4, "gpu": 1}``.
        max_concurrent: most trials at once (default: a whole round).
        max_failures: retries of a failing trial before it counts as a failed candidate.
        metadata: anything JSON-able to keep beside the results (the CLI keeps its settings).
    """
    experiment_dir = storage.join(storage.normalise(storage_path), name)
    if storage.exists(experiment_dir):
        raise UserError(
            f"an experiment named {name!r} already exists at {experiment_dir}; continue it with "
            f"'fusionsearch resume {name}', or choose another --name (nothing was deleted)"
        )
    searcher.experiment_dir = experiment_dir
    storage.write_json(
        storage.join(experiment_dir, RUN_FILE),
        {
            "resources": resources,
            "max_concurrent": max_concurrent,
            "max_failures": max_failures,
            "metadata": metadata or {},
        },
    )
    connect()
    max_concurrent = max_concurrent or 2**searcher.strategy.num_points
    tuner = tune.Tuner(
        _with_resources(trainable, resources),
        param_space=config or {},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,  # the searcher decides when to stop (Searcher.FINISHED)
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # a round's trials run in the previous round's actors: see _fit
        ),
        run_config=_run_config(name, storage.normalise(storage_path), max_failures, callbacks),
    )
    return _fit(tuner, experiment_dir, max_concurrent)


def resume_search(
    experiment_dir: str,
    *,
    trainable: Callable | None = None,
    resources: dict[str, float] | None = None,
) -> SearchResult:
    """Continue an interrupted search from its storage: finished candidates are not retrained."""
    experiment_dir = storage.normalise(experiment_dir)
    if not tune.Tuner.can_restore(experiment_dir):
        raise UserError(
            f"no search to resume at {experiment_dir}; pass the experiment's folder "
            "(<storage>/<name>) of a search started with 'fusionsearch run'"
        )
    run = read_run(experiment_dir)
    connect()
    tuner = tune.Tuner.restore(
        experiment_dir,
        trainable=_with_resources(trainable, resources or run["resources"]),
        resume_errored=True,
    )
    return _fit(tuner, experiment_dir, run["max_concurrent"] or 2**NUM_POINTS)


def _run_config(name: str, storage_path: str, max_failures: int, callbacks: Sequence) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        # Keep only the latest checkpoint of each trial: for a finished trial, its final one.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[ProgressLog(), *callbacks],
        verbose=0,
    )


def _fit(tuner: tune.Tuner, experiment_dir: str, max_concurrent: int) -> SearchResult:
    # Make rounds cheap. For a custom searcher Tune keeps one trial pending at a time, so a
    # round's trials would start one after another: let a whole round be pending (read when
    # fit() builds its controller). And keep the finished trials' actors for the next round,
    # instead of starting a fresh process (with its imports) per trial.
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max_concurrent)
    start = time.perf_counter()
    with keep_warm(max_concurrent):
        grid = tuner.fit()
    wall = time.perf_counter() - start
    errors = {os.path.basename(r.path.rstrip("/")): str(r.error).strip().splitlines()[-1]
              for r in grid if r.error}  # fmt: skip
    if errors:  # record why candidates failed beside their rows
        path = storage.join(experiment_dir, CANDIDATES_FILE)
        table = storage.read_table(path)
        column = [errors.get(t) for t in table["trial_id"].to_pylist()]
        storage.write_table(
            path,
            table.set_column(table.schema.get_field_index("error"), "error", pa.array(column, pa.string())),
        )
    return load_result(experiment_dir, wall)


def read_run(experiment_dir: str) -> dict[str, Any]:
    """What :func:`run_search` recorded about a search (resources, limits, metadata)."""
    path = storage.join(experiment_dir, RUN_FILE)
    if not storage.exists(path):
        raise UserError(f"{experiment_dir} is not a fusionsearch experiment (it has no {RUN_FILE})")
    return storage.read_json(path)


def load_result(experiment_dir: str, wall_seconds: float = float("nan")) -> SearchResult:
    """The candidates table of a search (finished or running) and its chosen mask."""
    path = storage.join(experiment_dir, CANDIDATES_FILE)
    if not storage.exists(path):
        raise UserError(f"no candidates table at {path}: has a round of this search finished yet?")
    table = storage.read_table(path)
    chosen = [m for m, c in zip(table["mask"].to_pylist(), table["chosen"].to_pylist(), strict=True) if c]
    best = FusionMask.parse(chosen[0]) if chosen else None
    return SearchResult(best_mask=best, table=table, experiment_dir=experiment_dir, wall_seconds=wall_seconds)
