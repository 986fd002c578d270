"""The bare model step's rate on random inputs: what a training loop is compared against."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from fusionsearch.model.device import DevicePolicy
from fusionsearch.train.loop import make_optimizer, train_step


@dataclass(frozen=True)
class StepRate:
    """Timing of the bare model step on random inputs."""

    step_seconds: float
    volumes_per_second: float
    final_loss: float


def measure_step_rate(
    model: nn.Module,
    policy: DevicePolicy,
    *,
    size: int,
    batch: int,
    steps: int,
    warmup: int = 2,
    lr: float = 1e-3,
    seed: int = 0,
) -> StepRate:
    """Mean time of ``steps`` training steps, after ``warmup`` steps, on fixed random data.

    The data already sit on the device, so this is the model-only rate that a training loop
    (with its data loading) is compared against.
    """
    generator = torch.Generator().manual_seed(seed)
    channels = len(model.streams)
    images = policy.batch(torch.randn(batch, channels, size, size, size, generator=generator))
    labels = torch.randint(0, model.config.num_classes, (batch,), generator=generator).to(policy.device)
    model = policy.module(model).train()
    optimizer = make_optimizer(model, policy, lr)
    for _ in range(warmup):
        train_step(model, optimizer, policy, images, labels)
    policy.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = train_step(model, optimizer, policy, images, labels)
    policy.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    return StepRate(step_seconds=elapsed, volumes_per_second=batch / elapsed, final_loss=float(loss))
