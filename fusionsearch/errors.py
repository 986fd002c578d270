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
