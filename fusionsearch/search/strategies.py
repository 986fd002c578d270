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
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from fusionsearch.mask import NUM_POINTS, FusionMask
from fusionsearch.search import acceptance
from fusionsearch.search.acceptance import Evidence, Verdict
from fusionsearch.settings import CONTROLS, ConfigError, SearchConfig, check_alpha, check_choice


@dataclass(frozen=True)
class Candidate:
    """A mask to train in ``round``, warm-started from ``parent``'s weights (None: from scratch).

    ``control``: the round's continued parent (``mask == parent``), trained with exactly the
    children's budget so that a child is compared with as much training as it had.
    ``extension``: 0 for a round's first attempt; 1 when the round learned nothing and is tried
    again: the same candidate from the same parent with twice the budget, whose first budget
    replays the first attempt's batches (the first attempt continued, without storing its
    training state).
    """

    mask: FusionMask
    parent: FusionMask | None
    round: int
    control: bool = False
    extension: int = 0


@dataclass(frozen=True)
class Outcome:
    """A finished candidate: its validation loss, or ``None`` if it failed, and the evidence behind it.

    ``loss`` is the mean loss of the selection half of the validation subjects at the best epoch
    (chosen by it). ``details``: the per-sample losses and the rest of what the acceptance test
    reads (:class:`~fusionsearch.search.acceptance.Evidence`), where the trainable reported them.
    """

    candidate: Candidate
    loss: float | None
    details: Evidence | None = None

    @property
    def ok(self) -> bool:
        return self.loss is not None and not math.isnan(self.loss)

    @property
    def evidence(self) -> Evidence:
        return self.details if self.details is not None else Evidence(self.loss)


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
    """Successful outcomes that are not controls, best first; ties broken by mask for determinism."""
    return sorted(
        (o for o in outcomes if o.ok and not o.candidate.control), key=lambda o: (o.loss, o.candidate.mask)
    )


def best_outcome(history: Sequence[Outcome]) -> Outcome | None:
    """The lowest-loss successful candidate (controls aside), or None."""
    ranked = _ranked(history)
    return ranked[0] if ranked else None


def _final_attempt(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """A round's outcomes of its last attempt (its extension, if it was extended)."""
    last = max((o.candidate.extension for o in outcomes), default=0)
    return [o for o in outcomes if o.candidate.extension == last]


@dataclass(frozen=True)
class Decision:
    """What a round decided: the child it accepted (if any), with its test; whether anything learned.

    Attributes:
        round: the round.
        tested: the child the acceptance test was applied to (the largest selection-half gain
            over its reference), or ``None`` when no child finished.
        reference: what it was compared with: its parent's control, or its parent.
        verdict: the test's result.
        learned: whether the round learned anything: a trial, or its start, removed a fifth of the
            chance loss (:func:`~fusionsearch.search.acceptance.learned`; ``False``: a plateau;
            ``None``: unknown, no per-sample losses).
        extension: the attempt decided on (1: the round was extended).
    """

    round: int
    tested: Outcome | None
    reference: Outcome | None
    verdict: Verdict | None
    learned: bool | None
    extension: int

    @property
    def accepted(self) -> Outcome | None:
        return self.tested if self.verdict is not None and self.verdict.accepted else None


_DEFAULTS = SearchConfig()


@dataclass(frozen=True)
class BeamSearch:
    """Beam search over masks; ``BeamSearch(1, patience=0)`` is exactly SFSA.

    Round 0 trains the no-fusion baseline from scratch. Each later round expands the
    ``beam_width`` best masks of the previous round by one point each (a mask reachable from
    several of them warm-starts from the best) and, with ``control="parent"``, continues each
    of those parents with the children's budget (the *control*). A round *improves* when a child
    passes the acceptance test (:mod:`fusionsearch.search.acceptance`) against its parent's control
    (``control="none"``: against its parent, the paper's rule) at false-accept rate ``alpha``, by
    more than ``min_delta``. When nothing in the round learned (its trials are still on the plateau
    before sudden learning, whether or not a child passed), the round is extended once
    (``extend``): every trial of it is trained again from the same parent with twice the budget
    (the first attempt continued for another budget), and the round is decided again.
    The search tolerates ``patience`` consecutive rounds that do not improve and
    stops at the next one, or when no mask can be extended. The answer is the last accepted child
    (the baseline if none was).
    """

    num_points: int = NUM_POINTS
    beam_width: int = _DEFAULTS.beam_width
    patience: int = _DEFAULTS.beam_patience
    min_delta: float = _DEFAULTS.min_delta
    control: str = _DEFAULTS.control
    alpha: float = _DEFAULTS.alpha
    extend: bool = _DEFAULTS.extend

    def __post_init__(self) -> None:
        if self.beam_width < 1 or self.patience < 0 or self.num_points < 1 or self.min_delta < 0:
            raise ConfigError(
                f"beam_width={self.beam_width} must be >= 1, patience={self.patience} >= 0, "
                f"num_points={self.num_points} >= 1, min_delta={self.min_delta} >= 0"
            )
        check_choice("control", self.control, CONTROLS)
        check_alpha(self.alpha)

    def decisions(self, history: Sequence[Outcome]) -> list[Decision]:
        """Every round's decision, from round 1 (round 0 trains the baseline and decides nothing)."""
        rounds = _rounds(history)
        decisions = []
        for r, outcomes in enumerate(rounds[1:], start=1):
            previous = _final_attempt(rounds[r - 1])
            final = _final_attempt(outcomes)
            children = [o for o in final if o.ok and not o.candidate.control]
            pairs = [(child, self._reference(child, final, previous)) for child in children]
            trials = [o.evidence for o in final if o.ok]
            learned = acceptance.learned(trials, alpha=self.alpha)
            i = acceptance.pick([(c.evidence, ref.evidence if ref else None) for c, ref in pairs])
            if i is None:
                decisions.append(Decision(r, None, None, None, learned, final[0].candidate.extension))
                continue
            child, reference = pairs[i]
            verdict = acceptance.judge(
                child.evidence,
                reference.evidence if reference else None,
                alpha=self.alpha,
                min_delta=self.min_delta,
            )
            decisions.append(Decision(r, child, reference, verdict, learned, child.candidate.extension))
        return decisions

    def _reference(self, child: Outcome, final: list[Outcome], previous: list[Outcome]) -> Outcome | None:
        """The child's parent's control in this attempt, else the parent itself (``None``: not found)."""
        parent = child.candidate.parent
        if self.control == "parent":
            control = next((o for o in final if o.candidate.control and o.candidate.mask == parent), None)
            if control is not None and control.ok:
                return control
        return next((o for o in _ranked(previous) if o.candidate.mask == parent), None)

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        rounds = _rounds(history)
        if not rounds:
            return [Candidate(FusionMask.empty(self.num_points), None, 0)]
        decisions = self.decisions(history)
        stale = 0
        for decision in decisions:
            stale = 0 if decision.accepted else stale + 1
        last = _final_attempt(rounds[-1])
        if decisions and (extension := self._extension(decisions[-1], last)):
            return extension
        parents = _ranked(last)[: self.beam_width]
        if stale > self.patience or not parents:
            return []
        r = len(rounds)
        children: dict[FusionMask, Candidate] = {}
        controls = []
        for parent in parents:  # best first: first parent found wins
            mask = parent.candidate.mask
            for child in mask.extensions():
                children.setdefault(child, Candidate(child, mask, r))
            if self.control == "parent" and mask.extensions():
                controls.append(Candidate(mask, mask, r, control=True))
        return [*children.values(), *controls]

    def _extension(self, decision: Decision, last: list[Outcome]) -> list[Candidate]:
        """Every finished trial of a round that learned nothing, again with twice the budget (once)."""
        if not self.extend or decision.learned is not False or decision.extension:
            return []
        return [replace(o.candidate, extension=o.candidate.extension + 1) for o in last if o.ok]

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The last accepted child (the baseline when no child was accepted), as trained best.

        Its mask is the answer. Its weights are those of the trial of that mask with the lowest
        validation loss among it and its continuations in later rounds (its controls), so that a
        search that stops because no child beat the continued parent answers with the continued
        parent's weights when they are better, not with the shorter-trained original.
        """
        rounds = _rounds(history)
        answer = best_outcome(rounds[0]) if rounds else None
        for decision in self.decisions(history):
            answer = decision.accepted or answer
        if answer is None:
            return None
        continued = [
            o
            for o in history
            if o.ok
            and o.candidate.control
            and o.candidate.mask == answer.candidate.mask
            and o.candidate.round > answer.candidate.round
        ]
        return min([answer, *continued], key=lambda o: o.loss)


@dataclass(frozen=True)
class SFSA:
    """The Sequential Forward Search Algorithm (Guarrasi et al., arXiv 2505.02467), with a control.

    Train the baseline A0; then, in each round, train every one-point extension of the current
    best mask warm-started from it, and beside them the current best continued for the same
    budget (``control="parent"``; ``"none"`` compares with the current best itself, the
    paper's rule). Keep the child that passes the acceptance test (see :class:`BeamSearch`), else
    stop and return the current best. A round where nothing learned is extended once first
    (``extend``). Also stops when every point is active.
    """

    num_points: int = NUM_POINTS
    min_delta: float = _DEFAULTS.min_delta
    control: str = _DEFAULTS.control
    alpha: float = _DEFAULTS.alpha
    extend: bool = _DEFAULTS.extend

    def __post_init__(self) -> None:
        self._beam  # noqa: B018 (checks the settings)

    def next_round(self, history: Sequence[Outcome]) -> list[Candidate]:
        return self._beam.next_round(history)

    def chosen(self, history: Sequence[Outcome]) -> Outcome | None:
        """The current best when the search stopped."""
        return self._beam.chosen(history)

    def decisions(self, history: Sequence[Outcome]) -> list[Decision]:
        """Every round's decision (see :meth:`BeamSearch.decisions`)."""
        return self._beam.decisions(history)

    @property
    def _beam(self) -> BeamSearch:
        return BeamSearch(self.num_points, 1, 0, self.min_delta, self.control, self.alpha, self.extend)


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
