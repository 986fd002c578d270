"""Finding and killing process trees from /proc, for crash tests."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def _stat(pid_dir: Path) -> list[str]:
    return pid_dir.joinpath("stat").read_text().rsplit(")", 1)[1].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            children.setdefault(int(_stat(pid_dir)[1]), []).append(int(pid_dir.name))
    family, stack = [], [pid]
    while stack:
        family.append(stack.pop())
        stack += children.get(family[-1], [])
    return family


def by_name(name: str) -> list[int]:
    """PIDs whose executable is called ``name``, oldest first."""
    found = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            if pid_dir.joinpath("comm").read_text().strip() == name:
                found.append((int(_stat(pid_dir)[19]), int(pid_dir.name)))  # field 22: start time
    return [pid for _, pid in sorted(found)]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants."""
    for member in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
