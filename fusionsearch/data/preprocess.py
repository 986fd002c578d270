"""Preprocessing of one sample with MONAI dictionary transforms, configured by :class:`PreprocessConfig`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fusionsearch.settings import PreprocessConfig

if TYPE_CHECKING:
    from monai.transforms import Compose


def build_transforms(modalities: Sequence[str], config: PreprocessConfig) -> Compose:
    """The MONAI pipeline: load, channel first, orient, resample onto one grid, crop/pad, normalise.

    Input: a dict ``{modality: path}``. Output: ``{"image": (N, D, H, W) tensor}``, one channel
    per modality, each normalised to zero mean and unit variance inside its non-zero voxels.
    MONAI is imported here, when something is preprocessed (importing it costs seconds).
    """
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
