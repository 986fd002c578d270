"""stderr with a block of status lines kept at its bottom, and a logging handler that writes above it.

On a terminal the block is redrawn in place (ANSI cursor movement) and each log record is
printed above it; elsewhere log records and status lines are plain lines, in order.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO


class Console:
    """stderr with a block of status lines kept at its bottom (on a terminal)."""

    def __init__(self) -> None:
        self.enabled = False
        self.block: list[str] = []
        self.drawn = 0
        self.lock = threading.Lock()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @property
    def live(self) -> bool:
        return self.stream.isatty()

    def _erase(self) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # to the block's first line, clear below
            self.drawn = 0

    def _draw(self) -> None:
        self.stream.write("".join(f"{line}\n" for line in self.block))
        self.drawn = len(self.block)

    def write(self, text: str) -> None:
        """Print ``text`` (a log record) above the status lines."""
        with self.lock:
            if self.live:
                self._erase()
                self.stream.write(text)
                self._draw()
            else:
                self.stream.write(text)
            self.stream.flush()

    def show(self, lines: list[str], changed: bool) -> None:
        """Redraw the status lines (on a terminal); elsewhere print them when ``changed``."""
        with self.lock:
            if self.live:
                self._erase()
                self.block = lines
                self._draw()
            elif changed:
                self.stream.write("".join(f"{line}\n" for line in lines))
            self.stream.flush()

    def release(self) -> None:
        """Leave the last status lines on the screen as they are; later output goes below them."""
        with self.lock:
            self.block, self.drawn = [], 0


#: The process's console (the CLI enables it).
CONSOLE = Console()


class ConsoleHandler(logging.StreamHandler):
    """A logging handler that prints through :data:`CONSOLE`, above the status lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            CONSOLE.write(self.format(record) + self.terminator)
        except Exception:  # as logging.StreamHandler does
            self.handleError(record)


class Progress:
    """A progress bar of ``total`` steps on :data:`CONSOLE` (when enabled), at most twice a second.

    ``preprocessing [########------------]  41/100  3.8/s  ~16s left``
    """

    def __init__(self, what: str, total: int, width: int = 24) -> None:
        self.what, self.total, self.width = what, total, width
        self.done, self.started, self.shown = 0, time.monotonic(), 0.0

    def line(self) -> str:
        filled = round(self.width * self.done / max(self.total, 1))
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f"  ~{(self.total - self.done) / rate:.0f}s left" if rate and self.done < self.total else ""
        bar = "#" * filled + "-" * (self.width - filled)
        return f"{self.what} [{bar}]  {self.done}/{self.total}  {rate:.1f}/s{left}"

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if CONSOLE.enabled and CONSOLE.live and (now - self.shown >= 0.5 or self.done == self.total):
            self.shown = now
            CONSOLE.show([self.line()], changed=True)

    def close(self) -> None:
        """Leave the finished bar on a terminal; elsewhere print one summary line."""
        if CONSOLE.enabled and self.total:
            CONSOLE.show([self.line()], changed=not CONSOLE.live)
            CONSOLE.release()
