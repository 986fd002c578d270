"""A candidate trained data-parallel by Ray Train workers (CPU, gloo) trains as one worker does."""

import logging
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import Recorder, cached_data
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.errors import UserError
from fusionsearch.search.records import Trial
from fusionsearch.settings import (
    ModelConfig,
    PreprocessConfig,
    ResourceConfig,
    RunSettings,
    TrainConfig,
)
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.folds import load_fold
from fusionsearch.train.loop import fit
from fusionsearch.train.parallel import Shard
from fusionsearch.tune import grants
from searchers.rounds import DataParallel

#: How far a 2-worker curve may be from the 1-worker one in float64, where only summation order
#: differs (measured: 1.4e-6 after three epochs; 1 vs 2 threads alone: 6e-8; an unsynchronised or
#: mis-weighted gradient: about 1e-2). In float32 under AdamW, summation order alone moves the
#: curve of this tiny network by 2e-3 to 3e-2 within three epochs (Adam's first steps follow the
#: sign of near-zero gradients), so the exact comparison is made in float64.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Settings over a cached 24-sample planted benchmark at 16^3, group norm, batches of 5 (a last
    batch of 1: one of two workers gets no sample), class weights and augmentation."""
    root = tmp_path_factory.mktemp("dp")
    manifest = generate(root / "data", SynthConfig(n=24, size=16, seed=3))
    return RunSettings(
        data=cached_data(manifest, root / "cache", PreprocessConfig(shape=16)),
        model=ModelConfig(width=0.125, norm="group"),
        train=TrainConfig(epochs=3, patience=10, batch_size=5, lr=3e-3, checkpoint_interval=0,
                          class_weights="balanced", augment="standard"),
    )  # fmt: skip


@pytest.fixture
def float64(monkeypatch):
    """Networks and batches in float64 in this process (no class weights or augmentation then:
    both are float32 tensors)."""
    from fusionsearch.train import folds

    stack = folds.Batches._stack
    monkeypatch.setattr(folds.Batches, "_stack", lambda self, chunk: stack(self, chunk).double())
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def in_float64(worker):
    """``worker`` run in float64, as :func:`float64` sets it up."""

    def run(config):
        import torch

        from fusionsearch.train import folds

        stack = folds.Batches._stack
        folds.Batches._stack = lambda self, chunk: stack(self, chunk).double()
        torch.set_default_dtype(torch.float64)
        worker(config)

    return run


def grown_and_lost_once(job, grants_name: str, marker: str, lost_after: int):
    """A data-parallel worker (:func:`trainables.data_parallel._worker` on ``job``) that, on one
    worker, grants its trial (``child``) a second as it reports epoch 0 (so it grows after epoch
    1), and whose group is lost once, right after epoch ``lost_after``'s checkpoint: the first
    group to find no ``marker`` raises there. Shipped by value to the workers (they cannot import
    tests/), it runs in float64 (:func:`in_float64`)."""
    from fusionsearch.tune import grants
    from trainables import data_parallel

    report = data_parallel._report
    lose = not Path(marker).exists()

    def reporting(metrics, directory):
        report(metrics, directory)
        if job["workers"] == 1 and metrics.get("epoch") == 0:
            grants.publish(grants_name, {"child": 2})
        if lose and metrics.get("epoch") == lost_after:
            Path(marker).touch()
            raise RuntimeError("a worker was lost")

    data_parallel._report = reporting
    data_parallel._worker(job)


@pytest.mark.slow
def test_a_child_grows_from_one_worker_to_two_and_its_retried_trial_resumes_exactly(
    tiny, tmp_path, local_ray, float64
):
    """Warm start, growth and a retry through Tune and the built-in trainable's data-parallel path
    (Ray Train workers on CPUs, gloo), against one process. A child of the parent's checkpoint
    starts on one worker and is granted a second as it reports epoch 0; it stops after epoch 1 and
    reports that checkpoint to Tune; two workers train on from it; their group is lost after epoch 2, Tune
    retries the trial, and the retried trial finds the lost group's Ray Train run by its name and
    resumes from its epoch-2 checkpoint. The curve is the one-process curve throughout, and so are
    the final weights."""
    import functools
    import json
    import sys

    from ray import cloudpickle, tune

    from trainables import train_candidate

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    exact = replace(tiny, train=replace(tiny.train, class_weights="none", augment="none"))
    data = load_fold(exact.data, 0)
    single = Recorder(tmp_path / "single")
    fit(CandidateConfig(Trial("0000"), exact), single, data=data)
    child = CandidateConfig(
        Trial("0100", round=1, parent_mask="0000"), exact, parent=str(single.checkpoints[-1])
    )
    one = Recorder(tmp_path / "child")
    fit(child, one, parent=single.checkpoints[-1], data=data)
    name, marker = f"grants-{tmp_path.name}", str(tmp_path / "lost")
    # the grants' actor, owned by this process (as the searcher's): it outlives worker groups
    grants.start(name)

    def trainable(config):
        from trainables import data_parallel

        worker = functools.partial(grown_and_lost_once, grants_name=name, marker=marker, lost_after=2)
        data_parallel._worker = in_float64(worker)
        train_candidate(
            config | {"grants": grants.address(name, "child")}, per_worker={"cpu": 1.0, "gpu": 0.0}
        )

    tuner = tune.Tuner(
        tune.with_resources(trainable, tune.PlacementGroupFactory([{"memory": 2**20}])),
        param_space=child.config(),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), name="grow",
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )  # fmt: skip
    result = tuner.fit()[0]
    assert result.error is None and Path(marker).exists()  # lost once, retried, finished
    trial = Path(result.path)
    assert (trial / "data-parallel").is_dir() and (trial / "data-parallel-from-epoch-1").is_dir()
    reports = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    stops = [r["epoch"] for r in reports if r.get("workers") == 1]
    assert stops == [1]  # the one-worker group stopped after epoch 1 to grow
    # worker 0's epochs, as Tune got them: each epoch once (the retry trained none twice), exactly
    epochs = [r["epoch"] for r in reports if "workers" not in r]
    assert epochs == sorted(set(epochs)) and {0, 1, 3} <= set(epochs), epochs
    reference = {r["epoch"]: r["val_loss"] for r in one.reports if not r.get("final")}
    for r in reports:
        if "workers" not in r:
            assert r["val_loss"] == pytest.approx(reference[r["epoch"]], abs=TOLERANCE, rel=0), r["epoch"]
    final = result.metrics
    assert final["final"] and final["workers"] == 2 and final["epochs_trained"] == 3
    assert final["best_epoch"] == one.reports[-1]["best_epoch"]
    assert final["val_loss"] == pytest.approx(one.reports[-1]["val_loss"], abs=TOLERANCE)
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "model.pt", weights_only=True)
    weights = torch.load(one.checkpoints[-1] / "model.pt", weights_only=True)
    assert state.keys() == weights.keys()  # no DDP "module." prefix: any process loads it strictly
    assert max((state[k] - weights[k]).abs().max().item() for k in state) < 1e-5


def test_a_worker_share_and_its_loss_scale_give_the_whole_batch_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    weights = torch.tensor([2.0, 0.5])
    whole = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y, weight=weights), model.weight)[
        0
    ]
    parts = []
    for rank in range(3):  # 5 samples on 3 workers: shares of 1, 2 and 2
        xs, ys, scale = Shard(rank, 3).split(x, y, weights)
        loss = torch.nn.functional.cross_entropy(model(xs), ys, weight=weights) * scale
        parts.append(torch.autograd.grad(loss, model.weight)[0])
    torch.testing.assert_close(torch.stack(parts).mean(0), whole)  # what DDP's average gives
    xs, ys, scale = Shard(0, 3).split(x[:2], y[:2], None)  # a last batch smaller than the workers
    assert len(ys) == 1 and scale == 0.0  # joins the all-reduce, adds nothing
    assert Shard().split(x, y, weights) == (x, y, 1.0)


def test_batch_norm_on_cpu_workers_is_refused_and_sizing_follows_the_free_gpus():
    from fusionsearch.model.network import build_network

    model = build_network(ModelConfig(width=0.125), "0000", torch.device("cpu"))
    with pytest.raises(UserError, match="--norm group"):
        Shard(0, 2).prepare(model, torch.device("cpu"))
    assert Shard().prepare(model, torch.device("cpu")) is model
    # --gpus-per-trial: auto on GPUs; N > 1 whole workers; fractions share a GPU; on CPUs, one worker.
    assert ResourceConfig().workers(8) == "auto" and ResourceConfig().workers(0) == 1
    assert ResourceConfig(gpus_per_trial="4").workers(8) == 4
    assert ResourceConfig(gpus_per_trial=0.5).workers(8) == 1
    assert ResourceConfig(gpus_per_trial="4").per_trial(8) == {"cpu": 1.0, "gpu": 1.0}
    for bad in ("many", "2.5", "0"):
        with pytest.raises(UserError, match="gpus_per_trial"):
            ResourceConfig(gpus_per_trial=bad)
    # A 32-GPU cluster: a 5-candidate round takes them all; 25 trials take one each.
    sizes, running = [], 0
    parallel = DataParallel("auto", gpus=32, batch_size=16, most=8)
    for ready in range(5, 0, -1):
        sizes.append(parallel.size(running, ready))
        running += sizes[-1]
    assert sizes == [6, 6, 6, 7, 7] and sum(sizes) == 32
    assert parallel.size(0, 25) == 1 and parallel.size(30, 1) == 2 and parallel.size(32, 3) == 1
    assert DataParallel("auto", 32, batch_size=4).size(0, 1) == 4  # never more workers than samples a batch
    assert DataParallel("auto", 32, 16, most=8).size(0, 1) == 8  # nor than the largest node's GPUs
    assert DataParallel(3).size(0, 1) == 3 and DataParallel().size(0, 1) == 1


def test_a_trial_of_several_workers_is_not_another_trial():
    trial = Trial("0100", round=1, parent_mask="0000")
    assert replace(trial, workers=4).key == trial.key
    with pytest.raises(UserError, match="workers"):
        Trial("0000", workers=0)


def test_free_gpus_grow_the_trials_surest_to_train_longest_by_doubling_where_that_pays_a_restart():
    parallel = DataParallel("auto", gpus=8, batch_size=16, most=8, efficiency=0.85, restart=10.0)
    # Seconds each will surely train on after its epoch. 1 -> 2 workers saves 1 - 1/1.7 = 41 % of
    # them. 5 free: a (100 s) doubles twice (1 -> 4 saves 65 s), b (30 s) once (12 s); c (20 s)
    # would save 8 s, less than a restart.
    assert parallel.grow({"a": 1, "b": 1, "c": 1}, {"a": 100, "b": 30, "c": 20}) == {"a": 4, "b": 2}
    assert parallel.grow({"a": 1, "b": 1}, {"a": 50, "b": 50}) == {"a": 4, "b": 4}  # equals take turns
    # One restart however wide: 1 -> 2 pays it (16.5 s saved of 40), so a goes on to 8, though
    # 2 -> 4 alone would save less (9.7 s of the 23.5 left at 2 workers).
    assert parallel.grow({"a": 1}, {"a": 40}) == {"a": 8}
    assert parallel.grow({"a": 2}, {"a": 23.5}) == {}
    assert parallel.grow({"a": 6}, {"a": 900}) == {"a": 8}  # up to the widest, not past it
    assert parallel.grow({"a": 4, "b": 4}, {"a": 900, "b": 900}) == {}  # nothing free
    # trials in Tune's actors hold GPUs too, and do not grow: 6 of them leave a room for 2, 7 for 1
    assert parallel.grow({"a": 1}, {"a": 900}, others=6) == {"a": 2}
    assert parallel.grow({"a": 1}, {"a": 900}, others=7) == {}
    assert parallel.grow({"a": 1}, {}) == {}  # no report yet: nothing known to save
    assert DataParallel("auto", 8, 16, 8, restart=60.0).grow({"a": 1}, {"a": 100}) == {}  # 41 s < 60
    assert DataParallel(2, 8, 16, 8).grow({"a": 2}, {"a": 900}) == {}  # a fixed --gpus-per-trial
    assert DataParallel("auto", 8, batch_size=1).grow({"a": 1}, {"a": 900}) == {}  # one sample a batch
    assert parallel.speedup(1) == 1 and parallel.speedup(2) == pytest.approx(1.7)


def test_the_searcher_sizes_the_search_first_waits_for_a_gpu_and_grows_trials_when_nothing_waits(
    tmp_path, caplog
):
    from fusionsearch import pipeline
    from fusionsearch.settings import SearchConfig

    searcher = pipeline.make_searcher(SearchConfig(searcher="sfsa", folds=3, fold=0), ["t1", "flair"], 4)
    searcher.set_experiment_dir(str(tmp_path))
    searcher.set_data_parallel(DataParallel("auto", gpus=4, batch_size=16, most=4))

    def complete(trial_id, config):
        (tmp_path / trial_id / "checkpoint_000000").mkdir(parents=True)
        result = {"val_loss": 0.5, "checkpoint_dir_name": "checkpoint_000000"}
        searcher.on_trial_complete(trial_id, result | {f"config/{k}": v for k, v in config.items()})

    # Round 0: the search's baseline first, 2 of the 4 GPUs (one left for each baseline beside it).
    baseline, t1, flair = (searcher.suggest(f"t{i}") for i in range(3))
    assert (baseline["role"], baseline["workers"]) == ("search", 2)
    assert [(c["role"], c["workers"]) for c in (t1, flair)] == [("unimodal", 1), ("unimodal", 1)]
    assert baseline["grants"].endswith("/t0") and searcher.suggest("t3") is None
    # The unimodal baselines end; nothing waits. One free GPU cannot double the baseline's two;
    # two can: the baseline, sure of 5 more epochs of 30 s (Tune's time between reports where a
    # trainable does not say), 4 after the one it is in, grows to 4 (saving 49 s for a 12-s restart).
    searcher.on_trial_result("t0", {"epochs_left": 5, "epoch_seconds": 30.0})
    searcher.on_trial_result("t2", {"epochs_left": 1, "time_this_iter_s": 30.0})
    complete("t1", t1)
    assert searcher.last_grants == {}
    with caplog.at_level(logging.INFO, logger="searchers.rounds"):
        complete("t2", flair)
    assert searcher.last_grants == {"t0": 4} and searcher.suggest("t3") is None
    assert "growing trial t0 to 4 workers (about 37 s sooner)" in caplog.text  # 49 s saved, less 12
    complete("t0", baseline)
    # Round 1: 5 trials (4 children, the control) on 4 GPUs: one each, the fifth waits for a GPU.
    round_1 = [searcher.suggest(f"r{i}") for i in range(5)]
    assert [c["workers"] for c in round_1[:4]] == [1, 1, 1, 1] and round_1[4] is None
    assert searcher.last_grants == {}


def test_a_resumed_searcher_sizes_trials_for_the_cluster_it_resumes_on(tmp_path, local_ray):
    """Saved on 4 GPUs, resumed on the tests' Ray (no GPU): one worker a trial, nothing to grow
    (sized for the 4 it would start 2-worker trials that no node can place)."""
    import ray

    from fusionsearch import pipeline
    from fusionsearch.settings import SearchConfig

    def searcher():
        made = pipeline.make_searcher(SearchConfig(searcher="sfsa", folds=3, fold=0), ["t1", "flair"], 4)
        made.set_experiment_dir(str(tmp_path))
        return made

    saved = searcher()
    saved.set_data_parallel(DataParallel("auto", gpus=4, batch_size=16, most=4))
    ray.get_actor(saved._grants_name)  # the grants' actor starts with the sizing, before any grant
    assert saved.suggest("t0")["workers"] == 2
    saved.save(str(tmp_path / "searcher.pkl"))
    resumed = searcher()
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert resumed._parallel == DataParallel("auto", gpus=0, batch_size=16, most=None)
    proposed = [resumed.suggest(f"t{i}") for i in range(1, 3)]  # t0 was proposed before the save
    assert [(c["role"], c["workers"], c.get("grants")) for c in proposed] == [("unimodal", 1, None)] * 2
    assert not resumed.keeps_actors_warm()  # t0, under Ray Train, runs again
    # Saved before trials chose between Ray Train and Tune's actors (no record of which is where):
    # its running trials were all under Ray Train, so no idle actor may keep a GPU while they run.
    state = pickle.loads((tmp_path / "searcher.pkl").read_bytes())
    del state["_apart"], state["_epochs"]
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(state))
    old = searcher()
    old.restore(str(tmp_path / "old.pkl"))
    assert old._apart == {"t0"} and not old.keeps_actors_warm()


def test_a_trial_starts_under_ray_train_only_where_its_sure_epochs_pay_ray_trains_start():
    # 8 GPUs, a 10-s start, a 12-s restart, 8 sure epochs: 3 s an epoch on one GPU is 24 s sure.
    parallel = DataParallel("auto", gpus=8, batch_size=16, most=8, restart=12.0, start=10.0, sure_epochs=8)
    # Before any epoch is measured: wherever a trial could have more than one GPU.
    assert parallel.apart(1, None) and parallel.apart(2, None, searches=5)
    assert not parallel.apart(1, None, searches=5)  # 8 GPUs for 5 searches: one each
    # On 2 workers 24 s save 9.9 s (< 10); grown to 8 (4.9x), 19.1 s less the restart: 7.1 s.
    assert not parallel.apart(2, 3.0) and not parallel.apart(1, 3.0)
    # 4-s epochs: 32 s sure; on 2 workers 13.2 s saved (> 10); grown to 8, 25.5 - 12 = 13.5.
    assert parallel.apart(2, 4.0) and parallel.apart(1, 4.0)
    assert not parallel.apart(1, 4.0, searches=5)  # a share of 1 GPU: it could not grow
    # A share of 4 (2.89x): 32 x (1 - 1/2.89) - 12 = 8.9 s; with 5-s epochs, 14.2 s.
    assert not parallel.apart(1, 4.0, searches=2) and parallel.apart(1, 5.0, searches=2)
    assert not replace(parallel, start=15.0).apart(2, 4.0)
    # A fixed number of workers decides it; so does a cluster where no trial can get two.
    assert DataParallel(2, 8, 16, 8).apart(2, 0.01) and not DataParallel(1, 8, 16, 8).apart(1, 100.0)
    assert not DataParallel("auto", 8, batch_size=1).apart(1, None)


def test_trials_of_short_epochs_start_in_tunes_actors_and_the_idle_ones_stay_warm_until_one_is_apart(
    tmp_path,
):
    from fusionsearch import pipeline
    from fusionsearch.settings import SearchConfig

    searcher = pipeline.make_searcher(SearchConfig(searcher="sfsa", folds=3, fold=0), ["t1", "flair"], 4)
    searcher.set_experiment_dir(str(tmp_path))
    searcher.set_data_parallel(DataParallel("auto", gpus=4, batch_size=16, most=4))

    def complete(trial_id, config, loss=0.5):
        (tmp_path / trial_id / "checkpoint_000000").mkdir(parents=True)
        result = {"val_loss": loss, "checkpoint_dir_name": "checkpoint_000000"}
        searcher.on_trial_complete(trial_id, result | {f"config/{k}": v for k, v in config.items()})

    # Nothing measured yet: the baseline starts on 2 workers under Ray Train, and no actor stays idle.
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(3)}
    assert configs["t0"]["workers"] == 2 and "grants" in configs["t0"]
    assert not searcher.keeps_actors_warm()
    # Its epochs take 0.5 s on 2 workers (0.85 s on one: 8 sure epochs pay no 10-s start).
    searcher.on_trial_result("t0", {"epochs_left": 8, "epoch_seconds": 0.5})
    for trial_id, config in configs.items():
        complete(trial_id, config)
    assert searcher.keeps_actors_warm()
    round_1 = [searcher.suggest(f"r{i}") for i in range(6)]
    # One GPU each in Tune's actors, no grants; the fifth is proposed though the 4 GPUs are taken:
    # it waits in Tune's queue for an actor, as a one-GPU trial does.
    assert [(c["workers"], "grants" in c) for c in round_1[:5]] == [(1, False)] * 5
    assert round_1[5] is None and searcher.keeps_actors_warm()
    # Trials that report 30-s epochs make the next ones start under Ray Train: no actor is kept then.
    for i in range(5):
        searcher.on_trial_result(f"r{i}", {"epochs_left": 8, "epoch_seconds": 30.0})
    for i in range(5):
        complete(f"r{i}", round_1[i], loss=0.4 if i == 0 else 0.5)  # a child improves: a round 2
    apart = searcher.suggest("s0")
    assert "grants" in apart and not searcher.keeps_actors_warm()
    complete("s0", apart)
    assert searcher.keeps_actors_warm()


@pytest.mark.slow
def test_idle_actors_give_their_resources_to_trials_under_ray_train_on_a_real_ray(tmp_path, local_ray):
    """The scripted trials on the tests' Ray (4 CPUs, standing in for GPUs: one a worker). Round 0
    (nothing measured) starts under Ray Train on all 4. Its reported epochs (3.5 s on one worker: 8
    sure epochs pay Ray Train's 10-s start on 2 workers, not on 1, nor grown to 4 for a 12-s
    restart) send round 1's first two trials to Tune's actors, one CPU each, and the third, on 2
    workers, under Ray Train; the two end after 2 epochs while it waits for its grant (its
    reported 100-s epochs), so their actors are not kept: the third grows to 4, asking Ray
    outside Tune for their CPUs. Round 2's 2 trials start under Ray Train on 2 workers each (idle
    actors give theirs up too); its control stops after 2 epochs and the improving child grows to
    4. A resource an idle actor kept would time a trial out (60 s) and fail it."""
    import json
    from functools import partial

    from ray import tune

    from fusionsearch import pipeline
    from fusionsearch.mask import FusionMask
    from fusionsearch.search import experiment
    from fusionsearch.settings import SearchConfig
    from fusionsearch.tune import driver
    from fusionsearch.tune.warm_actors import keep_warm
    from trainables.scripted import duration_key, scripted_elastic

    search = SearchConfig(searcher="sfsa", folds=3, fold=0, unimodal=False)
    searcher = pipeline.make_searcher(search, ["t1", "flair"], 2)
    searcher.set_experiment_dir(str(tmp_path / "dp"))
    searcher.set_data_parallel(DataParallel("auto", gpus=4, batch_size=4, most=4))
    masks = [str(m) for m in FusionMask.all_masks(2)]
    plan = {duration_key({"role": role, "mask": mask, "parent_mask": parent}): 2
            for role in ("search", "control") for mask in masks for parent in (None, *masks)}  # fmt: skip
    for role, mask, parent, epochs in [("search", "00", None, 3), ("control", "00", "00", 4),
                                       ("search", "11", "10", 4), ("control", "10", "10", 2)]:  # fmt: skip
        plan[duration_key({"role": role, "mask": mask, "parent_mask": parent})] = epochs
    # the two that grow wait for their grant after their first epoch, however late the trials
    # whose end frees the resources start on a loaded machine (without one in 60 s they go on)
    wait = {duration_key({"role": r, "mask": m, "parent_mask": p}): 60.0 for r, m, p in
            [("control", "00", "00"), ("search", "11", "10")]}  # fmt: skip
    config = {"landscape": {"00": 1.0, "10": 0.5, "01": 0.6, "11": 0.3}, "plan": plan, "epoch_seconds": 0.5,
              "setup": 0.1, "patience": 3, "restart": 0.1, "efficiency": 0.85, "worker_resource": "CPU",
              "gpu_timeout": 60.0, "reported": {"0": 3.5 / 2.89, "1": 100.0, "2": 100.0},
              "await_grant": wait}  # fmt: skip
    tuner = tune.Tuner(
        tune.with_resources(scripted_elastic, partial(driver.trial_resources, {"cpu": 1})),
        param_space=config,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True,
                                    trial_dirname_creator=experiment.trial_dirname),
        run_config=tune.RunConfig(name="dp", storage_path=str(tmp_path), verbose=0),
    )  # fmt: skip
    with driver.tune_environment(16), keep_warm(16, searcher.keeps_actors_warm):
        tuner.fit()
    rows = experiment.load_result(str(tmp_path / "dp")).table.to_pylist()
    assert all(r["status"] == "ok" for r in rows) and searcher.best_mask == "11", rows
    for row in rows:
        last = (tmp_path / "dp" / row["trial_id"] / "result.json").read_text().splitlines()[-1]
        row.update(json.loads(last))
    by_round = {n: sorted((r["role"], r["mask"], r["apart"], r["workers"], r["grew"]) for r in rows
                          if r["round"] == n) for n in (0, 1, 2)}  # fmt: skip
    assert by_round[0] == [("search", "00", True, 4, 0)]
    assert by_round[1] == [("control", "00", True, 4, 1), ("search", "01", False, 1, 0),
                           ("search", "10", False, 1, 0)]  # fmt: skip
    assert by_round[2] == [("control", "10", True, 2, 0), ("search", "11", True, 4, 1)]
