"""The settings of a search run and of one candidate, as Ray's config dict carries them."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionsearch.config import ConfigError, ModelConfig, TrainConfig
from fusionsearch.preprocess import PreprocessConfig


@dataclass(frozen=True)
class DataConfig:
    """Which data a candidate trains and validates on.

    Attributes:
        index: location of the samples' index in the cache (:meth:`PreprocessCache.write_index`).
        cache: folder or URI of the preprocessing cache (built before any trial starts).
        preprocess: the preprocessing settings (part of the cache key).
        folds: number of cross-validation folds.
        fold: which fold's train/validation parts the search uses.
        split_seed: seed of the fold assignment.
    """

    index: str
    cache: str
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    folds: int = 5
    fold: int = 0
    split_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fold < self.folds:
            raise ConfigError(f"fold={self.fold} must be in 0..{self.folds - 1} (folds={self.folds})")


@dataclass(frozen=True)
class RunSettings:
    """Everything a candidate needs besides its mask and parent."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class CandidateConfig:
    """One trial: a mask to train, warm-started from ``parent`` (a checkpoint location) if given."""

    mask: str
    settings: RunSettings
    parent: str | None = None
    parent_mask: str | None = None
    round: int = 0
