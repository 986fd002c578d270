"""The training recipe: seeded augmentation, the learning-rate schedule, class weights (no Ray)."""

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fusionsearch.settings import ConfigError, TrainConfig
from fusionsearch.train.recipe import augment, augmentation, class_weights, learning_rate


def test_augmentation_is_seeded_shape_preserving_and_keeps_modalities_aligned():
    transform = augmentation(TrainConfig(augment="standard"), (16, 16, 16))
    generator = torch.Generator().manual_seed(0)
    one = torch.randn(4, 1, 16, 16, 16, generator=generator)
    images = torch.cat([one, one], dim=1)  # two identical modalities
    first, again, other = (augment(transform, images, s) for s in (7, 7, 8))
    assert first.shape == images.shape and torch.equal(first, again)  # same seed, same batch
    assert not torch.equal(first, other) and not torch.equal(first, images)
    assert torch.equal(first[:, 0], first[:, 1])  # one spatial transform for every channel of a sample
    assert not torch.equal(first[0], first[1])  # each sample its own draw
    assert augmentation(TrainConfig(), (16, 16, 16)) is None
    assert augment(None, images, 7) is images


def test_augmentation_geometry_flips_rotates_and_translates_about_the_centre():
    from scipy import ndimage

    from fusionsearch.train.recipe import Augmentation

    images = torch.randn(3, 2, 10, 10, 10, generator=torch.Generator().manual_seed(1))
    still = Augmentation((10, 10, 10), flip=0.0, rotate=0.0, translate=0.0, scale=0.0, shift=0.0)
    torch.testing.assert_close(still(images, 0), images, atol=1e-5, rtol=0)
    flipped = Augmentation((10, 10, 10), flip=1.0, rotate=0.0, translate=0.0, scale=0.0, shift=0.0)
    torch.testing.assert_close(flipped(images, 0), images.flip(2, 3, 4), atol=1e-5, rtol=0)
    # A draw with rotation and translation resamples as scipy does: the rotation about the centre
    # voxel (d - 1) / 2, the translation a fraction of the edge's span (d - 1 voxels).
    moved = Augmentation((10, 10, 10), flip=0.0, scale=0.0, shift=0.0)
    theta = moved.matrices(3, torch.Generator().manual_seed(5)).numpy()
    out = moved(images, 5)
    centre = 4.5
    for b in range(3):
        rotation, translation = theta[b, :3, :3], theta[b, :3, 3] * 9 / 10
        offset = translation + centre - rotation @ np.full(3, centre)
        for c in range(2):
            expected = ndimage.affine_transform(
                images[b, c].numpy(), rotation, offset, order=1, mode="grid-constant", cval=0.0
            )
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-4)
    assert np.abs(theta[:, :3, 3]).max() > 0.1 and np.abs(theta[:, :3, :3] - np.eye(3)).max() > 0.01


def test_cosine_schedule_warms_up_then_decays_to_zero():
    train = TrainConfig(lr=1e-2, epochs=5, schedule="cosine", warmup_epochs=1)
    rates = [learning_rate(train, e) for e in range(1, 6)]
    assert rates[0] == pytest.approx(0.5e-2)  # warm-up: lr x 1/2
    assert rates[1] == pytest.approx(1e-2)  # cosine from the top ...
    assert rates[2] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert rates[-1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))  # ... towards zero
    assert all(a >= b for a, b in itertools.pairwise(rates[1:]))
    assert {learning_rate(replace(train, schedule="constant"), e) for e in range(1, 6)} == {1e-2}


def test_balanced_class_weights_are_inverse_frequencies_of_the_training_part():
    weights = class_weights(TrainConfig(class_weights="balanced"), np.array([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert class_weights(TrainConfig(), np.array([0, 1]), 2) is None


def test_recipe_options_are_checked():
    with pytest.raises(ConfigError, match="augment='heavy' is not allowed"):
        TrainConfig(augment="heavy")
    with pytest.raises(ConfigError, match="schedule='step' is not allowed"):
        TrainConfig(schedule="step")
