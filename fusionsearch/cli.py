"""The ``fusionsearch`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fusionsearch.config import ConfigError, ModelConfig
from fusionsearch.mask import MaskError

log = logging.getLogger("fusionsearch")

#: Errors a user can fix from the message alone: printed as one paragraph, exit code 2.
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, MaskError, FileNotFoundError)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("network")
    group.add_argument("--fusion", default="mmtm", help="fusion module: mmtm or spatial (default: mmtm)")
    group.add_argument("--depth", type=int, default=18, help="ResNet depth: 10, 18 or 34 (default: 18)")
    group.add_argument("--width", type=float, default=1.0, help="channel multiplier (default: 1.0)")
    group.add_argument("--stem-stride", type=int, default=2, help="first-convolution stride (default: 2)")


def model_config(args: argparse.Namespace, modalities: int) -> ModelConfig:
    return ModelConfig(
        modalities=modalities,
        depth=args.depth,
        fusion=args.fusion,
        stem_stride=args.stem_stride,
        width=args.width,
    )


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
    add_model_arguments(smoke)
    smoke.set_defaults(func=cmd_smoke, width=0.25)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except USER_ERRORS as error:
        print(f"fusionsearch {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
