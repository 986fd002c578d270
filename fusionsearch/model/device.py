"""Where and how a network runs: bf16 autocast + channels_last_3d on CUDA, fp32 on CPU.

On an H100, bf16 autocast with ``channels_last_3d`` is 26-35 % faster than TF32 for this
network (``shared/notes/measurements.md``); bf16 alone buys nothing for 3D convolutions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DevicePolicy:
    """How tensors and modules are placed, laid out and cast on one device."""

    device: torch.device

    @classmethod
    def select(cls, device: str | None = None) -> DevicePolicy:
        """The policy for ``device``, or for CUDA when available and the CPU otherwise."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(torch.device(device))

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.is_cuda else torch.contiguous_format

    def module(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the device in the policy's memory format."""
        return module.to(self.device, memory_format=self.memory_format)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """Move a ``(B, N, D, H, W)`` batch to the device (non-blocking from pinned memory)."""
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA; nothing on the CPU, where bf16 convolutions are slow."""
        if self.is_cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for queued device work (for timing only; never in the training loop)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
