"""The multi-stream 3D ResNet with fusion modules at the points a mask selects."""

from __future__ import annotations

import torch
from monai.networks.nets import resnet
from torch import nn

from fusionsearch.mask import NUM_POINTS, FusionMask, MaskError
from fusionsearch.model.fusion import FUSION_MODULES, build_fusion
from fusionsearch.settings import ModelConfig, check_choice

#: The residual stages after which a stream can fuse: candidate point ``i`` follows ``STAGES[i]``.
STAGES = ("layer1", "layer2", "layer3", "layer4")
if len(STAGES) != NUM_POINTS:
    raise ImportError(f"fusionsearch.mask.NUM_POINTS={NUM_POINTS} but the network has {len(STAGES)} stages")

_FACTORIES = {10: resnet.resnet10, 18: resnet.resnet18, 34: resnet.resnet34}


class FusionNet(nn.Module):
    """N parallel MONAI 3D ResNets, fused after the stages that ``mask`` selects.

    Input ``(B, N, D, H, W)``: channel ``i`` feeds stream ``i``. Each stream is a full
    ResNet with its own classifier; the output is the mean of the N streams' logits,
    ``(B, num_classes)``. With the empty mask this is late fusion.

    Fusion modules live in ``self.fusion[str(point)]`` for the active points only, so a
    child mask's state dict is its parent's plus the new modules' keys.
    """

    def __init__(self, config: ModelConfig, mask: FusionMask | str) -> None:
        super().__init__()
        check_choice("fusion", config.fusion, sorted(FUSION_MODULES))
        self.config = config
        self.mask = FusionMask.parse(mask, NUM_POINTS)
        if self.mask.active and config.modalities < 2:
            raise MaskError(
                f"mask {self.mask} fuses streams, but the network has {config.modalities} "
                f"modality; use {FusionMask.empty(NUM_POINTS)} for a single stream"
            )
        self.streams = nn.ModuleList(
            _FACTORIES[config.depth](
                spatial_dims=3,
                n_input_channels=1,
                conv1_t_stride=config.stem_stride,
                widen_factor=config.width,
                num_classes=config.num_classes,
            )
            for _ in range(config.modalities)
        )
        channels = stage_channels(self.streams[0])
        self.fusion = nn.ModuleDict(
            {
                str(point): build_fusion(config.fusion, [channels[point]] * config.modalities)
                for point in self.mask.active
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != len(self.streams):
            raise ValueError(f"expected input (B, {len(self.streams)}, D, H, W), got {tuple(x.shape)}")
        features = []
        for i, stream in enumerate(self.streams):
            h = stream.act(stream.bn1(stream.conv1(x[:, i : i + 1])))
            features.append(h if stream.no_max_pool else stream.maxpool(h))
        for point, stage in enumerate(STAGES):
            features = [getattr(s, stage)(f) for s, f in zip(self.streams, features, strict=True)]
            if str(point) in self.fusion:
                features = self.fusion[str(point)](features)
        logits = [s.fc(s.avgpool(f).flatten(1)) for s, f in zip(self.streams, features, strict=True)]
        return torch.stack(logits).mean(dim=0)


def stage_channels(stream: resnet.ResNet) -> list[int]:
    """Output channels of each residual stage of a MONAI ResNet."""
    return [getattr(stream, stage)[-1].bn2.num_features for stage in STAGES]
