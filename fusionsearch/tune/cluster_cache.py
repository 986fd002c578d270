"""The preprocessing cache built by the cluster's workers (``--cache-build``).

A cohort of thousands of volumes takes minutes to preprocess on one machine's threads. With
``cluster``, the driver lists the entries to build, as a local build does, and Ray's
multiprocessing ``Pool`` (a worker process per CPU of the cluster, on every node) preprocesses
them. Each worker writes its entry and record straight into the cache (a folder every node
mounts, or a URI) with the same code as the local build, so the bytes are the same (a test
compares them). The driver shows the progress as entries finish.

Every worker must read the source volumes at the manifest's paths and write the cache's root.
Before anything is built, one small task per alive node checks both (:func:`unseen`). With
``cluster``, a node that cannot is an error naming it. With ``auto`` (the default), the
cluster builds only when the search runs on several nodes, all of them can, and the cohort has
at least :data:`~fusionsearch.settings.AUTO_MIN_SAMPLES` samples; otherwise the driver builds
with its threads, as it does on one machine, where starting worker processes (seconds of
imports each) costs more than it saves.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayTaskError
from ray.util.multiprocessing import Pool
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fusionsearch import storage
from fusionsearch.errors import UserError
from fusionsearch.settings import AUTO_MIN_SAMPLES

if TYPE_CHECKING:  # not imported at run time: the node checks import this module in fresh workers,
    # which then need neither torch nor MONAI nor Ray Tune
    from fusionsearch.data.cache import MapJobs
    from fusionsearch.data.manifest import Manifest

log = logging.getLogger(__name__)

#: Jobs per worker and chunk: each worker gets about this many chunks, so the work stays balanced.
CHUNKS_PER_WORKER = 4


def cluster_map(
    function: Callable[[Any], None], jobs: Sequence[Any], workers: int | None = None
) -> Iterator[None]:
    """Run ``function`` on every job in a Ray ``Pool`` over the cluster; yield once per finished job.

    ``workers``: pool processes (default: one per CPU of the cluster, at most one per job; none for
    no job). A job's
    exception is raised here as itself (the Pool returns it wrapped as a result), after the pool is
    shut down.
    """
    if not jobs:  # no pool to start
        return
    from fusionsearch.tune.compat import PoolTaskError  # imports Ray Tune: only where a pool runs

    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = max(1, min(workers or cpus, len(jobs)))
    chunk = max(1, math.ceil(len(jobs) / (CHUNKS_PER_WORKER * workers)))
    pool = Pool(processes=workers, ray_remote_args={"num_cpus": 1})
    try:
        for result in pool.imap_unordered(function, jobs, chunksize=chunk):
            if isinstance(result, PoolTaskError):
                raise result.underlying
            yield None
    except RayTaskError as error:  # a worker process that died, or a job's error Ray wrapped
        raise error.cause from None
    finally:
        pool.terminate()


def unseen(manifest: Manifest, cache_root: str) -> list[str]:
    """What a node of the cluster cannot see: one line per node that misses a source volume (the first
    and last sample's are checked) or cannot write the cache's root; empty when every node can."""
    volumes = sorted({str(p) for row in {0, len(manifest) - 1} for p in manifest.paths(row).values()})
    checks = [
        _sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            volumes, cache_root, node["NodeManagerAddress"]
        )
        for node in ray.nodes()
        if node["Alive"]
    ]
    return [problem for problems in ray.get(checks) for problem in problems]


@ray.remote(num_cpus=0)
def _sees(volumes: list[str], cache_root: str, node: str) -> list[str]:
    problems = [f"node {node} cannot read {v}" for v in volumes if not os.access(v, os.R_OK)]
    try:
        storage.probe(cache_root, "--cache")
    except UserError as error:
        problems.append(f"node {node}: {error}")
    return problems


def cache_map(mode: str, manifest: Manifest, cache_root: str, workers: int | None = None) -> MapJobs | None:
    """Where the cache of ``manifest`` is built under ``--cache-build mode``: the cluster's workers
    (:func:`cluster_map` with ``workers`` processes) or ``None`` (the driver's threads); see the
    module's docstring."""
    if mode == "driver":
        return None
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if mode == "auto" and (nodes < 2 or len(manifest) < AUTO_MIN_SAMPLES):
        return None
    problems = unseen(manifest, cache_root)
    if problems and mode == "cluster":
        raise UserError(
            f"--cache-build cluster: not every node sees the data and the cache ({'; '.join(problems[:3])}); "
            "put the images and the cache on storage every node mounts at the same path (or a URI "
            "cache, --cache s3://...), or build on this machine with --cache-build driver"
        )
    if problems:
        log.info("the cache is built on this machine: %s", problems[0])
        return None
    log.info("the cache is built by the workers of %d node(s)", nodes)
    return partial(cluster_map, workers=workers)
