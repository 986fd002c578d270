"""Search strategies over fusion masks: pure functions of the history, no Ray.

A strategy looks at every finished candidate (its mask, parent, round and validation loss,
or ``None`` if it failed) and returns the next round of candidates, or an empty list when
the search is done. Lower loss is better. Rounds are numbered from 0 (the no-fusion
baseline). The Ray adapter in ``searchers/`` schedules whatever a strategy proposes.
"""

from __future__ import annotations

import importlib.util
import math
import random
import warnings
from collections.abc import Callable, Sequence
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
    """A finished candidate: its validation loss, or ``None`` if it failed.

    ``se``: the standard error of its loss decrease from its start (its parent's weights, for a
    warm-started child) over the validation samples, where known.
    """

    candidate: Candidate
    loss: float | None
    se: float | None = None

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

    With ``noise_z > 0`` an improvement must also exceed ``noise_z`` standard errors of the
    round best's own loss decrease over its validation samples (:attr:`Outcome.se`): a child's
    loss is the minimum over its epochs, epoch 0 being its parent, so validation noise alone
    makes some child "improve" by a little.
    """

    num_points: int = NUM_POINTS
    beam_width: int = 2
    patience: int = 1
    min_delta: float = 0.0
    noise_z: float = 0.0

    def _beats(self, outcome: Outcome, best_loss: float) -> bool:
        """Whether ``outcome`` improves on ``best_loss`` by more than the margin."""
        margin = max(self.min_delta, self.noise_z * (outcome.se or 0.0))
        return outcome.loss < best_loss - margin

    def __post_init__(self) -> None:
        if (
            self.beam_width < 1
            or self.patience < 0
            or self.num_points < 1
            or self.min_delta < 0
            or self.noise_z < 0
        ):
            raise ConfigError(
                f"beam_width={self.beam_width} must be >= 1, patience={self.patience} >= 0, "
                f"num_points={self.num_points} >= 1, min_delta={self.min_delta} >= 0, "
                f"noise_z={self.noise_z} >= 0"
            )

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        rounds = _rounds(history)
        if not rounds:
            return [Candidate(FusionMask.empty(self.num_points), None, 0)]
        best_loss, stale = math.inf, 0
        for outcomes in rounds:
            ranked = _ranked(outcomes)
            if ranked and self._beats(ranked[0], best_loss):
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
            if ranked and (answer is None or self._beats(ranked[0], answer.loss)):
                answer = ranked[0]
        return answer


@dataclass(frozen=True)
class SFSA:
    """The Sequential Forward Search Algorithm (Guarrasi et al., arXiv 2505.02467).

    Train the baseline A0; then, in each round, train every one-point extension of the current
    best mask warm-started from it; keep the round's best if its loss improves on the current
    best by more than ``min_delta`` (and, with ``noise_z > 0``, by more than ``noise_z`` standard
    errors of its loss decrease: see :class:`BeamSearch`), else stop and return the current
    best. Also stops when every point is active.
    """

    num_points: int = NUM_POINTS
    min_delta: float = 0.0
    noise_z: float = 0.0

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        return self._beam.next_round(history)

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The current best when the search stopped: improvements of ``min_delta`` or less do not count."""
        return self._beam.chosen(history)

    @property
    def _beam(self) -> BeamSearch:
        return BeamSearch(self.num_points, 1, 0, self.min_delta, self.noise_z)


@dataclass(frozen=True)
class Exhaustive:
    """Every mask: the baseline, then all ``2**m - 1`` others warm-started from it.

    With ``from_scratch=True`` the others start from scratch instead (parent ``None``).
    """

    num_points: int = NUM_POINTS
    from_scratch: bool = False

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        return _baseline_then(history, self.num_points, self.from_scratch, lambda fused: fused)

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The lowest-loss mask of all."""
        return best_outcome(history)


def _baseline_then(
    history: Sequence[Outcome],
    num_points: int,
    from_scratch: bool,
    pick: Callable[[list[FusionMask]], list[FusionMask]],
) -> list[Candidate]:
    """Round 0: the baseline; round 1: ``pick(fused masks)``, warm-started from it; then done."""
    rounds = _rounds(history)
    if not rounds:
        return [Candidate(FusionMask.empty(num_points), None, 0)]
    if len(rounds) > 1:
        return []
    fused = [m for m in FusionMask.all_masks(num_points) if m != FusionMask.empty(num_points)]
    parent = _parent(rounds, from_scratch, num_points)
    return [Candidate(m, parent, 1) for m in pick(fused)]


def sfsa_budget(num_points: int) -> int:
    """The most candidates SFSA trains on one fold: the baseline, then m, m - 1, ..., 1 (11 for m = 4)."""
    return 1 + num_points * (num_points + 1) // 2


def _check_budget(budget: int | None, num_points: int) -> int:
    budget = sfsa_budget(num_points) if budget is None else budget
    if not isinstance(budget, int) or not 2 <= budget <= 2**num_points:
        raise ConfigError(
            f"budget={budget!r}: choose 2..{2**num_points} candidates per fold (the baseline and at least "
            f"one of the {2**num_points - 1} fused masks of m={num_points})"
        )
    return budget


def _parent(rounds: list[list[Outcome]], from_scratch: bool, num_points: int) -> FusionMask | None:
    """Candidates after the baseline warm-start from it, unless ``from_scratch`` or it failed."""
    return None if from_scratch or not _ranked(rounds[0]) else FusionMask.empty(num_points)


@dataclass(frozen=True)
class RandomSearch:
    """The baseline, then ``budget - 1`` fused masks drawn uniformly without replacement, all in round 1.

    A rival for SFSA at equal cost: ``budget`` defaults to SFSA's most candidates
    (:func:`sfsa_budget`). The draw depends on ``seed`` alone, so every fold trains the same masks.
    """

    num_points: int = NUM_POINTS
    budget: int | None = None
    from_scratch: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", _check_budget(self.budget, self.num_points))

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        draw = random.Random(self.seed).sample
        return _baseline_then(
            history, self.num_points, self.from_scratch, lambda fused: draw(fused, self.budget - 1)
        )

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The lowest-loss mask of all."""
        return best_outcome(history)


@dataclass(frozen=True)
class TPESearch:
    """Optuna's TPE sampler over the m points as binary choices, ``batch`` masks a round, ``budget`` in all.

    Round 0 trains the baseline; each later round replays the history into a fresh in-memory
    Optuna study (seeded, so the proposal is a pure function of the history) and asks it for
    ``batch`` new masks (``constant_liar`` keeps a round's asks apart; a mask already trained is
    told its known loss and asked again). TPE starts modelling after ``startup`` random masks;
    Optuna's default (10) would leave it nothing to model within SFSA's budget of 11. Needs
    ``optuna`` (``pip install 'fusionsearch[optuna]'``).
    """

    num_points: int = NUM_POINTS
    budget: int | None = None
    from_scratch: bool = False
    seed: int = 0
    batch: int = 4
    startup: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", _check_budget(self.budget, self.num_points))
        if self.batch < 1 or self.startup < 0:
            raise ConfigError(f"batch={self.batch} must be >= 1 and startup={self.startup} >= 0")
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError(
                "the optuna searcher needs the optuna package, which is not installed; "
                "pip install 'fusionsearch[optuna]' (or pip install optuna)"
            )

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        rounds = _rounds(history)
        if not rounds:
            return [Candidate(FusionMask.empty(self.num_points), None, 0)]
        left = min(self.budget - len(history), self.batch, 2**self.num_points - len(history))
        if left <= 0:
            return []
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # constant_liar is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self.seed, n_startup_trials=self.startup, constant_liar=True
            )
        space = {
            f"p{i}": optuna.distributions.CategoricalDistribution((0, 1)) for i in range(self.num_points)
        }
        study = optuna.create_study(sampler=sampler, direction="minimize")
        known: dict[FusionMask, float | None] = {}
        for outcome in history:
            mask = outcome.candidate.mask
            known[mask] = outcome.loss if outcome.ok else None
            params = {f"p{i}": int(bit) for i, bit in enumerate(str(mask))}
            state = optuna.trial.TrialState.COMPLETE if outcome.ok else optuna.trial.TrialState.FAIL
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=space, value=known[mask], state=state)
            )
        picks: list[FusionMask] = []
        untried = [m for m in FusionMask.all_masks(self.num_points) if m not in known]
        while len(picks) < left:
            for _ in range(50):
                trial = study.ask(space)
                mask = FusionMask("".join(str(trial.params[f"p{i}"]) for i in range(self.num_points)))
                if mask in known and known[mask] is not None:
                    study.tell(trial, known[mask])
                elif mask in known or mask in picks:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    break  # a new mask; left running, so constant_liar steers the next ask away
            else:  # TPE keeps proposing trained masks: take an untried one in a seeded order
                mask = random.Random(self.seed + len(history)).choice([m for m in untried if m not in picks])
            picks.append(mask)
        parent = _parent(rounds, self.from_scratch, self.num_points)
        return [Candidate(m, parent, len(rounds)) for m in picks]

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The lowest-loss mask of all."""
        return best_outcome(history)


STRATEGIES: dict[str, type[Strategy]] = {"sfsa": SFSA, "beam": BeamSearch, "exhaustive": Exhaustive,
                                         "random": RandomSearch, "optuna": TPESearch}  # fmt: skip
