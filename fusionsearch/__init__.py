"""fusionsearch: find where to fuse imaging modalities in a multi-stream 3D CNN."""

from fusionsearch.config import ConfigError, ModelConfig
from fusionsearch.device import DevicePolicy
from fusionsearch.fusion import FUSION_MODULES, MMTM, SpatialFusion, build_fusion, register_fusion
from fusionsearch.mask import FusionMask, MaskError
from fusionsearch.network import NUM_POINTS, FusionNet
from fusionsearch.warm_start import WarmStartError, WarmStartReport, warm_start


def __getattr__(name: str):
    # The driver imports Ray; load it only when asked for.
    if name in ("run_search", "resume_search", "SearchResult"):
        from fusionsearch import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'fusionsearch' has no attribute {name!r}")


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
    "SearchResult",
    "SpatialFusion",
    "WarmStartError",
    "WarmStartReport",
    "build_fusion",
    "register_fusion",
    "resume_search",
    "run_search",
    "warm_start",
]
