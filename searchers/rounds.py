"""A Ray Tune searcher that runs a round-based fusion-mask strategy on every cross-validation fold."""

from __future__ import annotations

import logging
import math
import pickle
import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import ray
from ray import tune
from ray.tune.search import Searcher

from fusionsearch import storage
from fusionsearch.errors import UserError
from fusionsearch.mask import FusionMask
from fusionsearch.search import experiment
from fusionsearch.search.records import (
    DECISION,
    PER_SAMPLE,
    REPORTED,
    SCHEMA,
    FoldSearch,
    Trial,
    as_float,
    candidate_key,
    lineage,
    replicate,
    row_key,
)
from fusionsearch.search.strategies import Candidate, Outcome, Strategy, chosen_outcome
from fusionsearch.settings import SearchConfig
from fusionsearch.tune import grants
from fusionsearch.tune.compat import TERMINATED

log = logging.getLogger(__name__)

#: The roles of a fold search's own trials (the rest are baselines beside it).
SEARCH_ROLES = ("search", "control")


def node_gpus() -> list[int]:
    """The GPUs of each live node of the connected Ray cluster."""
    return [int(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node["Alive"]]


@dataclass(frozen=True)
class DataParallel:
    """How many data-parallel workers (one GPU each) a trial gets when it starts.

    Attributes:
        workers: ``auto`` (an equal share of the GPUs the running trials leave free among the
            trials ready to start: :meth:`size`) or a number.
        gpus: the cluster's GPUs.
        batch_size: the candidates' global batch (a worker per sample at most).
        most: the GPUs of the cluster's largest node (a candidate's workers at most).
        efficiency: the speed-up per doubling of workers, of 2 (:meth:`speedup`): 0.85 until a
            multi-GPU measurement exists.
        restart: seconds a trial loses to grow: its worker group stops at an epoch's end and Ray
            Train starts a wider one, which sets up again (on this project's CPU machine 15-20 s
            with the setup; budgeted at 10 s for Ray Train's start on a GPU node and 2 s of setup).
        start: seconds a trial loses to start under Ray Train instead of in an idle Tune actor
            (Ray Train's controller, workers and process group; budgeted at 10 s on a GPU node).
        sure_epochs: epochs every trial trains at least: its patience, or its budget if shorter.
    """

    workers: int | str = 1
    gpus: int = 0
    batch_size: int = 1
    most: int | None = None
    efficiency: float = 0.85
    restart: float = 12.0
    start: float = 10.0
    sure_epochs: int = 8

    @classmethod
    def on_cluster(cls, workers: int | str, batch_size: int, sure_epochs: int = 8) -> DataParallel:
        """The sizing on the connected Ray cluster's live GPUs (one worker per candidate for ``1``)."""
        if workers == 1:
            return cls()
        gpus = node_gpus()
        return cls(workers, sum(gpus), batch_size, max(gpus, default=0) or None, sure_epochs=sure_epochs)

    @property
    def possible(self) -> bool:
        """Whether any trial can get more than one worker (``auto`` needs a node with 2 GPUs)."""
        if self.workers != "auto":
            return int(self.workers) > 1
        return min(self.gpus, self.most or self.gpus, self.batch_size) > 1

    def size(self, running: int, ready: int) -> int:
        """Workers for a trial about to start, with ``running`` workers busy and ``ready`` trials
        (this one included) able to start now.

        Under ``auto``, each ready trial gets an equal share of the free GPUs, at least 1 (it then
        waits for a GPU like any trial), at most ``batch_size`` (every worker needs a sample of each
        batch) and at most ``most`` (a candidate's workers stay on one node's links).
        """
        if self.workers != "auto":
            return int(self.workers)
        share = max(1, (self.gpus - running) // max(1, ready))
        return max(1, min(share, self._widest))

    def apart(self, workers: int, epoch: float | None, searches: int = 1) -> bool:
        """Whether a trial about to start on ``workers`` trains under Ray Train (its workers apart
        from its Tune actor, able to grow) rather than in its Tune actor, on one GPU.

        A fixed number of workers: where it is above 1. Under ``auto``: where the trial's sure
        epochs, ``epoch`` seconds each on one worker (the search's measured median; ``None``
        before any trial has reported one), could pay Ray Train's :attr:`start` back: trained
        on ``workers``, or grown to its share of the cluster (its GPUs over the ``searches``
        running at once, at most the widest a trial may be), which costs a :attr:`restart` too.
        Before a measurement, every trial that could have 2 GPUs: no actor is warm yet, and Ray
        Train's start costs about what a fresh actor's does.
        """
        if not self.possible:
            return False
        if self.workers != "auto":
            return workers > 1
        share = min(self._widest, max(1, self.gpus // searches))
        if epoch is None:
            return max(workers, share) > 1
        sure = self.sure_epochs * epoch
        grown = self.saving(1, share, sure) - self.restart
        return max(self.saving(1, workers, sure), grown) > self.start

    @property
    def elastic(self) -> bool:
        """Whether running trials grow into GPUs that others free (``auto`` where a trial can get 2)."""
        return self.workers == "auto" and self.possible

    @property
    def _widest(self) -> int:
        return min(self.batch_size, self.most or self.gpus)

    def speedup(self, workers: int) -> float:
        """How much faster ``workers`` data-parallel workers train than one: ``w * efficiency**log2(w)``."""
        return workers * self.efficiency ** math.log2(workers)

    def grow(self, running: dict[str, int], left: dict[str, float], others: int = 0) -> dict[str, int]:
        """New worker counts for running trials (``running``: trial id -> workers, those under Ray
        Train; ``others``: the GPUs of those that cannot grow) once nothing waits to start.
        ``left`` is how many seconds each will surely still train on its workers after the epoch
        it is in (its last report's ``epochs_left`` less that epoch, times its
        ``epoch_seconds``). While the free GPUs allow, the trial surest to train longest (the
        narrowest of equals) doubles its workers, up to the widest a trial may be, where that
        saves more than a :attr:`restart`: ``left * (1 - speedup(w) / speedup(W))`` seconds from
        its ``w`` running workers to its ``W`` granted (one restart, however wide). Doubling, not a
        GPU at a time, since a trial restarts its workers from a checkpoint to grow (Ray Train's
        start again). Empty unless :attr:`elastic`.
        """
        if not self.elastic:
            return {}
        free = self.gpus - sum(running.values()) - others
        new = dict(running)

        def saves(trial: str) -> float:  # from its running workers: one restart, however wide
            return self.saving(running[trial], new[trial] + self._more(new[trial]), left.get(trial, 0.0))

        def still(trial: str) -> float:  # its sure seconds on the workers granted so far
            return left.get(trial, 0.0) * self.speedup(running[trial]) / self.speedup(new[trial])

        while growable := [t for t in new if 0 < self._more(new[t]) <= free and saves(t) > self.restart]:
            trial = max(growable, key=lambda t: (still(t), -new[t]))
            free -= self._more(new[trial])
            new[trial] += self._more(new[trial])
        return {t: w for t, w in new.items() if w != running[t]}

    def saving(self, workers: int, wider: int, seconds: float) -> float:
        """Seconds a trial sure to train ``seconds`` more on ``workers`` saves on ``wider`` ones,
        its restart not counted."""
        return seconds * (1 - self.speedup(workers) / self.speedup(wider))

    def _more(self, workers: int) -> int:
        """The workers a trial of ``workers`` gains by growing: as many again, up to the widest."""
        return min(workers, self._widest - workers)


def under_ray_train(config: dict[str, Any]) -> bool:
    """Whether a trial of ``config`` (as :meth:`RoundSearcher.suggest` proposes it) trains under Ray
    Train: on several workers, or with ``grants`` to grow; else in its Tune actor, on one GPU."""
    return int(config.get("workers") or 1) > 1 or bool(config.get("grants"))


def _grants_name() -> str:
    """A new name for a search's grants actor (:mod:`fusionsearch.tune.grants`)."""
    return f"fusionsearch-grants-{uuid.uuid4().hex[:12]}"


class RoundSearcher(Searcher):
    """Proposes a strategy's rounds to Ray Tune, a whole round at a time, on every fold.

    By default each fold runs its own search (``pooled=False``): folds progress independently,
    so one fold's next round starts while another's is still training. With ``pooled=True``
    one search runs over all folds: each candidate trains on every fold and scores the mean
    of its folds' validation losses. Alongside, it schedules a unimodal baseline per name in
    ``unimodal`` per fold (from the start: they need nothing from the search) and, with
    ``ensemble=True``, once a fold's search has finished, every fusion mask it did not train
    (warm-started from that fold's no-fusion baseline, as exhaustive search trains them), so
    that all ``2**m - 1`` fusion configurations exist for the brute-force ensemble. With
    ``repeats=R`` every fold's search (or the pooled one) runs R times, in parallel, each replicate
    with its own training seeds (new weights, batch order, augmentation) on the same split: how
    often the chosen masks agree says how much the answer owes to the seed. The unimodal baselines
    train once per fold (replicate 0).

    Each suggestion is a :class:`~fusionsearch.search.records.Trial`'s flat config (``mask``,
    ``fold``, ``role``, ``round``, ``parent_mask``, ``modality``) plus ``parent``: the location
    of the parent's final checkpoint under the experiment's storage (the same fold's), which
    ``ray.tune.Checkpoint(parent)`` opens from any node. Ray Tune tells a searcher nothing of
    its storage, so the location comes from one of: ``experiment_dir`` with trial folders named
    by trial id (:mod:`fusionsearch.search.experiment`'s layout, what ``run_search`` sets up),
    or, with any folder names, the callback :meth:`checkpoint_locator` in the Tuner's
    ``RunConfig(callbacks=...)``. Without either, the first child fails saying so. With
    ``experiment_dir``, the candidates table is written to ``<experiment>/candidates.parquet``
    after every round.

    Args:
        strategy: a :class:`~fusionsearch.search.strategies.Strategy`.
        metric: the reported metric to minimise (or maximise, with ``mode="max"``).
        mode: ``"min"`` or ``"max"``.
        folds: the cross-validation folds to search.
        pooled: one search scored on the mean over folds, instead of one search per fold.
        unimodal: modality names to train single-stream baselines of.
        ensemble: train the fusion masks the search left out, for the brute-force ensemble.
        repeats: replicates of each search, with different training seeds.
        experiment_dir: the experiment's folder (``<storage_path>/<name>``); or call
            :meth:`set_experiment_dir` before the search starts.
    """

    #: The searcher's short name in reports and ``fusionsearch-run.json`` (``None``: its class name).
    name: str | None = None

    def __init__(
        self,
        strategy: Strategy,
        metric: str = "val_loss",
        mode: str = "min",
        *,
        folds: Sequence[int] = (0,),
        pooled: bool = False,
        unimodal: Sequence[str] = (),
        ensemble: bool = False,
        repeats: int = 1,
        experiment_dir: str | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}; choose one of ['min', 'max']")
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats={repeats!r} must be a positive integer")
        super().__init__(metric=metric, mode=mode)
        self.strategy = strategy
        self.ensemble = ensemble
        self._experiment_dir = experiment_dir
        groups = [tuple(folds)] if pooled else [(f,) for f in folds]
        self._groups = [FoldSearch(g, r) for r in range(repeats) for g in groups]
        empty = str(FusionMask.empty(strategy.num_points))
        self._queue: list[Trial] = [Trial(empty, f, "unimodal", modality=m) for f in folds for m in unimodal]
        self._pending: dict[tuple, Trial] = {}
        self._records: list[dict[str, Any]] = []
        self._trial_keys: dict[str, tuple] = {}
        self._locations: dict[str, str] = {}  # trial id -> final checkpoint, from CheckpointLocator
        self._finished = False
        self._ended = False  # Tune's experiment ended (maybe before the search finished)
        self._max_concurrent: int | None = None
        self.set_data_parallel(DataParallel())

    @property
    def num_points(self) -> int:
        """Mask length of the strategy's masks."""
        return self.strategy.num_points

    @property
    def experiment_dir(self) -> str | None:
        return self._experiment_dir

    @classmethod
    def from_config(cls, search: SearchConfig, seed: int = 0, **options: Any) -> RoundSearcher:
        """This searcher as ``fusionsearch run`` builds it: its rules from ``search``, proposals seeded
        by ``seed`` (random, optuna), and ``options`` (``folds``, ``pooled``, ...) for RoundSearcher."""
        raise NotImplementedError(f"{cls.__name__} is not built from a SearchConfig; construct it directly")

    def set_experiment_dir(self, experiment_dir: str) -> None:
        """Where the experiment lives: checkpoint locations and the candidates table are under it."""
        self._experiment_dir = experiment_dir

    def set_data_parallel(self, parallel: DataParallel) -> None:
        """Give trials several data-parallel workers (``run_search`` sets it for ``--gpus-per-trial``);
        under ``auto`` running trials grow into GPUs that finished trials free (:meth:`_grow`)."""
        self._parallel = parallel
        self._grants_name = _grants_name()
        if parallel.elastic and ray.is_initialized():
            grants.start(self._grants_name)
        self.last_grants: dict[str, int] = {}
        self._left: dict[str, float] = {}  # trial id -> seconds it will surely train after this epoch
        self._epochs: dict[str, float] = {}  # trial id -> its last epoch's seconds, on one worker
        self._apart: set[str] = set()  # running trials under Ray Train

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Keep how long each running trial will surely train on: its ``epochs_left`` after the
        epoch it is in, times its ``epoch_seconds`` (Tune's ``time_this_iter_s`` where a trainable
        does not report it); growing a trial is worth a restart only if that is long enough. Its
        epoch's seconds on one worker decide whether the next trials start under Ray Train
        (:meth:`DataParallel.apart`)."""
        seconds = result.get("epoch_seconds", result.get("time_this_iter_s"))
        if "epochs_left" in result and seconds is not None:
            self._left[trial_id] = max(0, int(result["epochs_left"]) - 1) * float(seconds)
            key = self._trial_keys.get(trial_id)
            workers = self._pending[key].workers if key in self._pending else 1
            self._epochs[trial_id] = float(seconds) * self._parallel.speedup(workers)

    def keeps_actors_warm(self) -> bool:
        """Whether Tune may keep idle trial actors (and their GPUs) for the next trials: while none
        of this search's trials trains under Ray Train, whose workers ask Ray, not Tune, for GPUs
        (to start, or to grow into the GPUs that ended trials free)."""
        return not self._apart

    def _grow(self) -> None:
        """Once nothing waits to start, grant running trials the GPUs ended trials freed
        (:meth:`DataParallel.grow`); they take them at their next validated epoch."""
        parallel = self._parallel
        self.last_grants = {}
        if not parallel.elastic:
            return
        self._plan()
        if self._queue:
            return  # the next round's trials take the free GPUs first
        keys = self._trial_keys.items()
        running = {tid: self._pending[key].workers for tid, key in keys if key in self._pending}
        others = sum(w for tid, w in running.items() if tid not in self._apart)
        running = {tid: w for tid, w in running.items() if tid in self._apart}
        self.last_grants = parallel.grow(running, self._left, others)
        for trial_id, workers in self.last_grants.items():
            key = self._trial_keys[trial_id]
            self._pending[key] = replace(self._pending[key], workers=workers)
        if self.last_grants:
            sooner = {t: parallel.saving(running[t], w, self._left.get(t, 0.0)) - parallel.restart
                      for t, w in self.last_grants.items()}  # fmt: skip
            grown = ", ".join(
                f"trial {t} to {w} workers (about {sooner[t]:.0f} s sooner)"
                for t, w in self.last_grants.items()
            )
            log.info("growing %s", grown)
            if ray.is_initialized():
                grants.publish(self._grants_name, self.last_grants)

    def checkpoint_locator(self) -> CheckpointLocator:
        """A Tune callback that tells this searcher where each finished trial's checkpoint went.

        For a plain ``tune.Tuner`` with Tune's own trial folder names, on any storage::

            searcher = SFSASearcher()
            tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1),
                       run_config=tune.RunConfig(callbacks=[searcher.checkpoint_locator()]))
        """
        return CheckpointLocator(self)

    def locate(self, trial_id: str, location: str) -> None:
        """Record that ``trial_id``'s final checkpoint is at ``location`` (a path or URI)."""
        if not storage.exists(location):
            log.warning("trial %s: its checkpoint %s is not in the storage", trial_id, location)
            return
        self._locations[trial_id] = location
        for record in self._records:
            if record["trial_id"] == trial_id and record["status"] == "ok":
                record["checkpoint"] = location

    # --- Ray Tune API -------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._finished:
            return Searcher.FINISHED
        self._plan()
        if not self._queue and not self._pending:
            self._finished = True
            self._write_table()
            log.info("search finished after %d trials; chosen: %s", len(self._records), self.chosen_masks())
            return Searcher.FINISHED
        if not self._queue or len(self._pending) >= (self._max_concurrent or len(self._pending) + 1):
            return None  # everything proposable is in flight; Tune asks again when a trial completes
        running = sum(t.workers for t in self._pending.values())
        parallel = self._parallel
        # The searches' own trials first (each round waits for its slowest); the baselines beside them
        # keep one GPU each for later (they may grow), so the rounds get the free GPUs.
        chain = [t for t in self._queue if t.role in SEARCH_ROLES]
        side = len(self._queue) - len(chain)
        trial = chain[0] if chain else self._queue[0]
        workers = parallel.size(running + side, len(chain)) if chain else parallel.size(running, side)
        epoch = statistics.median_high(self._epochs.values()) if self._epochs else None
        searches = sum(not group.finished for group in self._groups)
        apart = parallel.apart(workers, epoch, searches)
        if apart and running >= parallel.gpus:
            return None  # its workers would wait outside Tune's queue: wait here for a GPU instead
        if apart:
            self._apart.add(trial_id)
        self._queue.remove(trial)
        trial = replace(trial, workers=workers if apart else 1)
        self._pending[trial.key] = trial
        self._trial_keys[trial_id] = trial.key
        parent = self._parent_location(trial) if trial.parent_mask else None
        grows = parallel.elastic and apart
        elastic = {"grants": grants.address(self._grants_name, trial_id)} if grows else {}
        return trial.config() | {"parent": parent} | elastic

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = result or {}
        config = result.get("config") or {k[7:]: v for k, v in result.items() if k.startswith("config/")}
        key = self._trial_keys.get(trial_id) or (Trial.from_config(config).key if "mask" in config else None)
        trial = self._pending.pop(key, None) if key else None
        if trial is None:
            log.warning("ignoring completion of trial %s (%s): not a pending trial", trial_id, key)
            return
        value = result.get(self.metric)
        ok = not error and value is not None and not result.get("failed")
        checkpoint_name = result.get("checkpoint_dir_name")
        checkpoint = (
            experiment.checkpoint_location(self._experiment_dir, trial_id, checkpoint_name)
            if ok and checkpoint_name and self._experiment_dir
            else None
        )
        if checkpoint and not storage.exists(checkpoint):  # checked once here, not once per child
            checkpoint = None
        checkpoint = (checkpoint or self._locations.get(trial_id)) if ok else None
        self._records.append(
            {
                **trial.config(),
                "val_loss": float(value) if ok else None,
                "status": "ok" if ok else "failed",
                "trial_id": trial_id,
                "checkpoint": checkpoint,
                "node_ip": result.get("node_ip"),
                "node_id": result.get("node_id"),
                "error": result.get("error"),
                **{name: as_float(result.get(name)) for name in REPORTED},
                **{name: _floats(result.get(name)) for name in PER_SAMPLE},
            }
        )
        if trial.role in SEARCH_ROLES:
            group = self._group(trial)
            report = None
            if ok:
                report = {name: result.get(name) for name in ("best_epoch", "val_loss_start", *PER_SAMPLE)}
                report["val_loss"] = value if self.mode == "min" else -value
            group.record(trial, report)
            if not self._in_flight(group):
                group.close_round()
        log.info(
            "fold %d%s round %d: %s%s %s%s",
            trial.fold,
            f" replicate {trial.repeat}" if trial.repeat else "",
            trial.round,
            trial.mask,
            f" ({' '.join(filter(None, [trial.role, trial.modality]))})" if trial.role != "search" else "",
            f"{self.metric} {value:.4f}" if ok else "FAILED",
            f", {len(self._pending)} trial(s) still running" if self._pending else "",
        )
        if not any(t.role in SEARCH_ROLES for t in self._pending.values()):
            self._write_table()
        self._left.pop(trial_id, None)
        self._apart.discard(trial_id)
        self._grow()

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # Limiting here rather than in Tune's ConcurrencyLimiter, which drops the completions
        # of trial ids it did not issue (restarted trials).
        self._max_concurrent = max_concurrent
        return True

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.__dict__.update(state)
        self.__dict__.setdefault("_parallel", DataParallel())  # a searcher saved before it existed
        self.__dict__.setdefault("_left", {})  # a searcher saved before trials grew
        self.__dict__.setdefault("last_grants", {})
        self.__dict__.setdefault("_grants_name", _grants_name())
        self.__dict__.setdefault("_epochs", {})
        if "_apart" not in state:  # saved before the choice: all under Ray Train where possible
            pending = {t for t, key in self._trial_keys.items() if key in self._pending}
            self._apart = pending if self._parallel.possible else set()
        self._ended = False  # a restored search runs again
        before = self._parallel
        if before.workers != 1 and ray.is_initialized():  # sized for the cluster it resumes on
            self._parallel = DataParallel.on_cluster(before.workers, before.batch_size, before.sure_epochs)
            if self._parallel.gpus != before.gpus:
                log.info(
                    "resumed on %d GPU(s) (was %d): trials are sized for them",
                    self._parallel.gpus,
                    before.gpus,
                )

    # --- planning -----------------------------------------------------------------------
    def _plan(self) -> None:
        """Queue the next round of every group whose current round has completed."""
        for group in self._groups:
            if group.finished or self._in_flight(group):
                continue
            candidates = list(self.strategy.next_round(group.history))
            self._log_decision(group, extended=bool(candidates) and candidates[0].extension > 0)
            if not candidates:
                group.finished = True
                self._queue.extend(self._longer_late_fusion(group))
                if self.ensemble:
                    self._queue.extend(self._ensemble_trials(group))
                continue
            log.info(
                "folds %s round %d: %d candidate(s): %s",
                _name(group),
                candidates[0].round,
                len(candidates),
                ", ".join(_describe(c) for c in candidates),
            )
            self._queue.extend(group.trials(candidates))

    def _log_decision(self, group: FoldSearch, extended: bool) -> None:
        """Say what the round just closed decided (strategies with rounds of decisions only)."""
        decisions = self.decisions(group)
        if not decisions or decisions[-1].round != max(o.candidate.round for o in group.history):
            return
        d, folds = decisions[-1], _name(group)
        if d.tested is None:
            log.info("folds %s round %d: no child finished", folds, d.round)
            return
        against = "its control" if d.reference and d.reference.candidate.control else "its parent"
        p = "" if d.verdict.p_value is None else f", p = {d.verdict.p_value:.3g}"
        status = "accepted" if d.accepted else "not accepted"
        if extended:
            status = (
                f"{'passes' if d.accepted else 'does not pass'}, but nothing in the round learned yet (no "
                "trial removed a fifth of the chance loss): every trial of it trains again, with twice "
                "the budget, before the round is decided"
            )
        log.info(
            "folds %s round %d%s: %s gains %.4f over %s%s: %s",
            folds,
            d.round,
            " (extended)" if d.extension else "",
            d.tested.candidate.mask,
            d.verdict.gain,
            against,
            p,
            status,
        )

    def decisions(self, group: FoldSearch) -> list:
        """The strategy's decisions on ``group`` (``[]`` for strategies without them)."""
        decide = getattr(self.strategy, "decisions", None)
        return decide(group.history) if decide else []

    def _in_flight(self, group: FoldSearch) -> bool:
        """Whether a search or control trial of ``group``'s current round is queued or running."""
        return any(t.role in SEARCH_ROLES and group.owns(t) for t in [*self._queue, *self._pending.values()])

    def _longer_late_fusion(self, group: FoldSearch) -> list[Trial]:
        """Late fusion continued from round 0 until it has trained as many epochs as the chosen mask's
        whole lineage (role ``longer``), on each fold where the trials reported their epochs."""
        chosen = chosen_outcome(self.strategy, group.history)
        if chosen is None:
            return []
        empty = str(FusionMask.empty(self.num_points))
        trials = []
        for fold in group.folds:
            chain = self._lineage((fold, group.repeat), candidate_key(chosen.candidate))
            epochs = [r.get("epochs_trained") for r in chain]
            if not chain or None in epochs or chain[-1]["mask"] != empty or chain[-1]["round"] != 0:
                continue  # a trainable that does not report its epochs, or a lineage not from 0000
            extra = int(sum(epochs) - epochs[-1])
            if extra > 0:
                trials.append(Trial(empty, fold, "longer", 0, empty, epochs=extra, repeat=group.repeat))
        return trials

    def _lineage(self, search: tuple[int, int], key: tuple[str, str, int, int]) -> list[dict[str, Any]]:
        """The finished trial ``key`` = (role, mask, round, extension) of ``search`` = (fold, repeat) and
        its ancestors, newest first, down to the trial trained from scratch."""
        rows = [r for r in self._records if replicate(r) == search and r["status"] == "ok"]
        return lineage(next((r for r in rows if row_key(r) == key), None), rows)

    def _ensemble_trials(self, group: FoldSearch) -> list[Trial]:
        baseline = FusionMask.empty(self.num_points)
        trained = {str(o.candidate.mask) for o in group.history}
        return [
            Trial(str(m), f, "ensemble", 1, str(baseline), repeat=group.repeat)
            for f in group.folds
            for m in FusionMask.all_masks(self.num_points)
            if m != baseline and str(m) not in trained
        ]

    def selection_groups(self) -> list[tuple[int, ...]]:
        """The folds behind each of the search's selections: one fold each, or all when pooled (once per
        replicate)."""
        return [group.folds for group in self._groups]

    def _group(self, trial: Trial) -> FoldSearch:
        return next(g for g in self._groups if g.owns(trial))

    def _parent_location(self, trial: Trial) -> str | None:
        """Where ``trial``'s parent left its final checkpoint; ``None`` (from scratch) if the parent failed.

        Raises:
            UserError: the parent finished but its checkpoint cannot be located (the searcher was
                not told where the experiment lives, or Tune names trial folders otherwise, or the
                trainable reported no checkpoint), so a warm start is never silently dropped.
        """
        wanted = ("search", trial.fold, trial.repeat, trial.parent_mask)
        record = next(
            (r for r in reversed(self._records) if (r["role"], *replicate(r), r["mask"]) == wanted), None
        )
        if record is None or record["status"] != "ok":
            log.warning("parent %s of %s failed: it trains from scratch", trial.parent_mask, trial)
            return None
        location = record["checkpoint"]
        if location is None and self._experiment_dir is None and not self._locations:
            raise UserError(
                f"{type(self).__name__} cannot hand {trial.mask} its parent's checkpoint: it does not know "
                "where the experiment lives. Ray Tune does not tell a searcher; run it with "
                "fusionsearch.run_search, or add its callback to the Tuner: "
                "RunConfig(callbacks=[searcher.checkpoint_locator()])"
            )
        if location is None:
            raise UserError(
                f"the checkpoint of {trial.parent_mask} (parent of {trial.mask}) was not found: its "
                "trial's last report carried no checkpoint, or it is not in the storage, or the trial "
                "folders are not named by trial id (add RunConfig(callbacks=[searcher.checkpoint_locator()]) "
                "for any folder names)"
            )
        return location

    # --- results ------------------------------------------------------------------------
    def chosen_outcomes(self) -> dict[tuple[int, int], Outcome | None]:
        """The chosen outcome of every (fold, replicate) (the same for all folds of a pooled search)."""
        chosen = {}
        for group in self._groups:
            best = chosen_outcome(self.strategy, group.history)
            chosen |= {(f, group.repeat): best for f in group.folds}
        return chosen

    def chosen_masks(self, repeat: int = 0) -> dict[int, str | None]:
        """The chosen mask of every fold in replicate ``repeat`` (the same for all folds of a pooled
        search)."""
        chosen = self.chosen_outcomes()
        return {f: str(o.candidate.mask) if o else None for (f, r), o in chosen.items() if r == repeat}

    @property
    def best_mask(self) -> str | None:
        """The chosen mask of the first fold."""
        return next(iter(self.chosen_masks().values()), None)

    def unfinished(self) -> list[Trial]:
        """Trials proposed to Tune (or queued for it) that have not finished: none once the search has."""
        return [*self._pending.values(), *self._queue]

    def reconcile(self, trials: Sequence[Any]) -> None:
        """Agree with the trials Tune restored, before a resumed search's first step.

        Tune saves its trials and this searcher's state as separate files, uploaded one after the
        other; a storage that fails in between (a full disk, an outage, a killed driver) leaves one
        newer than the other. A trial this searcher proposed that Tune does not know is proposed
        again (else the search would wait for it forever); a trial Tune knows that this searcher
        still has queued is taken as proposed (not trained twice); and a trial Tune finished that
        this searcher still waits for counts as completed, with Tune's last result.
        """
        known = {t.trial_id for t in trials}
        for trial_id, key in list(self._trial_keys.items()):
            if trial_id not in known and key in self._pending:
                log.warning("trial %s %s: proposed, but not in Tune's saved state; proposing it again",
                            trial_id, key)  # fmt: skip
                self._queue.insert(0, self._pending.pop(key))
                del self._trial_keys[trial_id]
        ours = [(t, self._trial_keys.get(t.trial_id) or Trial.from_config(t.config).key) for t in trials
                if "mask" in t.config]  # fmt: skip
        changed = True
        while changed:  # a completion can plan the round that Tune's later trials belong to
            changed = False
            self._plan()
            for t, key in ours:
                queued = next((q for q in self._queue if q.key == key), None)
                if queued is not None and key not in self._pending:
                    self._queue.remove(queued)
                    self._pending[key] = replace(queued, workers=int(t.config.get("workers") or 1))
                    self._trial_keys[t.trial_id] = key
                    changed = True
                if (
                    t.status == TERMINATED
                    and key in self._pending
                    and self._trial_keys.get(t.trial_id) == key
                ):
                    log.warning(
                        "trial %s %s: finished in Tune's saved state; taking its result", t.trial_id, key
                    )
                    self.on_trial_complete(t.trial_id, t.last_result)
                    changed = True

    def reconciler(self) -> Reconcile:
        """A Tune callback that calls :meth:`reconcile` with the restored trials (``run_search`` adds it)."""
        return Reconcile(self)

    def end(self) -> None:
        """Tune's experiment ended (a stopper's ``stop_all``, a budget, an interruption): if the search had
        not finished, say so, and write the table with the trials that never ran (status ``not run``)."""
        self._ended = True
        if self._finished:
            return
        never = self.unfinished()
        ending = (
            "its next round was not proposed yet"
            if not never
            else f"{len(never)} proposed trial(s) never ran"
        )
        log.warning(
            "the search ended before it finished: %s (%s); its answer so far (%s) is not final. Resume it "
            "(fusionsearch resume NAME, or tune.Tuner.restore(..., resume_errored=True) without a stopper "
            "that ends it again) to finish it",
            ending,
            ", ".join(f"fold {t.fold} round {t.round} {t.mask} ({t.role})" for t in never[:6]) or "-",
            self.chosen_masks(),
        )  # fmt: skip
        self._write_table()

    def table(self) -> pa.Table:
        """One row per finished trial, in completion order, with each round's decision on the row of
        the child it tested; once Tune's experiment has ended before the search finished, the trials
        proposed but never run after them (status ``not run``)."""
        chosen = {f: candidate_key(o.candidate) for f, o in self.chosen_outcomes().items() if o}
        verdicts = {}
        for group in self._groups:
            for d in self.decisions(group):
                if d.tested is not None:
                    reference = "control" if d.reference and d.reference.candidate.control else "parent"
                    verdict = {"reference": reference, "gain": d.verdict.gain, "p_value": d.verdict.p_value,
                               "accepted": d.verdict.accepted}  # fmt: skip
                    tested = candidate_key(d.tested.candidate)
                    verdicts |= {(f, group.repeat, *tested): verdict for f in group.folds}
        rows = []
        for r in self._records:
            key = row_key(r)
            rows.append(
                r
                | {"chosen": chosen.get(replicate(r)) == key}
                | verdicts.get((*replicate(r), *key), dict.fromkeys(DECISION))
            )
        if self._ended and not self._finished:
            rows += [t.config() | {"status": "not run", "chosen": False} for t in self.unfinished()]
        return pa.Table.from_pylist(rows, schema=SCHEMA)

    def _write_table(self) -> None:
        if not self._experiment_dir:
            return
        try:
            experiment.write_candidates(self._experiment_dir, self.table())
        except OSError as error:  # full or unreachable storage: the next round (or a resume) writes it again
            log.warning("could not write the candidates table: %s", error)


def _name(group: FoldSearch) -> str:
    """``0`` or ``0,1,2``, with `` replicate R`` beyond the first: a search in the log."""
    return ",".join(map(str, group.folds)) + (f" replicate {group.repeat}" if group.repeat else "")


def _describe(candidate: Candidate) -> str:
    if candidate.extension:
        return f"{candidate.mask} ({'control ' if candidate.control else ''}again, twice the budget)"
    if candidate.control:
        return f"{candidate.mask} (control: continued)"
    return f"{candidate.mask} (from {candidate.parent or 'scratch'})"


def _floats(value: Any) -> list[float] | None:
    return None if value is None else [float(x) for x in value]


#: pyarrow filesystem type -> URI scheme of a checkpoint's location.
_SCHEMES = {"local": "", storage.WHOLE_FILES_TYPE: "", "s3": "s3://", "gcs": "gs://", "hdfs": "hdfs://"}


class Reconcile(tune.Callback):
    """Before the first step of a (resumed) search, aligns a :class:`RoundSearcher` with Tune's trials."""

    def __init__(self, searcher: RoundSearcher) -> None:
        self.searcher = searcher
        self.done = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.done:
            self.done = True
            if trials:  # a fresh search has none
                self.searcher.reconcile(trials)

    def __getstate__(self) -> dict:  # pickled into tuner.pkl: a restored search aligns again
        return {"searcher": self.searcher, "done": False}


class CheckpointLocator(Reconcile):
    """Tells a :class:`RoundSearcher` where each finished trial's final checkpoint went.

    It also tells the searcher when Tune's experiment ends, so that a search a stopper or a budget
    ended before it finished says so (:meth:`RoundSearcher.end`). A callback sees the finished
    trial itself (a searcher gets only its id and result), with its latest checkpoint on the
    experiment's storage: a local path, or an ``s3://``, ``gs://`` or
    ``hdfs://`` URI. Tune calls it after the searcher's ``on_trial_complete`` and before the
    next ``suggest``, so the location is known before any child is proposed. Before a resumed
    search's first step it aligns the searcher with Tune's restored trials (:class:`Reconcile`).
    """

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.searcher.end()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return
        scheme = _SCHEMES.get(checkpoint.filesystem.type_name)
        if scheme is None:
            log.warning(
                "trial %s: its checkpoint is on a %s filesystem, which no URI names; its children cannot "
                "be handed it (use a local path or an s3://, gs:// or hdfs:// storage_path)",
                trial.trial_id,
                checkpoint.filesystem.type_name,
            )
            return
        self.searcher.locate(trial.trial_id, scheme + checkpoint.path)
