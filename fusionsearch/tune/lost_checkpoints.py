"""Resume past resumable checkpoints that never reached, or no longer are in, the storage.

Tune's saved experiment state names each trial's latest checkpoint. With
``CheckpointConfig(num_to_keep=1)`` Tune deletes a trial's older checkpoint as soon as it
registers a newer one, and uploads the state afterwards, in the background. When the storage
fails in between (an S3 outage, a full disk, a killed driver), the stored state can name a
checkpoint that is gone. Restoring that trial then fails every time ("Could not recover from
checkpoint as it does not exist on storage anymore") and the resumed search stops.

:class:`ForgetLostCheckpoints` checks, before a resumed search starts its first trial, every
unfinished trial's latest checkpoint; where it is missing, the trial starts again from its
config (a warm-started candidate from its parent's checkpoint, exactly as the first time), so
at most that candidate's training so far is lost, and the log says which and why.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from fusionsearch.tune.compat import TERMINATED, forget_checkpoints

log = logging.getLogger(__name__)


def _missing(checkpoint: tune.Checkpoint) -> bool:
    try:
        return checkpoint.filesystem.get_file_info(checkpoint.path).type == pafs.FileType.NotFound
    except OSError:  # the storage is unreachable: leave the trial as it is, Tune reports that
        return False


class ForgetLostCheckpoints(tune.Callback):
    """Before the first step, unfinished trials whose latest checkpoint is missing lose it."""

    def __init__(self) -> None:
        self.checked = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.checked:
            return
        self.checked = True
        for trial in trials:
            checkpoint = trial.checkpoint
            if trial.status == TERMINATED or checkpoint is None or not _missing(checkpoint):
                continue
            log.warning(
                "trial %s (mask %s): its resumable checkpoint %s is missing from the storage; "
                "it starts again from its config",
                trial.trial_id,
                trial.config.get("mask"),
                checkpoint.path,
            )
            forget_checkpoints(trial)

    def __getstate__(self) -> dict:  # pickled into tuner.pkl: a restored search checks again
        return {"checked": False}
