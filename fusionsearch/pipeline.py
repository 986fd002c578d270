"""The end-to-end pipeline, for the CLI and Python alike: validate, cache, search, evaluate, report.

``fusionsearch run`` is :func:`run`; ``fusionsearch resume`` is :func:`resume`; ``fusionsearch
report`` is :func:`report`. Everything a mistake can be found from is checked before Ray starts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fusionsearch import storage
from fusionsearch.data.cache import PreprocessCache, cache_manifest
from fusionsearch.data.manifest import Manifest, read_manifest
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.data.validate import validate_manifest
from fusionsearch.errors import UserError
from fusionsearch.mask import NUM_POINTS, FusionMask
from fusionsearch.model.fusion import FUSION_MODULES
from fusionsearch.model.network import FusionNet
from fusionsearch.model.pretrained import load_streams, stream_state_dict
from fusionsearch.report.data import Evaluation
from fusionsearch.report.export import export as export_models
from fusionsearch.report.final import FinalModel, train_final
from fusionsearch.report.pages import write_report
from fusionsearch.report.predict import Prediction
from fusionsearch.report.predict import predict as predict_new
from fusionsearch.report.saliency import Saliency, compute_saliency
from fusionsearch.search.experiment import PREDICTIONS_FILE, SearchResult, read_run
from fusionsearch.settings import (
    DEFAULT_STORAGE,
    ConfigError,
    ModelConfig,
    PreprocessConfig,
    ResourceConfig,
    RunSettings,
    SearchConfig,
    TrainConfig,
    check_choice,
    to_dict,
)
from fusionsearch.tune.cluster_cache import cache_map
from fusionsearch.tune.driver import (
    TRIAL_MODULES,
    check_resources,
    check_resumable,
    connect,
    environment,
    evaluate_search,
    load_result,
    resume_search,
    run_search,
)
from searchers.rounds import DataParallel, node_gpus

log = logging.getLogger(__name__)

#: The planted XOR benchmark of the demo (``run`` without a manifest).
PLANTED = SynthConfig(n=400, size=32)


@dataclass(frozen=True)
class PipelineResult:
    """A search and its held-out evaluation (``None``: no candidate finished, or a user's own trainable)."""

    search: SearchResult
    evaluation: Evaluation | None

    @property
    def experiment_dir(self) -> str:
        return self.search.experiment_dir


def experiment_dir(name: str, storage_path: str | Path = DEFAULT_STORAGE) -> str:
    """``<storage>/<name>``, normalised."""
    return storage.join(storage.normalise(str(storage_path)), name)


def planted_manifest(storage_path: str, seed: int = 0) -> Path:
    """The planted XOR benchmark, generated once: under local storage, or in the user's cache for a URI."""
    root = (
        Path("~/.cache/fusionsearch").expanduser()
        if storage.is_uri(storage_path)
        else Path(storage.normalise(storage_path))
    )
    folder = root / "planted" / f"xor-n{PLANTED.n}-size{PLANTED.size}-seed{seed}"
    if not (folder / "manifest.csv").is_file():
        log.info("generating the planted XOR benchmark in %s (once)", folder)
        generate(folder, replace(PLANTED, seed=seed))
    return folder / "manifest.csv"


def make_searcher(search: SearchConfig, modalities: list[str], num_points: int = NUM_POINTS, seed: int = 0):
    """The Ray Tune searcher of ``search`` over its folds and masks of ``num_points``, with its baselines.

    ``seed`` seeds the random and optuna searchers' proposals.
    """
    search.check_points(num_points)
    from searchers import REGISTRY

    options = {
        "folds": search.search_folds,
        "pooled": search.pooled,
        "unimodal": modalities if search.unimodal and len(modalities) > 1 else (),
        "ensemble": search.ensemble,
        "repeats": search.repeats,
        "num_points": num_points,
    }
    return REGISTRY[search.searcher].from_config(search, seed=seed, **options)


def mlflow_tracking(uri: str):
    """A factory of Tune's MLflow callback logging to ``uri``, one MLflow experiment per search name.

    Raises:
        ConfigError: MLflow is not installed (checked before anything starts).
    """
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            f"--mlflow {uri}: MLflow is not installed; pip install 'fusionsearch[mlflow]' "
            "(or mlflow-skinny), or leave --mlflow out"
        )
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    try:  # a store MLflow refuses or a server that does not answer: now, not after the cache is built
        with environment(retries):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # MlflowException, connection errors: all mean the same to the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--mlflow {uri}: MLflow cannot log there: {reason}") from None

    def callback(name: str) -> MLflowLoggerCallback:
        return MLflowLoggerCallback(tracking_uri=uri, experiment_name=name, save_artifact=False)

    return callback


def load_manifest(
    manifest: str | Path, modalities: list[str] | None, folds: int, data_root: Path | None
) -> Manifest:
    """Read and validate a manifest (every problem listed at once), with the chosen modalities."""
    table = read_manifest(manifest)
    if modalities:
        table = table.select_modalities(modalities)
    validate_manifest(table, folds=folds, data_root=data_root)
    return table


def run(
    manifest: str | Path | None = None,
    *,
    name: str | None = None,
    storage_path: str | Path = DEFAULT_STORAGE,
    modalities: list[str] | None = None,
    data_root: Path | None = None,
    search: SearchConfig | None = None,
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    preprocess: PreprocessConfig | None = None,
    resources: ResourceConfig | None = None,
    cache: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    mlflow: str | None = None,
) -> PipelineResult:
    """Validate the data, build the preprocessing cache, search, evaluate on the test parts, report.

    Args:
        manifest: the dataset's manifest (default: the planted XOR benchmark, made once).
        name: the experiment's name (default: ``SEARCHER-DATE-TIME``); its folder is
            ``<storage_path>/<name>``.
        modalities: manifest columns to use, in stream order (default: all).
        data_root: folder every image must be in (default: the manifest's folder).
        cache: preprocessing cache folder or URI (default: beside the manifest; under the
            storage when that is a URI).
        workers: preprocessing threads (default: CPUs).
        address: a Ray cluster (default: start a local Ray with ``resources.gpus`` GPUs).
        mlflow: an MLflow tracking URI (``file:///...``, ``http://...``): every candidate is a
            run of the MLflow experiment named after the search (params: its config; metrics:
            every epoch's report), through Tune's ``MLflowLoggerCallback``.

    The settings records default to their own defaults (:mod:`fusionsearch.settings`).
    """
    search, model, train = search or SearchConfig(), model or ModelConfig(), train or TrainConfig()
    preprocess, resources = preprocess or PreprocessConfig(), resources or ResourceConfig()
    storage_path = str(storage_path)
    check_choice("fusion", model.fusion, sorted(FUSION_MODULES))  # before the demo's data are made
    manifest_path = Path(manifest or planted_manifest(storage_path, train.seed)).resolve()
    samples = load_manifest(manifest_path, modalities, search.folds, data_root)
    searcher = make_searcher(search, samples.modalities, model.num_points, train.seed)
    tracking = mlflow_tracking(mlflow) if mlflow else None
    model = replace(model, modalities=len(samples.modalities))
    if train.init_streams:  # a file that does not fit: before anything starts
        load_streams(
            FusionNet(model, FusionMask.empty(model.num_points)).streams[:1],
            stream_state_dict(train.init_streams),
            train.init_streams,
        )
    if cache is None:  # beside the manifest; nodes may not see the driver's disk when storage is a URI
        cache = (
            storage.join(storage_path, ".fusionsearch-cache")
            if storage.is_uri(storage_path)
            else str(manifest_path.parent / ".fusionsearch-cache")
        )
    storage.probe(storage_path, "--storage")  # reachable and writable: in seconds, before Ray starts
    storage.probe(cache, "--cache")
    local_gpus = _local_gpus()
    if address is None and resources.gpus is not None and resources.gpus > local_gpus:
        raise UserError(
            f"--gpus {resources.gpus}: torch sees {local_gpus} CUDA device(s) on this machine, so the "
            f"search would not get them; ask for --gpus {local_gpus} (0 = CPU only), or make the GPUs "
            "visible (the CUDA build of torch, the NVIDIA driver, CUDA_VISIBLE_DEVICES)"
        )
    if address is None and resources.cpus_per_trial > (os.cpu_count() or 1):
        raise UserError(
            f"--cpus-per-trial {resources.cpus_per_trial:g}: this machine has {os.cpu_count()} CPU(s), so no "
            f"trial could start; ask for at most {os.cpu_count()}"
        )
    gpus = resources.gpus if resources.gpus is not None else local_gpus
    # an unreachable cluster: before any build
    _connect(address, resources.workers(gpus), gpus, train.batch_size, num_gpus=None if address else gpus)
    if address is not None and resources.gpus is None:  # the cluster's GPUs, not the driver's
        gpus = sum(node_gpus())
        if not gpus:
            log.warning(
                "the cluster at %s has no GPU now, so the candidates train on CPUs; on a cluster whose "
                "autoscaler adds GPU nodes on demand, pass --gpus N so that they ask for GPUs",
                address,
            )
    per_trial = resources.per_trial(gpus)
    check_resources(per_trial, whole_cluster=address is None)
    cache = PreprocessCache(cache, preprocess).root
    data = cache_manifest(
        samples,
        cache,
        preprocess,
        folds=search.folds,
        split_seed=train.seed,
        workers=workers,
        map_jobs=cache_map(resources.cache_build, samples, cache, workers),
    )
    settings = RunSettings(data=replace(data, layout=search.layout), model=model, train=train)
    name = name or f"{search.searcher}-{time.strftime('%Y%m%d-%H%M%S')}"
    log.info("search %s: %s, %s fusion, trials of %s", name, search.searcher, model.fusion, per_trial)
    result = run_search(
        searcher,
        config={"settings": to_dict(settings)},
        storage_path=storage_path,
        name=name,
        resources=per_trial,
        max_failures=resources.max_failures,
        max_concurrent=resources.max_concurrent,
        workers=resources.workers(gpus),
        callbacks=[tracking(name)] if tracking else (),
        metadata={
            "command": "run",
            "manifest": str(manifest_path),
            "modalities": samples.modalities,
            "search": to_dict(search),
        },
    )
    return PipelineResult(result, finish(result))


def resume(
    name: str, storage_path: str | Path = DEFAULT_STORAGE, address: str | None = None
) -> PipelineResult:
    """Continue an interrupted search (from the CLI or Python), then evaluate and report it."""
    directory = experiment_dir(name, storage_path)
    run = check_resumable(directory)  # a clear error before Ray starts
    batch = run.settings.train.batch_size if run.settings else 1
    _connect(address, run.workers, _local_gpus(), batch)
    result = resume_search(directory)
    return PipelineResult(result, finish(result))


def report(name: str, storage_path: str | Path = DEFAULT_STORAGE) -> PipelineResult:
    """A search's table; for a finished (evaluated) one, its report files (re)written."""
    directory = experiment_dir(name, storage_path)
    read_run(directory)
    evaluation = None
    if storage.exists(storage.join(directory, PREDICTIONS_FILE)):
        evaluation = write_report(directory)
    return PipelineResult(load_result(directory), evaluation)


def predict(
    name: str, data: str | Path, storage_path: str | Path = DEFAULT_STORAGE, **options: Any
) -> Prediction:
    """``fusionsearch predict``: the search's chosen configuration applied to the manifest ``data``
    (options: :func:`fusionsearch.report.predict.predict`'s)."""
    return predict_new(experiment_dir(name, storage_path), data, **options)


def export(
    name: str,
    out: str | Path,
    storage_path: str | Path = DEFAULT_STORAGE,
    fold: int | None = None,
    folds: bool = False,
) -> Path:
    """``fusionsearch export``: the chosen models as a folder that runs with plain PyTorch
    (:mod:`fusionsearch.report.export`)."""
    return export_models(experiment_dir(name, storage_path), out, fold=fold, folds=folds)


def final(name: str, storage_path: str | Path = DEFAULT_STORAGE, **options: Any) -> FinalModel:
    """``fusionsearch final``: the chosen mask trained on every development subject (options:
    :func:`fusionsearch.report.final.train_final`'s); the report is rewritten with it."""
    directory = experiment_dir(name, storage_path)
    model = train_final(directory, **options)
    write_report(directory)
    return model


def saliency(name: str, storage_path: str | Path = DEFAULT_STORAGE, **options: Any) -> Saliency:
    """``fusionsearch saliency``: where each modality looked, for one fold's chosen mask and late
    fusion (options: :func:`fusionsearch.report.saliency.compute_saliency`'s); the report is
    rewritten with the maps."""
    directory = experiment_dir(name, storage_path)
    maps = compute_saliency(directory, **options)
    write_report(directory)
    return maps


def finish(result: SearchResult) -> Evaluation | None:
    """Evaluate a finished search on its test folds and write its report.

    Only for searches whose candidates are the default trainable's (their checkpoints are
    networks this code rebuilds); ``None`` when no candidate finished.
    """
    run = read_run(result.experiment_dir)
    if run.settings is None:
        log.info("%s trains with %s: no held-out evaluation", result.experiment_dir, run.trainable)
        return None
    if not any(s == "ok" for s in result.table["status"].to_pylist()):
        return None
    evaluate_search(result.experiment_dir, result.table, run.settings.data, run.resources)
    return write_report(result.experiment_dir)


def _connect(address: str | None, workers: int | str, gpus: int, batch_size: int, **options: Any) -> None:
    """Connect to ``address``, or start a local Ray for trials of ``workers`` data-parallel workers
    on ``gpus`` GPUs.

    Trials of one GPU each: its idle workers import the trial's modules while the cache builds,
    so the first round's actors start at once. Not on CPUs only: Ray prestarts a worker per CPU,
    and each would import torch (5 CPU-seconds and 370 MB here) for trials that run a few at a
    time. Not where a candidate may train data-parallel: Ray Train's controller and workers do not
    take those idle workers, and every new process would import the modules first (a
    data-parallel trial's first step came later, benchmarks/first_round.py); there the dashboard
    starts instead, whose State API Ray Train's placement-group cleaners ask whether their run's
    controller lives (without it each warns every second while its run lasts).
    """
    parallel = DataParallel(workers, gpus, batch_size, gpus).possible
    preload = TRIAL_MODULES if gpus and not parallel else ()
    connect(address, preload=preload, dashboard=parallel, **options)


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


__all__ = [
    "DEFAULT_STORAGE",
    "PipelineResult",
    "export",
    "final",
    "finish",
    "predict",
    "report",
    "resume",
    "run",
]
