"""Replicates (``--repeats``): answers, point inclusion with exact intervals, accuracy spread (no Ray)."""

import math

import pyarrow as pa
import pytest

from fusionsearch.report.evaluation import PREDICTIONS
from fusionsearch.report.replicates import chosen_answers, point_inclusion, replicate_accuracy, replicates
from fusionsearch.search.records import SCHEMA


def test_point_inclusion_counts_answers_with_clopper_pearson_intervals():
    inclusion = point_inclusion(["0100", "0110", "0100"])
    assert [(p.point, p.count, p.n) for p in inclusion] == [(1, 0, 3), (2, 3, 3), (3, 1, 3), (4, 0, 3)]
    # The exact interval's closed forms: k = n gives [(alpha/2)^(1/n), 1], k = 0 [0, 1 - (alpha/2)^(1/n)].
    assert inclusion[1].low == pytest.approx(0.025 ** (1 / 3)) and inclusion[1].high == 1
    assert inclusion[0].low == 0 and inclusion[0].high == pytest.approx(1 - 0.025 ** (1 / 3))
    assert inclusion[2].low < 1 / 3 < inclusion[2].high and inclusion[2].frequency == pytest.approx(1 / 3)


def rows(chosen):
    """Candidates rows: ``chosen`` maps (fold, repeat) to the chosen mask; each also trained 0000."""
    out = []
    for (fold, repeat), mask in chosen.items():
        out += [{"fold": fold, "repeat": repeat, "role": "search", "mask": "0000", "chosen": mask == "0000"}]
        if mask != "0000":
            out += [{"fold": fold, "repeat": repeat, "role": "search", "mask": mask, "chosen": True}]
    return out


def test_a_pooled_search_gives_one_answer_per_replicate_not_per_fold():
    chosen = {(f, r): m for f in range(3) for r, m in enumerate(["0100", "0010"])}
    assert chosen_answers(rows(chosen)) == ["0100", "0010"] * 3
    assert chosen_answers(rows(chosen), pooled=True) == ["0100", "0010"]


def predictions(accuracy):
    """Predictions of 10 subjects per (fold, repeat, method) with the given accuracy."""
    out = []
    for (fold, repeat, method), right in accuracy.items():
        for i in range(10):
            label, hit = i % 2, i < right
            probabilities = [0.2, 0.8] if (label == 1) == hit else [0.8, 0.2]
            out.append({"fold": fold, "repeat": repeat, "method": method, "mask": "0000",
                        "sample_id": f"s{fold}{i}", "label": label,
                        "probabilities": probabilities})  # fmt: skip
    return pa.Table.from_pylist(out, schema=PREDICTIONS)


def test_accuracy_per_replicate_pools_folds_and_skips_methods_of_one_replicate():
    table = predictions({(0, 0, "chosen"): 10, (1, 0, "chosen"): 8, (0, 1, "chosen"): 6, (1, 1, "chosen"): 6,
                         (0, 0, "unimodal T1w"): 7, (1, 0, "unimodal T1w"): 7})  # fmt: skip
    [chosen] = replicate_accuracy(table)
    assert chosen.method == "chosen" and chosen.accuracies == (0.9, 0.6)
    assert chosen.mean == pytest.approx(0.75) and chosen.std == pytest.approx(math.sqrt(0.045))


def test_a_search_run_once_has_no_replicates_and_one_run_twice_has():
    once = pa.Table.from_pylist(rows({(0, 0): "0100", (1, 0): "0010"}), schema=SCHEMA)
    assert replicates(once, predictions({(0, 0, "chosen"): 9})) is None
    twice = pa.Table.from_pylist(rows({(0, 0): "0100", (0, 1): "0110"}), schema=SCHEMA)
    result = replicates(twice, predictions({(0, 0, "chosen"): 9, (0, 1, "chosen"): 7}))
    assert result.repeats == 2 and result.answers == ("0100", "0110")
    assert [p.count for p in result.inclusion] == [0, 2, 1, 0]
    assert result.accuracy[0].accuracies == (0.9, 0.7)
