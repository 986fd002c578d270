"""Shared fixtures and helpers: tiny settings, a local Ray, free ports, scripted driver scripts."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from fusionsearch import ModelConfig

#: A narrow network on tiny volumes: fast enough to build dozens per test on 2 CPU cores.
TINY = {"width": 0.125, "depth": 18}
SIZE = 16
#: ``fusionsearch run`` options for candidates that take seconds, on every fold ...
TINY_EVERY_FOLD = [
    "--size",
    "16",
    "--width",
    "0.125",
    "--epochs",
    "2",
    "--patience",
    "2",
    "--batch-size",
    "8",
    "--folds",
    "3",
    "--gpus",
    "0",
    # One trial at a time, all in one warm actor: a 2-epoch candidate takes less time than a new
    # actor takes to start (its imports, about 10 CPU-seconds here), so a second actor would only
    # compete for the 2 cores (concurrency is tested with the scripted trainable and on the cluster).
    "--max-concurrent",
    "1",
    # Nothing learns in 2 epochs, so every round would be extended once (twice the trials): the
    # extension through Ray and the CLI is tested once, in test_interruptions (tiny_search(extend=True)).
    "--no-extend",
]
#: ... or a search of fold 0 only, without baselines.
TINY_RUN = [*TINY_EVERY_FOLD, "--fold", "0", "--no-unimodal"]


def tiny_search(manifest, storage, name: str, cache, *extra: str, extend: bool = False) -> list[str]:
    """``fusionsearch run`` arguments of a tiny fold-0 search with 2-epoch candidates, plus ``extra``;
    ``extend``: a round where nothing learned (every round here) is trained again once."""
    options = [option for option in TINY_RUN if not (extend and option == "--no-extend")]
    return [
        "run",
        "--data",
        str(manifest),
        "--storage",
        str(storage),
        "--name",
        name,
        "--cache",
        str(cache),
        *options,
        *extra,
    ]


#: Modules whose tests share an expensive module-scoped fixture (a cluster, a finished search, a
#: local Ray, an S3 server): each runs whole on one xdist worker; every other test is scheduled alone.
SHARED_FIXTURE_MODULES = {"test_cluster", "test_run_cli", "test_object_storage", "test_search_ray"}


def pytest_collection_modifyitems(items):
    """The slow tests first (in their order), then the quick ones: the two xdist workers then end
    together on quick tests, instead of one finishing a 2-minute test that came last while the
    other waits (measured: one worker idle for the last 59 s of a 760-s run)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling of :data:`SHARED_FIXTURE_MODULES`: ``--dist loadgroup`` reads its groups from
    node ids that pytest 9.2 no longer lets a plugin change, so the groups are made here."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).stem in SHARED_FIXTURE_MODULES else nodeid

    return SharedFixtureScheduling(config, log)


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter and normalisation buffer non-trivial values (a stand-in for training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator) * 0.3
                tensor.copy_(noise.abs() + 0.5 if name.endswith("running_var") else noise)


def cached_data(manifest_path, cache_root, preprocess, folds: int = 3):
    """Build the preprocessing cache of a manifest and return the DataConfig that opens it."""
    from fusionsearch.data.cache import cache_manifest
    from fusionsearch.data.manifest import read_manifest

    return cache_manifest(read_manifest(manifest_path), cache_root, preprocess, folds=folds, workers=2)


class Recorder:
    """A report callback that keeps every report and copies the checkpoints it is given."""

    def __init__(self, folder: Path):
        self.folder, self.reports, self.checkpoints = folder, [], []

    def __call__(self, metrics, directory):
        self.reports.append(metrics)
        if directory is not None:
            target = self.folder / f"checkpoint_{len(self.checkpoints)}"
            shutil.copytree(directory, target)
            self.checkpoints.append(target)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def session_ray():
    """One Ray (a head with 4 logical CPUs, in its own folder) for all the tests of an xdist worker.

    ``RAY_ADDRESS`` names it, so every ``fusionsearch`` command, in this process or a subprocess,
    joins it instead of starting a Ray of its own (about 10 s and six daemons on 2 cores). Its trial
    workers have this process's environment as it was at the start: a test whose trials need other
    variables (an S3 endpoint) runs them on a Ray of its own (:func:`own_ray_env`), as do tests of
    what a Ray of one's own does (``ray.init(address="local")``) and the cluster tests.
    """
    port, temp_dir = free_port(), tempfile.mkdtemp(prefix="rss", dir="/tmp")
    # Without a mode, a Ray started in this process turns token authentication on for it (and for
    # the commands it starts later) as soon as ~/.ray/auth_token exists (the cluster tests write one).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray = str(Path(sys.executable).with_name("ray"))
    started = subprocess.run(
        [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "4",
         "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir,
         "--object-store-memory", str(512 * 2**20)],
        env=own_ray_env(), timeout=180, capture_output=True, text=True,
    )  # fmt: skip
    if started.returncode != 0:
        pytest.exit(f"the session's Ray did not start:\n{started.stdout}{started.stderr}", returncode=3)
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    try:
        yield os.environ["RAY_ADDRESS"]
    finally:
        del os.environ["RAY_ADDRESS"]
        from processes import stop_cluster

        stop_cluster(temp_dir, port)


def own_ray_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``RAY_ADDRESS`` (plus ``extra``): a ``fusionsearch``
    command run with it starts a local Ray of its own, whose workers inherit ``extra``."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | extra


@pytest.fixture(scope="module")
def local_ray(session_ray):
    """This process joined to the session's Ray for the tests of one module."""
    import ray

    ray.init(address=session_ray, log_to_driver=False)
    yield
    ray.shutdown()


SCRIPTED_DRIVER = """
import sys, ray
from fusionsearch.tune.driver import resume_search, run_search
from searchers import SFSASearcher
from trainables.scripted import scripted_trainable
ray.init({init})
if sys.argv[1:] == ["resume"]:
    resume_search({experiment!r}, trainable=scripted_trainable)
else:
    run_search(SFSASearcher(), trainable=scripted_trainable, config={config!r}, storage_path={storage!r},
               name={name!r}, resources={{"cpu": 1}}, max_failures={max_failures})
"""


def scripted_driver(
    path: Path, *, storage, name: str, config: dict, address: str | None = None, max_failures: int = 0
) -> Path:
    """Write a driver script that runs an SFSA search with the scripted trainable (``resume`` resumes it).

    With ``address`` it joins that cluster; without, it starts a local Ray of 4 CPUs.
    """
    init = f"address={address!r}" if address else "address='local', num_cpus=4, include_dashboard=False"
    path.write_text(
        SCRIPTED_DRIVER.format(
            init=f"{init}, log_to_driver=False",
            config=config,
            name=name,
            storage=str(storage),
            experiment=f"{storage}/{name}",
            max_failures=max_failures,
        )
    )
    return path


def plain_tune_search(searcher, storage_path: str, name: str, callbacks=(), **tune_options) -> dict:
    """Run ``searcher`` in a plain ``tune.Tuner`` with the scripted trainable on the search test's
    landscape; return ``{(role, mask): (mask found in the parent's checkpoint, parent_mask)}``."""
    import json

    from ray import tune

    from fusionsearch.mask import FusionMask
    from trainables.scripted import scripted_trainable

    landscape = {str(m): 2.0 for m in FusionMask.all_masks(4)}
    landscape |= {"0000": 1.0, "1000": 0.9, "0100": 0.5, "0010": 0.7, "0001": 0.8, "0110": 0.4}
    grid = tune.Tuner(
        scripted_trainable,
        param_space={"landscape": landscape},
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, **{"reuse_actors": True} | tune_options
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=list(callbacks), verbose=0),
    ).fit()
    states = {}
    for result in grid:
        if result.error:
            raise result.error
        with result.checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / "state.json").read_text())
        states[result.config["role"], state["mask"]] = (state["parent_seen"], result.config["parent_mask"])
    return states


def wait_for(condition, timeout: float = 300.0, what: str = "the condition", interval: float = 0.1) -> None:
    """Poll ``condition()`` until it is true; fail the test after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class BaselineThenOne:
    """A two-round strategy: 0000 from scratch, then 0100 warm-started from it."""

    num_points = 4

    def next_round(self, history):
        from fusionsearch.mask import FusionMask
        from fusionsearch.search.strategies import Candidate

        if not history:
            return [Candidate(FusionMask("0000"), None, 0)]
        return [Candidate(FusionMask("0100"), FusionMask("0000"), 1)] if len(history) == 1 else []


@contextlib.contextmanager
def moto_server():
    """A moto S3 server on a free port of 127.0.0.1, stopped afterwards; yields its port."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0 or server.poll() is not None,
            timeout=30,
            what="the moto server",
            interval=0.2,
        )
        assert server.poll() is None, "the moto server exited"
        yield port
    finally:
        server.terminate()
        server.wait()


# How rows of the candidates table are identified and linked (a control shares its parent's mask).
from fusionsearch.search.records import parent_row  # noqa: E402, F401
from fusionsearch.search.records import row_key as trial_key  # noqa: E402, F401
