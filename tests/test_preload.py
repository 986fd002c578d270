"""A local Ray's idle workers import the trial's modules while the driver builds the cache, and the
first round's trial actors take those workers (end to end, with the built-in trainable:
``tests/test_benchmarks.py``, ``benchmarks/first_round.py``)."""

from fusionsearch.pipeline import _connect
from fusionsearch.tune import compat
from fusionsearch.tune.driver import TRIAL_MODULES


def test_trial_actors_get_only_the_environment_variables_their_workers_lack(monkeypatch):
    from ray.tune.execution import class_cache

    before = (class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "same")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "changed since Ray started")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    inherited = {"AWS_ACCESS_KEY_ID": "same", "AWS_SECRET_ACCESS_KEY": "old", "AWS_SESSION_TOKEN": "gone"}
    with compat.trial_env_vars(inherited):
        actor_class = class_cache._ActorClassCache().get(type("Trainable", (), {}))
        env_vars = actor_class._default_options["runtime_env"]["env_vars"]
    # what differs from what the workers inherited (a removed variable too), nothing else, and not
    # Tune's PL_DISABLE_FORK: the empty rest is what lets an actor take an idle worker
    assert env_vars == {"AWS_SECRET_ACCESS_KEY": "changed since Ray started"}
    after = (class_cache.DEFAULT_ENV_VARS, class_cache.ENV_VARS_TO_PROPAGATE)
    assert after == before  # restored


def test_a_local_ray_preloads_the_trial_modules_unless_candidates_may_train_data_parallel(monkeypatch):
    assert compat.preload(()) == {}
    modules = list(TRIAL_MODULES)
    assert compat.preload(TRIAL_MODULES) == {"_system_config": {"preload_python_modules": modules}}
    started = []
    monkeypatch.setattr("fusionsearch.pipeline.connect", lambda address, **options: started.append(options))

    def local_ray(workers, gpus, batch_size):
        _connect(None, workers, gpus, batch_size)
        return started.pop()

    one_worker = {"preload": TRIAL_MODULES, "dashboard": False}
    # on CPUs only, Ray's worker per CPU would each import torch for trials that run a few at a time
    assert local_ray(1, 0, 8) == local_ray("auto", 0, 8) == {"preload": (), "dashboard": False}
    assert local_ray("auto", 1, 8) == one_worker  # one GPU: one worker per candidate
    assert local_ray(1, 4, 8) == one_worker  # --gpus-per-trial 1
    assert local_ray("auto", 4, 1) == one_worker  # a batch of 1 cannot be split
    # Ray Train's controller and workers start fresh processes, which would each import them first;
    # its placement-group cleaners ask the dashboard's State API whether their controller lives
    data_parallel = {"preload": (), "dashboard": True}
    assert local_ray("auto", 4, 8) == data_parallel and local_ray(2, 4, 8) == data_parallel
