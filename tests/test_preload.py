"""A local Ray's idle workers import the trial's modules while the driver builds the cache, and the
first round's trial actors take those workers."""

import json
import subprocess
import sys

import pytest

from conftest import own_ray_env
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
    assert local_ray(1, 0, 8) == one_worker  # CPU
    assert local_ray("auto", 1, 8) == one_worker  # one GPU: one worker per candidate
    assert local_ray(1, 4, 8) == one_worker  # --gpus-per-trial 1
    assert local_ray("auto", 4, 1) == one_worker  # a batch of 1 cannot be split
    # Ray Train's controller and workers start fresh processes, which would each import them first;
    # its placement-group cleaners ask the dashboard's State API whether their controller lives
    data_parallel = {"preload": (), "dashboard": True}
    assert local_ray("auto", 4, 8) == data_parallel and local_ray(2, 4, 8) == data_parallel


DRIVER = """
import json, os, sys, time
from pathlib import Path
from fusionsearch.tune.driver import connect, run_search
from searchers import ExhaustiveSearcher
from trainables.scripted import scripted_trainable

def field(pid, index):
    return (Path("/proc", str(pid), "stat")).read_text().rsplit(")", 1)[1].split()[index]

def idle_workers():
    '''This process's Ray's idle workers (children of its raylet, a child of this process):
    {pid: whether the preloaded C extension _curses is mapped into it}.'''
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::IDLE"):
                if int(field(field(proc.name, 1), 1)) == os.getpid():
                    found[int(proc.name)] = "_curses" in (proc / "maps").read_text()
        except OSError:
            pass
    return found

connect(num_cpus=2, preload=["_curses"])
deadline = time.time() + 90
while not (len(idle := idle_workers()) >= 2 and all(idle.values())) and time.time() < deadline:
    time.sleep(0.5)
result = run_search(ExhaustiveSearcher(num_points=1), trainable=scripted_trainable,
                    config={"landscape": {"0": 1.0, "1": 0.9}, "duration": 1.0}, storage_path=sys.argv[1],
                    name="preloaded", resources={"cpu": 1}, max_failures=0)
states = [json.loads(Path(row["checkpoint"], "state.json").read_text()) for row in result.table.to_pylist()]
print(json.dumps({"idle": idle, "trials": [state["metrics"]["pid"] for state in states]}))
"""


@pytest.mark.slow
def test_the_first_rounds_trials_run_in_the_workers_that_imported_their_modules_before(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], env=own_ray_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    idle = {int(pid): imported for pid, imported in seen["idle"].items()}
    assert len(idle) >= 2 and all(idle.values()), seen  # started with Ray, and imported the module
    # Tune's trial actors went to those processes, not to new ones (which Ray starts for an actor
    # whose runtime environment is not the job's)
    assert len(seen["trials"]) == 2 and set(seen["trials"]) <= set(idle), seen
