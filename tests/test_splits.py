import numpy as np
import pytest

from fusionsearch.data.splits import make_folds
from fusionsearch.errors import DataError


def sessions(n_subjects=30, seed=0):
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for s in range(n_subjects):
        for _ in range(rng.integers(1, 4)):  # 1-3 sessions per subject, one label per subject
            subjects.append(f"sub-{s}")
            labels.append(s % 2)
    return np.array(labels), np.array(subjects)


def test_subjects_never_straddle_and_every_sample_tested_once():
    labels, subjects = sessions()
    folds = make_folds(labels, subjects, k=5, seed=3)
    assert len(folds) == 5
    tested = np.concatenate([f.test for f in folds])
    validated = np.concatenate([f.val for f in folds])
    assert sorted(tested) == list(range(len(labels))) == sorted(validated)
    for fold in folds:
        parts = [set(subjects[fold.train]), set(subjects[fold.val]), set(subjects[fold.test])]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(labels)
        for part in (fold.train, fold.val, fold.test):
            assert 0.2 < labels[part].mean() < 0.8  # stratified: both classes in every part


def test_deterministic_from_seed():
    labels, subjects = sessions()
    a, b, c = (make_folds(labels, subjects, k=4, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.test, y.test) for x, y in zip(a, c, strict=True))


def test_too_few_subjects_is_clear():
    labels, subjects = sessions(n_subjects=6)
    with pytest.raises(DataError, match="subjects per class"):
        make_folds(labels, subjects, k=5)
    with pytest.raises(DataError, match="at least 3"):
        make_folds(labels, subjects, k=2)
