"""How soon the first round trains once the preprocessing cache is ready: a local Ray whose workers
import the trial's modules while the cache builds (what ``fusionsearch run`` starts) against one
whose workers import them only when a trial is given them.

    python benchmarks/first_round.py --repeats 3 --trials 2 --n 400

Each run, in a fresh process (``RAY_ADDRESS`` left out): start a local Ray
(:func:`fusionsearch.tune.driver.connect`, with ``preload=TRIAL_MODULES`` or without), build a
planted cache with the driver's threads (as ``fusionsearch run`` does on one machine), then run
one round of ``--trials`` one-epoch candidates of the built-in trainable with
:func:`~fusionsearch.tune.driver.run_search`. The two kinds of run alternate. Printed per kind,
medians over the repeats: the cache build's seconds, the seconds from the cache being ready to
the first trial's first step of :func:`~fusionsearch.train.loop.fit` (its ``started_at``: the
actor's start and imports, the trial's setup), and from starting Ray to that (the whole wait,
since the workers' imports share the CPUs with the cache build), and the share of the trials that
ran in a worker process Ray had started before the search (Linux only). The gain needs a build longer
than the workers' imports (``--n 400`` at 32³ on 2 cores). ``--workers 2``: data-parallel
trials on logical GPUs, which ``fusionsearch run`` does not preload for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fusionsearch.mask import FusionMask
from fusionsearch.search.strategies import Candidate
from fusionsearch.settings import ModelConfig, TrainConfig, to_dict
from fusionsearch.tune.driver import TRIAL_MODULES, connect, run_search
from planted import planted_fold
from searchers import RoundSearcher
from trainables.candidate import CPU_FALLBACK

KINDS = ("on demand", "preloaded")


@dataclass(frozen=True)
class OneRound:
    """One round of ``k`` masks from scratch."""

    k: int
    num_points: int = 4

    def next_round(self, history):
        if history:
            return []
        return [Candidate(FusionMask(f"{i:04b}"), None, 0) for i in range(self.k)]


def once(preload: bool, trials: int, n: int, size: int, workers: int) -> dict[str, float]:
    """One run in this process: the seconds of its build, and to its first trial's first step."""
    modules = TRIAL_MODULES if workers == 1 else (*TRIAL_MODULES, "trainables.data_parallel")
    with tempfile.TemporaryDirectory() as scratch:
        began = time.time()
        gpus = trials * workers if workers > 1 else 0
        connect(num_cpus=trials * workers, num_gpus=gpus, preload=modules if preload else ())
        settings, _ = planted_fold(
            Path(scratch),
            n=n,
            size=size,
            model=ModelConfig(width=0.125, norm="group" if workers > 1 else "batch"),
            train=TrainConfig(epochs=1, patience=1, batch_size=4),
            folds=3,
        )
        ready, prestarted = time.time(), _idle_workers()
        result = run_search(RoundSearcher(OneRound(trials)), config={"settings": to_dict(settings)},
                            storage_path=str(Path(scratch, "runs")), name="first",
                            resources={"cpu": 1, "gpu": 1 if workers > 1 else 0}, workers=workers,
                            max_failures=0)  # fmt: skip
        rows = result.table.to_pylist()
        first = min(row["started_at"] for row in rows)
        # Tune adds the trial process's id to every result
        last = [
            Path(result.experiment_dir, row["trial_id"], "result.json").read_text().splitlines()[-1]
            for row in rows
        ]
        pids = [json.loads(line)["pid"] for line in last]
        return {"build": ready - began, "after_ready": first - ready, "in_all": first - began,
                "prestarted": sum(pid in prestarted for pid in pids) / len(pids)}  # fmt: skip


def _idle_workers() -> set[int]:
    """The idle worker processes of the Ray this process started (children of its raylet, itself a
    child of this process), from Linux's ``/proc``; empty elsewhere."""

    def parent(pid: str) -> str:
        return Path("/proc", pid, "stat").read_text().rsplit(")", 1)[1].split()[1]

    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            idle = proc.joinpath("cmdline").read_bytes().startswith(b"ray::IDLE")
            if idle and int(parent(parent(proc.name))) == os.getpid():
                found.add(int(proc.name))
        except OSError:  # ended meanwhile
            pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (default: 3)")
    parser.add_argument("--trials", type=int, default=2, help="the round's trials, one CPU each (default: 2)")
    parser.add_argument("--n", type=int, default=48, help="planted subjects (default: 48)")
    parser.add_argument("--size", type=int, default=32, help="cube edge (default: 32)")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="data-parallel workers per trial, on logical GPUs (CPU fallback) (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="the kinds of run (default: both)"
    )
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(once(args.child == "preloaded", args.trials, args.n, args.size, args.workers)))
        return
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in args.kinds}
    for _ in range(args.repeats):
        for kind in args.kinds:
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--trials", str(args.trials),
                 "--n", str(args.n), "--size", str(args.size), "--workers", str(args.workers)],
                capture_output=True, text=True, check=True, cwd=Path(__file__).parent,
                env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, CPU_FALLBACK: "1"},
            ).stdout  # fmt: skip
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.trials} trials, {args.n} planted subjects at {args.size}^3, medians of {args.repeats} runs")
    print(f"{'workers import':<16} {'build s':>8} {'ready -> first step s':>22} "
          f"{'Ray start -> first step s':>26} {'trials in prestarted workers':>29}")  # fmt: skip
    for kind, rows in runs.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"{kind:<16} {median['build']:>8.2f} {median['after_ready']:>22.2f} {median['in_all']:>26.2f} "
              f"{median['prestarted']:>29.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
