"""The round's acceptance test: did a child beat its reference beyond what selection noise explains?

A round of a greedy search picks the best of several children, each at its best of many
epochs. Both choices are made on the *selection half* of the validation subjects (each
trainable reports ``val_loss``, the mean loss of that half, and picks its best epoch by it);
the gain is then measured on the other, *test half*, which took no part in either choice:

1. the child with the largest selection-half gain over its reference (the continued parent,
   role ``control``, or the parent itself with ``control="none"``) is the round's candidate;
2. its per-sample losses on the test half, at the epoch chosen on the selection half, are
   paired with the reference's and tested one-sided (Student's paired t, ``scipy``) against the
   least gain that counts, ``min_delta``: the child is accepted when the mean gain is above
   ``min_delta`` at ``p < alpha``.

``min_delta`` (0.02 nats of mean cross-entropy by default, about 3 % of a balanced binary task's
chance loss ln 2) is a margin of practical significance. A fusion module changes the network, so
a child can be truly, but negligibly, better than its control: on a task that one modality
solves alone (held-out accuracy near 1, losses near 0) children gained 0.0002-0.02 nats over
their controls at p = 2e-10 to 0.03, which a test against 0 accepts; a fusion point worth
reporting has to buy more than that.

Because one hypothesis is tested on subjects that chose nothing, its false-accept rate is
``alpha`` however many children and epochs there were; ``tests/test_acceptance.py`` shows it by
simulating rounds with no true effect. A child whose best epoch is 0 (it never got past its
parent's weights) is never accepted.

A round has *learned* something when the trial (child or control) with the largest
selection-half gain over its own start (epoch 0: its parent's weights), or that start itself,
removed at least a fifth of the chance loss on the test half: its per-sample losses are below
those of predicting the training part's class frequencies by more than ``LEARNED_SHARE`` (0.2)
of their mean, by the same one-sided paired test at ``alpha``. That share is McFadden's
pseudo-R² of 0.2, the conventional lower end of a good fit (McFadden, 1979), taken from that
convention rather than fitted to a seed (the results page measures it on seeds that took no part
in choosing it). A round that has learned nothing is on the plateau that precedes sudden
learning: its trials have crept a little below chance at most, and which of them crept most says
how fast each crawls, not where fusing helps, whether or not one of them passed the acceptance
test. (Measured on the colocalized task: a child that crept from 0.70 to 0.645 beat its control
by 0.084 nats at p = 0.033, having removed about 7 % of the chance loss, while the point that
learns the task had not yet jumped, and the search kept it.) A round whose start had already
learned and where nothing improved has learned what it could: fusing did not help there.
Without the chance losses, learning means getting below the start.

Trainables that report no per-sample losses (a user's own, the scripted test trainable) get a
plain comparison of ``val_loss`` with the reference's, by more than ``min_delta``, and no
"learned" verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The false-accept rate of a round's decision, and of the "learned" verdict.
ALPHA = 0.05
#: The share of the chance loss a round has to remove to have learned (McFadden's pseudo-R²).
LEARNED_SHARE = 0.2


@dataclass(frozen=True)
class Evidence:
    """What a finished trial tells the test: its losses on both halves, at its best epoch and at its start.

    Attributes:
        loss: mean loss of the selection half at the best epoch (chosen by it).
        start_loss: mean loss of the selection half at epoch 0 (the weights it started from).
        best_epoch: the epoch chosen; 0 means it never improved on its start.
        holdout: per-sample losses of the test half at the best epoch.
        start: per-sample losses of the test half at epoch 0.
        chance: per-sample losses of the test half of a prediction of the training part's class
            frequencies (``-log p(label)``).
    """

    loss: float
    start_loss: float | None = None
    best_epoch: int | None = None
    holdout: tuple[float, ...] | None = None
    start: tuple[float, ...] | None = None
    chance: tuple[float, ...] | None = None

    @property
    def paired(self) -> bool:
        """Whether per-sample losses of the test half are known."""
        return self.holdout is not None and self.start is not None and len(self.holdout) > 1


@dataclass(frozen=True)
class Verdict:
    """The test of one candidate against one reference.

    Attributes:
        gain: mean loss decrease, reference minus candidate, on the test half (or of ``val_loss``
            without per-sample losses).
        p_value: one-sided p-value of the paired test that the gain is above ``min_delta``
            (``None``: no per-sample losses).
        accepted: ``gain > min_delta`` and ``p_value < alpha`` (or, unpaired, ``gain > min_delta``),
            and the candidate trained past epoch 0.
    """

    gain: float
    p_value: float | None
    accepted: bool


def paired_gain(
    reference: Sequence[float], candidate: Sequence[float], margin: float = 0.0
) -> tuple[float, float]:
    """Mean of ``reference - candidate`` and the one-sided p-value that it is above ``margin`` (paired t)."""
    differences = np.asarray(reference, dtype=float) - np.asarray(candidate, dtype=float)
    gain = float(differences.mean())
    if len(differences) < 2:
        return gain, 1.0
    if not np.ptp(differences) > 1e-9:  # no spread: the same shift for every sample (0: the same weights)
        return gain, 0.0 if gain > margin + 1e-9 else 1.0
    from scipy import stats  # here: scipy.stats takes 0.8 s to import, and every trial imports this module

    p_value = float(stats.ttest_1samp(differences, margin, alternative="greater").pvalue)
    return gain, p_value if math.isfinite(p_value) else 1.0


def judge(
    candidate: Evidence,
    reference: Evidence | None,
    *,
    alpha: float = ALPHA,
    min_delta: float = 0.0,
) -> Verdict:
    """``candidate`` against ``reference`` (``None``: against its own start, epoch 0): its gain tested
    against ``min_delta``."""
    if candidate.best_epoch == 0:
        return Verdict(0.0, 1.0 if candidate.paired else None, False)
    if reference is None:
        if candidate.paired:
            gain, p = paired_gain(candidate.start, candidate.holdout, min_delta)
            return Verdict(gain, p, gain > min_delta and p < alpha)
        if candidate.start_loss is None:
            return Verdict(math.nan, None, False)
        gain = candidate.start_loss - candidate.loss
        return Verdict(gain, None, gain > min_delta)
    if candidate.paired and reference.paired and len(reference.holdout) == len(candidate.holdout):
        gain, p = paired_gain(reference.holdout, candidate.holdout, min_delta)
        return Verdict(gain, p, gain > min_delta and p < alpha)
    gain = reference.loss - candidate.loss
    return Verdict(gain, None, gain > min_delta)


def pick(pairs: Sequence[tuple[Evidence, Evidence | None]]) -> int | None:
    """Index of the pair whose candidate gains most over its reference on the selection half.

    A reference ``None`` stands for the candidate's own start. Ties go to the first pair.
    """
    best, best_gain = None, -math.inf
    for i, (candidate, reference) in enumerate(pairs):
        base = candidate.start_loss if reference is None else reference.loss
        gain = -math.inf if base is None else base - candidate.loss
        if gain > best_gain:
            best, best_gain = i, gain
    return best if best is not None else (0 if pairs else None)


def learned(trials: Sequence[Evidence], *, alpha: float = ALPHA) -> bool | None:
    """Whether a round has learned anything: see the module's docstring. ``None``: cannot tell."""
    if not trials or not all(t.paired for t in trials):
        return None
    best = trials[pick([(t, None) for t in trials])]
    if best.chance is None or len(best.chance) != len(best.start):
        return judge(best, None, alpha=alpha).accepted
    margin = LEARNED_SHARE * float(np.mean(best.chance))
    return any(paired_gain(best.chance, losses, margin)[1] < alpha for losses in (best.holdout, best.start))
