"""How much a search's answer owes to its seed: the replicates of ``--repeats R``.

Each fold's search (or the pooled one) ran R times with other training seeds on the same split.
Two summaries: per fusion point, how many of the chosen masks include it, with an exact
(Clopper-Pearson) 95 % binomial interval; per method, the held-out accuracy of each replicate
(its test subjects pooled over folds) and their spread.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.stats import binomtest

from fusionsearch.search.records import replicate


@dataclass(frozen=True)
class PointInclusion:
    """Fusion point ``point`` (1-based, as the mask reads left to right) is in ``count`` of ``n`` answers."""

    point: int
    count: int
    n: int
    low: float
    high: float

    @property
    def frequency(self) -> float:
        return self.count / self.n


@dataclass(frozen=True)
class ReplicateAccuracy:
    """A method's held-out accuracy in each replicate (test subjects pooled over folds)."""

    method: str
    accuracies: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.mean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


@dataclass(frozen=True)
class Replicates:
    """The replicates of a search: its answers (one chosen mask per fold and replicate, or per replicate
    when pooled), how often each point is in them, and each method's accuracy spread."""

    repeats: int
    answers: tuple[str, ...]
    inclusion: tuple[PointInclusion, ...]
    accuracy: tuple[ReplicateAccuracy, ...]


def chosen_answers(candidates: Sequence[dict[str, Any]], pooled: bool = False) -> list[str]:
    """The chosen mask of every (fold, replicate); of every replicate when the search was pooled (one
    selection over all folds, marked on each fold's row)."""
    chosen = {replicate(r): r["mask"] for r in candidates if r["chosen"]}
    if pooled:
        chosen = {(0, repeat): mask for (_, repeat), mask in chosen.items()}
    return [chosen[k] for k in sorted(chosen)]


def point_inclusion(answers: Sequence[str], confidence: float = 0.95) -> list[PointInclusion]:
    """For each fusion point, how many ``answers`` include it, with an exact binomial interval."""
    if not answers:
        return []
    n, result = len(answers), []
    for point in range(len(answers[0])):
        count = sum(mask[point] == "1" for mask in answers)
        interval = binomtest(count, n).proportion_ci(confidence_level=confidence, method="exact")
        result.append(PointInclusion(point + 1, count, n, float(interval.low), float(interval.high)))
    return result


def replicate_accuracy(predictions: pa.Table) -> list[ReplicateAccuracy]:
    """Each method's accuracy per replicate, over all its test predictions of that replicate; only
    methods every replicate has (the unimodal baselines are replicate 0's)."""
    rows = predictions.to_pylist()
    repeats = sorted({r["repeat"] or 0 for r in rows})
    right: dict[tuple[str, int], list[bool]] = {}
    for r in rows:
        right.setdefault((r["method"], r["repeat"] or 0), []).append(
            int(np.argmax(r["probabilities"])) == r["label"]
        )
    methods = dict.fromkeys(m for m, _ in right)
    return [
        ReplicateAccuracy(m, tuple(float(np.mean(right[m, k])) for k in repeats))
        for m in methods
        if all((m, k) in right for k in repeats)
    ]


def replicates(candidates: pa.Table, predictions: pa.Table, pooled: bool = False) -> Replicates | None:
    """The :class:`Replicates` of a search, or ``None`` when it ran once."""
    rows = candidates.to_pylist()
    repeats = len({r.get("repeat") or 0 for r in rows})
    if repeats < 2:
        return None
    answers = tuple(chosen_answers(rows, pooled))
    return Replicates(
        repeats, answers, tuple(point_inclusion(answers)), tuple(replicate_accuracy(predictions))
    )
