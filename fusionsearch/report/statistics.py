"""Uncertainty of held-out results: bootstrap confidence intervals and paired tests between methods.

All of them pool each method's test predictions over the searched folds (the folds' test parts
are disjoint, so every test subject counts once) and pair methods by sample. Resampling is
stratified by class (scikit-learn's ``resample``) and seeded, so a report is reproducible;
McNemar's test is the exact binomial test on the discordant pairs (scipy).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.utils import resample

from fusionsearch.report.metrics import classification_metrics

#: Bootstrap resamples behind every interval and paired AUC test.
RESAMPLES = 1000


@dataclass(frozen=True)
class Comparison:
    """The chosen mask against another method on the same test subjects.

    Attributes:
        accuracy_difference: chosen minus other.
        only_chosen_right, only_other_right: McNemar's discordant pairs.
        mcnemar_p: exact McNemar p-value (two-sided).
        auc_difference: chosen minus other (NaN where AUC is undefined).
        auc_p: two-sided paired-bootstrap p-value of the AUC difference.
    """

    other: str
    n: int
    accuracy_difference: float
    only_chosen_right: int
    only_other_right: int
    mcnemar_p: float
    auc_difference: float
    auc_p: float


#: Late fusion trained for as many epochs as the chosen mask's whole lineage (role ``longer``).
LONGER_LATE_FUSION = "late fusion, equal epochs"


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(np.mean(probabilities.argmax(1) == labels))


def auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary: the Mann-Whitney U of class 1's scores over class 0's (scipy), i.e. the ROC AUC, fast
    enough for thousands of resamples; multi-class: scikit-learn's one-vs-rest macro AUC."""
    if probabilities.shape[1] == 2:
        positive, negative = probabilities[labels == 1, 1], probabilities[labels == 0, 1]
        if not len(positive) or not len(negative):
            return float("nan")
        return float(stats.mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))
    return classification_metrics(labels, probabilities)["auc"]


METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"accuracy": accuracy, "auc": auc}


def resampled(
    metric: str, labels: np.ndarray, probabilities: np.ndarray, resamples: int, seed: int
) -> np.ndarray:
    """``metric`` on each of :func:`_resamples`' draws, at once: accuracy and the binary AUC (the
    Mann-Whitney U from ranks, scipy's ``rankdata`` along each draw: ties count half, as in
    :func:`auc`) as array operations over all draws; a multi-class AUC draw by draw."""
    index = np.stack(_resamples(labels, resamples, seed))  # (draws, n): stratified, so every draw is n long
    truth = labels[index]
    if metric == "accuracy":
        return np.mean(probabilities.argmax(1)[index] == truth, axis=1)
    if probabilities.shape[1] != 2:
        return np.array([METRIC_FUNCTIONS[metric](truth[d], probabilities[i]) for d, i in enumerate(index)])
    positive = truth == 1
    n_pos, n_neg = positive.sum(1), (~positive).sum(1)
    ranks = stats.rankdata(probabilities[:, 1][index], axis=1)
    u = np.sum(ranks * positive, axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def bootstrap_interval(
    labels: np.ndarray,
    probabilities: np.ndarray,
    metric: str,
    *,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``metric`` over class-stratified bootstrap resamples of the test subjects."""
    values = resampled(metric, labels, probabilities, resamples, seed)
    low, high = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _resamples(labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, ...]:
    """``count`` class-stratified bootstrap resamples of the subjects' indices (the same ones for every
    method of a report: the methods are compared on the same draws)."""
    return _cached_resamples(labels.tobytes(), str(labels.dtype), count, seed)


@functools.lru_cache(maxsize=8)
def _cached_resamples(labels: bytes, dtype: str, count: int, seed: int) -> tuple[np.ndarray, ...]:
    strata = np.frombuffer(labels, dtype=dtype)
    rng = np.random.RandomState(seed)
    index = np.arange(len(strata))
    return tuple(resample(index, stratify=strata, random_state=rng) for _ in range(count))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Discordant pairs (only A right, only B right) and the exact two-sided McNemar p-value."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)


def paired_auc_test(
    labels: np.ndarray,
    probabilities_a: np.ndarray,
    probabilities_b: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """AUC of A minus AUC of B on the same subjects, and its two-sided paired-bootstrap p-value."""
    difference = auc(labels, probabilities_a) - auc(labels, probabilities_b)
    if np.isnan(difference):
        return float("nan"), float("nan")
    deltas = resampled("auc", labels, probabilities_a, resamples, seed) - resampled(
        "auc", labels, probabilities_b, resamples, seed
    )
    deltas = deltas[~np.isnan(deltas)]
    p = 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0))
    return float(difference), float(min(1.0, p))


def compare(
    other: str, labels: np.ndarray, chosen: np.ndarray, against: np.ndarray, seed: int = 0
) -> Comparison:
    """The chosen method's probabilities against ``other``'s, on the same subjects in the same order."""
    right_chosen = chosen.argmax(1) == labels
    right_other = against.argmax(1) == labels
    only_chosen, only_other, p = mcnemar(right_chosen, right_other)
    auc_difference, auc_p = paired_auc_test(labels, chosen, against, seed=seed)
    return Comparison(
        other=other,
        n=len(labels),
        accuracy_difference=float(right_chosen.mean() - right_other.mean()),
        only_chosen_right=only_chosen,
        only_other_right=only_other,
        mcnemar_p=p,
        auc_difference=auc_difference,
        auc_p=auc_p,
    )


def too_small_warning(comparison: Comparison, interval_width: float) -> str | None:
    """A plain-words warning when the test set cannot tell the two methods apart, else ``None``."""
    discordant = comparison.only_chosen_right + comparison.only_other_right
    if comparison.mcnemar_p < 0.05:
        return None
    if discordant < 6:  # even all of them one way gives p >= 0.03: too few disagreements to decide
        return (
            f"only {discordant} of {comparison.n} test subjects are classified differently by the chosen "
            f"mask and {comparison.other}: too few to tell the two apart"
        )
    return (
        f"with {comparison.n} test subjects (accuracy interval {interval_width:.2f} wide) the chosen mask "
        f"and {comparison.other} cannot be told apart (McNemar p = {comparison.mcnemar_p:.2f})"
    )


@dataclass(frozen=True)
class Uncertainty:
    """Pooled held-out results with 95 % intervals, and the chosen mask's paired comparisons."""

    intervals: list[dict]  # method, n, accuracy, its interval, auc, its interval
    comparisons: list[Comparison]
    warnings: list[str]


def pooled(predictions: list[dict]) -> dict[str, tuple[list, np.ndarray, np.ndarray]]:
    """Per method: its (fold, sample) keys, labels and probabilities, pooled over folds in key order."""
    methods: dict[str, list[dict]] = {}
    for row in predictions:
        methods.setdefault(row["method"], []).append(row)
    out = {}
    for method, rows in methods.items():
        rows.sort(key=lambda r: (r["fold"], r["sample_id"]))
        out[method] = (
            [(r["fold"], r["sample_id"]) for r in rows],
            np.array([r["label"] for r in rows]),
            np.array([r["probabilities"] for r in rows], dtype=float),
        )
    return out


def uncertainty(predictions: list[dict], mean_accuracy: dict[str, float], seed: int = 0) -> Uncertainty:
    """Intervals for every method; the chosen mask against late fusion (also at equal epochs), the best
    unimodal network (highest mean accuracy over folds) and the brute-force ensemble, where they were
    evaluated."""
    methods = pooled(predictions)
    intervals = []
    for method, (_, labels, probabilities) in methods.items():
        acc_low, acc_high = bootstrap_interval(labels, probabilities, "accuracy", seed=seed)
        auc_low, auc_high = bootstrap_interval(labels, probabilities, "auc", seed=seed)
        intervals.append(
            {
                "method": method,
                "n": len(labels),
                "accuracy": accuracy(labels, probabilities),
                "accuracy_low": acc_low,
                "accuracy_high": acc_high,
                "auc": auc(labels, probabilities),
                "auc_low": auc_low,
                "auc_high": auc_high,
            }
        )
    comparisons, warnings = [], []
    if "chosen" in methods:
        unimodal = sorted(
            (m for m in methods if m.startswith("unimodal")), key=lambda m: -mean_accuracy.get(m, 0)
        )
        width = next(i["accuracy_high"] - i["accuracy_low"] for i in intervals if i["method"] == "chosen")
        for other in ["late fusion", LONGER_LATE_FUSION, *unimodal[:1], "ensemble"]:
            if other not in methods:
                continue
            keys, labels, chosen = methods["chosen"]
            other_keys, _, against = methods[other]
            if keys != other_keys:  # not the same subjects: no paired test
                continue
            comparison = compare(other, labels, chosen, against, seed=seed)
            comparisons.append(comparison)
            if warning := too_small_warning(comparison, width):
                warnings.append(warning)
    return Uncertainty(intervals, comparisons, warnings)
