"""Epochs and time to a target validation loss: warm-started children vs the same masks from scratch.

    python benchmarks/warm_vs_scratch.py --n 400 --size 24 --epochs 12 --parent 0010

On fold 0 of a cached planted XOR benchmark: train ``--parent`` from scratch; then each
child (default: every one-point extension of the parent, as an SFSA round would) twice, warm-
started from the parent's final checkpoint and from scratch, with the same settings and seed.
A child's target is the worse of the two runs' best validation losses (a level both reach);
printed are the epochs (epoch 0 = before any update) and seconds each run needed to reach it,
and the ratio scratch / warm of the seconds (> 1: warm start saves compute).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fusionsearch import FusionMask, ModelConfig
from fusionsearch.data.cache import cache_manifest
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.search.records import Trial
from fusionsearch.settings import PreprocessConfig, RunSettings, TrainConfig
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.folds import load_fold
from fusionsearch.train.loop import fit


class Curve:
    """A report callback: each epoch's validation loss and seconds since the start.

    With ``keep``, the final checkpoint is copied there (a parent for the children).
    """

    def __init__(self, keep: Path | None = None) -> None:
        self.start, self.keep = time.perf_counter(), keep
        self.points: list[tuple[int, float, float]] = []

    def __call__(self, metrics, directory) -> None:
        if metrics.get("final"):
            if self.keep is not None:
                shutil.copytree(directory, self.keep)
            return
        self.points.append((metrics["epoch"], metrics["val_loss"], time.perf_counter() - self.start))

    def best(self) -> float:
        return min(loss for _, loss, _ in self.points)

    def reach(self, target: float) -> tuple[int, float]:
        return next((epoch, seconds) for epoch, loss, seconds in self.points if loss <= target)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="planted samples (default: 400)")
    parser.add_argument("--size", type=int, default=24, help="cube edge (default: 24)")
    parser.add_argument("--width", type=float, default=0.25, help="(default: 0.25)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per run (default: 12)")
    parser.add_argument("--batch", type=int, default=16, help="(default: 16)")
    parser.add_argument("--lr", type=float, default=3e-3, help="(default: 3e-3)")
    parser.add_argument("--parent", default="0010", help="parent mask (default: 0010)")
    parser.add_argument("--children", nargs="+", default=None, help="child masks (default: its extensions)")
    args = parser.parse_args()

    children = args.children or [str(m) for m in FusionMask.parse(args.parent).extensions()]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        manifest = read_manifest(generate(scratch / "data", SynthConfig(n=args.n, size=args.size)))
        data = cache_manifest(manifest, scratch / "cache", PreprocessConfig(shape=args.size), folds=5)
        fold = load_fold(data, 0)
        settings = RunSettings(
            data=data,
            model=ModelConfig(width=args.width),
            train=TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=args.batch, lr=args.lr),
        )
        parent = Curve(keep=scratch / "parent")
        fit(CandidateConfig(Trial(args.parent), settings), parent, data=fold)
        print(
            f"device={'cuda' if torch.cuda.is_available() else 'cpu'} n={args.n} size={args.size}^3 "
            f"width={args.width} epochs={args.epochs}; parent {args.parent}: "
            f"best val_loss {parent.best():.4f}"
        )
        print(
            f"{'child':>6}  {'target':>7}  {'warm ep':>7}  {'warm s':>7}  {'scratch ep':>10}  "
            f"{'scratch s':>9}  {'scratch/warm':>12}"
        )
        ratios = []
        for child in children:
            warm, cold = Curve(), Curve()
            fit(
                CandidateConfig(Trial(child, parent_mask=args.parent), settings, str(scratch / "parent")),
                warm,
                data=fold,
                parent=scratch / "parent",
            )
            fit(CandidateConfig(Trial(child), settings), cold, data=fold)
            target = max(warm.best(), cold.best())
            (we, ws), (ce, cs) = warm.reach(target), cold.reach(target)
            ratios.append(cs / ws)
            print(f"{child:>6}  {target:>7.4f}  {we:>7}  {ws:>7.1f}  {ce:>10}  {cs:>9.1f}  {cs / ws:>12.2f}")
    print(f"median scratch/warm time to target: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
