"""stderr with a block of status lines kept at its bottom, and a logging handler that writes above it.

On a terminal the block is redrawn in place (ANSI cursor movement) and each log record is
printed above it; elsewhere log records and status lines are plain lines, in order.
"""

from __future__ import annotations

import logging
import sys
import threading
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
