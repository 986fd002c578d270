"""What a search cost: trials, compute hours, wall time, and what exhaustive search would need."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fusionsearch.search.experiment import RunRecord
from fusionsearch.search.records import replicate


@dataclass(frozen=True)
class Cost:
    """The cost of one search over its folds (and replicates).

    Attributes:
        repeats: replicates of each fold's search (``--repeats``); the per-fold and exhaustive
            figures count each replicate as a search of its own.
        unit: ``GPU-hours`` when trials had GPUs, else ``CPU-hours``.
        search_candidates: trials of the search itself: candidates, controls and extensions.
        search_compute: compute of those trials, in ``unit``.
        controls: of the search's trials, the rounds' controls (parents continued).
        extensions: of the search's trials, the second attempts (twice the budget) of rounds that
            learned nothing.
        total_compute: the same with the baselines (unimodal networks, ensemble members).
        wall_hours: first trial start to last trial end.
        exhaustive_compute: what exhaustive search needs (measured for an exhaustive search,
            else the mean candidate times the number of masks and folds).
        peak_rss_mb: median and maximum peak memory per trial, if reported.
        efficiency: the share of the trials' wall time spent in training steps (``None`` when
            the trials did not report it); ``eval_share``, ``checkpoint_share`` and ``setup_share``
            likewise for validation, checkpoints and setup (building the network and its batches).
    """

    folds: int
    search_candidates: int
    baseline_trials: int
    unit: str
    search_compute: float
    total_compute: float
    wall_hours: float
    exhaustive_candidates: int
    exhaustive_compute: float
    exhaustive_measured: bool
    peak_rss_mb: tuple[float, float] | None
    controls: int = 0
    extensions: int = 0
    repeats: int = 1
    efficiency: float | None = None
    eval_share: float | None = None
    checkpoint_share: float | None = None
    setup_share: float | None = None

    @property
    def search_candidates_per_fold(self) -> float:
        """Per fold and replicate."""
        return self.search_candidates / (self.folds * self.repeats) if self.folds else math.nan


def _worker_seconds(row: dict) -> float:
    """A trial's wall time times its data-parallel workers (each held its own GPU or CPUs)."""
    return (row["train_seconds"] or 0.0) * (row.get("workers") or 1)


def search_cost(candidates: pa.Table, run: RunRecord, num_points: int) -> Cost:
    """The :class:`Cost` of the trials in ``candidates`` under ``run``'s per-trial resources."""
    rows = [r for r in candidates.to_pylist() if r["status"] == "ok" or r["train_seconds"]]
    search = [r for r in rows if r["role"] in ("search", "control")]
    searches = {replicate(r) for r in candidates.to_pylist()}
    folds, repeats = len({f for f, _ in searches}), len({r for _, r in searches})
    resources = run.resources or {}
    gpus = resources.get("gpu") or 0
    unit, per_trial = ("GPU-hours", gpus) if gpus else ("CPU-hours", resources.get("cpu", 1))
    seconds = [_worker_seconds(r) for r in search]
    starts = [r["started_at"] for r in rows if r["started_at"]]
    ends = [r["finished_at"] for r in rows if r["finished_at"]]
    exhaustive_candidates = 2**num_points * folds * max(repeats, 1)
    measured = run.searcher == "exhaustive"
    mean_seconds = float(np.mean(seconds)) if seconds else math.nan
    peaks = [r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb") is not None]
    timed = [r for r in rows if r.get("step_seconds") is not None and r["train_seconds"]]
    wall = sum(r["train_seconds"] for r in timed)

    def share(key: str) -> float | None:
        if not wall or all(r.get(key) is None for r in timed):  # an older table lacks the column
            return None
        return sum(r.get(key) or 0.0 for r in timed) / wall

    return Cost(
        folds=folds,
        search_candidates=len(search),
        baseline_trials=len(rows) - len(search),
        unit=unit,
        search_compute=sum(seconds) * per_trial / 3600,
        total_compute=sum(_worker_seconds(r) for r in rows) * per_trial / 3600,
        wall_hours=(max(ends) - min(starts)) / 3600 if starts and ends else math.nan,
        exhaustive_candidates=exhaustive_candidates,
        exhaustive_compute=(sum(seconds) if measured else mean_seconds * exhaustive_candidates)
        * per_trial
        / 3600,
        exhaustive_measured=measured,
        peak_rss_mb=(float(np.median(peaks)), float(max(peaks))) if peaks else None,
        controls=sum(r["role"] == "control" for r in search),
        extensions=sum(bool(r.get("extension")) for r in search),
        repeats=max(repeats, 1),
        efficiency=share("step_seconds"),
        eval_share=share("eval_seconds"),
        checkpoint_share=share("checkpoint_seconds"),
        setup_share=share("setup_seconds"),
    )


def cost_rows(cost: Cost) -> list[list[str]]:
    """The cost as ``[item, value]`` rows, for the terminal, the report and its tables."""
    unit = cost.unit
    how = "measured" if cost.exhaustive_measured else "estimated: mean candidate x count"
    peak = f"{cost.peak_rss_mb[0]:.0f}, {cost.peak_rss_mb[1]:.0f}" if cost.peak_rss_mb else "-"
    folds, per = (
        (str(cost.folds), "fold") if cost.repeats == 1 else (f"{cost.folds} x {cost.repeats}", "search")
    )
    return [
        ["folds" if cost.repeats == 1 else "folds x replicates", folds],
        [
            f"search candidates trained (per {per})",
            f"{cost.search_candidates} ({cost.search_candidates_per_fold:.1f})",
        ],
        [
            "of which controls (parents continued), second attempts of extended rounds (twice the budget)",
            f"{cost.controls}, {cost.extensions}",
        ],
        ["baseline trials (unimodal, ensemble members)", str(cost.baseline_trials)],
        [f"search compute ({unit})", f"{cost.search_compute:.3f}"],
        [f"total compute incl. baselines ({unit})", f"{cost.total_compute:.3f}"],
        ["wall time (hours)", f"{cost.wall_hours:.3f}"],
        ["exhaustive search: candidates", str(cost.exhaustive_candidates)],
        [f"exhaustive search: compute ({unit}, {how})", f"{cost.exhaustive_compute:.3f}"],
        ["peak RSS per trial, MB (median, max)", peak],
        ["efficiency: share of trial time in training steps", _share(cost.efficiency)],
        [
            "share of trial time in validation, in checkpoints, in setup",
            f"{_share(cost.eval_share)}, {_share(cost.checkpoint_share)}, {_share(cost.setup_share)}",
        ],
    ]


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
