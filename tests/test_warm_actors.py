"""The idle-actor cache that keeps a search's trial actors warm between rounds (no Ray started)."""

from ray.tune.execution import tune_controller

from fusionsearch.tune.warm_actors import WarmActorCache, keep_warm

GPU, CPU = "1 GPU", "4 CPU"  # resource shapes (Tune keys the cache by placement group factory)


def test_keeps_up_to_its_count_of_idle_actors_between_rounds():
    cache = WarmActorCache(keep=2)
    # No trial is pending when a round ends; stock Tune would keep one of these, not two.
    assert cache.cache_object(GPU, "a") and cache.cache_object(GPU, "b")
    assert not cache.cache_object(GPU, "c")
    assert list(cache.flush_cached_objects()) == []
    # The next round takes them.
    cache.increase_max(GPU, 2)
    assert [cache.pop_cached_object(GPU), cache.pop_cached_object(GPU)] == ["a", "b"]
    assert not cache.has_cached_object(GPU)


def test_releases_idle_actors_when_another_shape_waits_and_at_the_end():
    cache = WarmActorCache(keep=4)
    assert cache.cache_object(GPU, "a") and cache.cache_object(GPU, "b")
    cache.increase_max(CPU)  # a trial of another shape needs the resources ours hold
    assert not cache.cache_object(GPU, "c")
    assert sorted(cache.flush_cached_objects()) == ["a", "b"]
    cache.decrease_max(CPU)
    assert cache.cache_object(GPU, "d")
    assert list(cache.flush_cached_objects(force_all=True)) == ["d"]  # the search is over


def test_keep_warm_installs_the_cache_only_inside_its_context():
    stock = tune_controller._ObjectCache
    with keep_warm(3):
        cache = tune_controller._ObjectCache(may_keep_one=True)
        assert isinstance(cache, WarmActorCache) and cache.keep == 3
    assert tune_controller._ObjectCache is stock


def test_keeps_only_the_actors_pending_trials_take_while_resources_are_wanted_outside_tune():
    apart = []  # trials under Ray Train, whose workers ask Ray, not Tune, for GPUs
    cache = WarmActorCache(keep=4, when=lambda: not apart)
    assert cache.cache_object(GPU, "a") and cache.cache_object(GPU, "b")
    apart.append("t1")
    assert list(cache.flush_cached_objects()) == ["a", "b"]
    cache.increase_max(GPU)  # a one-GPU trial is pending: it takes the next idle actor, no more
    assert cache.cache_object(GPU, "c") and not cache.cache_object(GPU, "d")
    assert list(cache.flush_cached_objects()) == []
    cache.decrease_max(GPU)
    assert list(cache.flush_cached_objects()) == ["c"]
    assert cache.cache_object(GPU, "e")  # stock Tune keeps one idle actor; not while one is apart
    assert list(cache.flush_cached_objects()) == ["e"]
    apart.clear()
    assert cache.cache_object(GPU, "f") and list(cache.flush_cached_objects()) == []
