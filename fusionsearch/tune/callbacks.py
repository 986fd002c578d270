"""The Ray Tune callbacks of a search: progress in the log, failed trials' errors, a failing storage.

They run in the driver's process, inside ``Tuner.fit()``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from ray import tune

from fusionsearch.search import experiment
from fusionsearch.tune.compat import failures

log = logging.getLogger(__name__)


class ProgressLog(tune.Callback):
    """Logs each candidate's epochs (at DEBUG: ``fusionsearch -v``): round, mask, parent, epoch, loss."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        config = trial.config
        if result.get("final") or "epoch" not in result:
            return
        log.debug(
            "round %s  %s (from %s)  epoch %s  val_loss %.4f  val_accuracy %.3f",
            config.get("round"),
            config.get("mask"),
            config.get("parent_mask") or "scratch",
            result.get("epoch"),
            result.get("val_loss", float("nan")),
            result.get("val_accuracy", float("nan")),
        )


def _last_error(trial: Any) -> str:
    """The last line of a trial's error file (Tune keeps it in the driver's staging folder)."""
    text = ""
    with contextlib.suppress(OSError, TypeError):
        text = Path(trial.error_file).read_text()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed"


class FailureLog(tune.Callback):
    """Logs each failed trial's error in one line and keeps it in the experiment's ``errors.json``
    (not once :class:`StorageGuard`, called before it, has found the storage failing: the trial
    stays pending, and writing there would only delay the stop by the storage's retries)."""

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _last_error(trial)
        log.error("trial %s (mask %s) failed: %s (full text: %s)", trial.trial_id, trial.config.get("mask"),
                  error, trial.error_file)  # fmt: skip
        if storage_failure:
            return
        try:
            experiment.record_error(self.experiment_dir, trial.trial_id, error)
        except OSError as error:  # the storage itself failing (full, unreachable): keep the search going
            log.warning("could not record the error of trial %s: %s", trial.trial_id, error)


#: Set by :class:`StorageGuard` in the driver's process while ``fit()`` runs; read and cleared by ``_fit``.
storage_failure: dict[str, str] = {}
#: How a storage failure reads in an error: full (no retry helps), or unreachable (retried first).
_STORAGE_MARKERS = {
    "full": ("No space left on device", "errno 28", "Errno 28"),
    "unreachable": (
        "NETWORK_CONNECTION",
        "Couldn't connect to server",
        "Connection refused",
        "curlCode: 7",
        "Could not connect to the endpoint",
        "Unable to connect",
    ),
}


def storage_failure_kind(error: str) -> str | None:
    return next(
        (kind for kind, markers in _STORAGE_MARKERS.items() if any(m in error for m in markers)), None
    )


class StorageGuard(tune.Callback):
    """Stops the search, as Ctrl-C does, when trials fail because the storage fails.

    A full storage stops it at the first such failure (no retry can help); an unreachable one
    once a trial has failed on it twice (a short outage is retried). Waiting longer would let
    a candidate run out of retries and count as failed; the stop keeps the trial pending, so
    ``resume`` retrains it from its last checkpoint once the storage works again.
    """

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trial, last=True)

    def _check(self, trial: Any, last: bool = False) -> None:
        error = _last_error(trial)
        kind = storage_failure_kind(error)
        if storage_failure or kind is None:
            return
        if kind == "unreachable" and not last and failures(trial) < 2:
            log.warning("trial %s: the storage is unreachable (%s); retrying", trial.trial_id, error)
            return
        storage_failure.update(kind=kind, detail=error)
        log.error("trial %s: the storage is %s (%s); stopping the search", trial.trial_id, kind, error)
        if callable(signal.getsignal(signal.SIGUSR1)):  # Tune's stop request, as for Ctrl-C
            signal.raise_signal(signal.SIGUSR1)
