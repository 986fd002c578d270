"""Run a fusion-mask search on Ray Tune (``run_search``, ``resume_search``) and the held-out tasks.

The only module of the package, with :mod:`fusionsearch.tune.warm_actors`, that starts Ray work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import pyarrow as pa
import ray
from ray import tune
from ray.tune.search import Searcher, SearchGenerator

from fusionsearch import storage
from fusionsearch.errors import SearchInterrupted, StorageError, UserError
from fusionsearch.mask import NUM_POINTS
from fusionsearch.report.evaluation import (
    ensemble_folds,
    landscape_checkpoints,
    method_checkpoints,
    predict_fold,
)
from fusionsearch.search import experiment
from fusionsearch.search.experiment import (
    DEFAULT_TRAINABLE,
    LANDSCAPE_FILE,
    PREDICTIONS_FILE,
    RunRecord,
    SearchResult,
    load_result,
    read_run,
)
from fusionsearch.search.records import replicate
from fusionsearch.settings import DataConfig, RunSettings, from_dict, to_dict
from fusionsearch.tune import compat
from fusionsearch.tune.callbacks import (
    FailureLog,
    ProgressLog,
    StorageGuard,
    storage_failure,
    storage_failure_kind,
)
from fusionsearch.tune.lost_checkpoints import ForgetLostCheckpoints
from fusionsearch.tune.progress import FoldProgress
from fusionsearch.tune.warm_actors import keep_warm
from searchers.rounds import DataParallel, under_ray_train

log = logging.getLogger(__name__)

#: What the process of a trial of the built-in trainable imports before its first epoch: a local
#: Ray's idle workers import it while the driver builds the cache (:func:`connect`).
TRIAL_MODULES = ("trainables.candidate", "torch._dynamo")
#: The environment of each local Ray :func:`connect` started with ``preload``, by its GCS address.
_preloaded: dict[str, dict[str, str]] = {}

__all__ = [
    "SearchInterrupted",
    "SearchResult",
    "check_resources",
    "check_resumable",
    "connect",
    "evaluate_search",
    "in_driver",
    "load_result",
    "read_run",
    "resume_search",
    "run_search",
]


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    preload: Sequence[str] = (),
    dashboard: bool = False,
) -> None:
    """Use the running Ray session, connect to ``address``, or start a local Ray.

    Without ``address`` a new local Ray starts, even when a ``ray start`` cluster runs on this
    machine (Ray would otherwise join it, and refuse ``num_cpus``/``num_gpus``), unless
    ``RAY_ADDRESS`` is set (a Ray job's driver): then that cluster is used. A local Ray's worker
    processes import ``preload`` (e.g. :data:`TRIAL_MODULES`) as they start, while this process
    goes on (:func:`fusionsearch.tune.compat.preload`); a cluster's nodes do so where they were
    started with ``RAY_preload_python_modules`` set (``docs/clusters.md``). A local Ray starts its
    dashboard only with ``dashboard`` (the State API: Ray Train needs it).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            if address != "auto":
                _check_listening(address)
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=dashboard,
                logging_level=logging.WARNING,
                **compat.preload(preload),
            )
            if preload:  # what its workers inherited, for the trials to take them (_fit)
                _preloaded[ray.get_runtime_context().gcs_address] = dict(os.environ)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({error}); start it with 'ray start --head', "
            "check the address (HOST:PORT of the head's GCS, or 'auto' on a cluster node) and, for "
            "clusters with token authentication, set RAY_AUTH_MODE=token"
        ) from None


def check_resources(per_trial: dict[str, float], *, whole_cluster: bool) -> None:
    """Refuse per-trial resources that no node of the connected Ray can give, before anything starts.

    With ``whole_cluster`` (a local Ray this process started) a misfit is a :class:`UserError`; on
    a cluster the autoscaler may still add a node that fits, so it is only logged.
    """
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    for key, flag in (("cpu", "--cpus-per-trial"), ("gpu", "--gpus-per-trial")):
        largest = max((node.get(key.upper(), 0.0) for node in nodes), default=0.0)
        asked = per_trial.get(key, 0) or 0
        if asked > largest:
            message = (
                f"{flag} {asked:g}: the largest node of the Ray cluster has {largest:g} {key.upper()}(s), so "
                f"no trial could start; ask for at most {largest:g} per trial"
            )
            if whole_cluster:
                raise UserError(message)
            log.warning("%s (unless the autoscaler adds a larger node)", message)


def _check_listening(address: str, timeout: float = 5.0) -> None:
    # Against an address where nothing listens, ray.init retries for about 13 minutes.
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as error:
        raise ConnectionError(f"nothing accepts connections at {host}:{port}: {error}") from None


def _trainable(
    trainable: Callable | None, resources: dict[str, float] | None, data_parallel: bool = False
) -> Callable:
    """The trainable with its per-trial resources; with ``data_parallel``, ``resources`` are per
    worker, and a trial of several workers asks Tune for almost nothing: its Ray Train workers ask
    for their own GPUs."""
    if trainable is None:
        from trainables import train_candidate

        trainable = train_candidate
        if data_parallel and resources:
            trainable = tune.with_parameters(train_candidate, per_worker=resources)
            return tune.with_resources(trainable, partial(trial_resources, resources))
    return tune.with_resources(trainable, resources) if resources else trainable


#: What a data-parallel trial itself holds while its workers train (it only waits for them): no
#: CPU, which its workers may need all of, only a MiB of memory (Tune wants a non-empty bundle).
_TRAIN_DRIVER = {"memory": 2**20}


def trial_resources(per_worker: dict[str, float], config: dict[str, Any]) -> tune.PlacementGroupFactory:
    """What a trial of ``config`` asks Tune for: almost nothing where it trains under Ray Train
    (several workers, or ``grants`` to grow: its workers ask Ray for theirs), else ``per_worker``."""
    if under_ray_train(config):  # Ray Train's workers ask for theirs
        return tune.PlacementGroupFactory([_TRAIN_DRIVER])
    return tune.PlacementGroupFactory([{key.upper(): amount for key, amount in per_worker.items() if amount}])


def _data_parallel(workers: int | str, settings: RunSettings | None) -> DataParallel:
    """The searcher's sizing of data-parallel trials on the connected cluster."""
    if settings is None:
        return DataParallel()
    train = settings.train
    return DataParallel.on_cluster(workers, train.batch_size, min(train.epochs, train.patience))


def warm_while(searcher: Any, parallel: DataParallel) -> Callable[[], bool]:
    """When idle trial actors may keep their GPUs: while the searcher has no trial under Ray Train
    (:meth:`searchers.rounds.RoundSearcher.keeps_actors_warm`); for a searcher that does not say,
    where no trial can get 2 workers."""
    if hasattr(searcher, "keeps_actors_warm"):
        return searcher.keeps_actors_warm
    return lambda: not parallel.possible


def _searcher_name(searcher: Any) -> str:
    """The searcher's short name (``sfsa``, ``random``, ...), else its class name."""
    return getattr(searcher, "name", None) or type(searcher).__name__


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
    workers: int | str = 1,
) -> SearchResult:
    """Run ``searcher`` (e.g. :class:`searchers.SFSASearcher`) to completion on Ray Tune.

    Args:
        trainable: a function trainable reading ``mask``/``parent`` from its config and ending
            with a report that carries the metric and a checkpoint; default
            :func:`trainables.train_candidate`, which needs ``config={"settings": ...}`` (a
            :class:`~fusionsearch.settings.RunSettings` or its dict).
        config: constant config entries every trial gets (e.g. ``{"settings": ...}``).
        storage_path: where results, checkpoints and state live (local, NFS, or a URI).
        name: the experiment's name; its folder is ``<storage_path>/<name>``.
        resources: per-trial resources for ``tune.with_resources``, e.g. ``{"cpu": 4, "gpu": 1}``.
        max_concurrent: most trials at once (default: as many as the cluster's resources hold, so
            a wide round of several folds and replicates fills a large cluster).
        max_failures: retries of a failing trial before it counts as a failed candidate.
        metadata: anything JSON-able to keep beside the results (the CLI keeps its manifest).
        workers: data-parallel workers per candidate, ``resources`` each (the default trainable
            only): a number, or ``auto``, sized by the searcher when each trial starts
            (:class:`searchers.rounds.DataParallel`).
    """
    experiment_dir = storage.join(storage.normalise(storage_path), name)
    if workers != 1 and trainable is not None:
        raise UserError(
            f"workers={workers!r}: data-parallel candidates need the built-in trainable "
            "(trainables.train_candidate); with trainable= of your own, use workers=1"
        )
    config = dict(config or {})
    settings = None
    if trainable is None:
        if "settings" not in config:
            raise UserError(
                "run_search with the default trainable needs config={'settings': RunSettings(...)} "
                "(data, model and training settings); or pass trainable=your_function"
            )
        settings = from_dict(RunSettings, config["settings"])
        config["settings"] = to_dict(settings)
    num_points = getattr(searcher, "num_points", NUM_POINTS)
    run = RunRecord(
        resources=resources,
        max_concurrent=max_concurrent,
        max_failures=max_failures,
        trainable=DEFAULT_TRAINABLE
        if trainable is None
        else f"{trainable.__module__}.{trainable.__qualname__}",
        settings=settings,
        searcher=_searcher_name(searcher),
        num_points=num_points,
        metadata=metadata or {},
        workers=workers,
    )
    if hasattr(searcher, "set_experiment_dir"):
        searcher.set_experiment_dir(experiment_dir)
    experiment.create(experiment_dir)  # of several searches started at once under one name, one goes on
    experiment.write_run(experiment_dir, run)
    connect()
    parallel = _data_parallel(workers, settings)
    if hasattr(searcher, "set_data_parallel"):
        searcher.set_data_parallel(parallel)
    tuner = tune.Tuner(
        _trainable(trainable, resources, data_parallel=parallel.possible),
        param_space=config,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,  # the searcher decides when to stop (Searcher.FINISHED)
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=experiment.trial_dirname,  # checkpoint locations depend on it
            reuse_actors=True,  # a round's trials run in the previous round's actors: see _fit
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.normalise(storage_path),
            storage_filesystem=storage.tune_filesystem(str(storage_path)),  # whole files on a full disk
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # Keep only the latest checkpoint of each trial: for a finished trial, its final one.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                *([searcher.reconciler()] if hasattr(searcher, "reconciler") else []),
                ForgetLostCheckpoints(),
                ProgressLog(),
                FoldProgress(),
                StorageGuard(),  # first: once the storage fails, FailureLog does not write there
                FailureLog(experiment_dir),
                *callbacks,
            ],
            verbose=0,
        ),
    )
    warm = warm_while(searcher, parallel)
    return _fit(tuner, experiment_dir, concurrency(max_concurrent, resources), warm)


def concurrency(limit: int | None = None, per_trial: dict[str, float] | None = None) -> int:
    """Trials pending or running at once: the user's ``limit``, else as many as the cluster holds, and
    at least 16 (Tune's own floor), so an autoscaling cluster sees demand for nodes it has yet to start."""
    return limit or max(16, trial_slots(per_trial, ray.cluster_resources()))


def trial_slots(per_trial: dict[str, float] | None, cluster: dict[str, float]) -> int:
    """How many trials, each needing ``per_trial`` (``{"cpu": 1, "gpu": 1}``; ``None``: one CPU), the
    resources ``cluster`` (``ray.cluster_resources()``) hold at once; at least 1."""
    needs = {"cpu": 1.0} if per_trial is None else per_trial
    fits = [
        int(cluster.get(key.upper() if key in ("cpu", "gpu") else key, 0.0) / amount + 1e-9)
        for key, amount in needs.items()
        if amount
    ]
    return max(1, min(fits, default=1))


def resume_search(
    experiment_dir: str,
    *,
    trainable: Callable | None = None,
    resources: dict[str, float] | None = None,
) -> SearchResult:
    """Continue an interrupted search from its storage: finished candidates are not retrained.

    A search started with a trainable of your own needs it again here (``trainable=``).
    """
    experiment_dir = storage.normalise(experiment_dir)
    run = check_resumable(experiment_dir, own_trainable=trainable is not None)
    connect()
    resources = resources or run.resources
    # The restored searcher sizes trials as it did before; this cluster decides the actors.
    parallel = _data_parallel(run.workers, run.settings)
    tuner = tune.Tuner.restore(
        experiment_dir,
        storage_filesystem=storage.tune_filesystem(experiment_dir),
        trainable=_trainable(trainable, resources, data_parallel=parallel.possible),
        resume_errored=True,
    )
    warm = warm_while(compat.search_algorithm(tuner), parallel)
    return _fit(tuner, experiment_dir, concurrency(run.max_concurrent, resources), warm)


def check_resumable(experiment_dir: str, own_trainable: bool = False) -> RunRecord:
    """The run record of a search that can be resumed here, or a :class:`UserError` saying why not.

    A search that trains with a trainable of its author's needs that function again
    (``own_trainable``): the CLI cannot import it, so the message says how to resume from Python.
    """
    if not tune.Tuner.can_restore(experiment_dir, storage_filesystem=storage.tune_filesystem(experiment_dir)):
        raise UserError(
            f"no search to resume at {experiment_dir}; pass the experiment's folder "
            "(<storage>/<name>) of a search started with 'fusionsearch run' or run_search"
        )
    _check_search_state(experiment_dir)
    run = read_run(experiment_dir)
    if not own_trainable and not run.default_trainable:
        function = run.trainable.rsplit(".", 1)[-1]
        raise UserError(
            f"the search at {experiment_dir} trains with its own trainable {run.trainable!r}, which "
            "the command line cannot import; resume it from Python, where that function is "
            f"defined: fusionsearch.resume_search({experiment_dir!r}, trainable={function}) "
            "(finished candidates are not retrained)"
        )
    return run


def _check_search_state(experiment_dir: str) -> None:
    """Tune's saved search state loads: where it does not, Tune would log that and start the search
    over beside the finished trials, so this raises a :class:`UserError` first."""
    present = storage.names(experiment_dir)
    for template in (SearchGenerator.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL):
        prefix, suffix = template.split("{}")
        saved = [n for n in present if n.startswith(prefix) and n.endswith(suffix)]
        if not saved:
            continue
        newest = storage.join(experiment_dir, max(saved))  # Tune restores from the newest session's
        try:
            pickle.loads(storage.read_bytes(newest))
        except (EOFError, pickle.UnpicklingError, ValueError) as error:  # not ImportError: a class elsewhere
            raise UserError(
                f"the search state {newest} is damaged ({type(error).__name__}: {error}), so the search "
                f"at {experiment_dir} cannot continue where it stopped. Its finished candidates are in "
                "candidates.parquet there; start the search again under a new name (a copy of that "
                "file from an earlier backup, put back in place, also lets it resume)"
            ) from None


@contextlib.contextmanager
def tune_environment(max_concurrent: int) -> Iterator[None]:
    """Tune settings read from the environment, set for one ``fit()`` and restored afterwards (a
    plain ``tune.Tuner`` driving one of these searchers schedules as :func:`run_search` inside it)."""
    values = {
        # For a custom searcher Tune keeps one trial pending at a time, so a round's trials
        # would start one after another: let a whole round be pending.
        "TUNE_MAX_PENDING_TRIALS_PG": str(max_concurrent),
        # One checkpoint per trial forces a state snapshot per checkpoint, which is what we want
        # (a resumed search sees every finished candidate); Tune warns about it each time.
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    }
    with environment(values):
        yield


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set to ``values`` inside the block, restored (or removed) after it."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _interruptible() -> Iterator[dict[str, int | None]]:
    """Stop cleanly on SIGINT and SIGTERM; the yielded dict's ``signal`` says which stopped the search.

    Tune handles the first SIGINT itself (and SIGUSR1 alike): it stops the trials, saves the
    experiment state and returns from ``fit()``, restoring the SIGINT handler it found, ours. A
    SIGTERM (a pod eviction, ``scancel``) is turned into that same request. A second SIGINT or
    SIGTERM raises :class:`KeyboardInterrupt` at once.
    """
    state: dict[str, int | None] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield state
        return

    def second_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def terminate(signum: int, frame: Any) -> None:
        if state["signal"] is not None:
            raise KeyboardInterrupt
        state["signal"] = signal.SIGTERM
        signal.raise_signal(signal.SIGUSR1)  # Tune's own stop request

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, second_interrupt),
        signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),
    }
    try:
        yield state
    finally:
        if state["signal"] is None and signal.getsignal(signal.SIGINT) is second_interrupt:
            state["signal"] = signal.SIGINT  # Tune's handler ran and put ours back
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """With ``-q`` (fusionsearch's logging above INFO): none of Tune's own console output (its
    experiment box and status tables go to stdout whatever ``verbose`` says; its trial errors are
    logged with the whole traceback). A failed trial is then the one line :class:`FailureLog`
    writes; its full text stays in the trial's error file."""
    if logging.getLogger("fusionsearch").isEnabledFor(logging.INFO):
        yield
        return
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        tune_log.setLevel(level)


def _fit(
    tuner: tune.Tuner, experiment_dir: str, max_concurrent: int, warm: Callable[[], bool] = lambda: True
) -> SearchResult:
    """``tuner.fit()`` with up to ``max_concurrent`` trials pending or running and, while ``warm()``,
    as many actors kept.

    Keeping the finished trials' actors for the next round saves a fresh process (with its
    imports) per trial. Not while data-parallel trials run: their Ray Train workers ask Ray, not
    Tune, for GPUs, and Tune would not release an idle actor holding a GPU to them.
    """
    start = time.perf_counter()
    storage_failure.clear()
    actors = keep_warm(max_concurrent, warm)
    inherited = _preloaded.get(ray.get_runtime_context().gcs_address)
    # trial actors in the idle workers that imported their modules while the cache built
    idle = compat.trial_env_vars(inherited) if inherited is not None else contextlib.nullcontext()
    with tune_environment(max_concurrent), actors, idle, _interruptible() as interrupted:
        try:
            with _quiet_tune():
                tuner.fit()
        except Exception as error:  # Tune's own reading back from a failing storage, after the stop
            kind = storage_failure_kind(str(error))
            if not (storage_failure or kind):
                raise
            storage_failure.setdefault("kind", kind)
            storage_failure.setdefault("detail", " ".join(str(error).split())[:300])
    if storage_failure:
        failure = dict(storage_failure)
        storage_failure.clear()
        raise StorageError(experiment_dir, failure["kind"], failure["detail"])
    if interrupted["signal"] is not None:
        raise SearchInterrupted(experiment_dir, interrupted["signal"])
    return load_result(experiment_dir, time.perf_counter() - start)


def in_driver(resources: dict[str, float], nodes: list[dict[str, Any]]) -> bool:
    """Whether the held-out predictions are made in the driver's process: trials without a GPU
    on a Ray of one node (``nodes`` as :func:`ray.nodes` lists them)."""
    return not resources.get("gpu") and sum(1 for node in nodes if node["Alive"]) == 1


def evaluate_search(
    experiment_dir: str, candidates: pa.Table, data: DataConfig, resources: dict[str, float] | None = None
) -> pa.Table:
    """Predict every fold's test part with every method; store and return it, and store every
    trained mask's predictions as the landscape.

    On a cluster, or with GPUs, each fold is a Ray task with a trial's resources. A CPU search on
    one machine predicts here, fold after fold: a fresh Ray worker would spend longer importing
    torch and MONAI (about 10 s on 2 cores) than a CPU spends on a test part.
    """
    searches = sorted({replicate(r) for r in candidates.to_pylist()})
    num_points = len(candidates["mask"][0].as_py())
    resources = resources or {}
    jobs = [
        (
            data,
            fold,
            method_checkpoints(candidates, fold, num_points, repeat),
            landscape_checkpoints(candidates, fold) if repeat == 0 else {},
            repeat,
        )
        for fold, repeat in searches
    ]
    # (Through Ray Client, ray://, this process is on another machine than the cluster.)
    here = in_driver(resources, ray.nodes()) and not ray.util.client.ray.is_connected()
    log.info(
        "evaluating on the test parts of %d fold(s), %d search(es)%s",
        len({fold for fold, _ in searches}),
        len(searches),
        " in this process" if here else "",
    )
    if here:
        parts = [predict_fold(*job, device="cpu") for job in jobs]  # --gpus 0 holds here too
    else:
        task = ray.remote(predict_fold).options(
            num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0)
        )
        parts = ray.get([task.remote(*job) for job in jobs])
    predictions, landscape = (pa.concat_tables(part) for part in zip(*parts, strict=True))
    if data.layout == "reserved":  # every fold tested the reserved part: one prediction per subject
        predictions, landscape = ensemble_folds(predictions), ensemble_folds(landscape)
    storage.write_table(storage.join(experiment_dir, LANDSCAPE_FILE), landscape)
    storage.write_table(storage.join(experiment_dir, PREDICTIONS_FILE), predictions)
    return predictions
