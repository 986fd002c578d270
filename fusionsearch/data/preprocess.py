"""Preprocessing of one sample with MONAI dictionary transforms, configured by :class:`PreprocessConfig`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fusionsearch.settings import PreprocessConfig

if TYPE_CHECKING:
    from monai.transforms import Compose


def build_transforms(
    modalities: Sequence[str], config: PreprocessConfig, masks: Sequence[str] = ()
) -> Compose:
    """The MONAI pipeline: load, channel first, orient, resample onto one grid, crop/pad, normalise.

    Input: a dict ``{modality: path}``. Output: ``{"image": (N, D, H, W) tensor}``, one channel
    per modality, each normalised to zero mean and unit variance inside its non-zero voxels.
    ``masks``: further keys of the input, label volumes (each on its modality's grid), carried
    onto the image's grid with it (nearest neighbour, same crop and pad, not normalised): the
    output has them as ``(1, D, H, W)`` under their keys.
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

    keys, labels = list(modalities), list(masks)
    reference, others = keys[0], keys[1:]
    steps = [
        LoadImaged(keys + labels, image_only=True, ensure_channel_first=True),
        Orientationd(keys + labels, axcodes=config.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if config.spacing is not None:
        steps.append(Spacingd(reference, pixdim=config.spacing, mode="bilinear"))
    if others:
        steps.append(ResampleToMatchd(others, key_dst=reference, mode="bilinear", padding_mode="zeros"))
    if labels:
        steps.append(ResampleToMatchd(labels, key_dst=reference, mode="nearest", padding_mode="zeros"))
    steps.append(ConcatItemsd(keys, name="image", dim=0))
    if config.crop_foreground:
        steps.append(CropForegroundd(["image", *labels], source_key="image", allow_smaller=True))
    steps += [
        ResizeWithPadOrCropd(["image", *labels], spatial_size=config.spatial_shape),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ]
    return Compose(steps)


def preprocess_sample(paths: Mapping[str, Path], config: PreprocessConfig) -> np.ndarray:
    """Preprocess one sample's images (``{modality: path}``) into an ``(N, D, H, W)`` array."""
    transforms = build_transforms(list(paths), config)
    image = transforms({m: str(p) for m, p in paths.items()})["image"]
    return np.asarray(image.numpy(), dtype=config.dtype)


def preprocess_masks(
    paths: Mapping[str, Path], masks: Mapping[str, Path], config: PreprocessConfig
) -> dict[str, np.ndarray]:
    """Label volumes (``{name: path}``, each on the grid of one of the sample's images ``paths``)
    on the grid the preprocessed sample has: ``{name: bool (D, H, W)}``."""
    keys = {f"mask:{name}": str(path) for name, path in masks.items()}
    transforms = build_transforms(list(paths), config, masks=list(keys))
    out = transforms({m: str(p) for m, p in paths.items()} | keys)
    return {name: np.asarray(out[key].numpy()[0]) > 0.5 for name, key in zip(masks, keys, strict=True)}
