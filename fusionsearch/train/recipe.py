"""The training recipe's options for small-sample 3D MRI: augmentation, learning-rate schedule, class weights.

Each is a :class:`~fusionsearch.settings.TrainConfig` setting, seeded per candidate and epoch
(the same seed gives the same batches, on a resumed trial too), and none touches epoch 0, the
model before any update, so a warm-started child still starts exactly at its parent.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import Compose, RandAffine, RandFlip, RandScaleIntensity, RandShiftIntensity

from fusionsearch.settings import TrainConfig


def augmentation(train: TrainConfig, shape: tuple[int, ...], device: torch.device) -> Compose | None:
    """MONAI's random flips, small rotations and translations, intensity scale and shift, or ``None``.

    ``shape`` is a sample's spatial shape (translations are in voxels), ``device`` where it lies.

    Every channel (modality) of a sample gets the same spatial transform, so the streams stay
    aligned: ``train.augment`` = ``"none"`` or ``"standard"`` (flips along each axis with
    probability 1/2, rotations up to 0.1 rad (~6 degrees), translations up to 5 % of each edge,
    intensity x (1 +/- 0.1) + (+/- 0.1) in the normalised units).
    """
    if train.augment == "none":
        return None
    return Compose(
        [
            *(RandFlip(prob=0.5, spatial_axis=axis) for axis in range(3)),
            RandAffine(
                prob=1.0,
                rotate_range=(0.1, 0.1, 0.1),
                translate_range=[0.05 * s for s in shape],
                padding_mode="zeros",
                device=device,
            ),
            RandScaleIntensity(factors=0.1, prob=1.0),
            RandShiftIntensity(offsets=0.1, prob=1.0),
        ]
    )


def augment(transform: Compose | None, images: torch.Tensor, seed: int) -> torch.Tensor:
    """``images`` ``(B, N, D, H, W)`` with each sample transformed on its device, seeded by ``seed``."""
    if transform is None:
        return images
    transform.set_random_state(seed=seed % 2**32)
    layout = (
        torch.channels_last_3d if images.is_cuda else torch.contiguous_format
    )  # as the device policy lays out
    return torch.stack([torch.as_tensor(transform(sample)) for sample in images]).contiguous(
        memory_format=layout
    )


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
