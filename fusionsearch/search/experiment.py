"""The files of an experiment folder ``<storage>/<name>/``, and the run record.

``fusionsearch-run.json``  :class:`RunRecord`: how the search was started (versioned)
``<trial id>/``            one folder per trial (:func:`trial_dirname`), its checkpoints inside
``candidates.parquet``     one row per finished trial (:data:`~fusionsearch.search.records.SCHEMA`),
                           written by the searcher only, after every round
``errors.json``            the last line of each failed trial's error, by trial id
``predictions.parquet``    every method's held-out class probabilities (after the search)
``landscape.parquet``      every trained mask's held-out class probabilities (after the search)
``report/``                the report's pages, figures and tables
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fusionsearch import storage
from fusionsearch.errors import UserError
from fusionsearch.mask import NUM_POINTS, FusionMask
from fusionsearch.search.records import SCHEMA
from fusionsearch.settings import RunSettings, from_dict, to_dict

RUN_FILE = "fusionsearch-run.json"
CANDIDATES_FILE = "candidates.parquet"
ERRORS_FILE = "errors.json"
PREDICTIONS_FILE = "predictions.parquet"
LANDSCAPE_FILE = "landscape.parquet"
REPORT_DIR = "report"
#: Version of :class:`RunRecord`'s JSON form. Version 1 (no ``format_version`` key) is still read.
RUN_FORMAT = 2
#: ``RunRecord.trainable`` of searches that train with :func:`trainables.train_candidate`.
DEFAULT_TRAINABLE = "trainables.train_candidate"


def trial_dirname(trial: Any) -> str:
    """A trial's folder is named after its id (``TuneConfig(trial_dirname_creator=...)``)."""
    return trial.trial_id


def checkpoint_location(experiment_dir: str, trial_id: str, checkpoint_dir_name: str) -> str:
    """Where Tune persists a trial's checkpoint, given :func:`trial_dirname`'s folder names."""
    return storage.join(experiment_dir, trial_id, checkpoint_dir_name)


@dataclass(frozen=True)
class RunRecord:
    """How a search was started: enough to resume, evaluate and report it from any process.

    Attributes:
        resources: per-trial resources (``{"cpu": .., "gpu": ..}``), or ``None`` for Tune's default.
        max_concurrent: most trials at once; ``None``: as many as the cluster's resources hold
            (counted again on resume, which may run on another cluster).
        max_failures: retries of a failing trial.
        trainable: ``module.qualname`` of the trainable; :data:`DEFAULT_TRAINABLE` for the
            built-in one, which the CLI can resume, evaluate and report.
        settings: the candidates' settings (the default trainable's ``config["settings"]``).
        searcher: the searcher's name (``sfsa``, ``beam``, ``exhaustive``, or a class name).
        num_points: mask length.
        metadata: anything else the caller kept (the CLI keeps its manifest and modalities).
        workers: data-parallel workers per candidate (``resources`` per worker): ``auto`` or a
            number (``--gpus-per-trial``).
    """

    resources: dict[str, float] | None
    max_concurrent: int | None
    max_failures: int
    trainable: str = DEFAULT_TRAINABLE
    settings: RunSettings | None = None
    searcher: str = "search"
    num_points: int = NUM_POINTS
    metadata: dict[str, Any] = field(default_factory=dict)
    workers: int | str = 1

    @property
    def default_trainable(self) -> bool:
        return self.trainable == DEFAULT_TRAINABLE


def create(experiment_dir: str) -> None:
    """Make the experiment's folder; a :class:`UserError` if it exists, nothing deleted.

    On local and shared (NFS) storage the folder is made atomically, so of several searches
    started at once under one name exactly one gets it. Object stores have no atomic create:
    there the check and the first write are separate steps.
    """
    name = experiment_dir.rstrip("/").rsplit("/", 1)[-1]
    taken = UserError(
        f"an experiment named {name!r} already exists at {experiment_dir}; continue it with "
        f"'fusionsearch resume {name}', or choose another --name (nothing was deleted)"
    )
    if storage.is_uri(experiment_dir):
        if storage.exists(experiment_dir):
            raise taken
        return
    os.makedirs(os.path.dirname(experiment_dir), exist_ok=True)
    try:
        os.mkdir(experiment_dir)
    except FileExistsError:
        raise taken from None


def write_run(experiment_dir: str, run: RunRecord) -> None:
    value = {"format_version": RUN_FORMAT, **{k: getattr(run, k) for k in RunRecord.__dataclass_fields__}}
    value["settings"] = to_dict(run.settings) if run.settings else None
    storage.write_json(storage.join(experiment_dir, RUN_FILE), value)


def read_run(experiment_dir: str) -> RunRecord:
    """The :class:`RunRecord` of an experiment (either format version)."""
    path = storage.join(experiment_dir, RUN_FILE)
    if not storage.exists(path):
        raise UserError(f"{experiment_dir} is not a fusionsearch experiment (it has no {RUN_FILE})")
    value = storage.read_json(path)
    version = value.pop("format_version", 1)
    if version == 1:  # {"resources", "max_concurrent", "max_failures", "metadata": {..., "settings"}}
        metadata = dict(value.pop("metadata", {}))
        value["settings"] = metadata.pop("settings", None)
        value["searcher"] = metadata.get("searcher", "search")
        value["metadata"] = metadata
    elif version != RUN_FORMAT:
        raise UserError(
            f"{path} has format version {version!r}; this fusionsearch reads versions 1 and {RUN_FORMAT}"
        )
    settings = value.pop("settings", None)
    return RunRecord(**value, settings=from_dict(RunSettings, settings) if settings else None)


def write_candidates(experiment_dir: str, table: pa.Table) -> None:
    storage.write_table(storage.join(experiment_dir, CANDIDATES_FILE), table)


def read_candidates(experiment_dir: str) -> pa.Table:
    """``candidates.parquet``, each failed trial's error (from ``errors.json``) in its ``error`` column."""
    path = storage.join(experiment_dir, CANDIDATES_FILE)
    if not storage.exists(path):
        raise UserError(f"no candidates table at {path}: has a round of this search finished yet?")
    table = storage.read_table(path)
    for name in SCHEMA.names:  # a table from an older fusionsearch lacks the newer columns
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, SCHEMA.field(name).type))
    table = table.select(SCHEMA.names).cast(SCHEMA)
    errors_path = storage.join(experiment_dir, ERRORS_FILE)
    if storage.exists(errors_path):
        errors = storage.read_json(errors_path)
        column = [
            e or errors.get(t)
            for e, t in zip(table["error"].to_pylist(), table["trial_id"].to_pylist(), strict=True)
        ]
        table = table.set_column(
            table.schema.get_field_index("error"), "error", pa.array(column, pa.string())
        )
    return table


def record_error(experiment_dir: str, trial_id: str, message: str) -> None:
    """Keep the last line of a failed trial's error beside the candidates table."""
    path = storage.join(experiment_dir, ERRORS_FILE)
    errors = storage.read_json(path) if storage.exists(path) else {}
    storage.write_json(path, errors | {trial_id: message})


@dataclass(frozen=True)
class SearchResult:
    """A finished (or stopped) search: the chosen mask and one table row per candidate."""

    best_mask: FusionMask | None
    table: pa.Table
    experiment_dir: str
    wall_seconds: float = float("nan")


def load_result(experiment_dir: str, wall_seconds: float = float("nan")) -> SearchResult:
    """The candidates table of a search (finished or running) and its chosen mask."""
    table = read_candidates(experiment_dir)
    chosen = [m for m, c in zip(table["mask"].to_pylist(), table["chosen"].to_pylist(), strict=True) if c]
    best = FusionMask.parse(chosen[0]) if chosen else None
    return SearchResult(best_mask=best, table=table, experiment_dir=experiment_dir, wall_seconds=wall_seconds)
