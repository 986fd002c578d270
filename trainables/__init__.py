"""Ray Tune function trainables that train one fusion-mask candidate.

``train_candidate`` is imported lazily: importing it pulls in torch and MONAI, which the
scripted trainable (tests, overhead benchmarks) does not need.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train_candidate"]


def __getattr__(name: str) -> Any:
    if name == "train_candidate":
        from trainables.candidate import train_candidate

        return train_candidate
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
