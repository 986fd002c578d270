"""The trial record and the per-fold search state, shared by the searcher, the trainable and the table.

A :class:`Trial` says what one Ray Tune trial trains. It travels as the flat keys of the
trial's config (``mask``, ``fold``, ``role``, ``round``, ``parent_mask``, ``modality``, ``repeat``, beside
``parent`` and ``settings``), and one row of ``candidates.parquet`` is a trial plus its
:class:`Outcome` fields (:data:`SCHEMA`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fusionsearch.search.acceptance import Evidence
from fusionsearch.search.strategies import Candidate, Outcome
from fusionsearch.settings import ConfigError, check_choice

#: What a trial trains: a search candidate, a round's control (its parent continued), a unimodal
#: baseline, an ensemble member, late fusion continued to the chosen lineage's epochs, or a stage
#: of the final model (``fusionsearch final``, trained outside Tune).
ROLES = ("search", "control", "unimodal", "ensemble", "longer", "final")


@dataclass(frozen=True)
class Trial:
    """One trial: ``mask`` trained on ``fold`` in ``round``, warm-started from ``parent_mask``'s checkpoint.

    Attributes:
        role: ``search`` (a search candidate), ``control`` (the round's parent continued with
            the children's budget), ``unimodal`` (a single-stream baseline of ``modality``) or
            ``ensemble`` (a fusion configuration for the brute-force ensemble); ``final``: a stage
            of the final model (:mod:`fusionsearch.report.final`; its ``fold`` only seeds it).
        modality: for unimodal baselines, the one modality to train on.
        extension: 1 for the second attempt of a round that learned nothing: the same trial from
            the same parent, with twice the budget (epochs and patience), its first budget on the
            first attempt's batches, so it continues that attempt.
        epochs: train exactly this many epochs (no early stop) instead of the run's ``epochs`` and
            ``patience`` (role ``longer``: late fusion continued to the chosen lineage's epochs).
        repeat: the replicate: the same fold's search run again with other training seeds
            (``--repeats``); 0 is the first (the one the held-out comparisons use).
        workers: how many data-parallel workers (one GPU each) train it: a resource, not part of
            what it trains (the result is the same on any number, up to floating point), so not
            of its :attr:`key`; set by the searcher when the trial starts (``--gpus-per-trial``).
    """

    mask: str
    fold: int = 0
    role: str = "search"
    round: int = 0
    parent_mask: str | None = None
    modality: str | None = None
    extension: int = 0
    epochs: int | None = None
    repeat: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        check_choice("role", self.role, ROLES)
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers={self.workers!r} must be a positive integer")
        if (self.role == "unimodal") != (self.modality is not None):
            raise ConfigError(f"role={self.role!r} with modality={self.modality!r}: only unimodal names one")

    @property
    def key(self) -> tuple[str, int, str, str | None, int, int]:
        """What identifies a trial across restarts (Tune gives restarted trials new ids)."""
        return self.role, self.fold, self.mask, self.modality, self.extension, self.repeat

    @classmethod
    def of(cls, candidate: Candidate, fold: int, repeat: int = 0) -> Trial:
        """The trial of a search ``candidate`` on ``fold`` in replicate ``repeat``."""
        role, mask, round_, extension = candidate_key(candidate)
        parent = candidate.parent
        return cls(
            mask, fold, role, round_, str(parent) if parent else None, extension=extension, repeat=repeat
        )

    def config(self) -> dict[str, Any]:
        """The flat config entries of this trial."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Trial:
        """The trial of a Ray config (extra keys such as ``parent`` and ``settings`` are ignored)."""
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})


def candidate_key(candidate: Candidate) -> tuple[str, str, int, int]:
    """(role, mask, round, extension) of a search candidate: how its rows are found in the table."""
    return (
        "control" if candidate.control else "search",
        str(candidate.mask),
        candidate.round,
        candidate.extension,
    )


def row_key(row: Mapping[str, Any]) -> tuple[str, str, int, int]:
    """(role, mask, round, extension) of a row of the table (within one replicate of one fold): a
    control shares its parent's mask, a continued trial its first attempt's."""
    return row["role"], row["mask"], row["round"], row.get("extension") or 0


def replicate(row: Mapping[str, Any]) -> tuple[int, int]:
    """(fold, repeat) of a row: the one search it belongs to (tables written before replicates: repeat 0)."""
    return row["fold"], row.get("repeat") or 0


def parent_row(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row (of the same replicate's ``rows``) that ``row`` warm-started from: the latest search
    trial of its parent's mask in an earlier round."""
    if row["parent_mask"] is None:
        return None
    earlier = [r for r in rows if r["role"] == "search" and r["mask"] == row["parent_mask"]
               and r["round"] < row["round"]]  # fmt: skip
    return max(earlier, key=lambda r: (r["round"], r.get("extension") or 0), default=None)


def lineage(row: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``row`` and the rows it descends from (of the same replicate's ``rows``), newest first, down
    to the trial trained from scratch (``[]`` for ``None``)."""
    chain = []
    while row is not None and len(chain) <= len(rows):
        chain.append(row)
        row = parent_row(row, rows)
    return chain


TRIAL_FIELDS = tuple(f.name for f in dataclasses.fields(Trial))
#: Metrics copied from a candidate's final report into the candidates table.
REPORTED = ("val_accuracy", "val_auc", "best_epoch", "epochs_trained", "train_seconds", "step_seconds",
            "eval_seconds", "checkpoint_seconds", "setup_seconds", "started_at", "finished_at", "peak_rss_mb",
            "val_loss_gain_se", "val_loss_start", "val_loss_all")  # fmt: skip
#: Per-sample losses of the validation part's test half, at the best epoch, at epoch 0 and of a
#: prediction of the class frequencies (:mod:`fusionsearch.search.acceptance`), from the final report.
PER_SAMPLE = ("holdout_losses", "start_losses", "chance_losses")
#: A round's decision, on the row of the child it tested: its gain over its reference (``control``
#: or ``parent``), the one-sided p-value and whether it was accepted.
DECISION = ("reference", "gain", "p_value", "accepted")
#: ``candidates.parquet``: one row per finished trial.
SCHEMA = pa.schema(
    [
        ("fold", pa.int64()),
        ("role", pa.string()),
        ("modality", pa.string()),
        ("mask", pa.string()),
        ("parent_mask", pa.string()),
        ("round", pa.int64()),
        ("val_loss", pa.float64()),
        ("status", pa.string()),
        ("trial_id", pa.string()),
        ("checkpoint", pa.string()),
        ("chosen", pa.bool_()),
        ("node_ip", pa.string()),
        ("node_id", pa.string()),
        ("error", pa.string()),
        ("extension", pa.int64()),
        ("epochs", pa.int64()),
        ("repeat", pa.int64()),
        ("workers", pa.int64()),
        *[(name, pa.float64()) for name in REPORTED],
        *[(name, pa.list_(pa.float64())) for name in PER_SAMPLE],
        ("reference", pa.string()),
        ("gain", pa.float64()),
        ("p_value", pa.float64()),
        ("accepted", pa.bool_()),
    ]
)
assert set(TRIAL_FIELDS) <= set(SCHEMA.names)


@dataclass
class FoldSearch:
    """The search state of one group of folds (one fold, or all of them when pooled) in one replicate.

    Attributes:
        folds: the folds this search trains every candidate on.
        repeat: the replicate (its trials' training seeds differ from the other replicates').
        history: every closed round's outcomes, the strategy's only input.
        results: ``{candidate: {fold: final report}}`` of the current round (``None``: failed).
        round: the current round's candidates, empty between rounds.
        finished: the strategy has proposed nothing more.
    """

    folds: tuple[int, ...]
    repeat: int = 0
    history: list[Outcome] = field(default_factory=list)
    results: dict[Candidate, dict[int, Mapping[str, Any] | None]] = field(default_factory=dict)
    round: list[Candidate] = field(default_factory=list)
    finished: bool = False

    def record(self, trial: Trial, result: Mapping[str, Any] | None) -> None:
        """Keep the final report of one of the current round's trials (``None``: it failed)."""
        candidate = next(c for c in self.round if Trial.of(c, trial.fold, self.repeat).key == trial.key)
        self.results.setdefault(candidate, {})[trial.fold] = result

    def close_round(self) -> None:
        """Turn the current round's reports into outcomes: the mean loss over the group's folds, the
        per-sample losses of every fold one after the other."""
        for candidate in self.round:
            reports = [self.results.get(candidate, {}).get(f) for f in self.folds]
            self.history.append(outcome(candidate, reports))
        self.results, self.round = {}, []

    def trials(self, candidates: Sequence[Candidate]) -> list[Trial]:
        """Start a round: the trials of ``candidates`` on every fold of the group."""
        self.round = list(candidates)
        return [Trial.of(c, f, self.repeat) for c in candidates for f in self.folds]

    def owns(self, trial: Trial) -> bool:
        """Whether ``trial`` is one of this search's (its fold and replicate)."""
        return trial.fold in self.folds and trial.repeat == self.repeat


def outcome(candidate: Candidate, reports: Sequence[Mapping[str, Any] | None]) -> Outcome:
    """The outcome of ``candidate`` from its final report on each fold (failed if any fold failed)."""
    losses = [as_float(r.get("val_loss")) if r else None for r in reports]
    if not reports or any(x is None or math.isnan(x) for x in losses):
        return Outcome(candidate, None)
    starts = [as_float(r.get("val_loss_start")) for r in reports]
    epochs = [as_float(r.get("best_epoch")) for r in reports]
    holdout = [r.get("holdout_losses") for r in reports]
    start = [r.get("start_losses") for r in reports]
    chance = [r.get("chance_losses") for r in reports]
    paired = all(h is not None for h in holdout) and all(s is not None for s in start)
    loss = sum(losses) / len(losses)
    evidence = Evidence(
        loss,
        None if None in starts else sum(starts) / len(starts),
        None if None in epochs else int(max(epochs)),  # 0 only if no fold trained past its start
        tuple(x for h in holdout for x in h) if paired else None,
        tuple(x for s in start for x in s) if paired else None,
        tuple(x for c in chance for x in c) if paired and None not in chance else None,
    )
    return Outcome(candidate, loss, evidence)


def as_float(value: Any) -> float | None:
    """``float(value)``, or ``None`` for what is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
