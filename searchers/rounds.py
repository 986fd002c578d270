"""A Ray Tune searcher that runs a round-based fusion-mask strategy on every cross-validation fold."""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from ray.tune.search import Searcher

from fusionsearch import storage
from fusionsearch.mask import FusionMask
from fusionsearch.strategies import Outcome, best_outcome

log = logging.getLogger(__name__)

CANDIDATES_FILE = "candidates.parquet"
#: What a trial trains: a search candidate, a unimodal baseline, or an ensemble member.
ROLES = ("search", "unimodal", "ensemble")
#: Metrics copied from a candidate's final report into the candidates table.
REPORTED = ("val_accuracy", "val_auc", "best_epoch", "epochs_trained", "train_seconds", "started_at",
            "finished_at", "peak_rss_mb")  # fmt: skip
SCHEMA = pa.schema(
    [
        ("fold", pa.int64()),
        ("role", pa.string()),
        ("modality", pa.string()),
        ("mask", pa.string()),
        ("parent_mask", pa.string()),
        ("round", pa.int64()),
        ("val_loss", pa.float64()),
        ("status", pa.string()),
        ("trial_id", pa.string()),
        ("checkpoint", pa.string()),
        ("chosen", pa.bool_()),
        ("node_ip", pa.string()),
        ("node_id", pa.string()),
        ("error", pa.string()),
        *[(name, pa.float64()) for name in REPORTED],
    ]
)
# A trial is identified by what it trains, so restarted trials (new ids) are matched too.
TrialKey = tuple[str, int, str, str | None]  # role, fold, mask, modality


def _key(config: dict[str, Any]) -> TrialKey:
    return (config.get("role", "search"), config.get("fold", 0), config["mask"], config.get("modality"))


class RoundSearcher(Searcher):
    """Proposes a strategy's rounds to Ray Tune, a whole round at a time, on every fold.

    By default each fold runs its own search (``pooled=False``): folds progress independently,
    so one fold's next round starts while another's is still training. With ``pooled=True``
    one search runs over all folds: each candidate trains on every fold and scores the mean
    of its folds' validation losses. Alongside, it schedules a unimodal baseline per name in
    ``unimodal`` per fold (from the start: they need nothing from the search) and, with
    ``ensemble=True``, once a fold's search has finished, every fusion mask it did not train
    (warm-started from that fold's no-fusion baseline, as exhaustive search trains them), so
    that all ``2**m - 1`` fusion configurations exist for the brute-force ensemble.

    Each suggestion is ``{"mask", "parent", "parent_mask", "round", "fold", "modality",
    "role"}``; ``parent`` is the location of the parent's final checkpoint under the
    experiment's storage (the same fold's), which ``ray.tune.Checkpoint(parent)`` opens from
    any node. After every round the candidates table is written to
    ``<experiment>/candidates.parquet``.

    Args:
        strategy: an object with ``num_points`` and ``next_round(history) -> list[Candidate]``.
        metric: the reported metric to minimise (or maximise, with ``mode="max"``).
        mode: ``"min"`` or ``"max"``.
        folds: the cross-validation folds to search.
        pooled: one search scored on the mean over folds, instead of one search per fold.
        unimodal: modality names to train single-stream baselines of.
        ensemble: train the fusion masks the search left out, for the brute-force ensemble.
    """

    def __init__(
        self,
        strategy: Any,
        metric: str = "val_loss",
        mode: str = "min",
        *,
        folds: Sequence[int] = (0,),
        pooled: bool = False,
        unimodal: Sequence[str] = (),
        ensemble: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}; choose one of ['min', 'max']")
        super().__init__(metric=metric, mode=mode)
        self.strategy = strategy
        self.experiment_dir: str | None = None
        self.ensemble = ensemble
        groups = [tuple(folds)] if pooled else [(f,) for f in folds]
        self._groups = [{"folds": g, "history": [], "losses": {}, "finished": False} for g in groups]
        self._queue: list[dict[str, Any]] = [
            self._spec("unimodal", f, str(FusionMask.empty(strategy.num_points)), None, 0, modality=m)
            for f in folds
            for m in unimodal
        ]
        self._pending: dict[TrialKey, dict[str, Any]] = {}
        self._records: list[dict[str, Any]] = []
        self._trial_keys: dict[str, TrialKey] = {}
        self._finished = False
        self._max_concurrent: int | None = None

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
        spec = self._queue.pop(0)
        key = _key(spec)
        self._pending[key] = spec
        self._trial_keys[trial_id] = key
        parent = (
            self._checkpoint("search", spec["fold"], spec["parent_mask"]) if spec["parent_mask"] else None
        )
        if spec["parent_mask"] and parent is None:
            log.warning(
                "parent %s of %s left no checkpoint: it trains from scratch", spec["parent_mask"], key
            )
        return spec | {"parent": parent}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = result or {}
        config = result.get("config") or {k[7:]: v for k, v in result.items() if k.startswith("config/")}
        key = self._trial_keys.get(trial_id) or (_key(config) if "mask" in config else None)
        spec = self._pending.pop(key, None) if key else None
        if spec is None:
            log.warning("ignoring completion of trial %s (%s): not a pending trial", trial_id, key)
            return
        value = result.get(self.metric)
        ok = not error and value is not None
        checkpoint_name = result.get("checkpoint_dir_name")
        checkpoint = (
            storage.join(self.experiment_dir, trial_id, checkpoint_name)
            if ok and checkpoint_name and self.experiment_dir
            else None
        )
        self._records.append(
            {
                **{k: spec[k] for k in ("fold", "role", "modality", "mask", "parent_mask", "round")},
                "val_loss": float(value) if ok else None,
                "status": "ok" if ok else "failed",
                "trial_id": trial_id,
                "checkpoint": checkpoint,
                "node_ip": result.get("node_ip"),
                "node_id": result.get("node_id"),
                **{name: _float(result.get(name)) for name in REPORTED},
            }
        )
        if spec["role"] == "search":
            group = self._group(spec["fold"])
            loss = (value if self.mode == "min" else -value) if ok else None
            group["losses"].setdefault(spec["mask"], {})[spec["fold"]] = loss
            if not self._in_flight(group):
                self._close_round(group)
        log.info(
            "fold %d round %d: %s%s %s%s",
            spec["fold"],
            spec["round"],
            spec["mask"],
            f" ({spec['role']} {spec['modality'] or ''})".rstrip() if spec["role"] != "search" else "",
            f"{self.metric} {value:.4f}" if ok else "FAILED",
            f", {len(self._pending)} trial(s) still running" if self._pending else "",
        )
        if not any(s["role"] == "search" for s in self._pending.values()):
            self._write_table()

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
            self.__dict__.update(pickle.load(f))

    # --- planning -----------------------------------------------------------------------
    def _plan(self) -> None:
        """Queue the next round of every group whose current round has completed."""
        for group in self._groups:
            if group["finished"] or self._in_flight(group):
                continue
            candidates = list(self.strategy.next_round(group["history"]))
            if not candidates:
                group["finished"] = True
                if self.ensemble:
                    self._queue.extend(self._ensemble_specs(group))
                continue
            log.info(
                "folds %s round %d: %d candidate(s): %s",
                ",".join(map(str, group["folds"])),
                candidates[0].round,
                len(candidates),
                ", ".join(f"{c.mask} (from {c.parent or 'scratch'})" for c in candidates),
            )
            group["round"] = candidates
            for c in candidates:
                parent = str(c.parent) if c.parent else None
                self._queue.extend(
                    self._spec("search", f, str(c.mask), parent, c.round) for f in group["folds"]
                )

    def _in_flight(self, group: dict[str, Any]) -> bool:
        """Whether a search trial of ``group``'s current round is queued or running."""
        specs = [*self._queue, *self._pending.values()]
        return any(s["role"] == "search" and s["fold"] in group["folds"] for s in specs)

    def _close_round(self, group: dict[str, Any]) -> None:
        """Turn the finished round's per-fold losses into outcomes (mean over the group's folds)."""
        for candidate in group.pop("round", []):
            losses = [x for x in group["losses"].get(str(candidate.mask), {}).values() if x is not None]
            ok = [x for x in losses if not math.isnan(x)]
            group["history"].append(Outcome(candidate, sum(ok) / len(ok) if ok else None))

    def _ensemble_specs(self, group: dict[str, Any]) -> list[dict[str, Any]]:
        baseline = FusionMask.empty(self.strategy.num_points)
        trained = {str(o.candidate.mask) for o in group["history"]}
        return [
            self._spec("ensemble", f, str(m), str(baseline), 1)
            for f in group["folds"]
            for m in FusionMask.all_masks(self.strategy.num_points)
            if m != baseline and str(m) not in trained
        ]

    @staticmethod
    def _spec(
        role: str, fold: int, mask: str, parent_mask: str | None, round_: int, modality: str | None = None
    ):
        return {"role": role, "fold": fold, "mask": mask, "parent_mask": parent_mask, "round": round_,
                "modality": modality}  # fmt: skip

    def _group(self, fold: int) -> dict[str, Any]:
        return next(g for g in self._groups if fold in g["folds"])

    def _checkpoint(self, role: str, fold: int, mask: str) -> str | None:
        return next(
            (
                r["checkpoint"]
                for r in self._records
                if (r["role"], r["fold"], r["mask"]) == (role, fold, mask)
            ),
            None,
        )

    # --- results ------------------------------------------------------------------------
    def chosen_masks(self) -> dict[int, str | None]:
        """The chosen mask of every fold (the same for all folds of a pooled search)."""
        chosen = {}
        for group in self._groups:
            best = best_outcome(group["history"])
            chosen |= {f: str(best.candidate.mask) if best else None for f in group["folds"]}
        return chosen

    @property
    def best_mask(self) -> str | None:
        """The chosen mask of the first fold."""
        return next(iter(self.chosen_masks().values()), None)

    def table(self) -> pa.Table:
        """One row per finished trial, in completion order."""
        chosen = self.chosen_masks()
        rows = [
            r | {"chosen": r["role"] == "search" and r["mask"] == chosen.get(r["fold"])}
            for r in self._records
        ]
        return pa.Table.from_pylist(rows, schema=SCHEMA)

    def _write_table(self) -> None:
        if self.experiment_dir:
            storage.write_table(storage.join(self.experiment_dir, CANDIDATES_FILE), self.table())


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
