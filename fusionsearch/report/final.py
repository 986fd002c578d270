"""The final model: the search's answer trained on every development subject (``fusionsearch final``).

A k-fold search ends with one model per fold, each trained on its fold's training part only.
The final model is the one to use afterwards (``predict`` and ``export`` take it when it
exists), decided as follows.

- **Which mask.** The mask chosen on most folds (replicate 0); a tie goes to the mask whose
  folds' models had the lower mean validation loss (each on its own fold's selection half:
  selection data, never test data), then to fewer fusion points, then to the earliest fold.
  ``mask=`` takes another of the masks some fold chose (the epochs come from its lineage).
- **How long, and from what.** It retraces the chosen mask's lineage as the search trained it:
  the no-fusion network from scratch, then each accepted extension warm-started from the stage
  before (its new fusion modules initialised, a fresh optimizer, the search's recipe, schedule
  and seeds; a round's control, the chosen mask continued, is a stage too), each stage trained
  for the epochs at which the search kept that stage's weights (its best epoch), the median
  over the folds whose search reached the mask by that lineage (the most common lineage; half
  rounded up). Epochs, not steps: an epoch passes over more
  subjects here than in a fold (with the rotating layout, k/(k-2) times as many). Nothing is
  validated or selected: no subject is left to select on.
- **On what.** Every development sample: the union of the folds' training and validation
  parts. With the rotating layout (``fusionsearch run`` without ``--pooled``) that is every
  sample, including each fold's test part, since every sample is some fold's validation
  sample: the final model has no held-out subject, and its performance is estimated by the
  cross-validated held-out figures of the report, which measure the whole procedure (search,
  then train) on subjects the procedure never saw (standard practice after nested
  cross-validation: Varma and Simon 2006, Cawley and Talbot 2010). This is said when it trains,
  recorded (``includes_test_parts``) and written in the export's model card. With the reserved
  layout (``--pooled``), part 0 was never trained or selected on: it stays out, and the final
  model is tested on it (accuracy and AUC with 95 % bootstrap intervals). Nothing else is
  added.

It is stored in ``<experiment>/final/``: ``final.json`` (:class:`FinalModel`) and a checkpoint
per stage, ``stage<k>-<mask>/``, the last being the final model. A rerun after an interruption
trains only the stages not yet stored; a finished final model is never overwritten.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionsearch import storage
from fusionsearch.console import Progress
from fusionsearch.errors import UserError
from fusionsearch.mask import FusionMask
from fusionsearch.model.checkpoint import META_FILE, load_model
from fusionsearch.model.device import DevicePolicy
from fusionsearch.report.evaluation import predict as network_probabilities
from fusionsearch.report.statistics import METRIC_FUNCTIONS, bootstrap_interval
from fusionsearch.search.experiment import PREDICTIONS_FILE, read_candidates, read_run
from fusionsearch.search.records import Trial, lineage, replicate
from fusionsearch.settings import RunSettings
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.folds import FoldData, load_development
from fusionsearch.train.loop import train_epochs

log = logging.getLogger(__name__)

FINAL_DIR = "final"
RECORD_FILE = "final.json"
#: Bump when :class:`FinalModel`'s stored form changes.
FINAL_FORMAT = 1


@dataclass(frozen=True)
class Stage:
    """One stage of the lineage: ``mask`` trained ``epochs`` epochs (each fold's best epoch in
    ``per_fold``), on the schedule of a round tried ``extension`` times again."""

    mask: str
    epochs: int
    per_fold: tuple[int, ...]
    extension: int = 0


@dataclass(frozen=True)
class FinalPlan:
    """What :func:`plan_final` decided: the mask, its stages, the folds whose lineage they follow,
    and how often each mask was chosen (``(mask, folds)``, most often first)."""

    mask: str
    stages: tuple[Stage, ...]
    folds: tuple[int, ...]
    chosen: tuple[tuple[str, int], ...]

    @property
    def epochs(self) -> int:
        """Epochs over all stages."""
        return sum(s.epochs for s in self.stages)


@dataclass(frozen=True)
class FinalModel:
    """A trained final model (``final/final.json``).

    Attributes:
        plan: its mask and stages.
        checkpoint: the location of its checkpoint (the last stage's).
        samples: the development sample ids it trained on.
        includes_test_parts: whether those include every fold's test part (the rotating layout).
        held_out: on the reserved test part (``--pooled``): ``{metric: (value, low, high)}`` over
            ``held_out_n`` samples; empty when no sample was left out.
        seconds: the wall time of its training.
    """

    plan: FinalPlan
    checkpoint: str
    samples: tuple[str, ...]
    includes_test_parts: bool
    held_out: dict[str, tuple[float, float, float]]
    held_out_n: int
    seconds: float

    @property
    def mask(self) -> str:
        return self.plan.mask

    def describe(self) -> str:
        """What it is and what it trained on, in sentences (the report's and the model card's)."""
        stages = ", then ".join(f"{s.mask} for {s.epochs} epochs" for s in self.plan.stages)
        chosen = ", ".join(f"{m} on {n} fold(s)" for m, n in self.plan.chosen)
        text = (
            f"The final model (`fusionsearch final`), {self.mask} (chosen: {chosen}), was trained on "
            f"{len(self.samples)} development samples (every fold's training and validation parts), "
            f"retracing the search's lineage: {stages} (each stage's epochs: the median over folds of "
            "the epoch the search kept)."
        )
        if self.includes_test_parts:
            text += (
                " These include every fold's test part: no sample is held out from this model, and the "
                "cross-validated held-out figures are the estimate of the procedure that made it."
            )
        for name, (value, low, high) in self.held_out.items():
            text += (
                f" On the {self.held_out_n} reserved test samples, never trained or selected on: {name} "
                f"{value:.3f} (95 % CI {low:.3f}-{high:.3f})."
            )
        return text


def chosen_of(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each fold's chosen, finished trial (replicate 0) among a search's candidate ``rows``, by fold."""
    chosen = (r for r in rows if r["chosen"] and replicate(r)[1] == 0 and r["status"] == "ok")
    return sorted(chosen, key=lambda r: r["fold"])


def chosen_rows(
    experiment_dir: str, rows: Sequence[Mapping[str, Any]] | None = None
) -> list[Mapping[str, Any]]:
    """Each fold's chosen configuration with its checkpoint (replicate 0) of a finished search (its
    candidate ``rows``, read when not given); refused if unfinished."""
    rows = read_candidates(experiment_dir).to_pylist() if rows is None else rows
    chosen = [r for r in chosen_of(rows) if r["checkpoint"]]
    name = experiment_dir.rstrip("/").rsplit("/", 1)[-1]
    if not chosen or not storage.exists(storage.join(experiment_dir, PREDICTIONS_FILE)):
        raise UserError(
            f"the search {experiment_dir} has not finished (no evaluated chosen configuration); finish "
            f"it with 'fusionsearch resume {name}', then try again"
        )
    return chosen


def plan_final(rows: Sequence[Mapping[str, Any]], mask: str | None = None) -> FinalPlan:
    """The final model's mask and stages from a finished search's candidate rows (module docstring)."""
    chosen = chosen_of(rows)
    if not chosen:
        raise UserError("the search has no chosen configuration: finish it first")
    counts = Counter(r["mask"] for r in chosen)
    first = {m: min(r["fold"] for r in chosen if r["mask"] == m) for m in counts}
    loss = {m: _mean_loss([r for r in chosen if r["mask"] == m]) for m in counts}
    ranked = sorted(counts, key=lambda m: (-counts[m], loss[m], len(FusionMask.parse(m).active), first[m]))
    if mask is None:
        mask = ranked[0]
    elif mask not in counts:
        raise UserError(
            f"--mask {mask}: no fold chose it; choose one of the chosen masks {ranked} (the epochs "
            "of a final model come from the search's lineage of its mask)"
        )
    lineages: dict[tuple[tuple[str, int], ...], list[tuple[int, list[Mapping[str, Any]]]]] = {}
    for row in (r for r in chosen if r["mask"] == mask):
        search = [r for r in rows if replicate(r) == replicate(row) and r["status"] == "ok"]
        chain = lineage(row, search)[::-1]  # oldest first
        if chain[0]["parent_mask"] is not None:
            raise UserError(
                f"fold {row['fold']}: the lineage of {mask} does not reach a network trained from "
                f"scratch (the rows of {chain[0]['parent_mask']} are missing): resume the search"
            )
        key = tuple((r["mask"], r.get("extension") or 0) for r in chain)
        lineages.setdefault(key, []).append((row["fold"], chain))
    # The most common lineage; a tie goes to the one of the earliest fold (dicts keep insertion order).
    key, followed = max(lineages.items(), key=lambda item: len(item[1]))
    stages = []
    for k, (stage_mask, extension) in enumerate(key):
        epochs = [chain[k]["best_epoch"] for _, chain in followed]
        if any(e is None or math.isnan(e) for e in epochs):
            raise UserError(
                f"the search's trials of {stage_mask} reported no best epoch (a trainable other than "
                "fusionsearch's): a final model's epochs cannot be taken from them"
            )
        per_fold = tuple(int(e) for e in epochs)
        stages.append(Stage(stage_mask, math.floor(np.median(per_fold) + 0.5), per_fold, extension))
    return FinalPlan(
        mask, tuple(stages), tuple(f for f, _ in followed), tuple((m, counts[m]) for m in ranked)
    )


def _mean_loss(rows: Sequence[Mapping[str, Any]]) -> float:
    """The mean validation loss of chosen rows (their folds' selection halves); inf if unknown."""
    losses = [r.get("val_loss") for r in rows]
    if any(x is None or math.isnan(x) for x in losses):
        return math.inf
    return float(np.mean(losses))


def read_final(experiment_dir: str) -> FinalModel | None:
    """The experiment's final model, ``None`` if it has none (or none finished)."""
    path = storage.join(experiment_dir, FINAL_DIR, RECORD_FILE)
    if not storage.exists(path):
        return None
    value = storage.read_json(path)
    if value.pop("format_version", None) != FINAL_FORMAT:
        raise UserError(
            f"{path} was written by another fusionsearch version (format {FINAL_FORMAT} expected); move "
            f"{storage.join(experiment_dir, FINAL_DIR)} elsewhere and train the final model again"
        )
    plan = value.pop("plan")
    plan = FinalPlan(
        plan["mask"],
        tuple(Stage(s["mask"], s["epochs"], tuple(s["per_fold"]), s["extension"]) for s in plan["stages"]),
        tuple(plan["folds"]),
        tuple((m, n) for m, n in plan["chosen"]),
    )
    held_out = {k: tuple(v) for k, v in value.pop("held_out").items()}
    return FinalModel(plan=plan, samples=tuple(value.pop("samples")), held_out=held_out, **value)


def train_final(
    experiment_dir: str, *, mask: str | None = None, device: str | None = None, batch_size: int = 16
) -> FinalModel:
    """Train (or finish training) the final model of the finished search at ``experiment_dir``."""
    run = read_run(experiment_dir)
    if run.settings is None:
        raise UserError(
            f"the search {experiment_dir} trained {run.trainable}: its models are not fusionsearch's"
        )
    rows = read_candidates(experiment_dir).to_pylist()
    chosen_rows(experiment_dir, rows)  # finished?
    plan = plan_final(rows, mask)
    existing = read_final(experiment_dir)
    if existing is not None:
        if existing.mask == plan.mask:
            log.info("%s already has its final model (%s)", experiment_dir, existing.mask)
            return existing
        raise UserError(
            f"{experiment_dir} already has a final model, of mask {existing.mask}; nothing was overwritten: "
            f"to train one of {plan.mask}, move {storage.join(experiment_dir, FINAL_DIR)} elsewhere first"
        )
    data = load_development(run.settings.data)  # refused here if the cache is gone
    policy = DevicePolicy.select(device)
    started = time.time()
    progress = Progress("final model", plan.epochs)
    location = None
    with tempfile.TemporaryDirectory(prefix="fusionsearch-final-") as scratch:
        for k in range(len(plan.stages)):
            location = _stage(experiment_dir, run.settings, plan, k, data, policy, Path(scratch), progress)
    progress.close()
    with storage.local_copy(location) as folder:
        model = load_model(folder)
    held_out = {}
    if len(data.test):
        probabilities = network_probabilities(model, data.test, policy, batch_size)
        truth = data.test.labels.numpy()
        held_out = {
            name: (
                METRIC_FUNCTIONS[name](truth, probabilities),
                *bootstrap_interval(truth, probabilities, name),
            )
            for name in ("accuracy", "auc")
        }
    final = FinalModel(
        plan=plan,
        checkpoint=location,
        samples=tuple(data.train.ids),
        includes_test_parts=run.settings.data.layout == "rotating",
        held_out=held_out,
        held_out_n=len(data.test),
        seconds=time.time() - started,
    )
    record = {"format_version": FINAL_FORMAT, **asdict(final)}
    storage.write_json(storage.join(experiment_dir, FINAL_DIR, RECORD_FILE), record)
    log.info("final model of %s: %s, %d epochs", experiment_dir, plan.mask, plan.epochs)
    return final


def _stage(
    experiment_dir: str,
    settings: RunSettings,
    plan: FinalPlan,
    k: int,
    data: FoldData,
    policy: DevicePolicy,
    scratch: Path,
    progress: Progress,
) -> str:
    """Train stage ``k`` (unless stored already, from an interrupted run) and return where it is."""
    stage = plan.stages[k]
    location = storage.join(experiment_dir, FINAL_DIR, f"stage{k}-{stage.mask}")
    meta = storage.join(location, META_FILE)  # read alone: not the stage's weights from a URI
    if storage.exists(meta) and storage.read_json(meta)["metrics"].get("epochs_trained") == stage.epochs:
        for _ in range(stage.epochs):
            progress.step()
        return location
    parent_mask = plan.stages[k - 1].mask if k else None
    trial = Trial(stage.mask, 0, "final", k, parent_mask, extension=stage.extension)
    out = scratch / f"stage{k}"
    parent = scratch / f"stage{k - 1}" if k else None
    if parent is not None and not parent.is_dir():  # stored by an interrupted run: fetch it
        with storage.local_copy(storage.join(experiment_dir, FINAL_DIR, f"stage{k - 1}-{parent_mask}")) as f:
            shutil.copytree(f, parent)
    train_epochs(
        CandidateConfig(trial, settings),
        stage.epochs,
        data,
        out,
        parent=parent,
        policy=policy,
        meta={"fold": None, "stage": k, "samples": len(data.train)},
        on_epoch=lambda metrics: progress.step(),
    )
    # The metadata last: a stage counts as stored (above) only once its weights are.
    for file in sorted(out.iterdir(), key=lambda f: f.name == META_FILE):
        storage.write_bytes(storage.join(location, file.name), file.read_bytes())
    return location
