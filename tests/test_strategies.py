"""Search strategies on scripted loss landscapes: no Ray, no training."""

import random

import pytest

from fusionsearch.mask import FusionMask
from fusionsearch.search.strategies import (
    SFSA,
    BeamSearch,
    Exhaustive,
    Outcome,
    RandomSearch,
    TPESearch,
    best_outcome,
)
from fusionsearch.settings import ConfigError


def simulate(strategy, landscape):
    """Run ``strategy`` against ``landscape`` ({mask string: loss or None}); return the history."""
    history = []
    for _ in range(100):
        candidates = strategy.next_round(history)
        if not candidates:
            return history
        history += [Outcome(c, landscape[str(c.mask)]) for c in candidates]
    raise AssertionError("strategy did not finish")


def trained(history):
    """(round, mask, parent) of every candidate but the controls."""
    return [(o.candidate.round, str(o.candidate.mask), o.candidate.parent and str(o.candidate.parent))
            for o in history if not o.candidate.control]  # fmt: skip


def controls(history):
    return [(o.candidate.round, str(o.candidate.mask)) for o in history if o.candidate.control]


def landscape_from(losses, num_points=4, default=2.0):
    return {str(m): losses.get(str(m), default) for m in FusionMask.all_masks(num_points)}


def test_sfsa_exact_sequence_and_stop_rule():
    land = landscape_from({
        "0000": 1.0, "1000": 0.9, "0100": 0.5, "0010": 0.7, "0001": 0.8,
        "1100": 0.6, "0110": 0.4, "0101": 0.45,
        "1110": 0.5, "0111": 0.41,
    })  # fmt: skip
    history = simulate(SFSA(), land)
    assert trained(history) == [
        (0, "0000", None),
        (1, "1000", "0000"), (1, "0100", "0000"), (1, "0010", "0000"), (1, "0001", "0000"),
        (2, "1100", "0100"), (2, "0110", "0100"), (2, "0101", "0100"),
        (3, "1110", "0110"), (3, "0111", "0110"),
    ]  # fmt: skip
    # Each round continues its parent beside the children: the control, warm-started from it.
    assert controls(history) == [(1, "0000"), (2, "0100"), (3, "0110")]
    assert all(o.candidate.parent == o.candidate.mask for o in history if o.candidate.control)
    assert str(SFSA().chosen(history).candidate.mask) == "0110"
    assert controls(simulate(SFSA(control="none"), land)) == []  # the paper's rule: no control


def test_sfsa_stops_after_round_one_when_nothing_beats_baseline():
    land = landscape_from({"0000": 0.5}, default=0.6)
    history = simulate(SFSA(), land)
    assert len(trained(history)) == 5 and str(SFSA().chosen(history).candidate.mask) == "0000"


def test_sfsa_ties_do_not_count_as_improvement_and_min_delta_applies():
    assert len(trained(simulate(SFSA(), landscape_from({"0000": 0.5}, default=0.5)))) == 5
    land = landscape_from({"0000": 0.5, "0100": 0.49, "0110": 0.3}, default=0.6)
    assert len(trained(simulate(SFSA(min_delta=0.05), land))) == 5  # 0.49 is not 0.05 better
    assert len(trained(simulate(SFSA(min_delta=0.0), land))) > 5


def test_sfsa_stops_when_every_point_is_active():
    land = {str(m): 1.0 - 0.1 * len(m.active) - 0.01 * int(str(m), 2) / 16 for m in FusionMask.all_masks(4)}
    history = simulate(SFSA(), land)
    assert len(trained(history)) == 1 + 4 + 3 + 2 + 1
    assert len(controls(history)) == 4
    assert str(SFSA().chosen(history).candidate.mask) == "1111"


def sfsa_by_definition(num_points, land, min_delta=0.0):
    """SFSA written from the paper's definition, independently of the strategies module.

    Train A0 = 0...0; each round, train every one-point extension of the current best,
    warm-started from it; keep the round's best (lowest loss, then lowest bit string) if it
    beats the current best by more than ``min_delta``, else stop.
    """
    best = "0" * num_points
    best_loss, trained, round_ = land[best], [(0, best, None)], 0
    while "0" in best:
        round_ += 1
        children = [best[:i] + "1" + best[i + 1 :] for i in range(num_points) if best[i] == "0"]
        trained += [(round_, child, best) for child in children]
        winner = min(children, key=lambda c: (land[c], c))
        if not land[winner] < best_loss - min_delta:
            break
        best, best_loss = winner, land[winner]
    return trained, best


@pytest.mark.parametrize("num_points", [3, 4, 5, 8])
@pytest.mark.parametrize("min_delta", [0.0, 0.05])
def test_sfsa_and_beam_one_without_patience_follow_the_definition(num_points, min_delta):
    rng = random.Random(num_points)
    for _ in range(50):
        land = {str(m): rng.random() for m in FusionMask.all_masks(num_points)}
        expected, best = sfsa_by_definition(num_points, land, min_delta)
        for strategy in (
            SFSA(num_points, min_delta),
            SFSA(num_points, min_delta, control="none"),
            BeamSearch(num_points, 1, 0, min_delta),
        ):
            history = simulate(strategy, land)
            assert trained(history) == expected
            assert str(strategy.chosen(history).candidate.mask) == best


PAIR = landscape_from({
    "0000": 0.5, "1000": 0.55, "0010": 0.56, "0100": 0.8, "0001": 0.9, "1010": 0.2,
}, default=1.0)  # fmt: skip


def test_pair_of_points_sfsa_misses_beam_and_exhaustive_find():
    assert str(SFSA().chosen(simulate(SFSA(), PAIR)).candidate.mask) == "0000"
    beam = simulate(BeamSearch(beam_width=2, patience=1), PAIR)
    assert str(BeamSearch(beam_width=2, patience=1).chosen(beam).candidate.mask) == "1010"
    assert controls(beam)[:3] == [(1, "0000"), (2, "1000"), (2, "0010")]  # a control per kept parent
    assert (2, "1010", "1000") in trained(beam)  # warm-started from the better of its parents
    assert str(best_outcome(simulate(Exhaustive(), PAIR)).candidate.mask) == "1010"
    # Without patience, beam also stops after the non-improving first round.
    assert str(best_outcome(simulate(BeamSearch(beam_width=2, patience=0), PAIR)).candidate.mask) == "0000"


def test_beam_deduplicates_and_patience_counts_consecutive_rounds():
    land = landscape_from({"0000": 0.5}, default=0.6)
    history = simulate(BeamSearch(beam_width=2, patience=1), land)
    rounds = [o.candidate.round for o in history]
    assert max(rounds) == 2  # rounds 1 and 2 do not improve: tolerated once, stops at the second
    round2 = [str(o.candidate.mask) for o in history if o.candidate.round == 2]
    assert len(round2) == len(set(round2))
    # The answer is the best mask seen, even when later rounds were explored.
    assert str(best_outcome(history).candidate.mask) == "0000"


def test_exhaustive_covers_every_mask_once():
    for num_points in (3, 4):
        land = landscape_from({}, num_points=num_points, default=1.0)
        history = simulate(Exhaustive(num_points), land)
        masks = [str(o.candidate.mask) for o in history]
        assert sorted(masks) == sorted(str(m) for m in FusionMask.all_masks(num_points))
        assert all(o.candidate.parent == FusionMask.empty(num_points) for o in history[1:])
    scratch = simulate(Exhaustive(from_scratch=True), landscape_from({}))
    assert all(o.candidate.parent is None for o in scratch)


def test_failed_candidates_are_skipped_not_waited_for():
    land = landscape_from({"0000": 1.0, "0100": None, "0010": 0.5, "0011": None, "1010": 0.6}, default=1.5)
    history = simulate(SFSA(), land)
    assert str(SFSA().chosen(history).candidate.mask) == "0010"
    # A round where everything fails ends the search.
    assert len(trained(simulate(SFSA(), landscape_from({"0000": 1.0}, default=None)))) == 5
    assert len(simulate(SFSA(), landscape_from({"0000": None}))) == 1


def masks_of(history):
    return [str(o.candidate.mask) for o in history]


@pytest.mark.parametrize("rival", [RandomSearch, TPESearch])
def test_rivals_train_the_baseline_then_exactly_their_budget_of_distinct_masks(rival):
    land = landscape_from({"0110": 0.1, "0100": 0.5, "0010": 0.6}, default=1.0)
    strategy = rival(budget=7, seed=3)
    history = simulate(strategy, land)
    masks = masks_of(history)
    assert masks[0] == "0000" and len(masks) == len(set(masks)) == 7  # the budget, the baseline included
    assert all(str(o.candidate.parent) == "0000" for o in history[1:])  # warm-started from the baseline
    assert simulate(rival(budget=7, seed=3), land) == history  # seeded: the same proposals again
    assert sorted(masks_of(simulate(rival(budget=16), land))) == sorted(land)  # a full budget: every mask
    assert strategy.chosen(history) == best_outcome(history)
    assert all(o.candidate.parent is None for o in simulate(rival(budget=4, from_scratch=True), land))


def test_random_search_draws_every_fused_mask_equally_often():
    counts = {str(m): 0 for m in FusionMask.all_masks(4)}
    for seed in range(600):
        for mask in masks_of(simulate(RandomSearch(budget=3, seed=seed), landscape_from({})))[1:]:
            counts[mask] += 1
    assert counts.pop("0000") == 0 and sum(counts.values()) == 1200
    assert min(counts.values()) > 50 and max(counts.values()) < 115  # 80 expected for each of 15


def test_tpe_finds_the_best_mask_more_often_than_random_at_equal_budget():
    # A smooth landscape: the loss falls with each point shared with the best mask, 1011.
    land = {str(m): 1.0 - 0.2 * sum(a == b for a, b in zip(str(m), "1011", strict=True))
            for m in FusionMask.all_masks(4)}  # fmt: skip
    found = {}
    for rival in (RandomSearch, TPESearch):
        chosen = [
            best_outcome(simulate(rival(budget=8, seed=seed), land)).candidate.mask for seed in range(20)
        ]
        found[rival] = sum(str(mask) == "1011" for mask in chosen)
    assert found[TPESearch] > found[RandomSearch], found


@pytest.mark.parametrize(("rival", "options", "message"), [
    (RandomSearch, {"budget": 1}, "budget=1: choose 2..16"),
    (TPESearch, {"budget": 17}, "budget=17: choose 2..16"),
    (TPESearch, {"batch": 0}, "batch=0 must be >= 1"),
])  # fmt: skip
def test_rivals_refuse_impossible_budgets(rival, options, message):
    with pytest.raises(ConfigError, match=message):
        rival(**options)


def test_the_control_decides_not_the_parents_old_loss():
    """A child that beats its parent's old loss but not the parent trained as long is not accepted."""
    land = {"0000": 0.50, "0100": 0.40, "1000": 0.60, "0010": 0.60, "0001": 0.60}

    def run(strategy, control_loss):
        history = []
        while candidates := strategy.next_round(history):
            history += [
                Outcome(c, control_loss if c.control else land.get(str(c.mask), 0.7)) for c in candidates
            ]
        chosen = strategy.chosen(history).candidate
        return f"{chosen.mask}{' (control)' if chosen.control else ''}"

    assert run(SFSA(control="none"), control_loss=0.35) == "0100"  # the paper's rule takes it
    # The continued parent is better still: the answer is its mask, with the continued weights.
    assert run(SFSA(), control_loss=0.35) == "0000 (control)"
    assert run(SFSA(), control_loss=0.45) == "0100"  # the child beats its control: fusion helped
    with pytest.raises(ConfigError, match="control='both' is not allowed"):
        SFSA(control="both")
    with pytest.raises(ConfigError, match="alpha=0 must be"):
        BeamSearch(alpha=0)


@pytest.mark.parametrize("searcher", ["sfsa", "beam"])
def test_python_and_the_command_line_have_the_same_rules(searcher):
    """One default per rule: ``SFSASearcher()`` in Python decides as ``fusionsearch run`` does."""
    from fusionsearch.cli import build_parser, run_settings
    from fusionsearch.pipeline import make_searcher
    from searchers import BeamSearcher, SFSASearcher

    args = build_parser().parse_args(["run", "--searcher", searcher])
    from_cli = make_searcher(run_settings(args)["search"], ["T1w", "FLAIR"]).strategy
    from_python = {"sfsa": SFSASearcher, "beam": BeamSearcher}[searcher]().strategy
    assert from_cli == from_python
    assert (from_cli.control, from_cli.alpha, from_cli.extend) == ("parent", 0.05, True)
    no_control = run_settings(build_parser().parse_args(["run", "--control", "none", "--no-extend"]))[
        "search"
    ]
    assert (no_control.control, no_control.extend) == ("none", False)
