"""The final model's decisions (which mask, which stages, how many epochs, on which samples), without Ray."""

import numpy as np
import pytest

from fusionsearch.data.splits import make_folds
from fusionsearch.errors import UserError
from fusionsearch.report.final import Stage, plan_final
from fusionsearch.settings import DataConfig
from fusionsearch.train.folds import development_rows


def row(fold, mask, parent, round_, best, chosen=False, loss=0.1):
    return {"fold": fold, "repeat": 0, "role": "search", "mask": mask, "parent_mask": parent,
            "round": round_, "extension": 0, "best_epoch": best, "status": "ok", "chosen": chosen,
            "val_loss": loss}  # fmt: skip


def search(fold, lineage, extra=(), loss=0.1):
    """A fold's rows: ``lineage`` [(mask, best epoch)] from scratch, the last chosen (its validation
    loss ``loss``); ``extra`` rows (mask, parent, round, best epoch) not chosen."""
    rows, parent = [], None
    for k, (mask, best) in enumerate(lineage):
        rows.append(row(fold, mask, parent, k, best, chosen=k == len(lineage) - 1, loss=loss))
        parent = mask
    return rows + [row(fold, m, p, r, b) for m, p, r, b in extra]


def test_the_mask_most_folds_chose_retraces_its_lineage_with_the_median_best_epochs():
    rows = [
        *search(0, [("0000", 5), ("1000", 3)], extra=[("0100", "0000", 1, 9), ("1100", "1000", 2, 1)]),
        *search(1, [("0000", 7), ("1000", 2)]),
        *search(2, [("0000", 4), ("0010", 6)]),
        # other replicates' choices do not vote (counted, 0010 would win 3 to 2)
        *[dict(r, repeat=1) for f in (0, 1) for r in search(f, [("0000", 1), ("0010", 1)])],
    ]
    plan = plan_final(rows)
    assert plan.mask == "1000" and plan.folds == (0, 1)
    # stage epochs: median of (5, 7) = 6; median of (3, 2) = 2.5, half rounded up: 3
    assert plan.stages == (Stage("0000", 6, (5, 7)), Stage("1000", 3, (3, 2)))
    assert plan.chosen == (("1000", 2), ("0010", 1))
    # Another chosen mask follows its own folds' lineage.
    other = plan_final(rows, mask="0010")
    assert other.stages == (Stage("0000", 4, (4,)), Stage("0010", 6, (6,))) and other.folds == (2,)


def test_a_tie_goes_to_the_lower_validation_loss_then_fewer_fusion_points_then_the_earliest_fold():
    # Measured (XOR, 240 samples, seed 12): the folds chose 0000, 0001 and 0010, and 0000, the one
    # with the fewest points, had not learned (validation loss 0.69, held-out 0.50 on a new cohort).
    rows = [
        *search(0, [("0000", 2)], loss=0.69),
        *search(1, [("0000", 2), ("0001", 3)], loss=0.08),
        *search(2, [("0000", 2), ("0010", 3)], loss=0.05),
    ]
    assert plan_final(rows).mask == "0010"
    assert plan_final(rows).chosen == (("0010", 1), ("0001", 1), ("0000", 1))
    rows = [
        *search(0, [("0000", 2), ("1000", 2), ("1100", 2)]),
        *search(1, [("0000", 2), ("0010", 2)]),
    ]
    assert plan_final(rows).mask == "0010"
    rows = [*search(0, [("0000", 2), ("0100", 2)]), *search(1, [("0000", 2), ("0010", 2)])]
    assert plan_final(rows).mask == "0100"
    # More folds outvote a lower loss.
    rows = [
        *search(0, [("0000", 2), ("0100", 2)], loss=0.3),
        *search(1, [("0000", 2), ("0100", 2)], loss=0.3),
        *search(2, [("0000", 2), ("0010", 2)], loss=0.01),
    ]
    assert plan_final(rows).mask == "0100"


def test_the_most_common_lineage_is_followed_when_folds_reached_the_mask_differently():
    rows = [
        *search(0, [("0000", 4), ("0010", 4), ("1010", 1)]),
        *search(1, [("0000", 6), ("1000", 2), ("1010", 3)]),
        *search(2, [("0000", 8), ("1000", 4), ("1010", 5)]),
    ]
    plan = plan_final(rows)
    assert [s.mask for s in plan.stages] == ["0000", "1000", "1010"] and plan.folds == (1, 2)
    assert [s.epochs for s in plan.stages] == [7, 3, 4]


def test_a_mask_no_fold_chose_or_a_broken_lineage_is_refused():
    rows = search(0, [("0000", 3), ("1000", 2)])
    with pytest.raises(
        UserError, match=r"--mask 0100: no fold chose it; choose one of the chosen masks \['1000'\]"
    ):
        plan_final(rows, mask="0100")
    with pytest.raises(UserError, match="does not reach a network trained from scratch"):
        plan_final([r for r in rows if r["mask"] != "0000"])
    with pytest.raises(UserError, match="no chosen configuration"):
        plan_final([dict(r, chosen=False) for r in rows])
    with pytest.raises(UserError, match="reported no best epoch"):
        plan_final([dict(r, best_epoch=None) for r in rows])


@pytest.mark.parametrize("layout", ["rotating", "reserved"])
def test_the_development_samples_are_the_folds_training_and_validation_parts(layout):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60).tolist()
    subjects = [f"s{i // 2}" for i in range(60)]  # two sessions per subject
    config = DataConfig(index="unused", cache="unused", folds=4, split_seed=3, layout=layout)
    development, held_out = development_rows(config, labels, subjects)
    folds = make_folds(labels, subjects, 4, 3, layout)
    if layout == "rotating":  # every sample validates some fold: all are development samples
        assert development.tolist() == list(range(60)) and held_out.size == 0
    else:  # the reserved part, every fold's test part, is never trained or selected on
        assert held_out.tolist() == folds[0].test.tolist() and held_out.size > 0
        assert not set(development) & set(held_out)
        assert sorted([*development, *held_out]) == list(range(60))
