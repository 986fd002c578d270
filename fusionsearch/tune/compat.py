"""Every private or semi-internal Ray name fusionsearch uses, in one place, checked at import.

fusionsearch leans on a few Ray Tune internals where measured to matter (keeping trial actors
warm between rounds; resuming past a checkpoint lost in the storage; telling a trial's retry
count). Ray may move any of them in a release. This module imports them once, checks the
installed Ray against :data:`SUPPORTED` (the versions the suite has run with, as
``pyproject.toml`` pins), and raises :class:`RayVersionError`, one paragraph naming the
supported range and the fix, instead of an import-time traceback. Nothing else in fusionsearch
imports a Ray name that starts with an underscore or lives under ``ray.*._internal``
(``tests/test_architecture.py`` checks it).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

from fusionsearch.errors import UserError

#: Ray versions whose internals below are known: ``>= 2.52, < 2.61``.
SUPPORTED = ((2, 52), (2, 61))
#: The private and semi-internal names used: (module, name).
NAMES = (
    ("ray.tune.utils.object_cache", "_ObjectCache"),  # the controller's idle-actor cache
    ("ray.tune.execution.tune_controller", "_ObjectCache"),  # where the controller builds it from
    ("ray.train._internal.checkpoint_manager", "_CheckpointManager"),  # a trial's checkpoints
    ("ray.tune.experiment", "Trial"),  # trial status names
    ("ray.util.multiprocessing.pool", "PoolTaskError"),  # how a Pool's imap returns a job's exception
    ("ray.train._internal.session", "get_session"),  # a Tune trial's storage (its folder and filesystem)
    ("ray.tune.execution.class_cache", "DEFAULT_ENV_VARS"),  # a trial actor's runtime environment
    ("ray.tune.execution.class_cache", "ENV_VARS_TO_PROPAGATE"),
)
#: Ray's logger of the storage's upload messages (quietened for trials).
STORAGE_LOGGER = "ray.train._internal.storage"
#: Ray's system setting (``RayConfig``) of the modules every Python worker imports when it starts,
#: before it is given work: the raylet passes it to ``default_worker.py --worker-preload-modules``.
#: On a ``ray start`` node it is the environment variable ``RAY_preload_python_modules``
#: (comma-separated).
PRELOAD_SETTING = "preload_python_modules"


class RayVersionError(UserError):
    """The installed Ray is outside the supported range, or lacks an internal name fusionsearch uses."""


def _range() -> str:
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED
    return f">={low_major}.{low_minor},<{high_major}.{high_minor}"


def _version(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def check(version: str | None = None) -> dict[str, Any]:
    """The names of :data:`NAMES`, ``{"module:name": object}``, from a supported Ray.

    Raises:
        RayVersionError: ``version`` (default: the installed Ray's) is outside :data:`SUPPORTED`,
            or a name is missing.
    """
    version = version or ray.__version__
    fix = f"pip install 'ray[default,tune]{_range()}'"
    if not SUPPORTED[0] <= _version(version) < SUPPORTED[1]:
        raise RayVersionError(
            f"Ray {version} is installed, but fusionsearch supports Ray {_range()}: it uses Ray Tune "
            f"internals ({', '.join(name for _, name in NAMES)}) that a release may move. Install a "
            f"supported Ray ({fix}), or a fusionsearch release made for Ray {version}"
        )
    found, missing = {}, []
    for module, name in NAMES:
        try:
            found[f"{module}:{name}"] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{name}")
    if missing:
        raise RayVersionError(
            f"Ray {version} lacks {', '.join(missing)}, which fusionsearch uses (supported: Ray {_range()}, "
            f"where it exists): the installation is incomplete or patched. Reinstall a supported Ray ({fix})"
        )
    return found


_FOUND = check()
ObjectCache: type = _FOUND["ray.tune.utils.object_cache:_ObjectCache"]
CheckpointManager: type = _FOUND["ray.train._internal.checkpoint_manager:_CheckpointManager"]
Trial: type = _FOUND["ray.tune.experiment:Trial"]
TERMINATED: str = Trial.TERMINATED
PoolTaskError: type = _FOUND["ray.util.multiprocessing.pool:PoolTaskError"]
_get_session: Callable[[], Any] = _FOUND["ray.train._internal.session:get_session"]


@contextlib.contextmanager
def controller_object_cache(factory: Callable[..., Any]) -> Iterator[None]:
    """Within this context, Tune controllers built in this process build their idle-actor cache with
    ``factory`` (called as ``factory(may_keep_one=True)``)."""
    controller = importlib.import_module("ray.tune.execution.tune_controller")
    controller._ObjectCache = factory
    try:
        yield
    finally:
        controller._ObjectCache = ObjectCache


def search_algorithm(tuner: Any) -> Any:
    """The searcher a ``tune.Tuner`` (a restored one too: unpickled with its state) searches with;
    ``None`` where Ray keeps it elsewhere (Ray Client, another release)."""
    return getattr(getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "search_alg", None)


def preload(modules: Sequence[str]) -> dict[str, Any]:
    """``ray.init`` arguments for a local Ray whose worker processes import ``modules`` as they start.

    A raylet starts a few idle workers as soon as the first driver connects; with this, those
    import the trial's modules (torch, MONAI, the trainable: seconds per process) while the
    driver is still busy (building the preprocessing cache), and a trial actor given one runs
    its first line at once. A module that fails to import is logged by the worker and skipped.
    """
    return {"_system_config": {PRELOAD_SETTING: list(modules)}} if modules else {}


@contextlib.contextmanager
def trial_env_vars(inherited: dict[str, str]) -> Iterator[None]:
    """Within this context, Tune gives a trial actor only the environment variables its worker does
    not already have: those whose value differs from ``inherited`` (the environment a local Ray's
    workers inherited when it started), and not Tune's ``PL_DISABLE_FORK`` (for PyTorch Lightning,
    which the built-in trainable does not use).

    Tune sets them as the actor's runtime environment, and Ray gives an actor whose runtime
    environment is not the job's a new worker process: one of the idle workers a local Ray
    started (and had import the trial's modules, :func:`preload`) only when it has none.
    """
    cache = importlib.import_module("ray.tune.execution.class_cache")
    defaults, propagated = cache.DEFAULT_ENV_VARS, cache.ENV_VARS_TO_PROPAGATE
    cache.DEFAULT_ENV_VARS = {}
    cache.ENV_VARS_TO_PROPAGATE = {key for key in propagated if os.environ.get(key) != inherited.get(key)}
    try:
        yield
    finally:
        cache.DEFAULT_ENV_VARS, cache.ENV_VARS_TO_PROPAGATE = defaults, propagated


def forget_checkpoints(trial: Any) -> None:
    """Make a trial start again from its config: a fresh checkpoint manager with its settings."""
    manager = trial.run_metadata.checkpoint_manager
    trial.run_metadata.checkpoint_manager = CheckpointManager(manager.checkpoint_config)


def failures(trial: Any) -> int:
    """How many times the trial has failed so far."""
    return trial.run_metadata.num_failures


def quiet_storage_logs() -> None:
    """Ray's per-upload storage messages at warning level only."""
    logging.getLogger(STORAGE_LOGGER).setLevel(logging.WARNING)


def trial_storage() -> tuple[str, Any]:
    """The running Tune trial's folder in the experiment's storage, as ``(path, pyarrow filesystem)``:
    where a data-parallel trial's Ray Train run keeps its checkpoints, so that a retry finds them."""
    storage = _get_session().storage
    return storage.trial_fs_path, storage.storage_filesystem
