"""Every setting of a search, as typed records: the one source of defaults.

Plain dicts (Ray configs, JSON, CLI) become these once, at the edge (:func:`from_dict`). This
module imports no torch, MONAI or Ray, so the Ray-side code and the CLI read it cheaply.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fusionsearch.errors import UserError

T = TypeVar("T")

RESNET_DEPTHS = (10, 18, 34)
#: Residual blocks per stage of each ResNet depth (MONAI's ``resnet10/18/34``).
BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
#: Where the streams may fuse: after each of the four stages, or after every residual block.
POINTS = ("stages", "blocks")
#: Normalisation layers of the streams (MONAI ResNet ``norm``).
NORMS = ("batch", "group")
#: Exhaustive search (and the brute-force ensemble) over more points than this needs ``force``.
EXHAUSTIVE_LIMIT = 6
SEARCHERS = ("sfsa", "beam", "exhaustive", "random", "optuna")
#: What a round's children are compared with: the parent continued for their budget, or the parent.
CONTROLS = ("parent", "none")
AUGMENTS = ("none", "standard")
#: Where the preprocessing cache is built: this process's threads, the cluster's workers, or the
#: cluster's when the search runs on several nodes that all see the data and the cache.
CACHE_BUILDS = ("auto", "driver", "cluster")
#: ``auto`` has the cluster build only a cache of at least this many samples: below, the workers'
#: start-up (seconds of imports each) costs more than a second node saves.
AUTO_MIN_SAMPLES = 100
SCHEDULES = ("constant", "cosine")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class Option:
    """How a setting appears on the command line: a field's ``metadata["cli"]`` (see :func:`option`).

    The CLI makes its options from these (:func:`fusionsearch.cli.add_options`), with the record's
    default in the help, and builds the records from what was given; the record's own checks
    are the only validation.

    Attributes:
        help: the help line; `` (default: ...)`` is appended from the record (not for on/off flags).
        flag: the option's name; default ``--`` and the field's name with dashes, or ``--no-NAME``
            for a setting that is on by default.
        choices: the allowed values, shown in the usage line (the record refuses any other).
        unset: what a default of ``None`` means, for the help ("every fold").
        group: the help section, when not the record's.
        metavar: the placeholder in the usage line.
    """

    help: str
    flag: str | None = None
    choices: tuple[Any, ...] = ()
    unset: str = "none"
    group: str | None = None
    metavar: str | None = None


def option(help: str, **how: Any) -> dict[str, Option]:
    """Field metadata making a setting a command-line option: ``field(default=..., metadata=option(...))``."""
    return {"cli": Option(help, **how)}


class ConfigError(UserError):
    """A settings value or dict that does not describe a valid settings object."""


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build the frozen dataclass ``cls`` from ``values``, recursing into nested dataclasses.

    Unknown keys are rejected with the list of allowed ones, so a typo in a config never
    silently falls back to a default.
    """
    if isinstance(values, cls):
        return values
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_in(hints[name])
        if nested and isinstance(value, Mapping):
            value = from_dict(nested, value)
        elif isinstance(value, list):  # JSON and Ray restores turn tuples into lists
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """The JSON-friendly dict form of a settings dataclass (inverse of :func:`from_dict`)."""
    return dataclasses.asdict(obj)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass in a type hint such as ``ModelConfig`` or ``ModelConfig | None``."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((t for t in options if dataclasses.is_dataclass(t)), None)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {allowed}")


def check_alpha(alpha: float) -> None:
    """A false-accept rate must lie strictly between 0 and 1."""
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"alpha={alpha!r} must be a false-accept rate between 0 and 1 (e.g. 0.05)")


def _positive_ints(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")


@dataclass(frozen=True)
class ModelConfig:
    """The multi-stream network, apart from its fusion mask.

    Attributes:
        modalities: number of input streams, one 3D ResNet each (one channel per stream).
        depth: ResNet depth, 10, 18 or 34.
        fusion: name of the registered fusion module used at active points (checked against
            the registry, :data:`fusionsearch.model.fusion.FUSION_MODULES`, when the network
            is built).
        stem_stride: stride of the first convolution. 2 is the standard ResNet; MONAI's
            default 1 costs 8x the FLOPs.
        width: channel multiplier (MONAI ``widen_factor``); below 1 for small CPU runs.
        num_classes: number of output classes.
        points: candidate fusion points: ``stages`` (after each residual stage, m = 4) or
            ``blocks`` (after every residual block: m = 8 for ResNet-18, 16 for ResNet-34).
        norm: the streams' normalisation: ``batch`` (the standard ResNet; synchronised across the
            workers of a data-parallel candidate on CUDA) or ``group`` (group norm, per sample:
            independent of the batch, so a candidate trains the same on any number of workers, on
            CPUs too, and with batches of one or two volumes).
    """

    modalities: int = 2
    depth: int = field(default=18, metadata=option("ResNet depth", choices=RESNET_DEPTHS))
    fusion: str = field(
        default="mmtm", metadata=option("fusion module: mmtm, spatial or one registered in FUSION_MODULES")
    )
    stem_stride: int = field(default=2, metadata=option("first-convolution stride", choices=(1, 2)))
    width: float = field(default=1.0, metadata=option("channel multiplier"))
    num_classes: int = 2
    points: str = field(
        default="stages",
        metadata=option(
            "candidate fusion points: after each stage (m = 4) or after every residual block "
            "(m = 8 for ResNet-18, 16 for ResNet-34)",
            choices=POINTS,
        ),
    )
    norm: str = field(
        default="batch",
        metadata=option(
            "the streams' normalisation: batch, or group (group norm, per sample: independent of the batch)",
            choices=NORMS,
        ),
    )

    def __post_init__(self) -> None:
        _positive_ints(self, "modalities")
        check_choice("norm", self.norm, NORMS)
        check_choice("depth", self.depth, RESNET_DEPTHS)
        check_choice("points", self.points, POINTS)
        check_choice("stem_stride", self.stem_stride, (1, 2))
        if not 64 * self.width >= 1:
            raise ConfigError(f"width={self.width!r} must be at least 1/64")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ConfigError(f"num_classes={self.num_classes!r} must be an integer >= 2")

    @property
    def num_points(self) -> int:
        """m, the mask length: 4 stages, or every residual block of the depth."""
        return len(BLOCKS[self.depth]) if self.points == "stages" else sum(BLOCKS[self.depth])


@dataclass(frozen=True)
class TrainConfig:
    """How one candidate is trained.

    Attributes:
        epochs: maximum training epochs.
        patience: stop after this many epochs without a lower validation loss. Learning on
            hard fusion tasks is sudden (the loss may rise for several epochs, then collapse),
            so keep it generous.
        batch_size: training batch size.
        lr: AdamW learning rate. 3e-4 keeps a full-width network (``width=1``) stable: at 3e-3
            its validation loss jumped from 0.7 to 10^3-10^6 after one epoch, on an H200 at 128^3
            and on a CPU at 32^3, and no candidate of that search ever beat its random start.
        weight_decay: AdamW weight decay.
        seed: base seed; each candidate derives its own from it and its mask.
        checkpoint_interval: seconds between resumable checkpoints (weights, optimizer, loop
            state) while a candidate trains; 0 = after every epoch. The final checkpoint (the
            best weights, what children and the evaluation read) is always written. A retried
            trial loses at most this much training.
        eval_every: validate after every ``eval_every``-th epoch (and after the last); the best
            epoch is chosen among the validated ones. Validation is a forward pass over the
            validation part; with a quarter of the subjects there it costs about a tenth of
            the trial at 1 (measured on an H200, README), half that at 2.
        augment: ``none`` or ``standard`` (random flips, small rotations and translations,
            intensity scale and shift, on the device; :mod:`fusionsearch.train.recipe`).
        schedule: ``constant`` learning rate, or ``cosine`` (linear warm-up over
            ``warmup_epochs``, then cosine decay to zero at the last epoch).
        class_weights: ``none``, or ``balanced``: cross-entropy weighted by the inverse class
            frequency of the candidate's training part.
        init_streams: a pretrained 3D ResNet state dict (MedicalNet-style ``module.`` keys are
            mapped onto MONAI's names) every stream of a candidate that starts from scratch
            begins from; ``None``: random initialisation.
    """

    epochs: int = field(default=30, metadata=option("max epochs per candidate"))
    patience: int = field(default=8, metadata=option("early-stopping patience"))
    batch_size: int = field(default=16, metadata=option("training batch size"))
    lr: float = field(default=3e-4, metadata=option("AdamW learning rate"))
    weight_decay: float = field(default=1e-2, metadata=option("AdamW weight decay"))
    seed: int = field(default=0, metadata=option("seed of splits, data and training"))
    checkpoint_interval: float = field(
        default=300.0,
        metadata=option(
            "seconds between resumable checkpoints of a training candidate; 0 = every epoch (the final "
            "checkpoint is always written)"
        ),
    )
    eval_every: int = field(
        default=1,
        metadata=option(
            "validate after every K-th epoch and the last; the best epoch is chosen among those "
            "(2 halves validation's share of a trial)",
            metavar="K",
        ),
    )
    augment: str = field(
        default="none",
        metadata=option(
            "random flips, small rotations/translations, intensity scale and shift on the device",
            choices=AUGMENTS,
        ),
    )
    schedule: str = field(
        default="cosine",
        metadata=option(
            "learning-rate schedule; cosine: linear warm-up, then cosine decay", choices=SCHEDULES
        ),
    )
    warmup_epochs: int = field(default=1, metadata=option("cosine schedule's warm-up epochs"))
    class_weights: str = field(
        default="none",
        metadata=option("loss weighted by inverse class frequency of training", choices=CLASS_WEIGHTS),
    )
    init_streams: str | None = field(
        default=None,
        metadata=option(
            "pretrained 3D ResNet state dict (e.g. MedicalNet's resnet_18.pth) every stream starts from",
            unset="random initialisation",
            metavar="PATH",
        ),
    )

    def __post_init__(self) -> None:
        _positive_ints(self, "epochs", "batch_size", "eval_every")
        check_choice("augment", self.augment, AUGMENTS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs!r} must be a non-negative integer")
        if not self.checkpoint_interval >= 0:
            raise ConfigError(f"checkpoint_interval={self.checkpoint_interval!r} must be >= 0 seconds")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ConfigError(f"patience={self.patience!r} must be a non-negative integer")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r} must be positive")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay={self.weight_decay!r} must be >= 0")


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw NIfTI volumes become one ``(N, *shape)`` array per sample.

    Attributes:
        shape: target cube edge (or ``(D, H, W)``); volumes are cropped/padded to it.
        spacing: target voxel size in mm for the reference (first) modality, or ``None`` to
            keep its own grid. The other modalities are resampled onto the reference grid
            using the NIfTI affines (scanner space), so they need not be co-registered.
        orientation: axis codes every volume is reoriented to.
        crop_foreground: crop to the bounding box of the non-zero voxels before padding.
        dtype: storage type of the cached arrays (``float16`` halves memory and I/O).
    """

    shape: int | tuple[int, int, int] = field(
        default=64, metadata=option("cube edge after crop/pad", flag="--size", metavar="EDGE")
    )
    spacing: float | tuple[float, float, float] | None = field(
        default=None, metadata=option("voxel size in mm", unset="keep the first modality's")
    )
    orientation: str = "RAS"
    crop_foreground: bool = True
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if any(s < 4 for s in self.spatial_shape):
            raise ConfigError(f"shape={self.shape!r}: every edge must be at least 4 voxels")
        check_choice("dtype", self.dtype, ("float16", "float32"))

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        shape = self.shape
        return (shape,) * 3 if isinstance(shape, int) else tuple(int(s) for s in shape)


@dataclass(frozen=True)
class DataConfig:
    """Which data a candidate trains and validates on.

    Attributes:
        index: location of the samples' index in the cache (:meth:`PreprocessCache.write_index`).
        cache: folder or URI of the preprocessing cache (built before any trial starts).
        preprocess: the preprocessing settings (part of the cache key).
        folds: number of cross-validation parts (and folds).
        split_seed: seed of the fold assignment.
        layout: ``rotating`` (fold i tests on part i) or ``reserved`` (part 0 is every fold's test
            part, k - 1 folds: the pooled search's; :func:`fusionsearch.data.splits.make_folds`).
    """

    index: str
    cache: str
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    folds: int = 5
    split_seed: int = 0
    layout: str = "rotating"

    def __post_init__(self) -> None:
        check_choice("layout", self.layout, ("rotating", "reserved"))

    @property
    def num_folds(self) -> int:
        """Folds of the layout: ``folds``, or ``folds - 1`` with the test part reserved."""
        return self.folds - (self.layout == "reserved")


@dataclass(frozen=True)
class RunSettings:
    """Everything a candidate needs besides its mask and parent."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class SearchConfig:
    """Which searcher runs on which folds, with which baselines.

    Attributes:
        searcher: ``sfsa``, ``beam``, ``exhaustive``, or a rival at a fixed budget: ``random``
            (uniform over the fused masks) or ``optuna`` (Optuna's TPE over the m points).
        min_delta: least decrease of the validation loss that counts as an improvement: sfsa and
            beam accept a child whose gain over its reference is above it at ``p < alpha``
            (:mod:`fusionsearch.search.acceptance` says why 0.02).
        control: sfsa, beam: ``parent`` trains, beside each round's children, their parent
            continued with exactly their budget, and a child must beat that; ``none``: the
            paper's rule, a child must beat its parent's own loss.
        alpha: sfsa, beam: false-accept rate of a round's acceptance test (the best child's gain
            over its reference, chosen on one half of the validation subjects and tested on the
            other: :mod:`fusionsearch.search.acceptance`).
        extend: sfsa, beam: when nothing in the round learned (no trial, nor its start, removed a
            fifth of the chance loss), whether or not a child passed, train every trial of the round
            again, once, with twice the budget (its first budget replaying the first attempt's
            batches) before deciding.
        beam_width: beam: masks kept per round.
        beam_patience: beam: non-improving rounds tolerated.
        from_scratch: exhaustive, random, optuna: train every mask from scratch instead of from 0000.
        budget: random, optuna: candidates per fold, the baseline included (``None``: SFSA's
            most, 11 for m = 4).
        folds: number of cross-validation folds (at least 3: train, validation, test).
        fold: search this fold only (``None``: every fold).
        pooled: one search over all folds, scored on the mean validation loss. Part 0 is then
            reserved as every fold's test part (``folds - 1`` folds), so that no subject a
            selection saw is ever tested.
        unimodal: train a single-stream baseline per modality beside the search.
        ensemble: also train the fusion masks the search skipped (brute-force ensemble).
        repeats: run each fold's search this many times with different training seeds (new
            weights, batch order and augmentation; the same split), in parallel. The report gives
            how often the chosen masks include each fusion point and the spread of held-out
            accuracy over replicates; its paired comparisons use the first replicate.
        force: allow exhaustive search and the ensemble over more than
            :data:`EXHAUSTIVE_LIMIT` points (``2**m - 1`` candidates per fold).
    """

    searcher: str = field(default="sfsa", metadata=option("search strategy", choices=SEARCHERS))
    min_delta: float = field(
        default=0.02,
        metadata=option(
            "least loss decrease that counts (nats of mean cross-entropy); sfsa, beam: a child's gain "
            "must be above it at p < alpha"
        ),
    )
    control: str = field(
        default="parent",
        metadata=option(
            "sfsa, beam: compare each round's children with their parent continued for the same budget "
            "(parent), or with the parent's own loss (none: the paper's rule)",
            choices=CONTROLS,
        ),
    )
    alpha: float = field(
        default=0.05,
        metadata=option(
            "sfsa, beam: false-accept rate of a round's acceptance test: the best child's gain, chosen on "
            "one half of the validation subjects, is tested on the other half"
        ),
    )
    extend: bool = field(
        default=True,
        metadata=option(
            "sfsa, beam: decide a round at once even if nothing in it learned (default: a round where no "
            "trial, nor its start, removed a fifth of the chance loss is trained again once with twice "
            "the budget, then decided)"
        ),
    )
    beam_width: int = field(default=2, metadata=option("beam: masks kept per round"))
    beam_patience: int = field(default=1, metadata=option("beam: non-improving rounds tolerated"))
    from_scratch: bool = field(
        default=False,
        metadata=option(
            "exhaustive, random, optuna: train every mask from scratch (default: warm-start from 0000)"
        ),
    )
    budget: int | None = field(
        default=None,
        metadata=option(
            "random, optuna: candidates per fold, the baseline included",
            unset="the most SFSA trains, 1 + m(m+1)/2: 11 for m = 4",
        ),
    )
    folds: int = field(
        default=5, metadata=option("cross-validation folds, at least 3", group="evaluation protocol")
    )
    fold: int | None = field(
        default=None,
        metadata=option("search this fold only", unset="every fold", group="evaluation protocol"),
    )
    pooled: bool = field(
        default=False,
        metadata=option(
            "one search over all folds, on mean validation loss (part 0 is then every fold's test part)",
            group="evaluation protocol",
        ),
    )
    unimodal: bool = field(
        default=True, metadata=option("skip the unimodal baselines", group="evaluation protocol")
    )
    ensemble: bool = field(
        default=False,
        metadata=option(
            "also train the fusion masks the search skipped, for the brute-force ensemble (exhaustive "
            "search always has them)",
            group="evaluation protocol",
        ),
    )
    repeats: int = field(
        default=1,
        metadata=option(
            "run each fold's search R times with different training seeds (same split), in parallel; the "
            "report gives how often the chosen masks include each fusion point, with 95% intervals, and "
            "the spread of held-out accuracy",
            metavar="R",
            group="evaluation protocol",
        ),
    )
    force: bool = field(
        default=False,
        metadata=option(f"allow exhaustive search or --ensemble over more than {EXHAUSTIVE_LIMIT} points"),
    )

    def __post_init__(self) -> None:
        check_choice("searcher", self.searcher, SEARCHERS)
        if not isinstance(self.folds, int) or self.folds < 3:
            raise ConfigError(
                f"folds={self.folds!r}: need at least 3 (each fold's train, validation and test parts)"
            )
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ConfigError(f"fold={self.fold}: choose one of 0..{self.folds - 1} (folds={self.folds})")
        if self.budget is not None and self.searcher not in ("random", "optuna"):
            raise ConfigError(
                f"budget={self.budget}: a budget applies to the random and optuna searchers; "
                f"{self.searcher} decides how many candidates to train"
            )
        for name, value, least in (
            ("beam_width", self.beam_width, 1),
            ("beam_patience", self.beam_patience, 0),
            ("min_delta", self.min_delta, 0),
        ):
            if value < least:
                raise ConfigError(f"{name}={value} must be >= {least}")
        check_choice("control", self.control, CONTROLS)
        check_alpha(self.alpha)
        _positive_ints(self, "repeats")

    def check_points(self, num_points: int) -> None:
        """Refuse exhaustive search or the ensemble over more than :data:`EXHAUSTIVE_LIMIT` points."""
        wants_all = self.searcher == "exhaustive" or self.ensemble
        if wants_all and num_points > EXHAUSTIVE_LIMIT and not self.force:
            what = "exhaustive search" if self.searcher == "exhaustive" else "the brute-force ensemble"
            raise ConfigError(
                f"{what} over m={num_points} fusion points trains {2**num_points - 1} masks per fold; use "
                "--searcher sfsa or beam (whose cost grows with m, not 2^m), or --force to train them all"
            )

    @property
    def layout(self) -> str:
        """The fold layout the search needs: the test part reserved when pooled."""
        return "reserved" if self.pooled and self.fold is None else "rotating"

    @property
    def search_folds(self) -> tuple[int, ...]:
        if self.fold is not None:
            return (self.fold,)
        return tuple(range(self.folds - 1 if self.layout == "reserved" else self.folds))


@dataclass(frozen=True)
class ResourceConfig:
    """What each trial gets, and how often a failing one is retried.

    Attributes:
        gpus: GPUs to use: of a local Ray, or of the cluster at an address; ``None``: every local
            GPU, or every GPU the cluster has when the search starts (pass a number where an
            autoscaler adds GPU nodes on demand).
        gpus_per_trial: GPUs per candidate when GPUs are used: a fraction up to 1 shares a GPU; a
            whole number N > 1 trains every candidate data-parallel on N workers, one GPU each;
            ``auto`` sizes it when each trial starts, so that the trials of a round narrower than
            the cluster share its GPUs, and grows running trials into the GPUs that ended trials
            free, for trials whose measured epochs pay Ray Train's start back; others train on one
            GPU in Tune's actors (:class:`searchers.rounds.DataParallel`).
        cpus_per_trial: CPUs per candidate.
        max_failures: retries of a failing trial, each from its own last checkpoint.
        max_concurrent: trials at once at most (to leave part of a shared machine to others);
            ``None``: as many as the cluster's resources hold.
        cache_build: where the preprocessing cache is built (:data:`CACHE_BUILDS`;
            :mod:`fusionsearch.tune.cluster_cache`).
    """

    gpus: int | None = field(
        default=None,
        metadata=option(
            "GPUs to use (a local Ray's, or of the --address cluster); 0 = CPU",
            unset="all local GPUs, or the cluster's",
        ),
    )
    gpus_per_trial: str | float = field(
        default="auto",
        metadata=option(
            "GPUs per candidate: a fraction up to 1 shares a GPU; N > 1 trains each candidate on N GPUs, "
            "data-parallel; auto: a share of the free GPUs when a trial starts, more as other trials end, "
            "for trials whose measured epochs pay Ray Train's start (others: 1 GPU each)",
            metavar="{auto,N}",
        ),
    )
    cpus_per_trial: float = field(default=1.0, metadata=option("CPUs per candidate"))
    max_failures: int = field(default=2, metadata=option("retries of a failing trial"))
    max_concurrent: int | None = field(
        default=None, metadata=option("trials at once at most", unset="as many as the cluster holds")
    )
    cache_build: str = field(
        default="auto",
        metadata=option(
            "where the preprocessing cache is built: driver (this machine's threads), cluster (a worker "
            f"per CPU on every node), auto (cluster for {AUTO_MIN_SAMPLES} samples or more when the search "
            "runs on several nodes that all see the data and the cache)",
            choices=CACHE_BUILDS,
        ),
    )

    def __post_init__(self) -> None:
        if self.gpus is not None and (not isinstance(self.gpus, int) or self.gpus < 0):
            raise ConfigError(f"gpus={self.gpus!r} must be a non-negative integer (0 = CPU only)")
        if self.gpus_per_trial != "auto":
            try:
                object.__setattr__(self, "gpus_per_trial", float(self.gpus_per_trial))
            except (TypeError, ValueError):
                raise ConfigError(
                    f"gpus_per_trial={self.gpus_per_trial!r} must be 'auto' or a number"
                ) from None
            if self.gpus_per_trial > 1 and not self.gpus_per_trial.is_integer():
                raise ConfigError(
                    f"gpus_per_trial={self.gpus_per_trial:g}: above 1 it counts data-parallel workers, one "
                    "GPU each, so it must be a whole number"
                )
        if (self.gpus_per_trial != "auto" and not self.gpus_per_trial > 0) or not self.cpus_per_trial > 0:
            raise ConfigError(
                f"gpus_per_trial={self.gpus_per_trial!r} and cpus_per_trial={self.cpus_per_trial!r} "
                "must be positive"
            )
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ConfigError(f"max_failures={self.max_failures!r} must be a non-negative integer")
        if self.max_concurrent is not None:
            _positive_ints(self, "max_concurrent")
        check_choice("cache_build", self.cache_build, CACHE_BUILDS)

    def per_trial(self, gpus: int) -> dict[str, float]:
        """Tune's per-trial resources when ``gpus`` GPUs are in use (0: CPU only): a data-parallel
        candidate's per worker."""
        share = 1.0 if self.gpus_per_trial == "auto" else min(1.0, float(self.gpus_per_trial))
        return {"cpu": self.cpus_per_trial, "gpu": share if gpus else 0}

    def workers(self, gpus: int) -> int | str:
        """Data-parallel workers per candidate when ``gpus`` GPUs are in use: ``auto`` (sized when each
        trial starts), or a number (1: none)."""
        if not gpus or (self.gpus_per_trial != "auto" and self.gpus_per_trial <= 1):
            return 1
        return "auto" if self.gpus_per_trial == "auto" else int(self.gpus_per_trial)


#: Settings of the planted demo (``fusionsearch run`` without ``--data``): a narrow network on
#: small volumes, so it finishes in minutes on a laptop's CPU. Real data get the defaults above.
DEMO = {"width": 0.25, "shape": 32, "epochs": 12, "lr": 3e-3}  # by field name
#: Where experiments live unless ``--storage`` says otherwise.
DEFAULT_STORAGE = "fusionsearch-runs"
