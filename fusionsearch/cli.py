"""The ``fusionsearch`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionsearch.console import CONSOLE, ConsoleHandler
from fusionsearch.errors import SearchInterrupted, UserError
from fusionsearch.settings import (
    DEFAULT_STORAGE,
    DEMO,
    ConfigError,
    ModelConfig,
    Option,
    PreprocessConfig,
    ResourceConfig,
    SearchConfig,
    TrainConfig,
)

log = logging.getLogger("fusionsearch")

#: The help section of each record's options.
GROUPS = {ModelConfig: "network", PreprocessConfig: "preprocessing", SearchConfig: "search",
          TrainConfig: "training", ResourceConfig: "resources"}  # fmt: skip


def _options(record: type) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of ``record`` that are command-line options, with how (their ``metadata["cli"]``)."""
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(record) if "cli" in f.metadata]


def add_options(
    parser: argparse.ArgumentParser, record: type, *, demo: str | None = None
) -> dict[str, argparse._ArgumentGroup]:
    """One option per setting of ``record`` that has :class:`~fusionsearch.settings.Option` metadata.

    Each option's default is ``None`` (the record's own applies, shown in the help), so
    :func:`given` passes on only what the user typed; where ``demo`` names a use, the
    :data:`~fusionsearch.settings.DEMO` values stand in for the record's and the help says so.
    Values are checked once, by the record. Returns the help sections made, by title.
    """
    hints = typing.get_type_hints(record)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, how in _options(record):
        name = how.group or GROUPS.get(record, record.__name__)
        group = groups.get(name) or groups.setdefault(name, parser.add_argument_group(name))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if hints[f.name] is bool:  # on/off: --NAME, or --no-NAME for one on by default
            flag = how.flag or f"--{'no-' if default else ''}{f.name.replace('_', '-')}"
            group.add_argument(flag, dest=f.name, action="store_const", const=not default, default=None,
                               help=how.help)  # fmt: skip
            continue
        shown = how.unset if default is None else f"{default:g}" if isinstance(default, float) else default
        if demo and f.name in DEMO:
            shown = f"{shown}; {DEMO[f.name]:g} for {demo}"
        metavar = how.metavar or ("{" + ",".join(map(str, how.choices)) + "}" if how.choices else None)
        group.add_argument(
            how.flag or f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=_scalar(hints[f.name]),
            default=None,
            metavar=metavar,
            help=f"{how.help} (default: {shown})".replace("%", "%%"),
        )
    return groups


def given(args: argparse.Namespace, record: type, *, demo: bool = False) -> dict[str, Any]:
    """The settings of ``record`` the options gave (and, with ``demo``, the demo's), by field name."""
    values = {}
    for f, _ in _options(record):
        value = getattr(args, f.name, None)
        if value is None and demo:
            value = DEMO.get(f.name)
        if value is not None:
            values[f.name] = value
    return values


def _scalar(hint: Any) -> type:
    """The command-line type of a setting's type hint: its first of int, float, str (``int | None``: int)."""
    options = typing.get_args(hint) or (hint,)
    return next(t for t in options if t in (int, float, str))


def add_data_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder every image must be in (default: the manifest's folder)",
    )


def add_preprocess_arguments(parser: argparse.ArgumentParser, demo: str | None = None) -> None:
    """The preprocessing settings' options, and where the cache lives and how many threads build it."""
    group = add_options(parser, PreprocessConfig, demo=demo)[GROUPS[PreprocessConfig]]
    group.add_argument(
        "--cache",
        default=None,
        help="cache folder or URI (default: beside the manifest; under --storage when that is a URI)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="preprocessing threads; when the cluster builds the cache, its worker processes (default: CPUs)",
    )


def cmd_smoke(args: argparse.Namespace) -> int:
    """Train one candidate for a few steps on random tensors: checks the install and device."""
    from fusionsearch.model.device import DevicePolicy
    from fusionsearch.model.network import FusionNet
    from fusionsearch.train.profiling import measure_step_rate

    config = ModelConfig(**given(args, ModelConfig, demo=True), modalities=args.modalities)
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
    preprocess = PreprocessConfig(**given(args, PreprocessConfig))
    cache = PreprocessCache(args.cache or args.manifest.parent / ".fusionsearch-cache", preprocess)
    map_jobs = None
    if args.address:  # the cluster's workers build it
        from fusionsearch.tune.cluster_cache import cache_map
        from fusionsearch.tune.driver import connect

        connect(args.address)
        map_jobs = cache_map("cluster", manifest, cache.root, args.workers)
    stats = cache.build(manifest, workers=args.workers, verify=args.verify, map_jobs=map_jobs)
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


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings records of ``fusionsearch run``'s options (the demo's values without ``--data``)."""
    if args.noise_z is not None:
        raise ConfigError(
            f"--noise-z {args.noise_z:g}: this option was removed; a round's children are now compared "
            "with their parent continued for the same budget (--control parent, the default) by a "
            "calibrated test (--alpha 0.05); leave --noise-z out (README: How a round is decided)"
        )
    demo = args.data is None
    train = given(args, TrainConfig, demo=demo)
    if train.get("init_streams"):
        train["init_streams"] = str(Path(train["init_streams"]).resolve())
    return {
        "search": SearchConfig(**given(args, SearchConfig)),
        "model": ModelConfig(**given(args, ModelConfig, demo=demo)),
        "train": TrainConfig(**train),
        "preprocess": PreprocessConfig(**given(args, PreprocessConfig, demo=demo)),
        "resources": ResourceConfig(**given(args, ResourceConfig)),
    }


def cmd_run(args: argparse.Namespace) -> int:
    """Validate the data, build the preprocessing cache, run the search, print the answer."""
    settings = run_settings(args)
    from fusionsearch import pipeline

    return _print_result(
        pipeline.run(
            args.data,
            name=args.name,
            storage_path=args.storage,
            modalities=args.modalities,
            data_root=args.data_root,
            cache=args.cache,
            workers=args.workers,
            address=args.address,
            mlflow=args.mlflow,
            **settings,
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


def cmd_predict(args: argparse.Namespace) -> int:
    """A finished search's chosen configuration applied to new subjects, written as CSV."""
    import pyarrow.csv as pacsv

    from fusionsearch import pipeline

    prediction = pipeline.predict(
        args.name,
        args.data,
        storage_path=args.storage,
        fold=args.fold,
        folds=args.folds,
        cache=args.cache,
        device=args.device,
        batch_size=args.batch_size,
        data_root=args.data_root,
        workers=args.workers,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(prediction.table, args.out)
    models = ", ".join(str(m) for m in prediction.models)
    print(f"predicted {prediction.table.num_rows} samples with the chosen configuration of {models}")
    for metric, (value, low, high) in (prediction.metrics or {}).items():
        print(f"{metric}: {value:.3f} (95% CI {low:.3f}-{high:.3f})")
    if prediction.trained_on:
        print(
            f"note: the final model trained on {prediction.trained_on} of these samples: figures on them "
            "are not held-out (the report's cross-validated figures are; --folds uses the folds' models)"
        )
    print(f"wrote {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """A finished search's chosen models as a folder that runs with plain PyTorch."""
    from fusionsearch import pipeline

    out = pipeline.export(args.name, args.out, storage_path=args.storage, fold=args.fold, folds=args.folds)
    print(f"exported to {out}: predict.py, preprocessing.json, MODEL_CARD.md and the models")
    return 0


def cmd_final(args: argparse.Namespace) -> int:
    """Train the chosen mask on every development subject: the model predict and export then use."""
    from fusionsearch import pipeline

    final = pipeline.final(args.name, args.storage, mask=args.mask, device=args.device)
    stages = " -> ".join(f"{s.mask} ({s.epochs} epochs)" for s in final.plan.stages)
    chosen = ", ".join(f"{m} on {n}" for m, n in final.plan.chosen)
    print(f"final model {final.mask} (chosen: {chosen} fold(s)): {stages}")
    print(f"trained on {len(final.samples)} development samples in {final.seconds:.0f} s")
    if final.includes_test_parts:
        print(
            "these are all the samples, every fold's test part included (every sample validated some "
            "fold): no sample is held out from this model; the report's cross-validated held-out figures "
            "estimate its performance"
        )
    for name, (value, low, high) in final.held_out.items():
        print(
            f"reserved test part ({final.held_out_n} samples) {name}: {value:.3f} "
            f"(95% CI {low:.3f}-{high:.3f})"
        )
    print(f"predict and export now use it: {final.checkpoint}")
    return 0


def cmd_saliency(args: argparse.Namespace) -> int:
    """Where each modality looked: occlusion maps of one fold's chosen mask and late fusion."""
    from fusionsearch import pipeline
    from fusionsearch.report.pages import SALIENCY_HEADER, saliency_rows
    from fusionsearch.report.summary import text_table

    maps = pipeline.saliency(
        args.name, args.storage, fold=args.fold, subjects=args.subjects, patch=args.patch, device=args.device
    )
    print(f"mapped {len(maps.sample_ids)} test subjects of fold {maps.fold} with {', '.join(maps.methods)}")
    if maps.score_rows:
        print(text_table(SALIENCY_HEADER, saliency_rows(maps)))
    print(f"the report shows them: {args.storage}/{args.name}/report/report.html")
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
    """``fusionsearch run``'s options: the settings records' (:func:`add_options`) and a few of its own."""
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
    run.add_argument("--noise-z", type=float, default=None, help=argparse.SUPPRESS)  # removed: says so
    demo = "the planted demo"
    for record in (SearchConfig, TrainConfig, ResourceConfig, ModelConfig):
        add_options(run, record, demo=demo)
    add_preprocess_arguments(run, demo=demo)


def add_experiment_arguments(
    parser: argparse.ArgumentParser, name_required: bool, address: bool = True
) -> None:
    if name_required:
        parser.add_argument("name", help="the experiment's name (its folder under --storage)")
    else:
        parser.add_argument("--name", default=None, help="experiment name (default: SEARCHER-DATE-TIME)")
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"results, checkpoints and state (default: ./{DEFAULT_STORAGE})",
    )
    if address:
        parser.add_argument("--address", default=None, help="Ray cluster to use (default: start a local one)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--fold`` and ``--folds``: which of a finished search's models predict (or are exported)."""
    parser.add_argument(
        "--fold",
        type=int,
        default=None,
        help="this fold's model only (default: the final model, else every fold's, their mean)",
    )
    parser.add_argument(
        "--folds", action="store_true", help="every fold's model even when the search has a final model"
    )


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
        default=ModelConfig().modalities,
        help=f"number of streams (default: {ModelConfig().modalities})",
    )
    smoke.add_argument("--size", type=int, default=32, help="cube edge in voxels (default: 32)")
    smoke.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    smoke.add_argument("--steps", type=int, default=5, help="timed steps (default: 5)")
    smoke.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_options(smoke, ModelConfig, demo="smoke")
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
        "--folds",
        type=int,
        default=SearchConfig().folds,
        help=f"cross-validation folds (default: {SearchConfig().folds})",
    )
    validate.add_argument("--num-classes", type=int, default=2, help="(default: 2)")
    add_data_root_argument(validate)
    validate.set_defaults(func=cmd_validate)

    run = commands.add_parser("run", help="search for the best fusion mask")
    add_experiment_arguments(run, name_required=False)
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    resume = commands.add_parser("resume", help="continue an interrupted search")
    add_experiment_arguments(resume, name_required=True)
    resume.set_defaults(func=cmd_resume)

    report = commands.add_parser("report", help="write a search's HTML/Markdown report and print its summary")
    add_experiment_arguments(report, name_required=True)
    report.set_defaults(func=cmd_report)

    predict = commands.add_parser(
        "predict", help="apply a finished search's chosen configuration to new subjects"
    )
    add_experiment_arguments(predict, name_required=True, address=False)
    predict.add_argument(
        "--data",
        type=Path,
        required=True,
        help="manifest of the new subjects (label and subject_id columns optional)",
    )
    predict.add_argument(
        "--out", type=Path, default=Path("predictions.csv"), help="(default: predictions.csv)"
    )
    add_model_arguments(predict)
    predict.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    predict.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    add_data_root_argument(predict)
    predict.add_argument(
        "--cache", default=None, help="preprocessing cache (default: .fusionsearch-cache beside the manifest)"
    )
    predict.add_argument("--workers", type=int, default=None, help="preprocessing threads (default: CPUs)")
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="the chosen models as a folder that runs with plain PyTorch")
    add_experiment_arguments(export, name_required=True, address=False)
    export.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    add_model_arguments(export)
    export.set_defaults(func=cmd_export)

    final = commands.add_parser(
        "final", help="train the chosen mask on every development subject (used by predict and export)"
    )
    add_experiment_arguments(final, name_required=True, address=False)
    final.add_argument(
        "--mask", default=None, help="another mask some fold chose (default: the one most folds chose)"
    )
    final.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    final.set_defaults(func=cmd_final)

    saliency = commands.add_parser(
        "saliency", help="where each modality looked: occlusion maps of a fold's chosen mask and late fusion"
    )
    add_experiment_arguments(saliency, name_required=True, address=False)
    saliency.add_argument("--fold", type=int, default=0, help="whose models and test subjects (default: 0)")
    saliency.add_argument(
        "--subjects",
        type=int,
        default=8,
        help="test subjects mapped per class, the first in order (default: 8)",
    )
    saliency.add_argument(
        "--patch",
        type=int,
        default=None,
        help="occlusion patch edge in voxels (default: about a sixth of the edge, at least 4)",
    )
    saliency.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    saliency.set_defaults(func=cmd_saliency)

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
    cache.add_argument(
        "--address",
        default=None,
        help="build with a worker per CPU of this Ray cluster ('auto': the one running here); every node "
        "must see the images and the cache at the same paths (default: this machine's threads)",
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


def _disconnect() -> None:
    """Leave Ray, where this process joined or started it, before the last message: a local Ray's
    workers then print their last lines (a stopped trial's) before it, not after."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


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
        _disconnect()
        name = error.experiment_dir.rstrip("/").rsplit("/", 1)
        print(f"fusionsearch {args.command}: interrupted ({signal.Signals(error.signum).name}): finished "
              f"candidates and the search state are kept in {error.experiment_dir}; continue with "
              f"'fusionsearch resume {name[1]} --storage {name[0]}'", file=sys.stderr)  # fmt: skip
        return error.exit_code
    except UserError as error:
        _disconnect()
        command = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"fusionsearch {command}: error: {error}", file=sys.stderr)
        return 2
    finally:  # main() may run again in this process (tests, notebooks): no progress lines there
        CONSOLE.enabled = False
        for logger in ours:
            logger.setLevel(logging.NOTSET)


if __name__ == "__main__":
    sys.exit(main())
