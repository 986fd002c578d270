"""Search strategies over fusion masks: pure functions of the history, no Ray.

A strategy looks at every finished candidate (its mask, parent, round and validation loss,
or ``None`` if it failed) and returns the next round of candidates, or an empty list when
the search is done. Lower loss is better. Rounds are numbered from 0 (the no-fusion
baseline). The Ray adapter in ``searchers/`` schedules whatever a strategy proposes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fusionsearch.mask import NUM_POINTS, FusionMask
from fusionsearch.settings import ConfigError


@dataclass(frozen=True)
class Candidate:
    """A mask to train in ``round``, warm-started from ``parent``'s weights (None: from scratch)."""

    mask: FusionMask
    parent: FusionMask | None
    round: int


@dataclass(frozen=True)
class Outcome:
    """A finished candidate: its validation loss, or ``None`` if it failed."""

    candidate: Candidate
    loss: float | None

    @property
    def ok(self) -> bool:
        return self.loss is not None and not math.isnan(self.loss)


@runtime_checkable
class Strategy(Protocol):
    """A search strategy: a pure function from the history to the next round.

    ``next_round`` returns the candidates of the next round (all of them at once, so they can
    train in parallel), or an empty list when the search is done. A strategy may also define
    ``chosen(history) -> Outcome | None``, its answer (default: :func:`best_outcome`).
    """

    num_points: int

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]: ...


def chosen_outcome(strategy: Strategy, history: Sequence[Outcome]) -> Outcome | None:
    """The search's answer: the strategy's own ``chosen(history)`` if it has one, else the best outcome."""
    chosen = getattr(strategy, "chosen", None)
    return chosen(history) if chosen else best_outcome(history)


def _rounds(history: Sequence[Outcome]) -> list[list[Outcome]]:
    rounds: list[list[Outcome]] = []
    for outcome in history:
        r = outcome.candidate.round
        rounds.extend([] for _ in range(r + 1 - len(rounds)))
        rounds[r].append(outcome)
    return rounds


def _ranked(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Successful outcomes, best first; ties broken by mask for determinism."""
    return sorted((o for o in outcomes if o.ok), key=lambda o: (o.loss, o.candidate.mask))


def best_outcome(history: Sequence[Outcome]) -> Outcome | None:
    """The lowest-loss successful candidate, or None."""
    ranked = _ranked(history)
    return ranked[0] if ranked else None


@dataclass(frozen=True)
class BeamSearch:
    """Beam search over masks; ``BeamSearch(1, patience=0)`` is exactly SFSA.

    Round 0 trains the no-fusion baseline from scratch. Each later round expands the
    ``beam_width`` best masks of the previous round by one point each (a mask reachable from
    several of them warm-starts from the best). A round *improves* when its best loss is below
    the best loss seen before it by more than ``min_delta``; the search tolerates ``patience``
    consecutive rounds that do not improve and stops at the next one, or when no mask can be
    extended. The answer is the best mask seen, counting only improvements of more than ``min_delta``.
    """

    num_points: int = NUM_POINTS
    beam_width: int = 2
    patience: int = 1
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.beam_width < 1 or self.patience < 0 or self.num_points < 1 or self.min_delta < 0:
            raise ConfigError(
                f"beam_width={self.beam_width} must be >= 1, patience={self.patience} >= 0, "
                f"num_points={self.num_points} >= 1, min_delta={self.min_delta} >= 0"
            )

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        rounds = _rounds(history)
        if not rounds:
            return [Candidate(FusionMask.empty(self.num_points), None, 0)]
        best_loss, stale = math.inf, 0
        for outcomes in rounds:
            ranked = _ranked(outcomes)
            if ranked and ranked[0].loss < best_loss - self.min_delta:
                stale = 0
            else:
                stale += 1
            if ranked:
                best_loss = min(best_loss, ranked[0].loss)
        last = rounds[-1]
        if stale > self.patience or not _ranked(last):
            return []
        children: dict[FusionMask, Candidate] = {}
        for parent in _ranked(last)[: self.beam_width]:  # best first: first parent found wins
            for mask in parent.candidate.mask.extensions():
                children.setdefault(mask, Candidate(mask, parent.candidate.mask, len(rounds)))
        return list(children.values())

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The best mask seen, counting only improvements of more than ``min_delta``.

        A round's best replaces the answer only when it beats it by more than ``min_delta``,
        so a child that is better by less (validation noise) does not become the answer.
        """
        answer = None
        for outcomes in _rounds(history):
            ranked = _ranked(outcomes)
            if ranked and (answer is None or ranked[0].loss < answer.loss - self.min_delta):
                answer = ranked[0]
        return answer


@dataclass(frozen=True)
class SFSA:
    """The Sequential Forward Search Algorithm (Guarrasi et al., arXiv 2505.02467).

    Train the baseline A0; then, in each round, train every one-point extension of the current
    best mask warm-started from it; keep the round's best if its loss improves on the current
    best by more than ``min_delta``, else stop and return the current best. Also stops when
    every point is active.
    """

    num_points: int = NUM_POINTS
    min_delta: float = 0.0

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        return self._beam.next_round(history)

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The current best when the search stopped: improvements of ``min_delta`` or less do not count."""
        return self._beam.chosen(history)

    @property
    def _beam(self) -> BeamSearch:
        return BeamSearch(self.num_points, beam_width=1, patience=0, min_delta=self.min_delta)


@dataclass(frozen=True)
class Exhaustive:
    """Every mask: the baseline, then all ``2**m - 1`` others warm-started from it.

    With ``from_scratch=True`` the others start from scratch instead (parent ``None``).
    """

    num_points: int = NUM_POINTS
    from_scratch: bool = False

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        rounds = _rounds(history)
        baseline = FusionMask.empty(self.num_points)
        if not rounds:
            return [Candidate(baseline, None, 0)]
        if len(rounds) > 1:
            return []
        parent = None if self.from_scratch or not _ranked(rounds[0]) else baseline
        return [Candidate(m, parent, 1) for m in FusionMask.all_masks(self.num_points) if m != baseline]

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The lowest-loss mask of all."""
        return best_outcome(history)


STRATEGIES: dict[str, type[Strategy]] = {"sfsa": SFSA, "beam": BeamSearch, "exhaustive": Exhaustive}
