"""Where one trial's time goes: training steps, validation, checkpoints, setup; and the bytes it writes.

    python benchmarks/trial_efficiency.py --width 1 --size 16                      # CPU
    python benchmarks/trial_efficiency.py --width 1 --size 128 --n 136 --batch 8   # GPU, ds004199-sized
    python benchmarks/trial_efficiency.py --storage s3://bucket/prefix --checkpoint-interval 0

Runs :func:`fusionsearch.train.loop.fit` for one candidate on a cached planted benchmark and,
like Ray Tune's ``tune.report``, copies every checkpoint it reports into ``--storage`` (a
local folder, by default a temporary one, or any pyarrow URI) inside the report, so the copy
counts as checkpoint time. Prints the trial's step, validation, checkpoint and setup seconds,
its wall time, the efficiency (step seconds / wall seconds; target >= 0.9 on a GPU at width 1,
128^3, and >= 0.8 for the tiny CPU search), and the bytes written per epoch, for each
``--checkpoint-interval`` and ``--eval-every`` given (interval 0 = a resumable checkpoint after
every validated epoch, as before checkpoints became periodic); then the setup's two parts
measured apart (a fresh network with its optimizer on the device; the fold's parts on the
device). A one-epoch trial first warms the process up (imports, allocator, kernels).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pyarrow.fs as pafs
import torch

from fusionsearch import DevicePolicy, ModelConfig
from fusionsearch.model.network import build_network
from fusionsearch.search.records import Trial
from fusionsearch.settings import RunSettings, TrainConfig
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.folds import Batches, FoldData
from fusionsearch.train.loop import fit, make_optimizer
from planted import add_trial_options, planted_fold


class Persist:
    """A report callback that copies each checkpoint into the storage, as ``tune.report`` does."""

    def __init__(self, storage: str) -> None:
        self.storage, self.bytes, self.checkpoints = storage.rstrip("/"), 0, 0

    def __call__(self, metrics: dict, directory: Path | None) -> None:
        if directory is None:
            return
        self.bytes += sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        self.checkpoints += 1
        target = f"{self.storage}/checkpoint_{uuid.uuid4().hex[:8]}"
        if "://" not in target:
            Path(target).mkdir(parents=True)
        pafs.copy_files(str(directory), target)


def setup_parts(
    settings: RunSettings, fold: FoldData, policy: DevicePolicy, mask: str
) -> tuple[float, float]:
    """Seconds to build a fresh network with its optimizer on the device, and to put the fold's
    training and validation parts there (what a trial's setup does), each measured on its own."""
    tick = time.perf_counter()
    model = policy.module(build_network(settings.model, mask, policy.device))
    make_optimizer(model, policy, settings.train.lr)
    policy.synchronize()
    network = time.perf_counter() - tick
    tick = time.perf_counter()
    parts = [Batches(part, policy, settings.train.batch_size) for part in (fold.train, fold.val)]
    policy.synchronize()
    del parts
    return network, time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_trial_options(parser, n=48, size=16, epochs=4)
    parser.add_argument(
        "--checkpoint-interval",
        type=float,
        nargs="+",
        default=[0, 300],
        help="seconds; one trial per value (default: 0 300)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        nargs="+",
        default=[1],
        help="validate every K-th epoch and the last; one trial per value and interval (default: 1)",
    )
    parser.add_argument("--storage", default=None, help="folder or URI (default: a temporary folder)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()

    policy = DevicePolicy.select(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        train = TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=args.batch)
        settings, fold = planted_fold(
            Path(scratch), n=args.n, size=args.size, model=ModelConfig(width=args.width), train=train
        )
        warm_up = replace(settings, train=replace(train, epochs=1))
        fit(CandidateConfig(Trial(args.mask), warm_up), lambda m, d: None, data=fold, policy=policy)
        device = (
            torch.cuda.get_device_name() if policy.is_cuda else f"CPU ({torch.get_num_threads()} threads)"
        )
        print(
            f"{device}: width {args.width}, {args.size}^3, mask {args.mask}, {len(fold.train)} training and "
            f"{len(fold.val)} validation subjects, batch {args.batch}, {args.epochs} epochs"
        )
        print(
            f"{'interval s':>10} {'eval every':>10} {'step s':>8} {'eval s':>8} {'ckpt s':>8} {'setup s':>8} "
            f"{'wall s':>8} {'efficiency':>10} {'checkpoints':>11} {'MB/epoch':>9}"
        )
        for interval, every in itertools.product(args.checkpoint_interval, args.eval_every):
            storage = args.storage or str(Path(scratch) / f"storage-{interval:g}-{every}")
            persist = Persist(f"{storage.rstrip('/')}/{time.strftime('%H%M%S')}-{interval:g}-{every}")
            timed = replace(settings, train=replace(train, checkpoint_interval=interval, eval_every=every))
            candidate = CandidateConfig(Trial(args.mask), timed)
            final = fit(candidate, persist, data=fold, policy=policy)
            print(
                f"{interval:>10g} {every:>10} {final['step_seconds']:>8.2f} {final['eval_seconds']:>8.2f} "
                f"{final['checkpoint_seconds']:>8.2f} {final['setup_seconds']:>8.2f} "
                f"{final['train_seconds']:>8.2f} "
                f"{final['step_seconds'] / final['train_seconds']:>10.2f} {persist.checkpoints:>11} "
                f"{persist.bytes / args.epochs / 1e6:>9.1f}"
            )
        network, data = setup_parts(settings, fold, policy, args.mask)
        print(
            f"setup parts, measured apart: network and optimizer {network:.2f} s, "
            f"the fold's parts {data:.2f} s"
        )


if __name__ == "__main__":
    main()
