"""Live progress of a search in the terminal: one line per fold, under the log.

Drawn through :data:`fusionsearch.console.CONSOLE`: on a terminal the lines stay at the bottom
and are redrawn in place; elsewhere (a file, a CI log, a job scheduler's output) the lines are
printed whenever a fold's state changes. Shown where the command line asks for it
(``fusionsearch run``/``resume`` without ``--quiet``); a search started from Python shows it
only if it sets ``CONSOLE.enabled = True``.

    fold 0  round 2  done 6  running 3  queued 0  best 0010 (0.4123)  3m12s  ~1m40s left for the 3 proposed
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from ray import tune

from fusionsearch.console import CONSOLE
from fusionsearch.tune.compat import Trial


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def fold_lines(trials: list, elapsed: float) -> tuple[list[str], list[tuple]]:
    """One status line per fold of the search's trials, and the state each line shows (no clock)."""
    folds: dict[int, list] = {}
    for trial in trials:
        folds.setdefault(int(trial.config.get("fold", 0)), []).append(trial)
    durations = [
        t.last_result["time_total_s"]
        for t in trials
        if t.status == Trial.TERMINATED and "time_total_s" in (t.last_result or {})
    ]
    running_total = sum(t.status == Trial.RUNNING for t in trials) or 1
    lines, states = [], []
    for fold, mine in sorted(folds.items()):
        count = {
            s: sum(t.status == s for t in mine) for s in (Trial.TERMINATED, Trial.RUNNING, Trial.PENDING)
        }
        finished = [
            t for t in mine if t.status == Trial.TERMINATED and t.config.get("role", "search") == "search"
        ]
        losses = [(t.last_result.get("val_loss"), t.config.get("mask")) for t in finished if t.last_result]
        losses = [(loss, mask) for loss, mask in losses if isinstance(loss, int | float) and loss == loss]
        best = f"best {min(losses)[1]} ({min(losses)[0]:.4f})" if losses else "best -"
        rounds = max((int(t.config.get("round", 0)) for t in mine), default=0)
        state = (fold, rounds, count[Trial.TERMINATED], count[Trial.RUNNING], count[Trial.PENDING], best)
        left = count[Trial.RUNNING] + count[Trial.PENDING]
        estimate = ""
        if durations and left:
            eta = statistics.median(durations) * left / running_total
            estimate = f"  ~{_duration(eta)} left for the {left} proposed"
        lines.append(
            f"fold {fold}  round {rounds}  done {state[2]}  running {state[3]}  queued {state[4]}  {best}  "
            f"{_duration(elapsed)}{estimate}"
        )
        states.append(state)
    return lines, states


class FoldProgress(tune.Callback):
    """Shows :func:`fold_lines` through :data:`CONSOLE` about once a second while Tune runs."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.started: float | None = None
        self.shown = 0.0
        self.states: list[tuple] = []

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not CONSOLE.enabled:
            return
        now = time.monotonic()
        self.started = self.started or now
        if now - self.shown < self.interval:
            return
        self.shown = now
        lines, states = fold_lines(trials, now - self.started)
        CONSOLE.show(lines, changed=states != self.states)
        self.states = states

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if CONSOLE.enabled and self.started is not None:
            lines, states = fold_lines(trials, time.monotonic() - self.started)
            CONSOLE.show(lines, changed=states != self.states)
            CONSOLE.release()

    def __getstate__(self) -> dict:  # pickled into tuner.pkl: a resumed search starts its clock anew
        return {"interval": self.interval, "started": None, "shown": 0.0, "states": []}
