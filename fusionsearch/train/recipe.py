"""The training recipe's options for small-sample 3D MRI: augmentation, learning-rate schedule, class weights.

Each is a :class:`~fusionsearch.settings.TrainConfig` setting, seeded per candidate and epoch
(the same seed gives the same batches, on a resumed trial too), and none touches epoch 0, the
model before any update, so a warm-started child still starts exactly at its parent.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from fusionsearch.settings import TrainConfig

# MONAI is imported where augmentation runs: ``import monai`` imports every one of its submodules
# (with scipy, matplotlib and mlflow where installed), about 3 s on a 2-core machine, which every
# trial's process paid at its start, with augmentation or without (test_architecture keeps it so).


@dataclass(frozen=True)
class Augmentation:
    """Random flips, small rotations and translations, intensity scale and shift, for a whole batch.

    Each sample gets its own draw; all channels (modalities) of a sample share its spatial
    transform, so the streams stay aligned. The flips, rotation and translation of a sample are
    composed into one matrix (MONAI's ``create_scale``/``create_rotate``/``create_translate``,
    about the volume's centre) and the batch is resampled at once by MONAI's batched
    ``AffineTransform`` (trilinear, zeros outside): one resampling of the batch on its device,
    where per-sample MONAI transforms cost about 1.4 ms of Python per sample whatever the size.

    Attributes:
        shape: a sample's spatial shape ``(D, H, W)``; translations are fractions of its edges.
        flip: probability of a flip along each axis.
        rotate: largest rotation about each axis, in radians (0.1: about 6 degrees).
        translate: largest translation along each axis, as a fraction of its edge.
        scale: intensities are multiplied by ``1 + u``, ``u`` uniform in ``[-scale, scale]``.
        shift: then ``v`` uniform in ``[-shift, shift]`` is added (normalised units).
    """

    shape: tuple[int, int, int]
    flip: float = 0.5
    rotate: float = 0.1
    translate: float = 0.05
    scale: float = 0.1
    shift: float = 0.1

    def matrices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``(batch, 4, 4)`` matrices mapping output to input coordinates, for ``AffineTransform``.

        Its convention (``zero_centered``, ``align_corners``): about the volume's centre, an edge
        of ``d`` voxels ``d`` units long, so a translation ``t`` is ``t / d`` of the edge.
        """
        from monai.transforms.utils import create_rotate, create_scale, create_translate

        flips = torch.where(torch.rand(batch, 3, generator=generator) < self.flip, -1.0, 1.0)
        angles = (torch.rand(batch, 3, generator=generator) * 2 - 1) * self.rotate
        shifts = (
            (torch.rand(batch, 3, generator=generator) * 2 - 1) * self.translate * torch.tensor(self.shape)
        )
        return torch.stack(
            [
                torch.as_tensor(
                    create_translate(3, t.tolist())
                    @ create_rotate(3, a.tolist())
                    @ create_scale(3, f.tolist()),
                    dtype=torch.float32,
                )
                for f, a, t in zip(flips, angles, shifts, strict=True)
            ]
        )

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """``images`` ``(B, N, D, H, W)``, each sample transformed, on their device, seeded by ``seed``.

        The result is contiguous; the caller lays it out as its device wants (``DevicePolicy.batch``).
        """
        generator = torch.Generator().manual_seed(seed % 2**63)
        batch, device = images.shape[0], images.device
        theta = self.matrices(batch, generator).to(device, non_blocking=True)
        scale = 1 + (torch.rand(batch, 1, 1, 1, 1, generator=generator) * 2 - 1) * self.scale
        shift = (torch.rand(batch, 1, 1, 1, 1, generator=generator) * 2 - 1) * self.shift
        return _resample()(images, theta) * scale.to(device) + shift.to(device)


@functools.cache
def _resample():
    """Pull-direction resampling (scipy's ``affine_transform`` convention) about the volume's centre."""
    from monai.networks.layers import AffineTransform

    return AffineTransform(normalized=False, zero_centered=True, padding_mode="zeros", align_corners=True)


def augmentation(train: TrainConfig, shape: tuple[int, ...]) -> Augmentation | None:
    """The augmentation ``train.augment`` names for samples of spatial ``shape``: ``"standard"``
    (:class:`Augmentation`'s defaults) or ``"none"`` (``None``)."""
    if train.augment == "none":
        return None
    return Augmentation(shape=tuple(shape))


def augment(transform: Augmentation | None, images: torch.Tensor, seed: int) -> torch.Tensor:
    """``images`` ``(B, N, D, H, W)`` transformed by ``transform`` with ``seed`` (``None``: unchanged)."""
    return images if transform is None else transform(images, seed)


def learning_rate(train: TrainConfig, epoch: int) -> float:
    """The learning rate of training epoch ``epoch`` (1-based): ``constant``, or ``cosine``: linear
    warm-up over ``warmup_epochs``, then cosine decay to zero at the last epoch."""
    if train.schedule == "constant":
        return train.lr
    if epoch <= train.warmup_epochs:
        return train.lr * epoch / (train.warmup_epochs + 1)
    progress = (epoch - train.warmup_epochs - 1) / max(1, train.epochs - train.warmup_epochs)
    return train.lr * 0.5 * (1 + math.cos(math.pi * progress))


def class_weights(train: TrainConfig, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """Cross-entropy class weights from the training part: ``balanced`` = n / (classes x count), as
    scikit-learn's ``compute_class_weight``; ``none``: unweighted."""
    if train.class_weights == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)
