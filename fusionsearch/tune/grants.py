"""How many workers the searcher lets each running trial grow to: a small named Ray actor.

Under ``--gpus-per-trial auto`` a trial starts with a share of the GPUs free at its start; when
other trials end and nothing waits to start, the searcher (in the driver) grants running trials
more workers (:meth:`searchers.rounds.DataParallel.grow`) and writes the grants here. A growing
trial's workers ask after every validated epoch (:mod:`trainables.data_parallel`), checkpoint,
and restart their Ray Train worker group with the granted number from that checkpoint. The actor
lives as long as the Ray job that created it; a trial that finds none keeps its workers.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class _Grants:
    def __init__(self) -> None:
        self._workers: dict[str, int] = {}

    def set(self, workers: dict[str, int]) -> None:
        self._workers.update(workers)

    def get(self, trial_id: str) -> int | None:
        return self._workers.get(trial_id)


#: Handles by Ray job and name: a named actor lives while a handle to it does, and a trial's
#: workers ask every validated epoch, so each process looks the actor up once.
_HANDLES: dict[tuple[str, str], ray.actor.ActorHandle] = {}


def _handle(name: str, create: bool = False) -> ray.actor.ActorHandle | None:
    key = (ray.get_runtime_context().get_job_id(), name)
    if key not in _HANDLES:
        try:
            _HANDLES[key] = (
                _Grants.options(name=name, get_if_exists=True).remote() if create else ray.get_actor(name)
            )
        except ValueError:  # nothing granted yet in this job
            return None
    return _HANDLES[key]


def start(name: str) -> None:
    """Create the actor ``name`` without waiting for it: its process starts while the first round
    trains, so the first grant is not held up by it (nor Tune's event loop, which makes the grant)."""
    _handle(name, create=True)


def publish(name: str, workers: dict[str, int]) -> None:
    """Grant ``workers`` (trial id -> workers) through the actor ``name``, creating it if needed."""
    ray.get(_handle(name, create=True).set.remote(workers))


def address(name: str, trial_id: str) -> str:
    """Where ``trial_id`` finds its grants (what its config's ``grants`` holds)."""
    return f"{name}/{trial_id}"


def granted(where: str) -> int | None:
    """The workers granted at ``where`` (:func:`address`); ``None`` if none (or no actor yet)."""
    name, _, trial_id = where.rpartition("/")
    handle = _handle(name)
    return None if handle is None else ray.get(handle.get.remote(trial_id))
