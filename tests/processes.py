"""Finding and killing process trees from /proc, for crash tests."""

from __future__ import annotations

import contextlib
import os
import shutil
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


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants."""
    for member in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def cluster_processes(temp_dir: str, port: int) -> list[int]:
    """The processes of the Ray cluster started with ``RAY_TMPDIR=temp_dir`` and GCS ``port``, oldest
    first: those whose command line names its folder or port, and everything below them (so other
    Ray instances on the machine, such as a parallel test's, are left alone)."""
    marks = (temp_dir.encode(), f":{port} ".encode(), f"={port} ".encode())
    roots = []
    for pid_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError):
            words = pid_dir.joinpath("cmdline").read_bytes().replace(b"\0", b" ") + b" "
            if any(m in words for m in marks):
                roots.append(int(pid_dir.name))
    members = {pid for root in roots for pid in descendants(root)}
    started = {}
    for pid in members:
        with contextlib.suppress(OSError, IndexError):
            started[pid] = int(_stat(Path("/proc", str(pid)))[19])
    return sorted(started, key=started.__getitem__)


def name_of(pid: int) -> str:
    """The executable name of ``pid`` ("" once it is gone)."""
    with contextlib.suppress(OSError):
        return Path("/proc", str(pid), "comm").read_text().strip()
    return ""


def stop_cluster(temp_dir: str, port: int) -> None:
    """Kill the Ray cluster of ``temp_dir`` and ``port`` (its own processes only: ``ray stop`` would
    end every Ray on the machine) and remove its folder."""
    for pid in cluster_processes(temp_dir, port):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)
