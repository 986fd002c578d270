"""Keep a search's trial actors warm between its rounds.

Starting a trial actor costs a worker process and about 1.5 s of imports (Ray Tune, torch,
MONAI) before the trainable's first line runs; a round whose trials all start fresh actors
pays that on its critical path, and on a small machine once per trial. Ray Tune can hand a
finished trial's actor to the next trial (``TuneConfig(reuse_actors=True)``), but it keeps at
most one idle actor: it keeps an actor only for a trial already pending, and when a round
ends none is, because the searcher proposes the next round only once the last result is in.
So all but one actor would stop, and the next round would start k - 1 fresh ones.

:func:`keep_warm` makes the Tune controller created inside it keep up to ``count`` idle actors
while the search runs. Idle actors hold their trial's resources, which only trials of the
same shape (every one-GPU trial of a search) can use; they are released when a trial of another
shape is waiting, while a predicate says GPUs are wanted outside Tune (a data-parallel trial's
Ray Train workers ask Ray for theirs, to start or to grow, and Tune would not release an idle
actor to them), and all of them when the search ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from fusionsearch.tune.compat import ObjectCache, controller_object_cache


class WarmActorCache(ObjectCache):
    """Tune's idle-actor cache, keeping up to ``keep`` idle actors between trials while ``when()``."""

    def __init__(self, keep: int, when: Callable[[], bool] = lambda: True) -> None:
        super().__init__(may_keep_one=True)
        self.keep = keep
        self.when = when

    def cache_object(self, key: Hashable, obj: Any) -> bool:
        if self.num_cached_objects < self.keep and not self._wanted_elsewhere(key) and self.when():
            self._cached_objects[key].append(obj)
            self._num_cached_objects += 1
            return True
        return super().cache_object(key, obj)

    def flush_cached_objects(self, force_all: bool = False) -> Iterator[Any]:
        waiting = any(self._wanted_elsewhere(key) for key, objs in self._cached_objects.items() if objs)
        if force_all or waiting:
            yield from super().flush_cached_objects(force_all=force_all)
        elif not self.when():  # only those a pending trial will take (Tune's own would keep one more)
            for key, objs in self._cached_objects.items():
                while len(objs) > self._max_num_objects[key]:
                    self._num_cached_objects -= 1
                    yield objs.pop(0)

    def _wanted_elsewhere(self, key: Hashable) -> bool:
        """Whether trials of another resource shape are waiting (for resources ours hold)."""
        return any(count > 0 for other, count in self._max_num_objects.items() if other != key)


@contextlib.contextmanager
def keep_warm(count: int, when: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """Within this context, new Tune controllers keep up to ``count`` idle trial actors while
    ``when()``, only those pending trials will take otherwise."""
    with controller_object_cache(lambda may_keep_one=True: WarmActorCache(count, when)):
        yield
