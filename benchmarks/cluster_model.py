"""A search's wall time and GPU-busy fraction on N GPUs, from its parts; checked against a real Ray run.

    python benchmarks/cluster_model.py --gpus 1 8 16 32 --folds 5 --epochs 30 \\
        --epoch-seconds 0.67 --setup 1.7                     # ds004199-sized trials on an H200
    python benchmarks/cluster_model.py --validate --gpus 8 --folds 3 --epochs 4 --epoch-seconds 1

The model drives the project's own searcher (``searchers.REGISTRY``: the same rounds, controls,
unimodal baselines and proposal order as a real search, through its Tune interface, without Ray).
Proposed trials queue in that order for N slots, one GPU each; a trial takes an idle warm
actor if there is one (Tune reuses actors), else a slot's first trial waits ``--actor-start``
seconds (its process starting and importing); every trial waits ``--overhead`` more
(Tune's bookkeeping, reports, checkpoint); a fold's next round is proposed when its round has
finished, and folds do not wait for each other. A trial trains ``--setup`` + epochs x
``--epoch-seconds``: the full ``--epochs`` when it keeps improving (the baselines, unimodal
networks, a child better than its parent), ``--patience`` epochs when it stops early (every
other trial: a child no better than its parent, the control). Losses come from a landscape of
random masks (seeded by ``--seed``, the same for every fold). The GPUs' busy fraction is
training seconds / (N x wall time).

Data-parallel candidates (``--gpus-per-trial auto``, the default on GPUs, or N): the searcher
gives each trial its workers when it proposes it (the same sizing as ``fusionsearch run``, up to
``--gpus-per-node``), and under ``auto`` starts it under Ray Train only where its sure epochs
would pay that start back (``DataParallel.apart``, from the epochs the trials so far reported),
else in a Tune actor on one slot. A trial under Ray Train waits for its w free slots, pays
``--train-start`` seconds (Ray Train's controller, workers and process group) instead of an
actor's start, and trains ``speed-up(w)`` times faster, ``speed-up(w) = w x --dp-efficiency ^
log2(w)`` (0.85 of linear per doubling unless measured). While one runs, no idle actor is kept
(as the driver does): a trial ending then frees its slot, and the next trial starts an actor
(``--actor-start``). Under ``auto`` trials under Ray Train also grow as the searcher grants
them (``DataParallel.grow``, from each running trial's sure epochs left: an improving trial
reports the rest of its budget or its patience, whichever is less; one that stops early, what
remains of its patience; a trial grows where the time it saves exceeds a restart's cost,
``--restart``): a granted trial's GPUs are held from the grant, it stops at its next epoch's end,
pays ``--restart`` (by default ``--train-start`` and ``--setup`` again), and trains the rest on
its new workers; a grant before that epoch's end joins the same restart. "busy" counts a slot as
busy while a trial trains on it; "useful" discounts a data-parallel trial's slots by its
efficiency (speed-up / w).

``--validate`` runs the same search for real: a local Ray with N logical GPUs, every candidate
the scripted trainable sleeping its modelled seconds (with ``--gpus-per-trial auto``, its
modelled epochs, growing when granted workers: ``trainables.scripted.scripted_elastic``, with
Tune's pending trials as ``run_search`` sets them), and prints measured against modelled wall
time (and growths), both from the first trial's start to the last finish. The model's ``--actor-start`` and
``--overhead`` (``--train-start`` for trials that grow) are then what this machine's Ray costs:
measure them with ``round_overhead.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fusionsearch import pipeline
from fusionsearch.mask import FusionMask
from fusionsearch.settings import SearchConfig
from searchers import REGISTRY
from searchers.rounds import DataParallel, under_ray_train
from trainables.scripted import duration_key


@dataclass(frozen=True)
class Parts:
    """What a trial costs: seconds per epoch, per trial and per slot's first trial; the epoch budget."""

    epoch_seconds: float
    setup: float = 1.7
    epochs: int = 30
    patience: int = 8
    overhead: float = 0.1
    actor_start: float = 3.0
    train_start: float = 10.0
    dp_efficiency: float = DataParallel.efficiency
    restart: float | None = None  # a growth's cost (None: train_start + setup, a new group's)

    def speedup(self, workers: int) -> float:
        """How much faster ``workers`` data-parallel workers train than one."""
        return self.parallel().speedup(workers)

    def parallel(
        self, workers: int | str = 1, gpus: int = 0, batch_size: int = 1, most: int | None = None
    ) -> DataParallel:
        """The searcher's sizing with these parts' speed-up and restart."""
        sure = min(self.patience, self.epochs)
        return DataParallel(
            workers, gpus, batch_size, most, self.dp_efficiency, self.restart_seconds, self.train_start, sure
        )

    @property
    def restart_seconds(self) -> float:
        """What a trial loses to grow: by default Ray Train's start and the setup again."""
        return self.train_start + self.setup if self.restart is None else self.restart

    def epochs_of(self, config: dict, landscape: dict[str, float]) -> int:
        """Epochs a proposed trial trains (its config as the searcher proposes it): all of them if it
        keeps improving, else ``patience``."""
        parent = config.get("parent_mask")
        improving = (
            config["role"] == "unimodal"
            or parent is None
            or (config["role"] == "search" and landscape[config["mask"]] < landscape[parent])
        )
        return self.epochs if improving else min(self.patience, self.epochs)

    def seconds(self, config: dict, landscape: dict[str, float]) -> float:
        """Training seconds of a proposed trial on its starting workers."""
        epochs = self.epochs_of(config, landscape)
        return self.setup + self.epoch_seconds * epochs / self.speedup(config.get("workers") or 1)


@dataclass(frozen=True)
class Prediction:
    wall: float  # seconds from the first proposal to the last finish
    busy: float  # GPU-seconds of training / (GPUs x wall)
    trials: int
    training: float  # GPU-seconds of training, all trials
    useful: float = 0.0  # busy, a data-parallel trial's GPU-seconds discounted by its efficiency
    widest: int = 1  # the most workers a trial had
    restarts: int = 0  # trials' worker groups restarted wider (growths)
    first: float = 0.0  # when the first trial's process began (after its start and Tune's overhead)
    apart: int = 0  # trials started under Ray Train (the rest in Tune's actors, one GPU each)


def landscape(num_points: int, seed: int) -> dict[str, float]:
    """A random loss per mask (0000 worst: fusing somewhere helps)."""
    rng = random.Random(seed)
    losses = {str(m): rng.uniform(0.2, 0.9) for m in FusionMask.all_masks(num_points)}
    losses[str(FusionMask.empty(num_points))] = 1.0
    return losses


def make_searcher(args: argparse.Namespace):
    """The searcher a ``fusionsearch run`` with these options would use (every fold searched)."""
    search = SearchConfig(
        searcher=args.searcher, folds=args.folds, fold=args.fold, unimodal=args.modalities > 1
    )
    return pipeline.make_searcher(search, [f"m{i}" for i in range(args.modalities)], args.points)


@dataclass
class _Running:
    """A modelled trial in flight: it trains ``epochs`` epochs from ``begin``, ``epoch`` seconds each."""

    config: dict
    workers: int
    begin: float  # when its training (after start, overhead and setup) begins
    epochs: int
    epoch: float
    done: float = 0.0  # epochs trained before ``begin`` (by its earlier worker groups)
    slots: float = 0.0  # GPU-seconds of training so far, earlier worker groups'
    paused: float = -math.inf  # when its worker group last stopped to grow
    held: int = 0  # GPUs it holds: its workers, and those granted that it has yet to take

    @property
    def end(self) -> float:
        return self.begin + (self.epochs - self.done) * self.epoch

    def left(self, now: float, parts: Parts) -> int:
        """Its last report's ``epochs_left``: an improving trial (every epoch its best) reports the
        rest of its budget or its patience, whichever is less; one that stops early, what remains
        of its patience."""
        return max(0, min(self.epochs - self.trained(now), parts.patience))

    def trained(self, now: float) -> int:
        """Epochs it has trained by ``now``."""
        return self.done + max(0, math.floor((now - self.begin) / self.epoch))


def simulate(
    searcher,
    gpus: int,
    parts: Parts,
    losses: dict[str, float],
    scratch: str,
    parallel: DataParallel | None = None,
) -> Prediction:
    """Run ``searcher`` against N modelled slots; see the module's docstring."""
    searcher.set_experiment_dir(scratch)
    parallel = parallel or DataParallel()
    searcher.set_data_parallel(parallel)
    from fusionsearch.tune.driver import warm_while

    warm = warm_while(searcher, parallel)  # idle actors kept as run_search keeps them
    idle, cold = 0, gpus  # slots with a warm actor free now; slots without one
    running: dict[str, _Running] = {}
    queue: deque[tuple[str, dict]] = deque()
    now, training, useful, trials, ids, widest, restarts, apart = 0.0, 0.0, 0.0, 0, 0, 1, 0, 0
    first = math.inf
    while True:
        while isinstance(config := searcher.suggest(f"t{ids}"), dict):
            queue.append((f"t{ids}", config))
            ids += 1
        if not warm():  # a trial under Ray Train: the idle actors release their GPUs
            idle, cold = 0, cold + idle
        while queue and idle + cold >= (queue[0][1].get("workers") or 1):  # in order, as Ray's queue
            trial_id, config = queue.popleft()
            workers = config.get("workers") or 1
            warm_start = 0.0 if idle else parts.actor_start
            start = parts.train_start if under_ray_train(config) else warm_start
            take_idle = min(idle, workers)  # a warm actor's slot first
            idle, cold = idle - take_idle, cold - (workers - take_idle)
            epochs = parts.epochs_of(config, losses)
            begin = now + start + parts.overhead + parts.setup
            first = min(first, begin - parts.setup)
            epoch = parts.epoch_seconds / parts.speedup(workers)
            running[trial_id] = _Running(config, workers, begin, epochs, epoch, held=workers)
            trials, apart = trials + 1, apart + under_ray_train(config)
        if not running:
            break
        trial_id = min(running, key=lambda t: running[t].end)
        trial = running.pop(trial_id)
        now = trial.end
        gpu_seconds = trial.slots + (parts.setup + (trial.epochs - trial.done) * trial.epoch) * trial.workers
        training += gpu_seconds
        useful += gpu_seconds * parts.speedup(trial.workers) / trial.workers
        widest = max(widest, trial.workers)
        if under_ray_train(trial.config) or not warm():
            cold += trial.held  # Ray Train's workers end with the trial; no actor is kept
        else:
            idle += 1
        Path(scratch, trial_id, "checkpoint_000000").mkdir(parents=True, exist_ok=True)
        for other, state in [(trial_id, trial), *running.items()]:  # last reports (after an epoch)
            if state.trained(now) > 0:
                report = {"epochs_left": state.left(now, parts), "epoch_seconds": state.epoch}
                searcher.on_trial_result(other, report)
        config = trial.config
        searcher.on_trial_complete(trial_id, {
            "val_loss": losses[config["mask"]], "checkpoint_dir_name": "checkpoint_000000",
            **{f"config/{k}": v for k, v in config.items() if k != "parent"},
        })  # fmt: skip
        for grown, workers in getattr(searcher, "last_grants", {}).items():
            cold -= workers - running[grown].held
            restarts += _grow(running[grown], workers, now, parts)
    scale = gpus * now if now else 1.0
    busy = training / scale if now else 0.0
    return Prediction(
        now, busy, trials, training, useful / scale, widest, restarts, first if trials else 0.0, apart
    )


def _grow(trial: _Running, workers: int, now: float, parts: Parts) -> bool:
    """``trial`` takes ``workers`` at its next epoch's end (its GPUs held from ``now``): its worker
    group restarts (Ray Train's start, the setup again) and trains the rest faster. A grant that
    comes before that epoch's end joins the same restart (the trial reads its latest grant); one
    during its last epoch is not taken. Whether it is a restart of its own."""
    trial.held = workers
    if now < trial.paused:
        trial.workers, trial.epoch = workers, parts.epoch_seconds / parts.speedup(workers)
        return False
    done = trial.done + max(1, math.floor((now - trial.begin) / trial.epoch) + 1)
    if done >= trial.epochs:
        return False
    trial.paused = trial.begin + (done - trial.done) * trial.epoch
    trial.slots += (parts.setup + (done - trial.done) * trial.epoch) * trial.workers
    trial.begin = trial.paused + parts.restart_seconds
    trial.done, trial.workers = done, workers
    trial.epoch = parts.epoch_seconds / parts.speedup(workers)
    return True


def _per_trial(args: argparse.Namespace, value) -> dict[str, float]:
    """``value(config)`` for every trial a search of ``args.points`` points can propose, by duration key."""
    values = {}
    for mask in FusionMask.all_masks(args.points):
        for parent in [None, *FusionMask.all_masks(args.points)]:
            for role in ("search", "control", "unimodal"):
                config = {"role": role, "mask": str(mask), "parent_mask": parent and str(parent)}
                values[duration_key(config)] = value(config)
    return values


def validate(
    args: argparse.Namespace, parts: Parts, losses: dict[str, float], parallel: DataParallel | None = None
) -> None:
    """The modelled search run on a local Ray with ``args.gpus[0]`` logical GPUs, scripted trainables.

    With an elastic ``parallel`` (``--gpus-per-trial auto``) the trials are
    :func:`trainables.scripted.scripted_elastic`: they report their epochs, grow when the searcher
    grants them workers (through the same named actor), and hold no GPU in Tune (as Ray Train's
    trials do not): the searcher's sizing alone keeps them within the GPUs."""
    import ray

    gpus = args.gpus[0]
    elastic = parallel is not None and parallel.elastic
    with tempfile.TemporaryDirectory() as scratch:
        modelled = simulate(make_searcher(args), gpus, parts, losses, scratch, parallel if elastic else None)
    ray.init(address="local", num_cpus=gpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        start = time.perf_counter()
        rows = (
            _run_elastic(args, parts, losses, parallel, storage)
            if elastic
            else _run(args, parts, losses, storage)
        )
        elapsed = time.perf_counter() - start
    # Both clocks run from the first trial's start (its process up, in the trainable) to the last
    # finish: neither Ray's nor Tune's own start is in either.
    measured = max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
    model = modelled.wall - modelled.first
    print(f"real Ray, {gpus} logical GPUs, scripted trials: {len(rows)} trials (model: {modelled.trials}); "
          f"wall {measured:.2f} s from the first trial's start to the last finish ({elapsed:.1f} s with "
          f"Tune's start and end); model {model:.2f} s, "
          f"measured/model - 1 = {measured / model - 1:+.1%}")  # fmt: skip
    if elastic:
        print(f"growths (worker groups restarted wider): measured {sum(r['grew'] for r in rows)}, model "
              f"{modelled.restarts}; widest trial: measured {max(r['workers'] for r in rows)} workers, "
              f"model {modelled.widest}; under Ray Train: measured {sum(r['apart'] for r in rows)} trials, "
              f"model {modelled.apart}; processes: {len({r['pid'] for r in rows})} for {len(rows)} "
              "trials")  # fmt: skip
    ray.shutdown()


def _run(args: argparse.Namespace, parts: Parts, losses: dict[str, float], storage: str) -> list[dict]:
    from fusionsearch.tune.driver import run_search
    from trainables.scripted import scripted_trainable

    config = {"landscape": losses, "durations": _per_trial(args, lambda c: parts.seconds(c, losses))}
    result = run_search(make_searcher(args), trainable=scripted_trainable, config=config,
                        storage_path=storage, name="model", resources={"cpu": 1, "gpu": 1},
                        max_failures=0)  # fmt: skip
    return result.table.to_pylist()


def _run_elastic(
    args: argparse.Namespace, parts: Parts, losses: dict[str, float], parallel: DataParallel, storage: str
) -> list[dict]:
    from ray import tune

    from fusionsearch.search import experiment
    from fusionsearch.tune import driver
    from fusionsearch.tune.warm_actors import keep_warm
    from trainables.scripted import scripted_elastic

    searcher = make_searcher(args)
    searcher.set_experiment_dir(str(Path(storage, "model")))
    searcher.set_data_parallel(parallel)
    config = {"landscape": losses, "plan": _per_trial(args, lambda c: parts.epochs_of(c, losses)),
              "epoch_seconds": parts.epoch_seconds, "setup": parts.setup, "patience": parts.patience,
              "restart": parts.restart_seconds, "efficiency": parts.dp_efficiency}  # fmt: skip
    per_worker = {"cpu": 1, "gpu": 1}
    tuner = tune.Tuner(
        # a trial under Ray Train holds no GPU in Tune, any other one GPU (as run_search's trainable)
        tune.with_resources(scripted_elastic, partial(driver.trial_resources, per_worker)),
        param_space=config,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=-1, trial_dirname_creator=experiment.trial_dirname,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name="model", storage_path=storage, verbose=0),
    )  # fmt: skip
    # as run_search schedules: a round's trials pending at once, idle actors kept while none is apart
    concurrency = driver.concurrency(per_trial=per_worker)
    with driver.tune_environment(concurrency), keep_warm(concurrency, driver.warm_while(searcher, parallel)):
        tuner.fit()
    rows = experiment.load_result(str(Path(storage, "model"))).table.to_pylist()
    for row in rows:  # how often each grew, its workers at the end, whether apart: its last report
        last = json.loads(Path(storage, "model", row["trial_id"], "result.json").read_text().splitlines()[-1])
        row.update({key: last[key] for key in ("grew", "workers", "apart", "pid")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gpus", type=int, nargs="+", default=[1, 8, 16, 32], help="cluster sizes (default: 1 8 16 32)"
    )
    parser.add_argument("--searcher", default="sfsa", choices=sorted(REGISTRY), help="(default: sfsa)")
    parser.add_argument("--folds", type=int, default=5, help="(default: 5)")
    parser.add_argument("--fold", type=int, default=None, help="search this fold only (default: every fold)")
    parser.add_argument("--points", type=int, default=4, help="fusion points m (default: 4)")
    parser.add_argument("--modalities", type=int, default=2, help="unimodal baselines per fold (default: 2)")
    parser.add_argument("--epochs", type=int, default=30, help="(default: 30)")
    parser.add_argument("--patience", type=int, default=8, help="(default: 8)")
    parser.add_argument(
        "--epoch-seconds", type=float, default=0.67, help="(default: 0.67, ds004199 on an H200)"
    )
    parser.add_argument(
        "--setup", type=float, default=1.7, help="seconds per trial before training (default: 1.7)"
    )
    parser.add_argument("--overhead", type=float, default=0.1, help="Tune's seconds per trial (default: 0.1)")
    parser.add_argument(
        "--actor-start", type=float, default=3.0, help="a slot's first trial waits (default: 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the landscape's seed (default: 0)")
    parser.add_argument(
        "--gpus-per-trial", default="1", help="auto (data-parallel, sized per trial) or N (default: 1)"
    )
    parser.add_argument("--gpus-per-node", type=int, default=8, help="a trial's workers at most (default: 8)")
    parser.add_argument("--batch-size", type=int, default=4, help="a trial's workers at most (default: 4)")
    parser.add_argument(
        "--train-start", type=float, default=10.0, help="a data-parallel trial's start, s (default: 10)"
    )
    parser.add_argument(
        "--dp-efficiency",
        type=float,
        default=0.85,
        help="speed-up per doubling of workers, of 2 (default: 0.85)",
    )
    parser.add_argument(
        "--restart", type=float, default=None,
        help="seconds a trial loses to grow (default: --train-start + --setup)",
    )  # fmt: skip
    parser.add_argument("--validate", action="store_true", help="also run it on a local Ray (first --gpus)")
    args = parser.parse_args()
    if args.restart is not None and args.restart < 0:
        parser.error(f"--restart {args.restart}: seconds a growth costs, 0 or more")
    parts = Parts(args.epoch_seconds, args.setup, args.epochs, args.patience, args.overhead, args.actor_start,
                  args.train_start, args.dp_efficiency, args.restart)  # fmt: skip
    losses = landscape(args.points, args.seed)
    workers = args.gpus_per_trial if args.gpus_per_trial == "auto" else int(args.gpus_per_trial)
    print(f"{args.searcher}, {args.folds} folds, m = {args.points}, {args.modalities} modalities, "
          f"--gpus-per-trial {workers}; {parts}")  # fmt: skip
    print(f"{'GPUs':>5} {'trials':>7} {'wall s':>9} {'wall min':>9} {'busy':>6} {'useful':>7} {'widest':>7} "
          f"{'growths':>8}")  # fmt: skip
    for gpus in args.gpus:
        parallel = parts.parallel(workers, gpus, args.batch_size, min(gpus, args.gpus_per_node))
        with tempfile.TemporaryDirectory() as scratch:
            p = simulate(make_searcher(args), gpus, parts, losses, scratch, parallel)
        print(f"{gpus:>5} {p.trials:>7} {p.wall:>9.1f} {p.wall / 60:>9.2f} {p.busy:>6.2f} {p.useful:>7.2f} "
              f"{p.widest:>7} {p.restarts:>8}")  # fmt: skip
    if args.validate:
        gpus = args.gpus[0]
        validate(
            args, parts, losses, parts.parallel(workers, gpus, args.batch_size, min(gpus, args.gpus_per_node))
        )


if __name__ == "__main__":
    main()
