"""The ``fusionsearch`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fusionsearch.config import ModelConfig
from fusionsearch.errors import UserError

log = logging.getLogger("fusionsearch")


def add_model_arguments(parser: argparse.ArgumentParser, width: float = 1.0) -> None:
    group = parser.add_argument_group("network")
    group.add_argument("--fusion", default="mmtm", help="fusion module: mmtm or spatial (default: mmtm)")
    group.add_argument("--depth", type=int, default=18, help="ResNet depth: 10, 18 or 34 (default: 18)")
    group.add_argument("--width", type=float, default=width, help=f"channel multiplier (default: {width})")
    group.add_argument("--stem-stride", type=int, default=2, help="first-convolution stride (default: 2)")


def model_config(args: argparse.Namespace, modalities: int) -> ModelConfig:
    return ModelConfig(
        modalities=modalities,
        depth=args.depth,
        fusion=args.fusion,
        stem_stride=args.stem_stride,
        width=args.width,
    )


def add_data_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder every image must be in (default: the manifest's folder)",
    )


def add_preprocess_arguments(parser: argparse.ArgumentParser, size: int = 64) -> None:
    group = parser.add_argument_group("preprocessing")
    group.add_argument("--size", type=int, default=size, help=f"cube edge after crop/pad (default: {size})")
    group.add_argument(
        "--spacing", type=float, default=None, help="voxel size in mm (default: keep the first modality's)"
    )
    group.add_argument(
        "--cache",
        default=None,
        help="cache folder or URI (default: beside the manifest; under --storage when that is a URI)",
    )
    group.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: CPUs)")


def preprocess_cache(args: argparse.Namespace, manifest_path: Path):
    """The preprocessing cache of ``--cache`` (default: beside the manifest) and ``--size/--spacing``."""
    from fusionsearch.cache import PreprocessCache
    from fusionsearch.preprocess import PreprocessConfig

    config = PreprocessConfig(shape=args.size, spacing=args.spacing)
    return PreprocessCache(args.cache or manifest_path.parent / ".fusionsearch-cache", config)


def cmd_smoke(args: argparse.Namespace) -> int:
    """Train one candidate for a few steps on random tensors: checks the install and device."""
    from fusionsearch.device import DevicePolicy
    from fusionsearch.network import FusionNet
    from fusionsearch.training import measure_step_rate

    config = model_config(args, args.modalities)
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
    from fusionsearch.synth import SynthConfig, generate

    config = SynthConfig(n=args.n, size=args.size, seed=args.seed, task=args.task, modalities=args.modalities)
    manifest = generate(args.out, config)
    print(f"wrote {config.n} samples ({', '.join(config.modality_names)}, task {config.task}) to {manifest}")
    return 0


def cmd_import_bids(args: argparse.Namespace) -> int:
    from fusionsearch.bids import import_bids
    from fusionsearch.manifest import write_manifest

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
    from fusionsearch.manifest import class_counts, read_manifest
    from fusionsearch.validate import validate_manifest

    manifest = read_manifest(args.manifest)
    validate_manifest(manifest, num_classes=args.num_classes, folds=args.folds, data_root=args.data_root)
    print(
        f"{args.manifest}: {len(manifest)} samples of {len(set(manifest.subjects))} subjects, "
        f"modalities {manifest.modalities}, samples per class {class_counts(manifest)}: OK"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from fusionsearch.manifest import read_manifest
    from fusionsearch.validate import validate_manifest

    manifest = read_manifest(args.manifest)
    validate_manifest(manifest, folds=2, data_root=args.data_root)
    cache = preprocess_cache(args, args.manifest)
    stats = cache.build(manifest, workers=args.workers)
    print(f"cache {cache.root}: built {stats.built}, reused {stats.reused}")
    return 0


DEFAULT_STORAGE = "fusionsearch-runs"
PLANTED = {"n": 400, "size": 32}


def planted_manifest(storage_root: Path, seed: int) -> Path:
    """The planted XOR benchmark under the storage folder, generated on first use."""
    from fusionsearch.synth import SynthConfig, generate

    folder = storage_root / "planted" / f"xor-n{PLANTED['n']}-size{PLANTED['size']}-seed{seed}"
    if not (folder / "manifest.csv").is_file():
        log.info("generating the planted XOR benchmark in %s (once)", folder)
        generate(folder, SynthConfig(n=PLANTED["n"], size=PLANTED["size"], seed=seed))
    return folder / "manifest.csv"


def _planted_root(storage_path: str) -> Path:
    """The planted data live in local storage, or in the user's cache folder for URI storage."""
    from fusionsearch import storage

    if storage.is_uri(storage_path):
        return Path("~/.cache/fusionsearch").expanduser()
    return Path(storage.normalise(storage_path))


def make_searcher(args: argparse.Namespace, modalities: list[str]):
    """The searcher of ``--searcher`` over the folds of ``--folds/--fold``, with its baselines."""
    from searchers import BeamSearcher, ExhaustiveSearcher, SFSASearcher

    if args.fold is not None and not 0 <= args.fold < args.folds:
        raise UserError(f"--fold {args.fold}: choose one of 0..{args.folds - 1} (--folds {args.folds})")
    options = {
        "folds": range(args.folds) if args.fold is None else [args.fold],
        "pooled": args.pooled,
        "unimodal": modalities if args.unimodal and len(modalities) > 1 else (),
        "ensemble": args.ensemble,
    }
    if args.searcher == "sfsa":
        return SFSASearcher(min_delta=args.min_delta, **options)
    if args.searcher == "beam":
        return BeamSearcher(
            beam_width=args.beam_width, patience=args.beam_patience, min_delta=args.min_delta, **options
        )
    return ExhaustiveSearcher(from_scratch=args.from_scratch, **options)


def finish(result, run: dict) -> int:
    """Evaluate a finished search on its test folds, write its report, print the summary."""
    from fusionsearch.evaluation import evaluate_search
    from fusionsearch.report import write_report
    from fusionsearch.summary import summary_text

    evaluation = None
    if any(s == "ok" for s in result.table["status"].to_pylist()):
        evaluate_search(
            result.experiment_dir, result.table, run["metadata"]["settings"]["data"], run["resources"]
        )
        evaluation = write_report(result.experiment_dir)
    print(summary_text(result, evaluation))
    return 0 if evaluation is not None else 1


def cmd_run(args: argparse.Namespace) -> int:
    """Validate the data, build the preprocessing cache, run the search, print the answer."""
    import time

    from fusionsearch import storage
    from fusionsearch.cache import cache_manifest
    from fusionsearch.config import TrainConfig, to_dict
    from fusionsearch.driver import connect, read_run, run_search
    from fusionsearch.manifest import read_manifest
    from fusionsearch.settings import RunSettings
    from fusionsearch.validate import validate_manifest

    manifest_path = (args.data or planted_manifest(_planted_root(str(args.storage)), args.seed)).resolve()
    manifest = read_manifest(manifest_path)
    if args.modalities:
        manifest = manifest.select_modalities(args.modalities)
    validate_manifest(manifest, folds=args.folds, data_root=args.data_root)
    searcher = make_searcher(args, manifest.modalities)  # checks the options before anything is built
    model = model_config(args, len(manifest.modalities))  # checked before anything is built
    train = TrainConfig(
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    gpus = args.gpus if args.gpus is not None else _local_gpus()
    connect(args.address, num_gpus=None if args.address else gpus)  # an unreachable cluster: before any build
    if args.cache is None and storage.is_uri(str(args.storage)):  # nodes may not see the driver's disk
        args.cache = storage.join(str(args.storage), ".fusionsearch-cache")
    cache = preprocess_cache(args, manifest_path)  # the same cache 'fusionsearch data cache' builds
    data = cache_manifest(manifest, cache.root, cache.config, folds=args.folds, split_seed=args.seed,
                          workers=args.workers)  # fmt: skip
    settings = RunSettings(data=data, model=model, train=train)
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial if gpus else 0}
    name = args.name or f"{args.searcher}-{time.strftime('%Y%m%d-%H%M%S')}"
    log.info("search %s: %s, %s fusion, trials of %s", name, args.searcher, args.fusion, resources)
    result = run_search(
        searcher,
        config={"settings": to_dict(settings)},
        storage_path=str(args.storage),
        name=name,
        resources=resources,
        max_failures=args.max_failures,
        metadata={
            "command": "run",
            "searcher": args.searcher,
            "manifest": str(manifest_path),
            "modalities": manifest.modalities,
            "pooled": args.pooled,
            "settings": to_dict(settings),
        },
    )
    return finish(result, read_run(result.experiment_dir))


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def experiment_dir(args: argparse.Namespace) -> str:
    from fusionsearch import storage

    return storage.join(storage.normalise(str(args.storage)), args.name)


def cmd_resume(args: argparse.Namespace) -> int:
    from fusionsearch.driver import connect, read_run, resume_search

    connect(args.address)
    result = resume_search(experiment_dir(args))
    return finish(result, read_run(result.experiment_dir))


def cmd_report(args: argparse.Namespace) -> int:
    """Print a search's summary; for a finished one, (re)write its report files."""
    from fusionsearch import storage
    from fusionsearch.driver import load_result, read_run
    from fusionsearch.evaluation import PREDICTIONS_FILE
    from fusionsearch.report import write_report
    from fusionsearch.summary import summary_text

    directory = experiment_dir(args)
    read_run(directory)
    evaluation = None
    if storage.exists(storage.join(directory, PREDICTIONS_FILE)):
        evaluation = write_report(directory)
    print(summary_text(load_result(directory), evaluation))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Several searches side by side: results, chosen masks and cost."""
    from fusionsearch import storage
    from fusionsearch.report import write_comparison

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
    add_data_root_argument(run)
    search = run.add_argument_group("search")
    search.add_argument(
        "--searcher",
        choices=["sfsa", "beam", "exhaustive"],
        default="sfsa",
        help="search strategy (default: sfsa)",
    )
    search.add_argument("--beam-width", type=int, default=2, help="beam: masks kept per round (default: 2)")
    search.add_argument(
        "--beam-patience", type=int, default=1, help="beam: non-improving rounds tolerated (default: 1)"
    )
    search.add_argument(
        "--min-delta", type=float, default=0.0, help="least loss decrease that counts (default: 0)"
    )
    search.add_argument(
        "--from-scratch", action="store_true", help="exhaustive: train every mask from scratch"
    )
    train = run.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=12, help="max epochs per candidate (default: 12)")
    train.add_argument("--patience", type=int, default=8, help="early-stopping patience (default: 8)")
    train.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    train.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default: 3e-3)")
    train.add_argument("--seed", type=int, default=0, help="seed of splits, data and training (default: 0)")
    protocol = run.add_argument_group("evaluation protocol")
    protocol.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
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
    cluster = run.add_argument_group("resources")
    cluster.add_argument(
        "--gpus", type=int, default=None, help="GPUs to use; 0 = CPU (default: all local GPUs)"
    )
    cluster.add_argument("--gpus-per-trial", type=float, default=1, help="(default: 1)")
    cluster.add_argument("--cpus-per-trial", type=float, default=1, help="(default: 1)")
    cluster.add_argument(
        "--max-failures", type=int, default=2, help="retries of a failing trial (default: 2)"
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
    parser = argparse.ArgumentParser(
        prog="fusionsearch",
        description="Find where to fuse imaging modalities in a multi-stream 3D CNN.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    smoke = commands.add_parser("smoke", help="train one candidate a few steps on random tensors")
    smoke.add_argument("--mask", default="0100", help="fusion mask, e.g. 0100 (default: 0100)")
    smoke.add_argument("--modalities", type=int, default=2, help="number of streams (default: 2)")
    smoke.add_argument("--size", type=int, default=32, help="cube edge in voxels (default: 32)")
    smoke.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    smoke.add_argument("--steps", type=int, default=5, help="timed steps (default: 5)")
    smoke.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_model_arguments(smoke, width=0.25)
    smoke.set_defaults(func=cmd_smoke)

    synth = commands.add_parser("synth", help="write the planted XOR benchmark (NIfTI + manifest)")
    synth.add_argument("out", type=Path, help="output folder")
    synth.add_argument("--n", type=int, default=400, help="number of samples (default: 400)")
    synth.add_argument("--size", type=int, default=32, help="cube edge in voxels (default: 32)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--task", default="xor", help="xor or colocalized (default: xor)")
    synth.add_argument("--modalities", type=int, default=2, help="number of contrasts (default: 2)")
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
    validate.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    validate.add_argument("--num-classes", type=int, default=2, help="(default: 2)")
    add_data_root_argument(validate)
    validate.set_defaults(func=cmd_validate)

    run = commands.add_parser("run", help="search for the best fusion mask")
    add_experiment_arguments(run, name_required=False)
    add_run_arguments(run)
    add_model_arguments(run, width=0.25)
    add_preprocess_arguments(run, size=PLANTED["size"])
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
    cache.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except UserError as error:
        command = " ".join(filter(None, [args.command, getattr(args, "data_command", None)]))
        print(f"fusionsearch {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
