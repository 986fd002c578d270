"""What verifying the preprocessing cache costs: SHA-256 of every entry, as `fusionsearch run` does.

    python benchmarks/cache_verify.py --n 100 --size 128 --modalities 2 --workers 2

Writes ``--n`` entries of ``(modalities, size, size, size)`` float16 (8 MB each at 128^3 and 2
modalities) with their records, then times the length check and the hash check of all of them
(`PreprocessCache.damage`) over ``--workers`` threads, and prints GB/s and the seconds a 1,000-sample
cache of the same entries would take. Run it on the storage the cache will live on.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fusionsearch import storage
from fusionsearch.data.cache import EntryRecord, PreprocessCache
from fusionsearch.settings import PreprocessConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--modalities", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--dir", default=None, help="where to write the entries (default: a temporary folder)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        cache = PreprocessCache(root, PreprocessConfig(shape=args.size))
        rng = np.random.default_rng(0)
        array = rng.standard_normal((args.modalities, *(args.size,) * 3)).astype(np.float16)
        keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(args.n)]
        for i, key in enumerate(keys):
            buffer = io.BytesIO()
            np.save(buffer, array + np.float16(i))
            data = buffer.getvalue()
            storage.write_bytes(cache.entry(key), data)
            record = EntryRecord(
                f"s{i}", array.shape, str(array.dtype), len(data), hashlib.sha256(data).hexdigest()
            )
            storage.write_json(cache.record(key), dataclasses.asdict(record))
        total = args.n * len(data)
        timings = {}
        for deep in (False, True):
            started = time.perf_counter()
            with ThreadPoolExecutor(args.workers) as pool:
                damage = list(pool.map(lambda k, deep=deep: cache.damage(k, deep=deep), keys))
            timings[deep] = time.perf_counter() - started
            assert not any(damage)
    per_entry = len(data) / 1e6
    print(f"{args.n} entries of {per_entry:.1f} MB ({total / 1e9:.2f} GB), {args.workers} thread(s)")
    print(f"length check: {timings[False]:.2f} s ({1e3 * timings[False] / args.n:.2f} ms per entry)")
    print(f"SHA-256 check: {timings[True]:.2f} s, {total / 1e9 / timings[True]:.2f} GB/s")
    print(f"a 1,000-sample cache: {1000 / args.n * timings[True]:.1f} s verified, "
          f"{1000 / args.n * timings[False]:.2f} s length-checked")  # fmt: skip


if __name__ == "__main__":
    main()
