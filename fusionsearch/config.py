"""Typed settings. Plain dicts (Ray configs, JSON, CLI) become these once, at the edge."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fusionsearch.errors import UserError
from fusionsearch.fusion import FUSION_MODULES

T = TypeVar("T")

RESNET_DEPTHS = (10, 18, 34)


class ConfigError(UserError):
    """A settings dict that does not describe a valid settings object."""


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build the frozen dataclass ``cls`` from ``values``, recursing into nested dataclasses.

    Unknown keys are rejected with the list of allowed ones, so a typo in a config never
    silently falls back to a default.
    """
    if isinstance(values, cls):
        return values
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_in(hints[name])
        if nested and isinstance(value, Mapping):
            value = from_dict(nested, value)
        elif isinstance(value, list):  # JSON and Ray restores turn tuples into lists
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON-friendly dict form of a settings dataclass (inverse of :func:`from_dict`)."""
    return dataclasses.asdict(obj)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass in a type hint such as ``ModelConfig`` or ``ModelConfig | None``."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((t for t in options if dataclasses.is_dataclass(t)), None)


def check_choice(name: str, value: Any, allowed: typing.Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {allowed}")


@dataclass(frozen=True)
class ModelConfig:
    """The multi-stream network, apart from its fusion mask.

    Attributes:
        modalities: number of input streams, one 3D ResNet each (one channel per stream).
        depth: ResNet depth, 10, 18 or 34.
        fusion: name of the registered fusion module used at active points.
        stem_stride: stride of the first convolution. 2 is the standard ResNet; MONAI's
            default 1 costs 8x the FLOPs.
        width: channel multiplier (MONAI ``widen_factor``); below 1 for small CPU runs.
        num_classes: number of output classes.
    """

    modalities: int = 2
    depth: int = 18
    fusion: str = "mmtm"
    stem_stride: int = 2
    width: float = 1.0
    num_classes: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.modalities, int) or self.modalities < 1:
            raise ConfigError(f"modalities={self.modalities!r} must be a positive integer")
        check_choice("depth", self.depth, RESNET_DEPTHS)
        check_choice("fusion", self.fusion, sorted(FUSION_MODULES))
        check_choice("stem_stride", self.stem_stride, (1, 2))
        if not 64 * self.width >= 1:
            raise ConfigError(f"width={self.width!r} must be at least 1/64")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ConfigError(f"num_classes={self.num_classes!r} must be an integer >= 2")


@dataclass(frozen=True)
class TrainConfig:
    """How one candidate is trained.

    Attributes:
        epochs: maximum training epochs.
        patience: stop after this many epochs without a lower validation loss. Learning on
            hard fusion tasks is sudden (the loss may rise for several epochs, then collapse),
            so keep it generous.
        batch_size: training batch size.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: base seed; each candidate derives its own from it and its mask.
    """

    epochs: int = 30
    patience: int = 8
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ConfigError(f"patience={self.patience!r} must be a non-negative integer")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r} must be positive")
