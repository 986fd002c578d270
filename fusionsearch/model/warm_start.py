"""Warm start: initialise a child network from its parent's weights.

The child mask has the parent's fusion points plus new ones. Every parameter and buffer the
parent has is copied; the new fusion modules keep their identity initialisation, so the
child computes exactly the parent's function before its first update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fusionsearch.errors import UserError


class WarmStartError(UserError):
    """The parent's weights do not fit the child."""


@dataclass(frozen=True)
class WarmStartReport:
    """Which of the child's state-dict keys came from the parent and which are new."""

    loaded: tuple[str, ...]
    new: tuple[str, ...]


def warm_start(
    child: nn.Module,
    parent_state_dict: Mapping[str, torch.Tensor],
    new_prefixes: tuple[str, ...] = ("fusion.",),
) -> WarmStartReport:
    """Copy ``parent_state_dict`` into ``child``; return which keys were loaded and which are new.

    Args:
        child: the network to initialise, freshly built (its new modules at identity init).
        parent_state_dict: the parent's ``state_dict()``.
        new_prefixes: the only places a child may have keys its parent lacks (the fusion
            modules). A new key elsewhere means the parent is a different architecture.

    Raises:
        WarmStartError: a parent key the child lacks, a shape mismatch, or a new child key
            outside ``new_prefixes``; the message names the key.
    """
    child_state = child.state_dict()
    for key, value in parent_state_dict.items():
        if key not in child_state:
            raise WarmStartError(
                f"cannot warm-start: the parent has {key!r}, which the child lacks; a child "
                "must contain every fusion point of its parent and the same backbone"
            )
        if child_state[key].shape != value.shape:
            raise WarmStartError(
                f"cannot warm-start: {key!r} has shape {tuple(value.shape)} in the parent but "
                f"{tuple(child_state[key].shape)} in the child; parent and child must share "
                "depth, width and number of classes"
            )
    new = tuple(k for k in child_state if k not in parent_state_dict)
    stray = [k for k in new if not k.startswith(new_prefixes)]
    if stray:
        raise WarmStartError(
            f"cannot warm-start: the child has {stray[0]!r}, which the parent lacks and which is "
            f"not part of a new fusion module ({', '.join(new_prefixes)}); the parent was built "
            "with a different backbone"
        )
    child.load_state_dict({**child_state, **parent_state_dict}, strict=True)
    loaded = tuple(k for k in child_state if k in parent_state_dict)
    return WarmStartReport(loaded=loaded, new=new)
