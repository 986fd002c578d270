"""Errors a user fixes from the message alone (the CLI prints them without a traceback), and interruptions."""

from __future__ import annotations

import signal
from collections.abc import Sequence


class UserError(ValueError):
    """Bad input: the message names the input and the fix."""


class DataError(UserError):
    """A dataset that cannot be trained on; ``problems`` lists every problem found, one per line."""

    def __init__(self, summary: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        lines = [summary, *(f"  {p}" for p in self.problems)]
        super().__init__("\n".join(lines))


class StorageError(UserError):
    """The experiment's storage is full or unreachable: the search stopped, resumable once it works.

    Attributes:
        kind: ``full`` or ``unreachable``.
    """

    def __init__(self, experiment_dir: str, kind: str, detail: str) -> None:
        self.kind = kind
        parent, _, name = experiment_dir.rstrip("/").rpartition("/")
        what, fix = {
            "full": ("is full", "Free space there"),
            "unreachable": (
                "could not be reached, also on retries",
                "Check the endpoint, network and credentials",
            ),
        }[kind]
        super().__init__(
            f"the storage of {experiment_dir} {what} ({detail}); the search stopped, keeping every finished "
            "candidate and the search state (a running candidate loses at most its last checkpoint "
            f"interval). {fix}, then continue with 'fusionsearch resume {name} --storage {parent}'"
        )


class SearchInterrupted(Exception):
    """The search stopped on SIGINT (Ctrl-C) or SIGTERM; its finished candidates and state are kept.

    Attributes:
        experiment_dir: the experiment, to resume with :func:`resume_search`.
        signum: the signal that stopped it.
    """

    def __init__(self, experiment_dir: str, signum: int) -> None:
        self.experiment_dir, self.signum = experiment_dir, signum
        super().__init__(f"the search at {experiment_dir} was interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum
