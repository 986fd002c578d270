"""Preprocessing throughput (raw NIfTI through MONAI) vs cached loading throughput.

    python benchmarks/data_throughput.py --n 64 --size 64            # planted benchmark
    python benchmarks/data_throughput.py --manifest my/manifest.csv --size 128

Prints volumes/s of preprocessing (one process, and the parallel cache build), samples/s of
reading the memory-mapped cache through a DataLoader, and their ratio. With ``--ray-workers 1 2``
also the cluster build (``--cache-build cluster``: Ray's ``Pool`` on a local Ray with that many
worker processes), its start-up (the workers' imports) apart from its steady rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from fusionsearch.data.cache import PreprocessCache
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.preprocess import preprocess_sample
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.settings import PreprocessConfig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path, default=None, help="default: generate the planted benchmark")
    parser.add_argument("--n", type=int, default=64, help="samples to generate (default: 64)")
    parser.add_argument("--size", type=int, default=64, help="cube edge (default: 64)")
    parser.add_argument(
        "--spacing", type=float, default=None, help="voxel size in mm (default: keep the data's)"
    )
    parser.add_argument("--grid", default="cube", help="planted data's grid: cube or scanner (default: cube)")
    parser.add_argument("--workers", type=int, default=None, help="cache-build processes (default: CPUs)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the cache (default: 3)")
    parser.add_argument(
        "--ray-workers", type=int, nargs="*", default=[], help="cluster builds with these pool sizes"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        manifest_path = args.manifest or generate(
            scratch, SynthConfig(n=args.n, size=args.size, grid=args.grid)
        )
        manifest = read_manifest(manifest_path)
        config = PreprocessConfig(shape=args.size, spacing=args.spacing)
        volumes = len(manifest) * len(manifest.modalities)

        serial_rows = range(min(len(manifest), 16))
        start = time.perf_counter()
        for row in serial_rows:
            preprocess_sample(manifest.paths(row), config)
        serial = len(serial_rows) * len(manifest.modalities) / (time.perf_counter() - start)

        cache = PreprocessCache(Path(scratch) / "cache", config)
        start = time.perf_counter()
        cache.build(manifest, workers=args.workers)
        parallel = volumes / (time.perf_counter() - start)
        cached_mb = sum(f.stat().st_size for f in (Path(scratch) / "cache").rglob("*.npy")) / 1e6

        loader = torch.utils.data.DataLoader(cache.open(manifest), batch_size=args.batch, shuffle=True)
        rates = []
        for _ in range(args.epochs):
            start = time.perf_counter()
            samples = sum(len(labels) for _, labels in loader)
            rates.append(samples / (time.perf_counter() - start))
        loading = sorted(rates)[len(rates) // 2]
        clusters = [
            (k, *cluster_build(manifest, config, Path(scratch) / f"ray{k}", k)) for k in args.ray_workers
        ]

    modalities = len(manifest.modalities)
    print(f"samples={len(manifest)} modalities={modalities} shape={args.size}^3 dtype={config.dtype}")
    print(f"preprocessing, one process:   {serial:8.1f} volumes/s ({serial / modalities:.1f} samples/s)")
    print(f"preprocessing, parallel build:{parallel:8.1f} volumes/s (startup included)")
    print(f"cache size:                   {cached_mb / len(manifest):8.1f} MB per sample")
    print(f"cached loading (DataLoader):  {loading:8.1f} samples/s (median of {args.epochs} epochs)")
    print(f"ratio cached / preprocessing: {loading / (serial / modalities):8.1f}x")
    for workers, total, start_up in clusters:
        steady = volumes / max(total - start_up, 1e-9)
        print(f"cluster build, {workers} Ray worker(s): {volumes / total:8.1f} volumes/s with start-up "
              f"({start_up:.1f} s), {steady:.1f} volumes/s after it")  # fmt: skip


def cluster_build(manifest, config: PreprocessConfig, root: Path, workers: int) -> tuple[float, float]:
    """Seconds of a cluster build with ``workers`` pool processes, and of the pool's start-up alone
    (the same pool size running an empty job per worker first)."""
    import ray

    from fusionsearch.tune.cluster_cache import cluster_map

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        list(cluster_map(_nothing, list(range(workers)), workers=workers))
        start_up = time.perf_counter() - start
        cache = PreprocessCache(root, config)
        start = time.perf_counter()
        cache.build(manifest, map_jobs=partial(cluster_map, workers=workers))
        return time.perf_counter() - start, start_up
    finally:
        ray.shutdown()


def _nothing(job: int) -> None:
    from fusionsearch.data import cache  # noqa: F401  (what a build's worker imports)


if __name__ == "__main__":
    main()
