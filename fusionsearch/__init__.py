"""fusionsearch: find where to fuse imaging modalities in a multi-stream 3D CNN."""

from fusionsearch.config import ConfigError, ModelConfig
from fusionsearch.device import DevicePolicy
from fusionsearch.fusion import FUSION_MODULES, MMTM, SpatialFusion, build_fusion, register_fusion
from fusionsearch.mask import FusionMask, MaskError
from fusionsearch.network import NUM_POINTS, FusionNet
from fusionsearch.warm_start import WarmStartError, WarmStartReport, warm_start

__all__ = [
    "FUSION_MODULES",
    "MMTM",
    "NUM_POINTS",
    "ConfigError",
    "DevicePolicy",
    "FusionMask",
    "FusionNet",
    "MaskError",
    "ModelConfig",
    "SpatialFusion",
    "WarmStartError",
    "WarmStartReport",
    "build_fusion",
    "register_fusion",
    "warm_start",
]
