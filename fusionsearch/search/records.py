"""The trial record and the per-fold search state, shared by the searcher, the trainable and the table.

A :class:`Trial` says what one Ray Tune trial trains. It travels as the flat keys of the
trial's config (``mask``, ``fold``, ``role``, ``round``, ``parent_mask``, ``modality``, beside
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

from fusionsearch.search.strategies import Candidate, Outcome
from fusionsearch.settings import ConfigError, check_choice

#: What a trial trains: a search candidate, a unimodal baseline, or an ensemble member.
ROLES = ("search", "unimodal", "ensemble")


@dataclass(frozen=True)
class Trial:
    """One trial: ``mask`` trained on ``fold`` in ``round``, warm-started from ``parent_mask``'s checkpoint.

    Attributes:
        role: ``search`` (a search candidate), ``unimodal`` (a single-stream baseline of
            ``modality``) or ``ensemble`` (a fusion configuration for the brute-force ensemble).
        modality: for unimodal baselines, the one modality to train on.
    """

    mask: str
    fold: int = 0
    role: str = "search"
    round: int = 0
    parent_mask: str | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        check_choice("role", self.role, ROLES)
        if (self.role == "unimodal") != (self.modality is not None):
            raise ConfigError(f"role={self.role!r} with modality={self.modality!r}: only unimodal names one")

    @property
    def key(self) -> tuple[str, int, str, str | None]:
        """What identifies a trial across restarts (Tune gives restarted trials new ids)."""
        return self.role, self.fold, self.mask, self.modality

    def config(self) -> dict[str, Any]:
        """The flat config entries of this trial."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Trial:
        """The trial of a Ray config (extra keys such as ``parent`` and ``settings`` are ignored)."""
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})


TRIAL_FIELDS = tuple(f.name for f in dataclasses.fields(Trial))
#: Metrics copied from a candidate's final report into the candidates table.
REPORTED = ("val_accuracy", "val_auc", "best_epoch", "epochs_trained", "train_seconds", "step_seconds",
            "eval_seconds", "checkpoint_seconds", "setup_seconds", "started_at", "finished_at", "peak_rss_mb",
            "val_loss_gain_se")  # fmt: skip
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
        *[(name, pa.float64()) for name in REPORTED],
    ]
)
assert set(TRIAL_FIELDS) <= set(SCHEMA.names)


@dataclass
class FoldSearch:
    """The search state of one group of folds (one fold, or all of them when pooled).

    Attributes:
        folds: the folds this search trains every candidate on.
        history: every closed round's outcomes, the strategy's only input.
        losses: ``{mask: {fold: loss}}`` of the current round (``None``: failed).
        errors: ``{mask: {fold: standard error}}`` of each loss's gain over the candidate's start
            (``val_loss_gain_se``), where the trainable reported it.
        round: the current round's candidates, empty between rounds.
        finished: the strategy has proposed nothing more.
    """

    folds: tuple[int, ...]
    history: list[Outcome] = field(default_factory=list)
    losses: dict[str, dict[int, float | None]] = field(default_factory=dict)
    errors: dict[str, dict[int, float]] = field(default_factory=dict)
    round: list[Candidate] = field(default_factory=list)
    finished: bool = False

    def close_round(self) -> None:
        """Turn the current round's per-fold losses into outcomes (mean over the group's folds)."""
        for candidate in self.round:
            losses = [x for x in self.losses.get(str(candidate.mask), {}).values() if x is not None]
            ok = [x for x in losses if x == x]  # NaN is a failed candidate too
            errors = list(self.errors.get(str(candidate.mask), {}).values())
            # The standard error of a mean over folds: independent folds' errors add in quadrature.
            se = (
                math.sqrt(sum(e * e for e in errors)) / len(errors) if ok and len(errors) == len(ok) else None
            )
            self.history.append(Outcome(candidate, sum(ok) / len(ok) if ok else None, se))
        self.round = []

    def trials(self, candidates: Sequence[Candidate]) -> list[Trial]:
        """Start a round: the trials of ``candidates`` on every fold of the group."""
        self.round = list(candidates)
        return [
            Trial(str(c.mask), f, "search", c.round, str(c.parent) if c.parent else None)
            for c in candidates
            for f in self.folds
        ]
