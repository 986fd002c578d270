"""The acceptance test's calibration and power, by simulating rounds without training (no Ray, no torch).

The simulated rounds are ``benchmarks/acceptance_calibration.py``'s (its docstring states the
model): every trial's per-sample validation losses wander around the parent's, each keeps its
best epoch on the selection half, and the round is decided as the searchers decide it.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fusionsearch.mask import FusionMask
from fusionsearch.search import acceptance
from fusionsearch.search.acceptance import Evidence
from fusionsearch.search.records import FoldSearch
from fusionsearch.search.strategies import SFSA, Outcome
from fusionsearch.settings import SearchConfig

_spec = importlib.util.spec_from_file_location(
    "acceptance_calibration",
    Path(__file__).resolve().parent.parent / "benchmarks" / "acceptance_calibration.py",
)
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)
accept_rate, SIGMA = calibration.accept_rate, calibration.SIGMA


def at_most_alpha(accepted, rounds):
    """The false-accept rate is consistent with at most alpha: not above it at the 1 % level.

    The test is exact (one hypothesis on subjects that chose nothing), so the simulated rate
    scatters around alpha by its Monte-Carlo error (0.007 at 1,000 rounds).
    """
    return stats.binomtest(accepted, rounds, acceptance.ALPHA, alternative="greater").pvalue > 0.01


@pytest.mark.parametrize("m", [4, 8])
@pytest.mark.parametrize(("epochs", "rho"), [(8, 0.0), (8, 0.9), (30, 0.5), (30, 0.9)])
def test_no_true_effect_is_accepted_at_most_alpha_of_the_time(m, epochs, rho):
    accepted, rounds = accept_rate(m, epochs, rho, seed=m * 100 + epochs)
    assert at_most_alpha(accepted, rounds), accepted / rounds
    assert accepted / rounds < 0.075  # the old margin (z = 2) accepted 30-94 % of such rounds


def test_against_the_parent_the_paper_rule_is_calibrated_too():
    assert at_most_alpha(*accept_rate(4, 30, 0.5, control=False, seed=7))


@pytest.mark.parametrize("m", [4, 8])
def test_a_gain_of_0_7_of_the_per_sample_spread_is_found_at_least_80_percent_of_the_time(m):
    """Power: one child's losses 0.07 (0.7 sigma) below its siblings' and the control's; 40 test subjects."""
    accepted, rounds = accept_rate(m, 12, 0.5, gain=0.7 * SIGMA, rounds=400, seed=m)
    assert accepted / rounds >= 0.8


@pytest.mark.parametrize("m", [4, 8])
def test_at_the_default_margin_a_gain_of_one_sigma_is_found_and_noise_stays_below_alpha(m):
    """The searchers test a gain against min_delta (0.02): power for 0.1 (1 sigma), and no more false
    accepts than against 0."""
    margin = SearchConfig().min_delta
    assert margin > 0 and SFSA().min_delta == margin
    accepted, rounds = accept_rate(m, 12, 0.5, gain=SIGMA, rounds=400, seed=m, min_delta=margin)
    assert accepted / rounds >= 0.8
    assert at_most_alpha(*accept_rate(m, 30, 0.5, seed=m + 1, min_delta=margin))


def test_a_negligible_but_consistent_gain_is_not_a_fusion_effect():
    """On a task one modality solves, a child's losses sat a hair below its control's on every subject
    (gains 0.0002-0.02 nats at p = 2e-10 to 0.03): significant against 0, not above the margin."""
    control = tuple(np.linspace(0.001, 0.05, 60))
    child = tuple(x - 0.005 + 0.002 * np.sin(i) for i, x in enumerate(control))
    reference, candidate = Evidence(0.02, 0.1, 5, control, START), Evidence(0.015, 0.1, 5, child, START)
    assert acceptance.judge(candidate, reference, min_delta=0.0).accepted  # p < 1e-10 against 0
    verdict = acceptance.judge(candidate, reference, min_delta=SearchConfig().min_delta)
    assert not verdict.accepted and verdict.p_value > 0.5 and verdict.gain == pytest.approx(0.005, abs=1e-3)


def test_a_child_whose_best_epoch_is_zero_is_never_an_improvement():
    start = tuple(np.linspace(0.5, 1.0, 20))
    stayed = Evidence(0.40, 0.41, 0, tuple(x - 1e-7 for x in start), start)  # a hair below, by float noise
    assert not acceptance.judge(stayed, None).accepted
    assert not acceptance.judge(stayed, Evidence(0.45, 0.41, 3, start, start)).accepted
    moved = Evidence(0.30, 0.41, 4, tuple(x - 0.1 for x in start), start)
    assert acceptance.judge(moved, None).accepted


START = tuple(np.linspace(0.6, 0.8, 20))


def plateau(candidate, start=START, chance=None):
    """A trial that never got below its start (best epoch 0); ``chance``: the class-frequency losses."""
    loss = float(np.mean(start))
    return Outcome(candidate, loss, Evidence(loss, loss, 0, start, start, chance))


def learning(candidate, gain, start=START):
    """A trial whose losses fell by ``gain`` (give or take a little) from its start."""
    wobble = 0.01 * np.sin(np.arange(len(start)))
    holdout = tuple(np.asarray(start) - gain + wobble)
    loss = float(np.mean(start)) - gain
    return Outcome(candidate, loss, Evidence(loss, float(np.mean(start)), 5, holdout, start))


def test_a_round_that_learned_nothing_is_extended_once_then_decided():
    strategy = SFSA()
    baseline = strategy.next_round([])
    history = [learning(baseline[0], 0.0)]
    round1 = strategy.next_round(history)
    assert [c.control for c in round1] == [False] * 4 + [True]
    history += [plateau(c) for c in round1]  # nothing learned: the plateau before sudden learning
    assert strategy.decisions(history)[-1].learned is False
    extension = strategy.next_round(history)
    assert sorted((str(c.mask), c.control, c.extension) for c in extension) == sorted(
        (str(c.mask), c.control, 1) for c in round1
    )
    assert all(c.parent == FusionMask("0000") and c.round == 1 for c in extension)
    trials = FoldSearch((0,)).trials(extension)
    assert all(t.parent_mask == "0000" and t.extension == 1 for t in trials)  # again, from the same parent
    history += [learning(c, 0.2 if str(c.mask) == "0100" else 0.05) for c in extension]
    decision = strategy.decisions(history)[-1]
    assert decision.extension == 1 and decision.learned is True
    assert decision.accepted.candidate == extension[1] and decision.reference.candidate.control
    assert decision.verdict.gain == pytest.approx(0.15)
    following = strategy.next_round(history)
    assert {str(c.parent) for c in following} == {"0100"} and not any(c.extension for c in following)
    assert strategy.chosen(history).candidate == extension[1]  # the continued child: its weights go on
    # A round that learned something but where no child beat the control is not extended: stop.
    beaten = [*history[:1], *[learning(c, 0.3 if c.control else 0.1) for c in round1]]
    assert strategy.next_round(beaten) == [] and str(strategy.chosen(beaten).candidate.mask) == "0000"
    # A plateau after the extension is not extended again: the search answers the parent.
    stuck = [*history[: 1 + len(round1)], *[plateau(c) for c in extension]]
    assert strategy.next_round(stuck) == [] and str(strategy.chosen(stuck).candidate.mask) == "0000"
    assert SFSA(extend=False).next_round(history[: 1 + len(round1)]) == []
    # Nothing improved, but the start was already far better than chance: converged, not a plateau.
    converged = [plateau(c, chance=tuple(x + 0.5 for x in START)) for c in round1]
    settled = [*history[:1], *converged]
    assert strategy.decisions(settled)[-1].learned is True and strategy.next_round(settled) == []
    at_chance = [plateau(c, chance=START) for c in round1]  # the start is no better than chance
    assert strategy.decisions([*history[:1], *at_chance])[-1].learned is False


CHANCE = (float(np.log(2)),) * 40  # a balanced binary task: -log 0.5 for every sample


def crept(candidate, share):
    """A trial (from a start at chance) whose test-half losses removed ``share`` of the chance loss."""
    rng = np.random.default_rng(len(str(candidate.mask)) + 7 * candidate.control + 13 * candidate.extension)
    holdout = tuple(CHANCE[0] * (1 - share) + 0.05 * rng.standard_normal(len(CHANCE)))
    loss = float(np.mean(holdout))
    return Outcome(candidate, loss, Evidence(loss, CHANCE[0], 7, holdout, CHANCE, CHANCE))


def test_learned_means_a_fifth_of_the_chance_loss_removed_by_the_round_or_its_start():
    round1 = SFSA().next_round([learning(SFSA().next_round([])[0], 0)])

    def round_of(*shares):
        return [crept(c, share).evidence for c, share in zip(round1, shares, strict=False)]

    assert acceptance.learned(round_of(0.07, 0.02, 0.0)) is False  # crept 7 %: still the plateau
    assert acceptance.learned(round_of(0.02, 0.35, 0.0)) is True  # one trial jumped
    # 20 % as the point estimate is not enough: the test asks for more than a fifth, at alpha.
    assert acceptance.learned(round_of(0.2, 0.2, 0.2)) is False
    # Its start had learned (a later round): nothing improved, but that is convergence, not a plateau.
    start = tuple(x * 0.5 for x in CHANCE)
    converged = Evidence(0.35, 0.35, 0, start, start, CHANCE)
    assert acceptance.learned([converged]) is True
    assert acceptance.learned([Evidence(0.6, 0.6, 0, CHANCE, CHANCE, None)]) is False  # no chance: its start
    assert acceptance.learned([Evidence(0.6)]) is None  # no per-sample losses


def test_a_child_that_passes_while_nothing_learned_waits_for_the_extension():
    """The colocalized case (seed 2): a child crept further than its control and passed the test,
    while the point that learns had not yet jumped; the round is extended before it is decided."""
    strategy = SFSA()
    history = [learning(strategy.next_round([])[0], 0.0)]
    round1 = strategy.next_round(history)
    shares = {"0010": 0.12, "1000": 0.05}  # the rest and the control: 0.02
    history += [crept(c, shares.get(str(c.mask), 0.02)) for c in round1]
    decision = strategy.decisions(history)[-1]
    assert str(decision.tested.candidate.mask) == "0010" and decision.verdict.accepted  # passes the test
    assert decision.learned is False
    extension = strategy.next_round(history)
    assert {c.extension for c in extension} == {1} and len(extension) == len(round1)
    # With twice the budget, 1000 jumps: the round is decided on the second attempt.
    jumped = {"1000": 0.7, "0010": 0.15}
    history += [crept(c, jumped.get(str(c.mask), 0.03)) for c in extension]
    decision = strategy.decisions(history)[-1]
    assert decision.learned is True and decision.extension == 1
    assert str(decision.accepted.candidate.mask) == "1000"
    assert {str(c.parent) for c in strategy.next_round(history)} == {"1000"}
    assert str(strategy.chosen(history).candidate.mask) == "1000"
    # Without the extension, the paper's greedy step keeps the creeping child.
    assert str(SFSA(extend=False).chosen(history[: 1 + len(round1)]).candidate.mask) == "0010"
