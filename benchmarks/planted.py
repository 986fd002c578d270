"""Shared by the benchmark scripts: a cached planted benchmark and the settings that open it."""

from __future__ import annotations

import argparse
from pathlib import Path

from fusionsearch.data.cache import cache_manifest
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.settings import ModelConfig, PreprocessConfig, RunSettings, TrainConfig
from fusionsearch.train.folds import FoldData, load_fold


def planted_fold(
    folder: Path, *, n: int, size: int, model: ModelConfig, train: TrainConfig, folds: int = 5
) -> tuple[RunSettings, FoldData]:
    """Generate ``n`` planted samples at ``size``, cache them, open fold 0's training and validation parts."""
    manifest = read_manifest(generate(folder / "data", SynthConfig(n=n, size=size)))
    data = cache_manifest(manifest, folder / "cache", PreprocessConfig(shape=size), folds=folds)
    return RunSettings(data=data, model=model, train=train), load_fold(data, 0)


def add_trial_options(parser: argparse.ArgumentParser, *, n: int, size: int, epochs: int) -> None:
    """The options of one candidate's trial on a planted benchmark: subjects, size, network, batch, epochs."""
    parser.add_argument("--n", type=int, default=n, help=f"planted subjects (default: {n})")
    parser.add_argument("--size", type=int, default=size, help=f"cube edge (default: {size})")
    parser.add_argument("--width", type=float, default=1.0, help="(default: 1)")
    parser.add_argument("--batch", type=int, default=8, help="the global batch (default: 8)")
    parser.add_argument("--mask", default="1111", help="(default: 1111)")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"(default: {epochs})")
