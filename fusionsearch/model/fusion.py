"""Fusion modules: exchange information between the streams at one fusion point.

A fusion module takes the feature maps of all N streams at one point, each of shape
``(B, C_i, D, H, W)``, and returns N maps of the same shapes. Every module here starts as
the exact identity, so inserting one into a trained network does not change its function:
that is what makes warm-starting a child from its parent sound.

Add a module with ``@register_fusion("name")`` on an ``nn.Module`` subclass whose
constructor takes ``channels: Sequence[int]`` (one entry per stream).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

FusionFactory = Callable[[Sequence[int]], nn.Module]

FUSION_MODULES: dict[str, FusionFactory] = {}


def register_fusion(name: str) -> Callable[[FusionFactory], FusionFactory]:
    """Class decorator that makes a fusion module available under ``name``."""

    def register(factory: FusionFactory) -> FusionFactory:
        if name in FUSION_MODULES:
            raise ValueError(f"a fusion module named {name!r} is already registered")
        FUSION_MODULES[name] = factory
        return factory

    return register


def build_fusion(name: str, channels: Sequence[int]) -> nn.Module:
    """Instantiate the registered fusion module ``name`` for streams with ``channels``."""
    try:
        factory = FUSION_MODULES[name]
    except KeyError:
        raise ValueError(f"unknown fusion module {name!r}; choose one of {sorted(FUSION_MODULES)}") from None
    return factory(channels)


@register_fusion("mmtm")
class MMTM(nn.Module):
    """Multimodal Transfer Module (Joze et al., CVPR 2020), generalised to N streams.

    Squeeze: global average pooling of each stream, ``(B, C_i)``. The squeezed vectors are
    concatenated, ``(B, sum C)``, and projected by a Linear + ReLU to a joint bottleneck of
    ``2 * sum(C) / ratio`` units (the official code's size, with its ``ratio=4``; the paper's
    text writes ``sum(C) / 4``). One Linear per stream maps the bottleneck back to that
    stream's channels, and the stream is rescaled channel-wise by ``2 * sigmoid(e)``.

    Gate choice: ``2 * sigmoid`` (as in the CVPR paper) rather than the official code's plain
    ``sigmoid``, with the per-stream excitation Linears initialised to zero, so a freshly
    inserted module is exactly the identity (``2 * sigmoid(0) = 1``). A plain sigmoid would
    halve every activation at insertion and break warm start.
    """

    def __init__(self, channels: Sequence[int], ratio: float = 4.0) -> None:
        super().__init__()
        total = sum(channels)
        self.bottleneck = max(1, int(2 * total / ratio))
        self.squeeze = nn.Sequential(nn.Linear(total, self.bottleneck), nn.ReLU())
        self.excite = nn.ModuleList(nn.Linear(self.bottleneck, c) for c in channels)
        for linear in self.excite:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        squeezed = torch.cat([f.flatten(2).mean(dim=2) for f in features], dim=1)
        joint = self.squeeze(squeezed)
        out = []
        for feature, excite in zip(features, self.excite, strict=True):
            gate = 2.0 * torch.sigmoid(excite(joint))
            out.append(feature * gate.view(*gate.shape, *([1] * (feature.dim() - 2))))
        return out


@register_fusion("spatial")
class SpatialFusion(nn.Module):
    """Spatially aware fusion: each stream adds a 1x1x1 convolution of all streams' maps.

    ``x_i <- x_i + Conv_i(concat(x_1, ..., x_N))``. Unlike MMTM, which pools position away,
    this lets a stream see *where* the other streams respond. Each convolution's weight and
    bias start at zero, so the module starts as the exact identity.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        total = sum(channels)
        self.mix = nn.ModuleList(nn.Conv3d(total, c, kernel_size=1) for c in channels)
        for conv in self.mix:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        joint = torch.cat(list(features), dim=1)
        return [f + mix(joint) for f, mix in zip(features, self.mix, strict=True)]
