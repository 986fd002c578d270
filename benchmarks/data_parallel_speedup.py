"""How much faster a candidate trains on W data-parallel workers than on one: the cluster model's speed-up.

    python benchmarks/data_parallel_speedup.py --workers 1 2 --size 128 --width 1 --n 136   # 2 GPUs
    python benchmarks/data_parallel_speedup.py --device cpu --size 16 --width 0.25 --n 48   # a check

Runs :func:`fusionsearch.train.loop.fit` for one candidate on a cached planted benchmark in W
processes, one GPU each (NCCL; gloo on the CPU), each training its share of every batch as a Ray
Train worker does (:mod:`fusionsearch.train.parallel`). The process group is started here with
``torch.distributed`` rather than by Ray Train, so that it runs where Ray is not installed (the GPU
machine lent to this project); what it measures is the training loop's scaling, not Ray Train's
start (budget that apart: about 10 s). Each W first trains one epoch to warm up, then
``--epochs`` epochs; prints worker 0's step seconds and wall seconds per epoch, the speed-up over
one worker (wall) and the efficiency per doubling, ``(speed-up / W) ** (1 / log2 W)``: what
``cluster_model.py --dp-efficiency`` takes (0.85 until measured).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fusionsearch import DevicePolicy, ModelConfig
from fusionsearch.search.records import Trial
from fusionsearch.settings import TrainConfig
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.folds import load_fold
from fusionsearch.train.loop import fit
from planted import add_trial_options, planted_fold


def _worker(rank: int, world: int, port: int, device: str, settings, mask: str, out: str) -> None:
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    dist.init_process_group(
        "nccl" if cuda else "gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        policy = DevicePolicy.select(f"cuda:{rank}" if cuda else "cpu")
        fold = load_fold(settings.data, 0)
        warm_up = replace(settings, train=replace(settings.train, epochs=1))
        fit(CandidateConfig(Trial(mask), warm_up), lambda m, d: None, data=fold, policy=policy)
        final = fit(CandidateConfig(Trial(mask), settings), lambda m, d: None, data=fold, policy=policy)
        if rank == 0:
            Path(out).write_text(json.dumps(final))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="(default: 1 2)")
    add_trial_options(parser, n=136, size=128, epochs=3)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and max(args.workers) > torch.cuda.device_count():
        parser.error(
            f"--workers {max(args.workers)} needs as many GPUs; this machine has {torch.cuda.device_count()}"
        )
    norm = "batch" if device == "cuda" else "group"  # torch synchronises batch norm on CUDA only
    train = TrainConfig(
        epochs=args.epochs, patience=args.epochs, batch_size=args.batch, checkpoint_interval=1e9
    )
    with tempfile.TemporaryDirectory() as scratch:
        settings, fold = planted_fold(
            Path(scratch),
            n=args.n,
            size=args.size,
            model=ModelConfig(width=args.width, norm=norm),
            train=train,
        )
        name = (
            torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        )
        print(f"{name}: width {args.width}, {args.size}^3, mask {args.mask}, {len(fold.train)} training "
              f"and {len(fold.val)} validation subjects, global batch {args.batch}, {args.epochs} epochs, "
              f"{norm} norm")  # fmt: skip
        print(
            f"{'workers':>7} {'step s/epoch':>12} {'wall s/epoch':>12} {'speed-up':>8} {'per doubling':>12}"
        )
        one = None
        for world in args.workers:
            out = Path(scratch, f"w{world}.json")
            mp.spawn(_worker, args=(world, _free_port(), device, settings, args.mask, str(out)), nprocs=world)
            final = json.loads(out.read_text())
            wall = final["train_seconds"] / args.epochs
            one = one or (wall if world == 1 else None)
            speedup = one / wall if one else float("nan")
            doubling = (speedup / world) ** (1 / math.log2(world)) if world > 1 and one else float("nan")
            print(f"{world:>7} {final['step_seconds'] / args.epochs:>12.3f} {wall:>12.3f} {speedup:>8.2f} "
                  f"{doubling:>12.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
