"""Errors a user fixes from the message alone; the CLI prints them without a traceback."""

from __future__ import annotations

from collections.abc import Sequence


class UserError(ValueError):
    """Bad input: the message names the input and the fix."""


class DataError(UserError):
    """A dataset that cannot be trained on; ``problems`` lists every problem found, one per line."""

    def __init__(self, summary: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        lines = [summary, *(f"  {p}" for p in self.problems)]
        super().__init__("\n".join(lines))
