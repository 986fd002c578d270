"""Ray Tune searchers for fusion-mask search: SFSA, beam and exhaustive.

Each is a :class:`RoundSearcher` over a pure strategy (random and TPE search are SFSA's
rivals at a fixed budget) from :mod:`fusionsearch.search.strategies`;
any other :class:`~fusionsearch.search.strategies.Strategy` plugs in the same way. Keyword
``options`` are :class:`RoundSearcher`'s: ``metric``, ``mode``, ``folds``, ``pooled``,
``unimodal``, ``ensemble``, ``experiment_dir``. Importing this package loads Ray Tune, not
torch or MONAI.
"""

from __future__ import annotations

from typing import Any

from fusionsearch.mask import NUM_POINTS
from fusionsearch.search.experiment import CANDIDATES_FILE
from fusionsearch.search.strategies import SFSA, BeamSearch, Exhaustive, RandomSearch, TPESearch
from fusionsearch.settings import SEARCHERS, SearchConfig
from searchers.rounds import CheckpointLocator, Reconcile, RoundSearcher

#: The rules' defaults: the same as ``fusionsearch run``'s (one source, :class:`SearchConfig`).
_RULES = SearchConfig()


class SFSASearcher(RoundSearcher):
    """The paper's Sequential Forward Search Algorithm, each round with its continued-parent control.

    ``control``, ``alpha``, ``extend``, ``min_delta``: see :class:`~fusionsearch.search.strategies.SFSA`;
    the defaults are ``fusionsearch run``'s.
    """

    name = "sfsa"

    def __init__(
        self,
        *,
        num_points: int = NUM_POINTS,
        min_delta: float = _RULES.min_delta,
        control: str = _RULES.control,
        alpha: float = _RULES.alpha,
        extend: bool = _RULES.extend,
        **options: Any,
    ) -> None:
        super().__init__(SFSA(num_points, min_delta, control, alpha, extend), **options)

    @classmethod
    def from_config(cls, search: SearchConfig, seed: int = 0, **options: Any) -> SFSASearcher:
        rules = {"min_delta": search.min_delta, "control": search.control, "alpha": search.alpha}
        return cls(**rules, extend=search.extend, **options)


class BeamSearcher(RoundSearcher):
    """Beam search: the ``beam_width`` best masks of each round, ``patience`` stale rounds, a control
    per kept parent."""

    name = "beam"

    def __init__(
        self,
        *,
        beam_width: int = _RULES.beam_width,
        patience: int = _RULES.beam_patience,
        num_points: int = NUM_POINTS,
        min_delta: float = _RULES.min_delta,
        control: str = _RULES.control,
        alpha: float = _RULES.alpha,
        extend: bool = _RULES.extend,
        **options: Any,
    ) -> None:
        super().__init__(
            BeamSearch(num_points, beam_width, patience, min_delta, control, alpha, extend), **options
        )

    @classmethod
    def from_config(cls, search: SearchConfig, seed: int = 0, **options: Any) -> BeamSearcher:
        return cls(beam_width=search.beam_width, patience=search.beam_patience, min_delta=search.min_delta,
                   control=search.control, alpha=search.alpha, extend=search.extend, **options)  # fmt: skip


class ExhaustiveSearcher(RoundSearcher):
    """All ``2**num_points`` masks, warm-started from the baseline (or from scratch)."""

    name = "exhaustive"

    def __init__(self, *, num_points: int = NUM_POINTS, from_scratch: bool = False, **options: Any) -> None:
        super().__init__(Exhaustive(num_points, from_scratch), **options)

    @classmethod
    def from_config(cls, search: SearchConfig, seed: int = 0, **options: Any) -> ExhaustiveSearcher:
        return cls(from_scratch=search.from_scratch, **options)


class RandomSearcher(RoundSearcher):
    """A rival at a fixed budget: the baseline, then ``budget - 1`` fused masks drawn uniformly."""

    name = "random"

    def __init__(
        self,
        *,
        budget: int | None = None,
        num_points: int = NUM_POINTS,
        from_scratch: bool = False,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(RandomSearch(num_points, budget, from_scratch, seed), **options)

    @classmethod
    def from_config(cls, search: SearchConfig, seed: int = 0, **options: Any) -> RandomSearcher:
        return cls(budget=search.budget, from_scratch=search.from_scratch, seed=seed, **options)


class TPESearcher(RoundSearcher):
    """A rival at a fixed budget: Optuna's TPE sampler over the m points, ``batch`` masks a round."""

    name = "optuna"

    def __init__(
        self,
        *,
        budget: int | None = None,
        num_points: int = NUM_POINTS,
        from_scratch: bool = False,
        seed: int = 0,
        batch: int = 4,
        **options: Any,
    ) -> None:
        super().__init__(TPESearch(num_points, budget, from_scratch, seed, batch), **options)

    @classmethod
    def from_config(cls, search: SearchConfig, seed: int = 0, **options: Any) -> TPESearcher:
        return cls(budget=search.budget, from_scratch=search.from_scratch, seed=seed, **options)


#: Every searcher by its name (``SearchConfig.searcher``, ``--searcher``, reports): the one registry.
#: ``fusionsearch.settings.SEARCHERS`` lists the same names for the layers below Ray (a test checks it).
REGISTRY: dict[str, type[RoundSearcher]] = {
    c.name: c for c in (SFSASearcher, BeamSearcher, ExhaustiveSearcher, RandomSearcher, TPESearcher)
}
if tuple(REGISTRY) != SEARCHERS:  # pragma: no cover - a programming error, found at import
    raise ImportError(f"searchers.REGISTRY {tuple(REGISTRY)} and settings.SEARCHERS {SEARCHERS} differ")


__all__ = [
    "CANDIDATES_FILE",
    "REGISTRY",
    "BeamSearcher",
    "CheckpointLocator",
    "ExhaustiveSearcher",
    "RandomSearcher",
    "Reconcile",
    "RoundSearcher",
    "SFSASearcher",
    "TPESearcher",
]
