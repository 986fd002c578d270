"""Training throughput of the trainable's loop vs the bare model step, same settings, one run.

    python benchmarks/trainable_vs_model.py                           # CPU-sized
    python benchmarks/trainable_vs_model.py --size 128 --width 1 --batch 8 --n 120 --epochs 4   # GPU

The loop is :func:`fusionsearch.train.loop.fit` on a cached planted benchmark: batches come from
the memory-mapped preprocessing cache (or GPU-resident copy), are copied to the device and
trained on; samples/s is measured per epoch over the training pass (validation excluded) and
the median of the epochs after the first is reported. The model-only rate is
:func:`fusionsearch.train.profiling.measure_step_rate` on a fixed random batch already on the device.
Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from fusionsearch import DevicePolicy, FusionNet, ModelConfig
from fusionsearch.data.cache import cache_manifest
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.search.records import Trial
from fusionsearch.settings import PreprocessConfig, RunSettings, TrainConfig
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.folds import load_fold
from fusionsearch.train.loop import fit
from fusionsearch.train.profiling import measure_step_rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=60, help="planted samples (default: 60)")
    parser.add_argument("--size", type=int, default=32, help="cube edge (default: 32)")
    parser.add_argument("--width", type=float, default=0.25, help="(default: 0.25)")
    parser.add_argument("--batch", type=int, default=4, help="(default: 4)")
    parser.add_argument("--mask", default="1111", help="(default: 1111)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="training epochs; the first is warm-up (default: 3)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed model-only steps (default: 10)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()

    policy = DevicePolicy.select(args.device)
    model_config = ModelConfig(width=args.width)
    with tempfile.TemporaryDirectory() as scratch:
        manifest = read_manifest(generate(Path(scratch) / "data", SynthConfig(n=args.n, size=args.size)))
        data = cache_manifest(manifest, Path(scratch) / "cache", PreprocessConfig(shape=args.size), folds=5)
        fold = load_fold(data, 0)
        settings = RunSettings(
            data=data,
            model=model_config,
            # +1: a warm-up epoch, left out of the median.
            train=TrainConfig(epochs=args.epochs + 1, patience=args.epochs + 1, batch_size=args.batch),
        )
        reports = []
        fit(CandidateConfig(Trial(args.mask), settings), lambda m, _: reports.append(m), data=fold,
            policy=policy)  # fmt: skip
        loop = [
            r["samples_per_second"] for r in reports if r.get("samples_per_second") and not r.get("final")
        ]
        rate = measure_step_rate(FusionNet(model_config, args.mask), policy, size=args.size, batch=args.batch,
                                 steps=args.steps)  # fmt: skip
    steady = statistics.median(loop[1:])
    print(f"device={policy.device} ({torch.cuda.get_device_name() if policy.is_cuda else 'CPU'}) "
          f"threads={torch.get_num_threads()} mask={args.mask} width={args.width} size={args.size}^3 "
          f"batch={args.batch} train samples={len(fold.train)}")  # fmt: skip
    print(f"trainable loop: {steady:8.1f} samples/s (median of epochs 2..{len(loop)}; all: "
          f"{', '.join(f'{x:.1f}' for x in loop)})")  # fmt: skip
    print(
        f"model only:     {rate.volumes_per_second:8.1f} samples/s ({rate.step_seconds * 1000:.1f} ms/step)"
    )
    print(f"ratio loop / model: {steady / rate.volumes_per_second:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
