"""Subjects per second of ``fusionsearch predict``: preprocessing, inference, and both.

    python benchmarks/predict_throughput.py --n 64 --size 64             # CPU
    python benchmarks/predict_throughput.py --n 256 --size 128 --width 1  # a GPU

Generates ``--n`` planted subjects (two modalities), then times what ``predict`` does with them:
building the preprocessing cache from the NIfTI files (MONAI, ``--workers`` threads), and the
class probabilities of ``--folds`` networks of the chosen configuration (``--mask``; random
weights: the time does not depend on them) from the cache. Prints subjects/s of each, of a
first prediction (preprocessing included) and of a repeated one (cached).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fusionsearch.data.cache import PreprocessCache
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.mask import FusionMask
from fusionsearch.model.device import DevicePolicy
from fusionsearch.model.network import FusionNet
from fusionsearch.report.predict import model_probabilities
from fusionsearch.settings import ModelConfig, PreprocessConfig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=64, help="subjects (default: 64)")
    parser.add_argument(
        "--size", type=int, default=64, help="cube edge of the volumes and the input (default: 64)"
    )
    parser.add_argument("--width", type=float, default=1.0, help="network width (default: 1)")
    parser.add_argument("--mask", default="0110", help="the chosen configuration (default: 0110)")
    parser.add_argument("--folds", type=int, default=5, help="models averaged, one per fold (default: 5)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="preprocessing threads (default: CPUs)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()
    policy = DevicePolicy.select(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        manifest = read_manifest(generate(Path(scratch) / "data", SynthConfig(n=args.n, size=args.size)))
        cache = PreprocessCache(Path(scratch) / "cache", PreprocessConfig(shape=args.size))
        started = time.perf_counter()
        cache.build(manifest, workers=args.workers)
        preprocessing = time.perf_counter() - started
        networks = [
            FusionNet(ModelConfig(width=args.width), FusionMask.parse(args.mask)) for _ in range(args.folds)
        ]
        model_probabilities(networks[:1], cache.open(manifest), policy, args.batch)  # warm-up
        started = time.perf_counter()
        model_probabilities(networks, cache.open(manifest), policy, args.batch)
        inference = time.perf_counter() - started
    n = args.n
    print(f"predict throughput: {n} subjects at {args.size}^3, {args.folds} models of mask {args.mask} "
          f"(width {args.width:g}) on {policy.device}")  # fmt: skip
    print(f"preprocessing (NIfTI -> cache): {n / preprocessing:8.2f} subjects/s ({preprocessing:.1f} s)")
    print(f"inference ({args.folds} models):      {n / inference:8.2f} subjects/s ({inference:.1f} s)")
    print(f"first prediction (both):        {n / (preprocessing + inference):8.2f} subjects/s")
    print(f"repeated prediction (cached):   {n / inference:8.2f} subjects/s")


if __name__ == "__main__":
    main()
