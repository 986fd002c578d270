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


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing")
    group.add_argument("--size", type=int, default=64, help="cube edge after crop/pad (default: 64)")
    group.add_argument(
        "--spacing", type=float, default=None, help="voxel size in mm (default: keep the first modality's)"
    )
    group.add_argument("--cache", type=Path, default=None, help="cache folder (default: beside the manifest)")
    group.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: CPUs)")


def preprocess_cache(args: argparse.Namespace, manifest_path: Path):
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
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fusionsearch.manifest import class_counts, read_manifest
    from fusionsearch.validate import validate_manifest

    manifest = read_manifest(args.manifest)
    validate_manifest(manifest, num_classes=args.num_classes, folds=args.folds)
    print(
        f"{args.manifest}: {len(manifest)} samples of {len(set(manifest.subjects))} subjects, "
        f"modalities {manifest.modalities}, samples per class {class_counts(manifest)}: OK"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from fusionsearch.manifest import read_manifest
    from fusionsearch.validate import validate_manifest

    manifest = read_manifest(args.manifest)
    validate_manifest(manifest, folds=2)
    cache = preprocess_cache(args, args.manifest)
    stats = cache.build(manifest, workers=args.workers)
    print(f"cache {cache.root}: built {stats.built}, reused {stats.reused}")
    return 0


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
    validate.set_defaults(func=cmd_validate)

    cache = data_commands.add_parser("cache", help="preprocess every sample once into the cache")
    cache.add_argument("manifest", type=Path)
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
