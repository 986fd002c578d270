"""What one trial trains: its :class:`Trial`, its parent's checkpoint and the run's settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fusionsearch.search.records import TRIAL_FIELDS, Trial
from fusionsearch.settings import ConfigError, RunSettings, from_dict, to_dict


@dataclass(frozen=True)
class CandidateConfig:
    """A trial's config, typed: ``trial`` warm-started from ``parent`` (a checkpoint location) if given.

    ``grants``: the named Ray actor through which the searcher grows this trial's data-parallel
    workers while it trains (:mod:`fusionsearch.tune.grants`); ``None``: its workers are fixed.
    """

    trial: Trial
    settings: RunSettings
    parent: str | None = None
    grants: str | None = None

    def __post_init__(self) -> None:
        folds = self.settings.data.num_folds
        if not 0 <= self.trial.fold < folds:
            raise ConfigError(f"fold={self.trial.fold} must be in 0..{folds - 1} ({folds} folds)")
        train = self.settings.train
        if self.trial.epochs is not None:  # a fixed budget: exactly that many epochs
            train = replace(train, epochs=self.trial.epochs, patience=self.trial.epochs)
        elif self.trial.extension:  # a round tried again: the first attempt's budget, once more per extension
            times = 1 + self.trial.extension
            train = replace(train, epochs=train.epochs * times, patience=train.patience * times)
        if train != self.settings.train:
            object.__setattr__(self, "settings", replace(self.settings, train=train))

    @property
    def mask(self) -> str:
        return self.trial.mask

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CandidateConfig:
        """Convert Ray's flat config dict (trial keys, ``parent``, ``settings``) once, at the boundary."""
        allowed = {*TRIAL_FIELDS, "parent", "settings", "grants"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ConfigError(f"unknown candidate setting(s) {unknown}; allowed: {sorted(allowed)}")
        if "settings" not in config:
            raise ConfigError("the candidate's config has no 'settings' (a RunSettings as a dict)")
        return cls(
            Trial.from_config(config),
            from_dict(RunSettings, config["settings"]),
            config.get("parent"),
            config.get("grants"),
        )

    def config(self) -> dict[str, Any]:
        """The flat dict form Ray carries (inverse of :meth:`from_config`)."""
        grants = {"grants": self.grants} if self.grants else {}
        return self.trial.config() | {"parent": self.parent, "settings": to_dict(self.settings)} | grants
