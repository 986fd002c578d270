"""Preprocessing of one sample with MONAI dictionary transforms, configured by one object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ResampleToMatchd,
    ResizeWithPadOrCropd,
    Spacingd,
)

from fusionsearch.config import ConfigError


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw NIfTI volumes become one ``(N, *shape)`` array per sample.

    Attributes:
        shape: target cube edge (or ``(D, H, W)``); volumes are cropped/padded to it.
        spacing: target voxel size in mm for the reference (first) modality, or ``None`` to
            keep its own grid. The other modalities are resampled onto the reference grid
            using the NIfTI affines (scanner space), so they need not be co-registered.
        orientation: axis codes every volume is reoriented to.
        crop_foreground: crop to the bounding box of the non-zero voxels before padding.
        dtype: storage type of the cached arrays (``float16`` halves memory and I/O).
    """

    shape: int | tuple[int, int, int] = 64
    spacing: float | tuple[float, float, float] | None = None
    orientation: str = "RAS"
    crop_foreground: bool = True
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if any(s < 4 for s in self.spatial_shape):
            raise ConfigError(f"shape={self.shape!r}: every edge must be at least 4 voxels")
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"dtype={self.dtype!r} is not allowed; choose one of ['float16', 'float32']")

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        shape = self.shape
        return (shape,) * 3 if isinstance(shape, int) else tuple(int(s) for s in shape)


def build_transforms(modalities: Sequence[str], config: PreprocessConfig) -> Compose:
    """The MONAI pipeline: load, channel first, orient, resample onto one grid, crop/pad, normalise.

    Input: a dict ``{modality: path}``. Output: ``{"image": (N, D, H, W) tensor}``, one channel
    per modality, each normalised to zero mean and unit variance inside its non-zero voxels.
    """
    keys = list(modalities)
    reference, others = keys[0], keys[1:]
    steps = [
        LoadImaged(keys, image_only=True, ensure_channel_first=True),
        Orientationd(keys, axcodes=config.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if config.spacing is not None:
        steps.append(Spacingd(reference, pixdim=config.spacing, mode="bilinear"))
    if others:
        steps.append(ResampleToMatchd(others, key_dst=reference, mode="bilinear", padding_mode="zeros"))
    steps.append(ConcatItemsd(keys, name="image", dim=0))
    if config.crop_foreground:
        steps.append(CropForegroundd("image", source_key="image", allow_smaller=True))
    steps += [
        ResizeWithPadOrCropd("image", spatial_size=config.spatial_shape),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ]
    return Compose(steps)


def preprocess_sample(paths: Mapping[str, Path], config: PreprocessConfig) -> np.ndarray:
    """Preprocess one sample's images (``{modality: path}``) into an ``(N, D, H, W)`` array."""
    transforms = build_transforms(list(paths), config)
    image = transforms({m: str(p) for m, p in paths.items()})["image"]
    return np.asarray(image.numpy(), dtype=config.dtype)
