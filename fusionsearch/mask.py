"""Fusion masks: which candidate fusion points of the network carry a fusion module.

A mask over ``m`` points is written as a bit string of length ``m``: position ``i`` is
point ``F(i+1)``, so ``"0100"`` fuses after stage 2 only and ``"0000"`` is late fusion.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

from fusionsearch.errors import UserError

#: Candidate fusion points of the network: after each of a ResNet's four residual stages.
NUM_POINTS = 4


class MaskError(UserError):
    """A mask string that is not ``m`` characters of ``0``/``1``."""


@dataclass(frozen=True, order=True)
class FusionMask:
    """An immutable set of active fusion points over ``num_points`` candidates.

    Masks order and hash by their bit string, so they can key dictionaries and sort
    deterministically.
    """

    bits: str

    def __post_init__(self) -> None:
        if not self.bits or set(self.bits) - {"0", "1"}:
            raise MaskError(
                f"invalid fusion mask {self.bits!r}: expected a string of 0s and 1s, one per "
                "candidate fusion point, e.g. '0100' to fuse after stage 2 of 4"
            )

    @classmethod
    def parse(cls, text: str | FusionMask, num_points: int | None = None) -> FusionMask:
        """Parse ``text`` (e.g. ``"0100"``), checking its length when ``num_points`` is given."""
        mask = text if isinstance(text, FusionMask) else cls(str(text).strip())
        if num_points is not None and mask.num_points != num_points:
            raise MaskError(
                f"invalid fusion mask {mask.bits!r}: the network has {num_points} candidate "
                f"fusion points, so a mask is {num_points} characters of 0/1 "
                f"(e.g. {'0' * (num_points - 1) + '1'!r})"
            )
        return mask

    @classmethod
    def empty(cls, num_points: int) -> FusionMask:
        """The mask with no fusion point: late fusion of the streams' logits."""
        return cls("0" * num_points)

    @classmethod
    def all_masks(cls, num_points: int) -> list[FusionMask]:
        """All ``2**num_points`` masks, from ``00..0`` to ``11..1``."""
        return [cls("".join(bits)) for bits in product("01", repeat=num_points)]

    @property
    def num_points(self) -> int:
        return len(self.bits)

    @property
    def active(self) -> tuple[int, ...]:
        """Zero-based indices of the active points (``"0101"`` -> ``(1, 3)``)."""
        return tuple(i for i, bit in enumerate(self.bits) if bit == "1")

    def __contains__(self, point: int) -> bool:
        return self.bits[point] == "1"

    def __iter__(self) -> Iterator[bool]:
        return (bit == "1" for bit in self.bits)

    def __str__(self) -> str:
        return self.bits

    def with_point(self, point: int) -> FusionMask:
        """This mask with ``point`` (zero-based) switched on."""
        if not 0 <= point < self.num_points:
            raise MaskError(f"fusion point {point} is outside 0..{self.num_points - 1}")
        return FusionMask(self.bits[:point] + "1" + self.bits[point + 1 :])

    def extensions(self) -> list[FusionMask]:
        """Every mask with exactly one more active point, in point order."""
        return [self.with_point(i) for i in range(self.num_points) if i not in self]

    def is_subset(self, other: FusionMask) -> bool:
        """Whether every active point of this mask is active in ``other``."""
        return self.num_points == other.num_points and set(self.active) <= set(other.active)
