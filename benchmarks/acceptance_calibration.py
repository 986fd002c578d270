"""The acceptance test's false-accept rate and power, by simulating rounds (no training, seconds).

    python benchmarks/acceptance_calibration.py                 # the table in the README
    python benchmarks/acceptance_calibration.py --rounds 4000

The model of a round (the methods review's): ``n`` validation subjects, split into the
selection and test halves as a fold's are; the parent's per-sample losses; every trial of the
round (``m`` children and the control) starts from them (epoch 0) and, for ``E`` epochs, its
per-sample losses wander around them: independent across subjects, correlated ``rho`` from one
epoch to the next (AR(1)), spread ``sigma``. Each trial keeps its best epoch on the selection
half, as the training loop does. Under the null no trial is better than another; a *gain*
lowers the first child's losses by ``gain`` from epoch 1 on. Each round is decided by
:mod:`fusionsearch.search.acceptance` exactly as the searchers decide it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np

from fusionsearch.data.splits import validation_halves
from fusionsearch.search import acceptance
from fusionsearch.search.acceptance import Evidence
from fusionsearch.settings import SearchConfig

SIGMA = 0.1


def simulated_rounds(
    rng: np.random.Generator,
    select: np.ndarray,
    rounds: int,
    m: int,
    epochs: int,
    rho: float,
    gain: float = 0.0,
) -> Iterator[tuple[list[Evidence], Evidence]]:
    """Each round's children (the first gains ``gain``) and control, as the trainable reports them."""
    n = len(select)
    parent = rng.gamma(2.0, 0.15, (rounds, 1, 1, n))
    z = np.zeros((rounds, m + 1, epochs + 1, n))
    noise = rng.standard_normal((rounds, m + 1, epochs, n))
    for e in range(1, epochs + 1):
        z[:, :, e] = rho * z[:, :, e - 1] + np.sqrt(1 - rho**2) * noise[:, :, e - 1]
    shift = np.zeros((1, m + 1, epochs + 1, 1))
    shift[0, 0, 1:] = gain
    curves = parent + SIGMA * z - shift
    best = np.argmin(curves[..., select].mean(-1), axis=2)  # each trial's best epoch, on the selection half
    for r in range(rounds):
        start = parent[r, 0, 0]
        trials = [
            Evidence(float(c[select].mean()), float(start[select].mean()), int(best[r, t]),
                     tuple(c[~select]), tuple(start[~select]))
            for t, c in enumerate(curves[r, np.arange(m + 1), best[r]])
        ]  # fmt: skip
        yield trials[:m], trials[m]


def accept_rate(
    m: int, epochs: int, rho: float, gain: float = 0.0, rounds: int = 1000, seed: int = 0,
    control: bool = True, n: int = 80, min_delta: float = 0.0,
) -> tuple[int, int]:  # fmt: skip
    """(rounds that accepted a child, rounds); with a gain, only the child that has it counts.
    ``min_delta``: the least gain that counts (the searchers' default is ``SearchConfig().min_delta``)."""
    rng = np.random.default_rng(seed)
    select = validation_halves(rng.integers(0, 2, n), [f"s{i}" for i in range(n)], seed)
    accepted = 0
    for children, control_evidence in simulated_rounds(rng, select, rounds, m, epochs, rho, gain):
        reference = control_evidence if control else None
        i = acceptance.pick([(c, reference) for c in children])
        verdict = acceptance.judge(children[i], reference, min_delta=min_delta)
        accepted += verdict.accepted and (gain == 0 or i == 0)
    return accepted, rounds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2000, help="simulated rounds per row (default: 2000)")
    parser.add_argument("--n", type=int, default=80, help="validation subjects (default: 80)")
    args = parser.parse_args()
    print(f"false-accept rate with no true effect (alpha = {acceptance.ALPHA}), {args.rounds} rounds each, "
          f"n = {args.n}, sigma = {SIGMA}:")  # fmt: skip
    print(f"{'m':>3} {'epochs':>6} {'rho':>4} {'vs control':>11} {'vs parent':>10}")
    for m in (4, 8):
        for epochs, rho in ((8, 0.0), (8, 0.9), (30, 0.5), (30, 0.9)):
            seed = m * 100 + epochs + int(10 * rho)
            rates = [accept_rate(m, epochs, rho, rounds=args.rounds, seed=seed, control=c, n=args.n)
                     for c in (True, False)]  # fmt: skip
            print(f"{m:>3} {epochs:>6} {rho:>4} " + " ".join(f"{a / r:>10.4f}" for a, r in rates))
    print(f"\npower: one child gains `gain` over its siblings and the control (epochs 12, rho 0.5, "
          f"{args.rounds // 4} rounds each):")  # fmt: skip
    margin = SearchConfig().min_delta
    print(f"{'gain / sigma':>12} {'m = 4':>7} {'m = 8':>7}   "
          f"with the default min_delta = {margin}: m = 4, m = 8")  # fmt: skip
    for ratio in (0.3, 0.5, 0.6, 0.7, 1.0, 1.2):
        rates = [accept_rate(m, 12, 0.5, ratio * SIGMA, args.rounds // 4, seed=m, n=args.n, min_delta=delta)
                 for delta in (0.0, margin) for m in (4, 8)]  # fmt: skip
        print(f"{ratio:>12} " + " ".join(f"{a / r:>7.3f}" for a, r in rates))


if __name__ == "__main__":
    main()
