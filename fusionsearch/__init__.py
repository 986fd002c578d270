"""fusionsearch: find where to fuse imaging modalities in a multi-stream 3D CNN.

Layers, bottom to top (an import contract in CI keeps imports pointing down):

- ``errors``, ``storage``, ``mask``, ``settings``: the foundation (no torch, MONAI or Ray);
- ``search``: strategies, the trial record, the experiment's files (no torch, MONAI or Ray);
- ``data``, ``model``, ``train``, ``report``: data, network, training loop, held-out evaluation
  and reports (torch and MONAI, no Ray);
- ``warm_actors``, ``driver``: Ray Tune; ``pipeline``: validate, cache, search, evaluate, report;
  ``cli``: the command line.

Importing this package is cheap: names from the heavier layers load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fusionsearch.errors import DataError, UserError
from fusionsearch.mask import NUM_POINTS, FusionMask, MaskError
from fusionsearch.settings import ConfigError, ModelConfig, TrainConfig

#: Public names of the heavier layers, loaded on first use: ``{name: module}``.
_LAZY = {
    "DevicePolicy": "fusionsearch.model.device",
    "FUSION_MODULES": "fusionsearch.model.fusion",
    "MMTM": "fusionsearch.model.fusion",
    "SpatialFusion": "fusionsearch.model.fusion",
    "build_fusion": "fusionsearch.model.fusion",
    "register_fusion": "fusionsearch.model.fusion",
    "FusionNet": "fusionsearch.model.network",
    "WarmStartError": "fusionsearch.model.warm_start",
    "WarmStartReport": "fusionsearch.model.warm_start",
    "warm_start": "fusionsearch.model.warm_start",
    "SearchResult": "fusionsearch.search.experiment",
    "run_search": "fusionsearch.tune.driver",
    "resume_search": "fusionsearch.tune.driver",
    "PipelineResult": "fusionsearch.pipeline",
    "run": "fusionsearch.pipeline",
    "resume": "fusionsearch.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fusionsearch' has no attribute {name!r}")


__all__ = [
    "NUM_POINTS",
    "ConfigError",
    "DataError",
    "FusionMask",
    "MaskError",
    "ModelConfig",
    "TrainConfig",
    "UserError",
    *_LAZY,
]
