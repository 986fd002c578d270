"""Shared by the benchmark scripts: a cached planted benchmark and the settings that open it."""

from __future__ import annotations

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
