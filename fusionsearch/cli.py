"""The ``fusionsearch`` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from fusionsearch.console import CONSOLE, ConsoleHandler
from fusionsearch.errors import SearchInterrupted, UserError
from fusionsearch.settings import (
    CONTROLS,
    DEFAULT_STORAGE,
    DEMO,
    EXHAUSTIVE_LIMIT,
    SEARCHERS,
    ConfigError,
    ModelConfig,
    PreprocessConfig,
    ResourceConfig,
    SearchConfig,
    TrainConfig,
)

log = logging.getLogger("fusionsearch")

# The defaults every option shows and falls back to: the settings records' own.
MODEL, TRAIN, PREPROCESS = ModelConfig(), TrainConfig(), PreprocessConfig()
SEARCH, RESOURCES = SearchConfig(), ResourceConfig()


def _fusion_choices() -> list[str]:
    from fusionsearch.model.fusion import FUSION_MODULES

    return sorted(FUSION_MODULES)


def add_model_arguments(parser: argparse.ArgumentParser, demo: str | None = None) -> None:
    """Network options; where ``demo`` names a use (e.g. "smoke"), ``--width`` defaults to :data:`DEMO`'s."""
    group = parser.add_argument_group("network")
    group.add_argument(
        "--fusion",
        default=MODEL.fusion,
        choices=_fusion_choices(),
        help=f"fusion module (default: {MODEL.fusion})",
    )
    group.add_argument(
        "--depth", type=int, default=MODEL.depth, help=f"ResNet depth: 10, 18 or 34 (default: {MODEL.depth})"
    )
    width = f"{MODEL.width}; {DEMO['width']} for {demo}" if demo else f"{MODEL.width}"
    group.add_argument("--width", type=float, default=None, help=f"channel multiplier (default: {width})")
    group.add_argument(
        "--points",
        choices=["stages", "blocks"],
        default=MODEL.points,
        help=f"candidate fusion points: after each stage (m = 4) or after every residual block "
        f"(m = 8 for ResNet-18, 16 for ResNet-34) (default: {MODEL.points})",
    )
    group.add_argument(
        "--stem-stride",
        type=int,
        default=MODEL.stem_stride,
        help=f"first-convolution stride (default: {MODEL.stem_stride})",
    )


def model_config(args: argparse.Namespace, modalities: int, demo: bool = False) -> ModelConfig:
    width = args.width if args.width is not None else (DEMO["width"] if demo else MODEL.width)
    return ModelConfig(
        points=args.points,
        modalities=modalities,
        depth=args.depth,
        fusion=args.fusion,
        stem_stride=args.stem_stride,
        width=width,
    )


def add_data_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder every image must be in (default: the manifest's folder)",
    )


def add_preprocess_arguments(parser: argparse.ArgumentParser, demo: bool = False) -> None:
    group = parser.add_argument_group("preprocessing")
    size = (
        f"{PREPROCESS.shape}; {DEMO['shape']} for the planted demo (no --data)"
        if demo
        else f"{PREPROCESS.shape}"
    )
    group.add_argument("--size", type=int, default=None, help=f"cube edge after crop/pad (default: {size})")
    group.add_argument(
        "--spacing", type=float, default=None, help="voxel size in mm (default: keep the first modality's)"
    )
    group.add_argument(
        "--cache",
        default=None,
        help="cache folder or URI (default: beside the manifest; under --storage when that is a URI)",
    )
    group.add_argument("--workers", type=int, default=None, help="preprocessing threads (default: CPUs)")


def preprocess_config(args: argparse.Namespace, demo: bool = False) -> PreprocessConfig:
    size = args.size if args.size is not None else (DEMO["shape"] if demo else PREPROCESS.shape)
    return PreprocessConfig(shape=size, spacing=args.spacing)


def cmd_smoke(args: argparse.Namespace) -> int:
    """Train one candidate for a few steps on random tensors: checks the install and device."""
    from fusionsearch.model.device import DevicePolicy
    from fusionsearch.model.network import FusionNet
    from fusionsearch.train.profiling import measure_step_rate

    config = model_config(args, args.modalities, demo=True)
    policy = DevicePolicy.select(args.device)
    model = FusionNet(config, args.mask)
    rate = measure_step_rate(model, policy, size=args.size, batch=args.batch, steps=args.steps)
    print(
        f"mask {model.mask} ({config.fusion}, {config.modalities} streams, ResNet-{config.depth}, "
        f"width {config.width}) on {policy.device}: {rate.step_seconds * 1000:.1f} ms/step, "
        f"{rate.volumes_per_second:.1f} volumes/s at {args.size}^3, batch {args.batch}; "
        f"loss after {args.steps} steps {rate.final_loss:.3f}"
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from fusionsearch.data.synth import SynthConfig, generate

    config = SynthConfig(
        n=args.n, size=args.size, seed=args.seed, task=args.task, modalities=args.modalities, grid=args.grid
    )
    manifest = generate(args.out, config)
    print(f"wrote {config.n} samples ({', '.join(config.modality_names)}, task {config.task}) to {manifest}")
    return 0


def cmd_import_bids(args: argparse.Namespace) -> int:
    from fusionsearch.data.bids import import_bids
    from fusionsearch.data.manifest import write_manifest

    table, report = import_bids(
        args.root,
        args.modalities,
        positive=args.positive,
        negative=args.negative,
        label_column=args.label_column,
        labels_file=args.labels,
        participant_column=args.participant_column,
        session_column=args.session_column,
        relative_to=args.out.parent,
    )
    for line in report.lines():
        print(line)
    if table.num_rows == 0:
        print(
            "fusionsearch data import-bids: error: no sample has every modality and a label", file=sys.stderr
        )
        return 2
    print(f"wrote {write_manifest(table, args.out)}")
    if args.out.parent.resolve() not in [args.root.resolve(), *args.root.resolve().parents]:
        print(f"the images lie outside {args.out.parent}: validate and run with --data-root {args.root}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fusionsearch.data.manifest import class_counts, read_manifest
    from fusionsearch.data.validate import validate_manifest

    manifest = read_manifest(args.manifest)
    validate_manifest(manifest, num_classes=args.num_classes, folds=args.folds, data_root=args.data_root)
    print(
        f"{args.manifest}: {len(manifest)} samples of {len(set(manifest.subjects))} subjects, "
        f"modalities {manifest.modalities}, samples per class {class_counts(manifest)}: OK"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from fusionsearch.data.cache import PreprocessCache
    from fusionsearch.data.manifest import read_manifest
    from fusionsearch.data.validate import validate_manifest

    manifest = read_manifest(args.manifest)
    validate_manifest(manifest, folds=2, data_root=args.data_root)
    cache = PreprocessCache(
        args.cache or args.manifest.parent / ".fusionsearch-cache", preprocess_config(args)
    )
    stats = cache.build(manifest, workers=args.workers, verify=args.verify)
    verified = (
        f"; verified {stats.verified_bytes / 1e9:.3f} GB (SHA-256) in {stats.verify_seconds:.1f} s"
        if args.verify
        else ""
    )
    print(
        f"cache {cache.root}: built {stats.built} (repaired {stats.repaired}), "
        f"reused {stats.reused}{verified}"
    )
    return 0


def _print_result(result) -> int:
    from fusionsearch.report.summary import summary_text

    print(summary_text(result.search, result.evaluation))
    return 0 if result.evaluation is not None else 1


def search_config(args: argparse.Namespace) -> SearchConfig:
    """The search settings of ``fusionsearch run``'s options."""
    if args.noise_z is not None:
        raise ConfigError(
            f"--noise-z {args.noise_z:g}: this option was removed; a round's children are now compared "
            "with their parent continued for the same budget (--control parent, the default) by a "
            "calibrated test (--alpha 0.05); leave --noise-z out (README: How a round is decided)"
        )
    return SearchConfig(
        searcher=args.searcher,
        min_delta=args.min_delta,
        control=args.control,
        alpha=args.alpha,
        extend=args.extend,
        beam_width=args.beam_width,
        beam_patience=args.beam_patience,
        from_scratch=args.from_scratch,
        budget=args.budget,
        folds=args.folds,
        fold=args.fold,
        pooled=args.pooled,
        unimodal=args.unimodal,
        ensemble=args.ensemble,
        repeats=args.repeats,
        force=args.force,
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Validate the data, build the preprocessing cache, run the search, print the answer."""
    demo = args.data is None
    search = search_config(args)
    epochs = args.epochs if args.epochs is not None else (DEMO["epochs"] if demo else TRAIN.epochs)
    train = TrainConfig(
        augment=args.augment,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        class_weights=args.class_weights,
        checkpoint_interval=args.checkpoint_interval,
        eval_every=args.eval_every,
        init_streams=str(Path(args.init_streams).resolve()) if args.init_streams else None,
        epochs=epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (DEMO["lr"] if demo else TRAIN.lr),
        seed=args.seed,
    )
    resources = ResourceConfig(
        gpus=args.gpus,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        max_failures=args.max_failures,
    )
    model = model_config(args, MODEL.modalities, demo)
    preprocess = preprocess_config(args, demo)

    from fusionsearch import pipeline

    return _print_result(
        pipeline.run(
            args.data,
            name=args.name,
            storage_path=args.storage,
            modalities=args.modalities,
            data_root=args.data_root,
            search=search,
            model=model,
            train=train,
            preprocess=preprocess,
            resources=resources,
            cache=args.cache,
            workers=args.workers,
            address=args.address,
            mlflow=args.mlflow,
        )
    )


def cmd_resume(args: argparse.Namespace) -> int:
    from fusionsearch import pipeline

    return _print_result(pipeline.resume(args.name, args.storage, args.address))


def cmd_report(args: argparse.Namespace) -> int:
    """Print a search's summary; for a finished one, (re)write its report files."""
    from fusionsearch import pipeline

    _print_result(pipeline.report(args.name, args.storage))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Several searches side by side: results, chosen masks and cost."""
    from fusionsearch import storage
    from fusionsearch.report.pages import write_comparison

    base = storage.normalise(str(args.storage))
    out = args.out or storage.join(base, "compare-" + "-".join(args.names))
    write_comparison([storage.join(base, n) for n in args.names], out)
    print(storage.read_bytes(storage.join(out, "comparison.md")).decode())
    print(f"\ncomparison written to {out}/comparison.html (and .md, .csv)")
    return 0


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--data",
        type=Path,
        default=None,
        help="manifest (default: the planted XOR benchmark, made once under --storage)",
    )
    run.add_argument("--modalities", nargs="+", default=None, help="manifest columns to use (default: all)")
    run.add_argument(
        "--mlflow",
        default=None,
        metavar="URI",
        help="also log every candidate to this MLflow tracking URI (file:///path or http://server), "
        "one MLflow experiment per search (default: off; TensorBoard event files are always in the "
        "trial folders)",
    )
    add_data_root_argument(run)
    search = run.add_argument_group("search")
    search.add_argument(
        "--searcher",
        choices=list(SEARCHERS),
        default=SEARCH.searcher,
        help=f"search strategy (default: {SEARCH.searcher})",
    )
    search.add_argument(
        "--beam-width",
        type=int,
        default=SEARCH.beam_width,
        help=f"beam: masks kept per round (default: {SEARCH.beam_width})",
    )
    search.add_argument(
        "--beam-patience",
        type=int,
        default=SEARCH.beam_patience,
        help=f"beam: non-improving rounds tolerated (default: {SEARCH.beam_patience})",
    )
    search.add_argument(
        "--min-delta",
        type=float,
        default=SEARCH.min_delta,
        help=f"least loss decrease that counts (default: {SEARCH.min_delta:g})",
    )
    search.add_argument(
        "--control",
        choices=CONTROLS,
        default=SEARCH.control,
        help="sfsa, beam: compare each round's children with their parent continued for the same "
        "budget (parent), or with the parent's own loss (none: the paper's rule) "
        f"(default: {SEARCH.control})",
    )
    search.add_argument(
        "--alpha",
        type=float,
        default=SEARCH.alpha,
        help="sfsa, beam: false-accept rate of a round's acceptance test: the best child's gain, chosen "
        "on one half of the validation subjects, is tested on the other half "
        f"(default: {SEARCH.alpha:g})",
    )
    search.add_argument("--noise-z", type=float, default=None, help=argparse.SUPPRESS)  # removed: says so
    search.add_argument(
        "--no-extend",
        dest="extend",
        action="store_false",
        default=SEARCH.extend,
        help="sfsa, beam: stop at a round where no child passed even if nothing in it learned "
        "(default: such a round is trained again once with twice the budget, then decided)",
    )
    search.add_argument(
        "--from-scratch",
        action="store_true",
        help="exhaustive, random, optuna: train every mask from scratch (default: warm-start from 0000)",
    )
    search.add_argument(
        "--budget",
        type=int,
        default=None,
        help="random, optuna: candidates per fold, the baseline included (default: the most SFSA "
        "trains, 1 + m(m+1)/2: 11 for m = 4)",
    )
    search.add_argument(
        "--force",
        action="store_true",
        help=f"allow exhaustive search or --ensemble over more than {EXHAUSTIVE_LIMIT} points",
    )
    train = run.add_argument_group("training")
    train.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"max epochs per candidate (default: {TRAIN.epochs}; {DEMO['epochs']} for the planted demo)",
    )
    train.add_argument(
        "--patience",
        type=int,
        default=TRAIN.patience,
        help=f"early-stopping patience (default: {TRAIN.patience})",
    )
    train.add_argument(
        "--batch-size", type=int, default=TRAIN.batch_size, help=f"(default: {TRAIN.batch_size})"
    )
    train.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"AdamW learning rate (default: {TRAIN.lr:g}; {DEMO['lr']:g} for the planted demo)",
    )
    train.add_argument(
        "--checkpoint-interval",
        type=float,
        default=TRAIN.checkpoint_interval,
        help=f"seconds between resumable checkpoints of a training candidate; 0 = every epoch "
        f"(default: {TRAIN.checkpoint_interval:g}; the final checkpoint is always written)",
    )
    train.add_argument(
        "--eval-every",
        type=int,
        default=TRAIN.eval_every,
        metavar="K",
        help=f"validate after every K-th epoch and the last; the best epoch is chosen among those "
        f"(default: {TRAIN.eval_every}; 2 halves validation's share of a trial)",
    )
    train.add_argument(
        "--augment",
        choices=["none", "standard"],
        default=TRAIN.augment,
        help=f"random flips, small rotations/translations, intensity scale and shift on the device "
        f"(default: {TRAIN.augment})",
    )
    train.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default=TRAIN.schedule,
        help=f"learning-rate schedule; cosine: linear warm-up, then cosine decay (default: {TRAIN.schedule})",
    )
    train.add_argument(
        "--warmup-epochs",
        type=int,
        default=TRAIN.warmup_epochs,
        help=f"cosine schedule's warm-up epochs (default: {TRAIN.warmup_epochs})",
    )
    train.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        default=TRAIN.class_weights,
        help=f"loss weighted by inverse class frequency of training (default: {TRAIN.class_weights})",
    )
    train.add_argument(
        "--init-streams",
        default=None,
        help="pretrained 3D ResNet state dict (e.g. MedicalNet's resnet_18.pth) every stream starts from "
        "(default: random initialisation)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=TRAIN.seed,
        help=f"seed of splits, data and training (default: {TRAIN.seed})",
    )
    protocol = run.add_argument_group("evaluation protocol")
    protocol.add_argument(
        "--folds",
        type=int,
        default=SEARCH.folds,
        help=f"cross-validation folds, at least 3 (default: {SEARCH.folds})",
    )
    protocol.add_argument(
        "--fold", type=int, default=None, help="search this fold only (default: every fold)"
    )
    protocol.add_argument(
        "--pooled", action="store_true", help="one search over all folds, on mean validation loss"
    )
    protocol.add_argument(
        "--no-unimodal", dest="unimodal", action="store_false", help="skip the unimodal baselines"
    )
    protocol.add_argument(
        "--ensemble",
        action="store_true",
        help="also train the fusion masks the search skipped, for the brute-force ensemble "
        "(exhaustive search always has them)",
    )
    protocol.add_argument(
        "--repeats",
        type=int,
        default=SEARCH.repeats,
        metavar="R",
        help="run each fold's search R times with different training seeds (same split), in parallel; "
        "the report gives how often the chosen masks include each fusion point, with 95%% intervals, "
        f"and the spread of held-out accuracy (default: {SEARCH.repeats})",
    )
    cluster = run.add_argument_group("resources")
    cluster.add_argument(
        "--gpus", type=int, default=None, help="GPUs of a local Ray to use; 0 = CPU (default: all local GPUs)"
    )
    cluster.add_argument(
        "--gpus-per-trial",
        type=float,
        default=RESOURCES.gpus_per_trial,
        help=f"(default: {RESOURCES.gpus_per_trial:g})",
    )
    cluster.add_argument(
        "--cpus-per-trial",
        type=float,
        default=RESOURCES.cpus_per_trial,
        help=f"(default: {RESOURCES.cpus_per_trial:g})",
    )
    cluster.add_argument(
        "--max-failures",
        type=int,
        default=RESOURCES.max_failures,
        help=f"retries of a failing trial (default: {RESOURCES.max_failures})",
    )


def add_experiment_arguments(parser: argparse.ArgumentParser, name_required: bool) -> None:
    if name_required:
        parser.add_argument("name", help="the experiment's name (its folder under --storage)")
    else:
        parser.add_argument("--name", default=None, help="experiment name (default: SEARCHER-DATE-TIME)")
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"results, checkpoints and state (default: ./{DEFAULT_STORAGE})",
    )
    parser.add_argument("--address", default=None, help="Ray cluster to use (default: start a local one)")


def build_parser() -> argparse.ArgumentParser:
    from fusionsearch.data.synth import GRIDS, TASKS, SynthConfig

    parser = argparse.ArgumentParser(
        prog="fusionsearch",
        description="Find where to fuse imaging modalities in a multi-stream 3D CNN.",
    )
    _loudness(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    smoke = commands.add_parser("smoke", help="train one candidate a few steps on random tensors")
    smoke.add_argument("--mask", default="0100", help="fusion mask, e.g. 0100 (default: 0100)")
    smoke.add_argument(
        "--modalities",
        type=int,
        default=MODEL.modalities,
        help=f"number of streams (default: {MODEL.modalities})",
    )
    smoke.add_argument("--size", type=int, default=32, help="cube edge in voxels (default: 32)")
    smoke.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    smoke.add_argument("--steps", type=int, default=5, help="timed steps (default: 5)")
    smoke.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_model_arguments(smoke, demo="smoke")
    smoke.set_defaults(func=cmd_smoke)

    synth = commands.add_parser("synth", help="write the planted XOR benchmark (NIfTI + manifest)")
    synth.add_argument("out", type=Path, help="output folder")
    planted = SynthConfig()
    synth.add_argument("--n", type=int, default=planted.n, help=f"number of samples (default: {planted.n})")
    synth.add_argument(
        "--size", type=int, default=planted.size, help=f"cube edge in voxels (default: {planted.size})"
    )
    synth.add_argument(
        "--seed", type=int, default=planted.seed, help=f"random seed (default: {planted.seed})"
    )
    synth.add_argument(
        "--task", default=planted.task, choices=TASKS, help=f"planted task (default: {planted.task})"
    )
    synth.add_argument(
        "--grid",
        default=planted.grid,
        choices=GRIDS,
        help="cube: every modality on the phantom's grid; scanner: real scan sizes, a 1 mm T1w and a "
        f"1 x 1 x 3 mm oblique FLAIR (default: {planted.grid})",
    )
    synth.add_argument(
        "--modalities",
        type=int,
        default=planted.modalities,
        help=f"number of contrasts (default: {planted.modalities})",
    )
    synth.set_defaults(func=cmd_synth)

    data = commands.add_parser("data", help="import, validate and cache datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    bids = data_commands.add_parser("import-bids", help="write a manifest from a BIDS tree")
    bids.add_argument("root", type=Path, help="the BIDS dataset's top folder")
    bids.add_argument("--modalities", nargs="+", required=True, help="BIDS suffixes, e.g. T1w FLAIR")
    bids.add_argument("--positive", nargs="+", required=True, help="label values of class 1, e.g. fcd")
    bids.add_argument(
        "--negative", nargs="+", default=None, help="label values of class 0 (default: the rest)"
    )
    bids.add_argument("--label-column", default="group", help="label column (default: group)")
    bids.add_argument("--labels", type=Path, default=None, help="labels table (default: participants.tsv)")
    bids.add_argument("--participant-column", default="participant_id", help="(default: participant_id)")
    bids.add_argument("--session-column", default="session_id", help="(default: session_id)")
    bids.add_argument("--out", type=Path, default=Path("manifest.csv"), help="(default: manifest.csv)")
    bids.set_defaults(func=cmd_import_bids)

    validate = data_commands.add_parser("validate", help="check every sample before training")
    validate.add_argument("manifest", type=Path)
    validate.add_argument(
        "--folds", type=int, default=SEARCH.folds, help=f"cross-validation folds (default: {SEARCH.folds})"
    )
    validate.add_argument("--num-classes", type=int, default=2, help="(default: 2)")
    add_data_root_argument(validate)
    validate.set_defaults(func=cmd_validate)

    run = commands.add_parser("run", help="search for the best fusion mask")
    add_experiment_arguments(run, name_required=False)
    add_run_arguments(run)
    add_model_arguments(run, demo="the planted demo (no --data)")
    add_preprocess_arguments(run, demo=True)
    run.set_defaults(func=cmd_run)

    resume = commands.add_parser("resume", help="continue an interrupted search")
    add_experiment_arguments(resume, name_required=True)
    resume.set_defaults(func=cmd_resume)

    report = commands.add_parser("report", help="write a search's HTML/Markdown report and print its summary")
    add_experiment_arguments(report, name_required=True)
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser("compare", help="put several searches side by side")
    compare.add_argument("names", nargs="+", help="experiment names under --storage")
    compare.add_argument(
        "--storage", default=DEFAULT_STORAGE, help=f"where the experiments are (default: ./{DEFAULT_STORAGE})"
    )
    compare.add_argument(
        "--out", default=None, help="output folder (default: <storage>/compare-NAME1-NAME2...)"
    )
    compare.set_defaults(func=cmd_compare)

    cache = data_commands.add_parser("cache", help="preprocess every sample once into the cache")
    cache.add_argument("manifest", type=Path)
    add_data_root_argument(cache)
    add_preprocess_arguments(cache)
    cache.add_argument(
        "--verify",
        action="store_true",
        help="also check every entry's SHA-256 against its record (always: its length), rebuilding a damaged "
        "one from its source volume ('fusionsearch run' does this too on a local or shared folder)",
    )
    cache.set_defaults(func=cmd_cache)
    for sub in _subparsers(parser):  # -q and -v after the command too (``run ... -q``)
        _loudness(sub, default=argparse.SUPPRESS)
    return parser


def _loudness(parser: argparse.ArgumentParser, default: object) -> None:
    """``-v``/``-q`` on ``parser``; on a command's parser with ``default=SUPPRESS``, so that leaving
    them out there keeps what was given before the command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug logging, with every candidate's epochs")  # fmt: skip
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="warnings, errors and the results only: no progress lines, no Ray Tune "
                       "output (a failed trial is one line; its full text is in the experiment)")  # fmt: skip


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command's parser under ``parser``, depth first (argparse keeps them in a private action)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += [sub, *_subparsers(sub)]
    return found


def reference(width: int = 100) -> str:
    """The CLI reference in Markdown: every command's ``--help``, from the parser itself (the docs'
    CLI page is made from this at build time, so it never drifts from the code)."""
    import os

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps help text to the terminal's width
    try:
        sections = []

        parser = build_parser()
        for sub in [parser, *_subparsers(parser)]:
            level = min(sub.prog.count(" ") + 2, 3)
            sections.append(f"{'#' * level} `{sub.prog}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
        return "\n".join(sections)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a usage error (2, with argparse's message) or --help (0)
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.quiet and args.verbose:
        print(
            "fusionsearch: error: -q/--quiet and -v/--verbose exclude each other; give one", file=sys.stderr
        )
        return 2
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, handlers=[handler])
    ours = [logging.getLogger(name) for name in ("fusionsearch", "searchers", "trainables")]
    for logger in ours:  # also when logging was configured before (a second main(), a notebook)
        logger.setLevel(level)
    CONSOLE.enabled = not args.quiet and args.command in ("run", "resume", "data")
    try:
        return args.func(args)
    except KeyboardInterrupt:  # a second Ctrl-C: out at once; Tune's last saved state stays
        print("fusionsearch: interrupted at once; 'fusionsearch resume NAME' continues from the last "
              "saved state", file=sys.stderr)  # fmt: skip
        return 130
    except SearchInterrupted as error:
        name = error.experiment_dir.rstrip("/").rsplit("/", 1)
        print(f"fusionsearch {args.command}: interrupted ({signal.Signals(error.signum).name}): finished "
              f"candidates and the search state are kept in {error.experiment_dir}; continue with "
              f"'fusionsearch resume {name[1]} --storage {name[0]}'", file=sys.stderr)  # fmt: skip
        return error.exit_code
    except UserError as error:
        command = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"fusionsearch {command}: error: {error}", file=sys.stderr)
        return 2
    finally:  # main() may run again in this process (tests, notebooks): no progress lines there
        CONSOLE.enabled = False
        for logger in ours:
            logger.setLevel(logging.NOTSET)


if __name__ == "__main__":
    sys.exit(main())
