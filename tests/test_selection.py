"""No subject behind any selection is ever tested: every searcher and mode, on the real folds (no Ray)."""

import numpy as np
import pytest

from fusionsearch.data.splits import make_folds
from fusionsearch.pipeline import make_searcher
from fusionsearch.settings import SearchConfig

# 120 samples of 70 subjects: some subjects have several sessions, which must never straddle parts.
SUBJECTS = np.array([f"sub-{i % 70:02d}" for i in range(120)])
LABELS = np.array([int(s[-2:]) % 2 for s in SUBJECTS])


def overlaps(search: SearchConfig, layout: str | None = None) -> list[str]:
    """Every (selection, test fold) pair whose subjects overlap, as text."""
    folds = make_folds(LABELS, SUBJECTS, search.folds, seed=0, layout=layout or search.layout)
    searcher = make_searcher(search, ["T1w", "FLAIR"])
    found = []
    for group in searcher.selection_groups():
        # A selection decides on the validation losses of networks trained on the training parts.
        seen = set(SUBJECTS[np.concatenate([np.r_[folds[f].train, folds[f].val] for f in group])])
        for f in group:
            tested = set(SUBJECTS[folds[f].test])
            if seen & tested:
                found.append(f"folds {group} selected on {len(seen & tested)} of fold {f}'s test subjects")
    return found


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fold": 2},
        {"pooled": True},
        {"pooled": True, "searcher": "beam"},
        {"searcher": "beam"},
        {"searcher": "exhaustive"},
        {"searcher": "random"},
        {"searcher": "optuna"},
        {"searcher": "exhaustive", "pooled": True},
    ],
)
def test_the_subjects_of_every_selection_and_of_its_evaluation_are_disjoint(options):
    search = SearchConfig(folds=5, **options)
    assert overlaps(search) == []
    evaluated = {tuple(SUBJECTS[f.test]) for f in make_folds(LABELS, SUBJECTS, 5, 0, search.layout)}
    assert all(len(t) > 0 for t in evaluated)


def test_a_pooled_search_over_rotating_folds_would_select_on_its_test_subjects():
    """What --pooled did before: the check above catches it."""
    assert len(overlaps(SearchConfig(folds=5, pooled=True), layout="rotating")) == 4  # every fold of it


def test_the_reserved_layout_tests_one_part_that_no_fold_trains_or_validates_on():
    folds = make_folds(LABELS, SUBJECTS, 4, seed=1, layout="reserved")
    assert len(folds) == 3 and all(np.array_equal(f.test, folds[0].test) for f in folds)
    validated = np.concatenate([f.val for f in folds])
    assert len(set(validated)) == len(validated)  # each other part validates once
    assert sorted(np.r_[validated, folds[0].test]) == list(range(len(LABELS)))
    assert SearchConfig(folds=4, pooled=True).search_folds == (0, 1, 2)


def test_predictions_of_the_reserved_part_become_one_per_subject():
    import pyarrow as pa

    from fusionsearch.report.evaluation import PREDICTIONS, ensemble_folds

    rows = [
        {
            "fold": f,
            "method": "chosen",
            "mask": "0100",
            "sample_id": s,
            "label": 1,
            "probabilities": [p, 1 - p],
        }
        for f, p in ((0, 0.2), (1, 0.4), (2, 0.9))
        for s in ("a", "b")
    ]
    merged = ensemble_folds(pa.Table.from_pylist(rows, schema=PREDICTIONS)).to_pylist()
    assert [(r["fold"], r["sample_id"]) for r in merged] == [(0, "a"), (0, "b")]
    assert merged[0]["probabilities"] == pytest.approx([0.5, 0.5])  # the mean over the 3 folds' models
