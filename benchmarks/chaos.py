"""Repeated faults: a search whose trial workers are killed again and again gives the same answer.

    python benchmarks/chaos.py --kills 8 --duration 2
    python benchmarks/chaos.py --real --kills 5 --duration 4 --n 96 --epochs 6

Runs an SFSA search on a local Ray twice: undisturbed (the reference), then while a thread
SIGKILLs a random trial worker process (Ray's ``ImplicitFunc`` actors) at random moments,
``--kills`` times (a kill about every ``--duration`` seconds). Prints both answers, the trials,
every finished candidate that trained more than once (it must be none: a kill costs the killed
trial's progress, never a finished one) and the extra wall time. Exit 1 if the answers or the
trial counts differ or a finished candidate trained twice.

By default the trials are the scripted trainable (a known loss per mask, ``--duration`` seconds
each, real checkpoints). With ``--real`` they train real networks on a planted XOR set
(``--n`` samples, 16^3, width 0.125, ``--epochs``, a resumable checkpoint every epoch): a
killed trial resumes from its last epoch, so besides the answer the benchmark compares every
trial's validation loss with the reference's (resumed training replays the same batches).
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

from fusionsearch.data.cache import cache_manifest
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.mask import FusionMask
from fusionsearch.settings import ModelConfig, PreprocessConfig, RunSettings, TrainConfig, to_dict
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


def search(
    storage: str, name: str, finished: Path, args: argparse.Namespace, retries: int
) -> tuple[str, dict, float]:
    """Run one search; its answer, ``{trial key: val_loss}`` and wall seconds."""
    started = time.perf_counter()
    if args.real:
        result = run_search(SFSASearcher(folds=[0]), config={"settings": args.settings}, storage_path=storage,
                            name=name, resources={"cpu": 1}, max_failures=retries)  # fmt: skip
    else:
        result = run_search(SFSASearcher(), trainable=scripted_trainable, storage_path=storage, name=name,
                            config={"landscape": LAND, "duration": args.duration, "finished": str(finished)},
                            resources={"cpu": 1}, max_failures=retries)  # fmt: skip
    losses = {
        (r["role"], r["round"], r["mask"], r["extension"]): r["val_loss"] for r in result.table.to_pylist()
    }
    return str(result.best_mask), losses, time.perf_counter() - started


def real_settings(root: Path, n: int, epochs: int) -> RunSettings:
    """A small real search: planted XOR, cached at 16^3, a narrow network, a checkpoint every epoch."""
    manifest = read_manifest(generate(root / "data", SynthConfig(n=n, size=16, seed=0)))
    data = cache_manifest(manifest, root / "cache", PreprocessConfig(shape=16), folds=3, workers=2)
    train = TrainConfig(epochs=epochs, patience=epochs, batch_size=8, lr=3e-3, checkpoint_interval=0)
    return RunSettings(data=data, model=ModelConfig(width=0.125), train=train)


def twice(finished: Path) -> list[str]:
    """Candidates (role-round-mask-extension) that finished training more than once."""
    counts = collections.Counter(p.name.rsplit("-", 2)[0] for p in finished.iterdir())
    return sorted(k for k, n in counts.items() if n > 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds per scripted trial; about the seconds between kills")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", action="store_true", help="real training on planted data")
    parser.add_argument("--n", type=int, default=96, help="--real: planted samples (default: 96)")
    parser.add_argument("--epochs", type=int, default=6, help="--real: epochs per candidate (default: 6)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ray.init(
        address="local", num_cpus=4 if not args.real else 2, include_dashboard=False, log_to_driver=False
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        args.settings = to_dict(real_settings(root, args.n, args.epochs)) if args.real else None
        reference = search(str(root / "runs"), "reference", root / "reference", args, 0)
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
        chaos = search(str(root / "runs"), "chaos", root / "chaos", args, args.kills + 2)
        done.set()
        thread.join()
        retrained = [] if args.real else twice(root / "chaos")
    print(f"reference: answer {reference[0]}, {len(reference[1])} trials, {reference[2]:.1f} s")
    answer = f"answer {chaos[0]}, {len(chaos[1])} trials, {chaos[2]:.1f} s"
    print(f"chaos: {len(kills)} trial workers killed, {answer}")
    if args.real:  # finished trials are never retrained, so a kill shows only as a resumed trial
        differ = {k: (reference[1][k], v) for k, v in chaos[1].items() if reference[1].get(k) != v}
        print(f"trials whose val_loss differs from the reference: {len(differ)} {differ}")
    else:
        print(f"finished candidates trained more than once: {len(retrained)} {retrained}")
    print(f"extra wall time: {chaos[2] - reference[2]:+.1f} s ({chaos[2] / reference[2]:.2f}x)")
    same = chaos[0] == reference[0] and chaos[1].keys() == reference[1].keys()
    return 0 if same and not retrained else 1


if __name__ == "__main__":
    sys.exit(main())
