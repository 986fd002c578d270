"""Ray overhead of a search round: rounds of k scripted candidates of known duration.

    python benchmarks/round_overhead.py --ks 1 2 4 8 --duration 2 --rounds 4

For each k, a search of ``--rounds`` rounds of k candidates each (every candidate sleeps
``--duration`` seconds and writes a real checkpoint) runs on a local Ray with k logical CPUs.
From the trials' own timestamps: a round's wall time is the time from the previous round's
last finish to its own last finish; its overhead is that minus its slowest trial, i.e. what
Ray Tune, the searcher and trial start-up add. The first round (Ray and actor warm-up) is
reported apart. Also printed: how far apart a round's trials start (they should start together).
Trials run in actors kept warm between rounds; choose ``--duration`` longer than it takes the
machine to start k actors (about 1.5 s of CPU each), or not all k will ever start.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass

import ray

from fusionsearch.mask import FusionMask
from fusionsearch.search.strategies import Candidate
from fusionsearch.tune.driver import run_search
from searchers import RoundSearcher
from trainables.scripted import scripted_trainable

POINTS = 6  # 64 distinct masks: up to 8 rounds of 8


@dataclass(frozen=True)
class FixedRounds:
    """``rounds`` rounds of ``k`` new masks each, from scratch, whatever the losses."""

    k: int
    rounds: int
    num_points: int = POINTS

    def next_round(self, history):
        r = len(history) // self.k
        if r >= self.rounds:
            return []
        return [Candidate(FusionMask(f"{r * self.k + i:0{POINTS}b}"), None, r) for i in range(self.k)]


def measure(k: int, rounds: int, duration: float, storage: str) -> dict[str, float]:
    landscape = {f"{i:0{POINTS}b}": 1.0 for i in range(2**POINTS)}
    result = run_search(RoundSearcher(FixedRounds(k, rounds)), trainable=scripted_trainable,
                        config={"landscape": landscape, "duration": duration}, storage_path=storage,
                        name=f"k{k}", resources={"cpu": 1}, max_failures=0)  # fmt: skip
    rows = result.table.to_pylist()
    by_round = [[r for r in rows if r["round"] == i] for i in range(rounds)]
    ends = [max(r["finished_at"] for r in rs) for rs in by_round]
    overheads, spreads = [], []
    for i in range(1, rounds):
        slowest = max(r["finished_at"] - r["started_at"] for r in by_round[i])
        overheads.append(ends[i] - ends[i - 1] - slowest)
        starts = [r["started_at"] for r in by_round[i]]
        spreads.append(max(starts) - min(starts))
    first = ends[0] - min(r["started_at"] for r in by_round[0])
    return {"overhead": statistics.median(overheads), "spread": statistics.median(spreads), "first": first}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="round sizes (default: 1 2 4 8)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds per search (default: 4)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per candidate (default: 2)")
    args = parser.parse_args()
    if args.rounds < 2 or max(args.ks) * args.rounds > 2**POINTS:
        parser.error(f"need --rounds >= 2 and max(ks) x rounds <= {2**POINTS}")

    ray.init(address="local", num_cpus=max(args.ks), include_dashboard=False, log_to_driver=False)
    print(f"{'k':>3}  {'overhead/round s':>16}  {'overhead/trial s':>16}  {'start spread s':>14}  "
          f"{'first round s':>13}")  # fmt: skip
    with tempfile.TemporaryDirectory() as storage:
        for k in args.ks:
            m = measure(k, args.rounds, args.duration, storage)
            print(f"{k:>3}  {m['overhead']:>16.2f}  {m['overhead'] / k:>16.2f}  {m['spread']:>14.2f}  "
                  f"{m['first']:>13.2f}")  # fmt: skip
    print(f"(median over rounds 2..{args.rounds}; candidates sleep {args.duration} s)")
    ray.shutdown()


if __name__ == "__main__":
    main()
