"""The multi-stream 3D ResNet with fusion modules at the points a mask selects."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from fusionsearch.mask import NUM_POINTS, FusionMask, MaskError
from fusionsearch.model.fusion import FUSION_MODULES, build_fusion
from fusionsearch.settings import BLOCKS, ModelConfig, check_choice

if TYPE_CHECKING:
    from monai.networks.nets import resnet

#: The residual stages of a MONAI ResNet, in order.
STAGES = ("layer1", "layer2", "layer3", "layer4")
if len(STAGES) != NUM_POINTS:
    raise ImportError(f"fusionsearch.mask.NUM_POINTS={NUM_POINTS} but the network has {len(STAGES)} stages")


def _resnet(depth: int, **options) -> resnet.ResNet:
    """MONAI's 3D ResNet of ``depth``. MONAI is imported here, when a network is built: importing
    it costs seconds (it loads all its submodules), which processes that never build one (the
    driver, the CLI refusing bad input) do not pay."""
    from monai.networks.nets import resnet

    return {10: resnet.resnet10, 18: resnet.resnet18, 34: resnet.resnet34}[depth](**options)


def group_norm(channels: int) -> nn.GroupNorm:
    """A group norm for ``channels``: up to 32 groups (Wu and He, 2018), of at least 2 channels each,
    so that it normalises more than one value where a stage's output has one voxel (small volumes)."""
    groups = math.gcd(channels, 32)
    while groups > 1 and channels // groups < 2:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def _group_norm(module: nn.Module) -> None:
    """Replace every batch norm of ``module`` by a group norm (affine: weight 1, bias 0, as MONAI
    initialises its norms).

    MONAI's ResNet takes a ``norm`` argument, but (MONAI 1.6) applies it to its stem only: its
    ``_make_layer`` is not given it, so every residual block keeps batch norm. Hence the swap.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            setattr(module, name, group_norm(child.num_features))
        else:
            _group_norm(child)


def fusion_points(config: ModelConfig) -> list[tuple[str, int | None]]:
    """The candidate fusion points in order: ``(stage, None)`` after a whole stage (``points="stages"``)
    or ``(stage, block)`` after one residual block (``points="blocks"``)."""
    if config.points == "stages":
        return [(stage, None) for stage in STAGES]
    return [(stage, b) for stage, n in zip(STAGES, BLOCKS[config.depth], strict=True) for b in range(n)]


class FusionNet(nn.Module):
    """N parallel MONAI 3D ResNets, fused after the stages (or blocks) that ``mask`` selects.

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
        self.mask = FusionMask.parse(mask, config.num_points)
        self.points = fusion_points(config)
        if self.mask.active and config.modalities < 2:
            raise MaskError(
                f"mask {self.mask} fuses streams, but the network has {config.modalities} "
                f"modality; use {FusionMask.empty(config.num_points)} for a single stream"
            )
        self.streams = nn.ModuleList(
            _resnet(
                config.depth,
                spatial_dims=3,
                n_input_channels=1,
                conv1_t_stride=config.stem_stride,
                widen_factor=config.width,
                num_classes=config.num_classes,
            )
            for _ in range(config.modalities)
        )
        if config.norm == "group":
            for stream in self.streams:
                _group_norm(stream)
        blocks = tuple(len(getattr(self.streams[0], stage)) for stage in STAGES)
        if blocks != BLOCKS[config.depth]:  # MONAI changed its ResNet: fusion points would be wrong
            raise ImportError(
                f"MONAI's resnet{config.depth} has {blocks} blocks per stage, expected {BLOCKS[config.depth]}"
            )
        self.fusion = self.fusion_modules()

    def fusion_modules(self) -> nn.ModuleDict:
        """Freshly initialised (identity) fusion modules for the mask's active points."""
        channels = dict(zip(STAGES, stage_channels(self.streams[0]), strict=True))
        config = self.config
        return nn.ModuleDict(
            {
                str(point): build_fusion(config.fusion, [channels[self.points[point][0]]] * config.modalities)
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
        for point, (stage, block) in enumerate(self.points):
            layers = [getattr(s, stage) if block is None else getattr(s, stage)[block] for s in self.streams]
            features = [layer(f) for layer, f in zip(layers, features, strict=True)]
            if str(point) in self.fusion:
                features = self.fusion[str(point)](features)
        logits = [s.fc(s.avgpool(f).flatten(1)) for s, f in zip(self.streams, features, strict=True)]
        return torch.stack(logits).mean(dim=0)


def stage_channels(stream: resnet.ResNet) -> list[int]:
    """Output channels of each residual stage of a MONAI ResNet."""
    return [getattr(stream, stage)[-1].conv2.out_channels for stage in STAGES]


def build_network(
    config: ModelConfig, mask: FusionMask | str, device: torch.device, *, streams_loaded: bool = False
) -> FusionNet:
    """A :class:`FusionNet` built directly on ``device`` (no copy from the CPU).

    ``streams_loaded``: every stream weight is about to be overwritten (a resumed candidate, or
    a child warm-started from its parent), so the streams are allocated without their random
    initialisation, which costs 0.3-0.4 s at ``width=1`` on a CPU; the fusion modules are
    initialised as usual. Their values are undefined until loaded: only for a caller that
    loads every stream key (a strict ``load_state_dict``, or :func:`warm_start`).
    """
    if not streams_loaded:
        with torch.device(device):
            return FusionNet(config, mask)
    with torch.device("meta"):
        network = FusionNet(config, mask)
    network.streams.to_empty(device=device)
    with torch.device(device):
        network.fusion = network.fusion_modules()
    return network
