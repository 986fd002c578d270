"""Stratified, subject-grouped cross-validation folds with an inner validation fold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fusionsearch.errors import DataError


@dataclass(frozen=True)
class Fold:
    """Row indices of one fold's training, validation and test samples."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


#: How folds use the k parts: ``rotating`` (fold i tests on part i, validates on part i+1) or
#: ``reserved`` (part 0 is every fold's test part; fold i validates on part i+1; k - 1 folds).
LAYOUTS = ("rotating", "reserved")


def make_folds(
    labels: Sequence[int], subjects: Sequence[str], k: int = 5, seed: int = 0, layout: str = "rotating"
) -> list[Fold]:
    """``k`` folds: fold ``i`` tests on part ``i``, validates on part ``i+1``, trains on the rest.

    With ``layout="reserved"`` (a pooled search, which selects on every fold's validation part at
    once), part 0 is held out of every fold: ``k - 1`` folds, fold ``i`` validating on part
    ``i + 1``, training on the other parts but 0, and all testing on part 0, which no selection
    ever saw.

    The parts come from scikit-learn's ``StratifiedGroupKFold`` (shuffled with ``seed``), so
    each part has about the class balance of the whole and all samples of a subject (e.g. its
    sessions) fall in one part: a subject never straddles train, validation and test. Every
    sample is tested exactly once and used for validation exactly once.
    """
    if k < 3:
        raise DataError(f"--folds {k}: need at least 3 (train, validation and test parts)")
    labels = np.asarray(labels)
    subjects = np.asarray(subjects)
    per_class = {c: len(set(subjects[labels == c])) for c in np.unique(labels)}
    if min(per_class.values()) < k:
        raise DataError(
            f"cannot make {k} subject-grouped folds: subjects per class are {per_class}; use "
            f"--folds {max(min(per_class.values()), 3)} or add subjects"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    parts = [test for _, test in splitter.split(np.zeros(len(labels)), labels, subjects)]
    if layout == "reserved":
        return [
            Fold(
                train=np.sort(np.concatenate([p for j, p in enumerate(parts) if j not in (0, i)])),
                val=np.sort(parts[i]),
                test=np.sort(parts[0]),
            )
            for i in range(1, k)
        ]
    folds = []
    for i in range(k):
        val = parts[(i + 1) % k]
        train = np.sort(np.concatenate([p for j, p in enumerate(parts) if j not in (i, (i + 1) % k)]))
        folds.append(Fold(train=train, val=np.sort(val), test=np.sort(parts[i])))
    return folds


def validation_halves(labels: Sequence[int], subjects: Sequence[str], seed: int = 0) -> np.ndarray:
    """Which validation samples form the *selection half* (``True``); the rest is the *test half*.

    A trial chooses its best epoch, and a round its best child, on the selection half; the gain
    is tested on the test half (:mod:`fusionsearch.search.acceptance`). The halves are
    stratified and subject-grouped (scikit-learn's ``StratifiedGroupKFold`` with 2 splits,
    shuffled with ``seed``); a part too small for that is split by alternating samples of
    each class.
    """
    labels = np.asarray(labels)
    subjects = np.asarray(subjects)
    select = np.zeros(len(labels), dtype=bool)
    try:
        splitter = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
        first, _ = next(splitter.split(np.zeros(len(labels)), labels, subjects))
        select[first] = True
    except ValueError:  # fewer than 2 subjects: alternate within each class
        for c in np.unique(labels):
            select[np.flatnonzero(labels == c)[::2]] = True
    if select.all() or not select.any():
        select[:] = np.arange(len(labels)) % 2 == 0
    return select
