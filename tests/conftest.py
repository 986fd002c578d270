"""Shared fixtures and helpers: tiny settings, a local Ray, free ports, scripted driver scripts."""

import socket
from pathlib import Path

import pytest
import torch

from fusionsearch import ModelConfig

#: A narrow network on tiny volumes: fast enough to build dozens per test on 2 CPU cores.
TINY = {"width": 0.125, "depth": 18}
SIZE = 16
#: ``fusionsearch run`` options for candidates that take seconds, on every fold ...
TINY_EVERY_FOLD = ["--size", "16", "--width", "0.125", "--epochs", "2", "--patience", "2",
                   "--batch-size", "8", "--folds", "3", "--gpus", "0"]  # fmt: skip
#: ... or a search of fold 0 only, without baselines.
TINY_RUN = [*TINY_EVERY_FOLD, "--fold", "0", "--no-unimodal"]


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 4 logical CPUs for the tests of one module."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


SCRIPTED_DRIVER = """
import sys, ray
from fusionsearch.driver import resume_search, run_search
from searchers import SFSASearcher
from trainables.scripted import scripted_trainable
ray.init({init})
if sys.argv[1:] == ["resume"]:
    resume_search({experiment!r}, trainable=scripted_trainable)
else:
    run_search(SFSASearcher(), trainable=scripted_trainable, config={config!r}, storage_path={storage!r},
               name={name!r}, resources={{"cpu": 1}}, max_failures={max_failures})
"""


def scripted_driver(path: Path, *, storage, name: str, config: dict, address: str | None = None,
                    max_failures: int = 0) -> Path:  # fmt: skip
    """Write a driver script that runs an SFSA search with the scripted trainable (``resume`` resumes it).

    With ``address`` it joins that cluster; without, it starts a local Ray of 4 CPUs.
    """
    init = f"address={address!r}" if address else "num_cpus=4, include_dashboard=False"
    path.write_text(SCRIPTED_DRIVER.format(init=f"{init}, log_to_driver=False", config=config, name=name,
                                           storage=str(storage), experiment=f"{storage}/{name}",
                                           max_failures=max_failures))  # fmt: skip
    return path


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
