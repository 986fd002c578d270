"""A Ray Tune searcher that runs a round-based fusion-mask strategy."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pyarrow as pa
from ray.tune.search import Searcher

from fusionsearch import storage
from fusionsearch.strategies import Candidate, Outcome, best_outcome

log = logging.getLogger(__name__)

CANDIDATES_FILE = "candidates.parquet"
#: Metrics copied from a candidate's final report into the candidates table.
REPORTED = ("val_accuracy", "val_auc", "best_epoch", "epochs_trained", "train_seconds", "started_at",
            "finished_at")  # fmt: skip
SCHEMA = pa.schema(
    [
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


class RoundSearcher(Searcher):
    """Proposes a strategy's rounds to Ray Tune, a whole round at a time.

    Each suggestion is ``{"mask", "parent", "parent_mask", "round"}``; ``parent`` is the
    location of the parent candidate's final checkpoint under the experiment's storage, which
    ``ray.tune.Checkpoint(parent)`` opens from any node sharing that storage. The next round
    is computed only when every candidate of the current one has completed or failed.
    Candidates are keyed by mask, so trial ids the searcher never issued (restarted trials)
    are matched by their config. After every round the candidates table is written to
    ``<experiment>/candidates.parquet``.

    Args:
        strategy: an object with ``next_round(history) -> list[Candidate]``.
        metric: the reported metric to minimise (or maximise, with ``mode="max"``).
        mode: ``"min"`` or ``"max"``.
    """

    def __init__(self, strategy: Any, metric: str = "val_loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}; choose one of ['min', 'max']")
        super().__init__(metric=metric, mode=mode)
        self.strategy = strategy
        self.experiment_dir: str | None = None
        self._history: list[Outcome] = []
        self._records: list[dict[str, Any]] = []
        self._queue: list[Candidate] = []
        self._pending: dict[str, Candidate] = {}
        self._trial_masks: dict[str, str] = {}
        self._finished = False
        self._max_concurrent: int | None = None

    # --- Ray Tune API -------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._finished:
            return Searcher.FINISHED
        if not self._queue and not self._pending:
            self._queue = list(self.strategy.next_round(self._history))
            if not self._queue:
                self._finished = True
                self._write_table()
                best = self.best_mask
                log.info("search finished after %d candidates; chosen mask: %s", len(self._history), best)
                return Searcher.FINISHED
            log.info(
                "round %d: %d candidate(s): %s",
                self._queue[0].round,
                len(self._queue),
                ", ".join(f"{c.mask} (from {c.parent or 'scratch'})" for c in self._queue),
            )
        if not self._queue or len(self._pending) >= (self._max_concurrent or len(self._pending) + 1):
            return None  # the round is in flight; Tune asks again when a trial completes
        candidate = self._queue.pop(0)
        mask = str(candidate.mask)
        self._pending[mask] = candidate
        self._trial_masks[trial_id] = mask
        parent_mask = str(candidate.parent) if candidate.parent else None
        parent = next((r["checkpoint"] for r in self._records if r["mask"] == parent_mask), None)
        if parent_mask and parent is None:
            log.warning("parent %s of %s left no checkpoint: %s trains from scratch", parent_mask, mask, mask)
        return {"mask": mask, "parent": parent, "parent_mask": parent_mask, "round": candidate.round}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = result or {}
        mask = (
            self._trial_masks.get(trial_id)
            or result.get("config/mask")
            or result.get("config", {}).get("mask")
        )
        candidate = self._pending.pop(mask, None) if mask else None
        if candidate is None:
            log.warning("ignoring completion of trial %s (mask %s): not a pending candidate", trial_id, mask)
            return
        value = result.get(self.metric)
        ok = not error and value is not None
        checkpoint_name = result.get("checkpoint_dir_name")
        checkpoint = (
            storage.join(self.experiment_dir, trial_id, checkpoint_name)
            if ok and checkpoint_name and self.experiment_dir
            else None
        )
        self._history.append(Outcome(candidate, (value if self.mode == "min" else -value) if ok else None))
        self._records.append(
            {
                "mask": mask,
                "parent_mask": str(candidate.parent) if candidate.parent else None,
                "round": candidate.round,
                "val_loss": float(value) if ok else None,
                "status": "ok" if ok else "failed",
                "trial_id": trial_id,
                "checkpoint": checkpoint,
                "node_ip": result.get("node_ip"),
                "node_id": result.get("node_id"),
                **{name: _float(result.get(name)) for name in REPORTED},
            }
        )
        log.info(
            "round %d: %s %s%s",
            candidate.round,
            mask,
            f"{self.metric} {value:.4f}" if ok else "FAILED",
            f", {len(self._pending)} of the round still running" if self._pending else "",
        )
        if not self._pending and not self._queue:
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

    # --- results ------------------------------------------------------------------------
    @property
    def best_mask(self) -> str | None:
        best = best_outcome(self._history)
        return str(best.candidate.mask) if best else None

    def table(self) -> pa.Table:
        """One row per finished candidate, in completion order."""
        best = self.best_mask
        rows = [r | {"chosen": r["mask"] == best} for r in self._records]
        return pa.Table.from_pylist(rows, schema=SCHEMA)

    def _write_table(self) -> None:
        if self.experiment_dir:
            storage.write_table(storage.join(self.experiment_dir, CANDIDATES_FILE), self.table())


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
