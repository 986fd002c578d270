"""Forward+backward+AdamW step time and volumes/s of the bare network on random inputs.

    python benchmarks/step_time.py --mask 1111 --size 128 --batch 8 --width 1 --stem-stride 2

Runs unchanged on CPU and CUDA (bf16 autocast + channels_last_3d there). Prints one line per
repeat and the median. ``--augment standard`` also times the training recipe's augmentation
(:mod:`fusionsearch.train.recipe`, on the same device) on a batch of the same shape, and prints
it as a share of the step (the target is <= 10 %).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fusionsearch import DevicePolicy, FusionNet, ModelConfig
from fusionsearch.settings import TrainConfig
from fusionsearch.train.profiling import measure_step_rate
from fusionsearch.train.recipe import augment, augmentation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mask", default="1111")
    parser.add_argument("--fusion", default="mmtm")
    parser.add_argument("--modalities", type=int, default=2)
    parser.add_argument("--depth", type=int, default=18)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--augment", choices=["none", "standard"], default="none")
    args = parser.parse_args()

    policy = DevicePolicy.select(args.device)
    config = ModelConfig(
        modalities=args.modalities,
        depth=args.depth,
        fusion=args.fusion,
        stem_stride=args.stem_stride,
        width=args.width,
    )
    model = FusionNet(config, args.mask)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"device={policy.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"mask={args.mask} fusion={args.fusion} depth={args.depth} width={args.width} "
        f"stem_stride={args.stem_stride} size={args.size}^3 batch={args.batch} params={params / 1e6:.2f}M"
    )
    rates = []
    for repeat in range(args.repeats):
        rate = measure_step_rate(
            model, policy, size=args.size, batch=args.batch, steps=args.steps, warmup=args.warmup
        )
        rates.append(rate)
        ms = rate.step_seconds * 1000
        print(f"repeat {repeat}: {ms:.1f} ms/step  {rate.volumes_per_second:.1f} volumes/s")
    step = statistics.median(r.step_seconds for r in rates)
    print(f"median: {step * 1000:.1f} ms/step  {args.batch / step:.1f} volumes/s")
    if args.augment != "none":
        transform = augmentation(TrainConfig(augment=args.augment), (args.size,) * 3)
        images = policy.batch(torch.randn(args.batch, args.modalities, args.size, args.size, args.size))
        times = []
        for repeat in range(args.warmup + args.repeats * args.steps):
            policy.synchronize()
            tick = time.perf_counter()
            policy.batch(augment(transform, images, seed=repeat))  # laid out for the step, as in training
            policy.synchronize()
            times.append(time.perf_counter() - tick)
        seconds = statistics.median(times[args.warmup :])
        share = seconds / step
        print(f"augmentation ({args.augment}): {seconds * 1000:.2f} ms/batch, {share:.2%} of the step")
    if policy.is_cuda:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(policy.device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
