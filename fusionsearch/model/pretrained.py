"""Start every stream from a pretrained 3D ResNet: MedicalNet-style state dicts onto MONAI's names.

MedicalNet (Chen et al., 2019) checkpoints hold ``{"state_dict": {"module.conv1.weight": ...}}``:
a ResNet trained with ``DataParallel`` (hence ``module.``) under the same layer names as MONAI's
ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...), with a
segmentation head (``conv_seg``) instead of a classifier. Each stream gets the backbone; the
classifier (``fc``) and the fusion modules keep their own initialisation.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fusionsearch.errors import UserError

#: Keys of the file that are not the backbone: a segmentation head, a classifier of another task.
IGNORED = ("conv_seg.", "fc.")
#: Prefixes that wrap the names, stripped first (DataParallel's ``module.``).
WRAPPERS = ("module.",)


class PretrainedError(UserError):
    """A pretrained file that does not fit the network's streams."""


def stream_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The backbone tensors of a pretrained file, under MONAI's names (loaded with ``weights_only=True``)."""
    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        reason = " ".join(str(error).split())[:200]
        raise PretrainedError(
            f"--init-streams {path}: cannot read it ({type(error).__name__}: {reason}); give a PyTorch state "
            "dict of a 3D ResNet (e.g. a MedicalNet resnet_18.pth)"
        ) from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"--init-streams {path}: not a state dict (a mapping of names to tensors)")
    out = {}
    for key, value in state.items():
        name = next((key[len(w) :] for w in WRAPPERS if key.startswith(w)), key)
        if not name.startswith(IGNORED):
            out[name] = value
    return out


def load_streams(streams: nn.ModuleList, pretrained: Mapping[str, torch.Tensor], source: str) -> int:
    """Copy ``pretrained`` into every stream; the number of tensors each stream received.

    Raises:
        PretrainedError: naming the first key of the file the streams lack or whose shape
            differs, or the first backbone key of the streams the file lacks.
    """
    target = streams[0].state_dict()
    for key, value in pretrained.items():
        if key not in target:
            raise PretrainedError(
                f"--init-streams {source}: its key {key!r} is not in a stream (a MONAI 3D ResNet, names "
                "such as 'layer1.0.conv1.weight'); is it a ResNet of the same depth?"
            )
        if target[key].shape != value.shape:
            raise PretrainedError(
                f"--init-streams {source}: {key!r} has shape {tuple(value.shape)} in the file but "
                f"{tuple(target[key].shape)} in a stream; match --depth, and use --width 1"
            )
    missing = [k for k in target if k not in pretrained and not k.startswith(IGNORED)]
    if missing:
        raise PretrainedError(
            f"--init-streams {source}: the file lacks {missing[0]!r} (and {len(missing) - 1} more)"
        )
    for stream in streams:
        stream.load_state_dict({**stream.state_dict(), **pretrained}, strict=True)
    return len(pretrained)
