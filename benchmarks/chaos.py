"""Repeated faults: a search whose trial workers are killed again and again gives the same answer.

    python benchmarks/chaos.py --kills 8 --duration 2

Runs an SFSA search with the scripted trainable (a known loss per mask, ``--duration`` seconds
per trial, real checkpoints) on a local Ray twice: undisturbed (the reference), then while a
thread SIGKILLs a random trial worker process (Ray's ``ImplicitFunc`` actors) at random moments,
``--kills`` times. Prints both answers, the trials, every finished candidate that trained more
than once (it must be none: a kill costs the killed trial's progress, never a finished one) and
the extra wall time. Exit 1 if the answers differ or a finished candidate trained twice.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray

from fusionsearch.mask import FusionMask
from fusionsearch.tune.driver import run_search
from searchers import SFSASearcher
from trainables.scripted import scripted_trainable

#: The planted landscape of the cluster tests: SFSA's answer is 0110.
LAND = {str(m): 2.0 for m in FusionMask.all_masks(4)} | {"0000": 1.0, "0100": 0.5, "0110": 0.4, "1000": 0.9}


def trial_workers() -> list[int]:
    """PIDs of this benchmark's trial actor processes (titled ``ray::ImplicitFunc...``): the local Ray
    it started runs below it, so other Ray instances on the machine are left alone."""
    parents, titles = {}, {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            parents[int(proc.name)] = int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            titles[int(proc.name)] = proc.joinpath("cmdline").read_bytes()

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parents.get(pid, 0)
        return False

    return [pid for pid, title in titles.items() if title.startswith(b"ray::ImplicitFunc") and ours(pid)]


def search(storage: str, name: str, finished: Path, duration: float, retries: int) -> tuple[str, int, float]:
    started = time.perf_counter()
    result = run_search(SFSASearcher(), trainable=scripted_trainable, storage_path=storage, name=name,
                        config={"landscape": LAND, "duration": duration, "finished": str(finished)},
                        resources={"cpu": 1}, max_failures=retries)  # fmt: skip
    rows = result.table.to_pylist()
    return str(result.best_mask), len(rows), time.perf_counter() - started


def twice(finished: Path) -> list[str]:
    """Candidates (role-round-mask-extension) that finished training more than once."""
    counts = collections.Counter(p.name.rsplit("-", 2)[0] for p in finished.iterdir())
    return sorted(k for k, n in counts.items() if n > 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per scripted trial")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        reference = search(str(root / "runs"), "reference", root / "reference", args.duration, 0)
        done, kills = threading.Event(), []

        def killer() -> None:
            while len(kills) < args.kills and not done.is_set():
                time.sleep(rng.uniform(0.3, 1.5) * args.duration)
                workers = trial_workers()
                if workers:
                    victim = rng.choice(workers)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                        kills.append(victim)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        chaos = search(str(root / "runs"), "chaos", root / "chaos", args.duration, args.kills + 2)
        done.set()
        thread.join()
        retrained = twice(root / "chaos")
    print(f"reference: answer {reference[0]}, {reference[1]} trials, {reference[2]:.1f} s")
    print(f"chaos: {len(kills)} trial workers killed, answer {chaos[0]}, {chaos[1]} trials, {chaos[2]:.1f} s")
    print(f"finished candidates trained more than once: {len(retrained)} {retrained}")
    print(f"extra wall time: {chaos[2] - reference[2]:+.1f} s ({chaos[2] / reference[2]:.2f}x)")
    return 0 if chaos[0] == reference[0] and not retrained and chaos[1] == reference[1] else 1


if __name__ == "__main__":
    sys.exit(main())
