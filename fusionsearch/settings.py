"""The settings of a search run and of one candidate, as Ray's config dict carries them."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionsearch.config import ConfigError, ModelConfig, TrainConfig, check_choice
from fusionsearch.preprocess import PreprocessConfig


@dataclass(frozen=True)
class DataConfig:
    """Which data a candidate trains and validates on.

    Attributes:
        index: location of the samples' index in the cache (:meth:`PreprocessCache.write_index`).
        cache: folder or URI of the preprocessing cache (built before any trial starts).
        preprocess: the preprocessing settings (part of the cache key).
        folds: number of cross-validation folds.
        split_seed: seed of the fold assignment.
    """

    index: str
    cache: str
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    folds: int = 5
    split_seed: int = 0


@dataclass(frozen=True)
class RunSettings:
    """Everything a candidate needs besides its mask and parent."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class CandidateConfig:
    """One trial: a mask to train on ``fold``, warm-started from ``parent`` (a checkpoint) if given.

    Attributes:
        role: ``search`` (a search candidate), ``unimodal`` (a single-stream baseline of
            ``modality``) or ``ensemble`` (a fusion configuration for the brute-force ensemble).
        modality: for unimodal baselines, the one modality to train on.
    """

    mask: str
    settings: RunSettings
    parent: str | None = None
    parent_mask: str | None = None
    round: int = 0
    fold: int = 0
    role: str = "search"
    modality: str | None = None

    def __post_init__(self) -> None:
        folds = self.settings.data.folds
        if not 0 <= self.fold < folds:
            raise ConfigError(f"fold={self.fold} must be in 0..{folds - 1} (folds={folds})")
        check_choice("role", self.role, ("search", "unimodal", "ensemble"))
        if (self.role == "unimodal") != (self.modality is not None):
            raise ConfigError(f"role={self.role!r} with modality={self.modality!r}: only unimodal names one")
