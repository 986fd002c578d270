"""The terminal's live progress: per-fold lines, in place on a terminal, plain lines elsewhere."""

import io
import logging
import sys
from types import SimpleNamespace

import pytest

from fusionsearch.console import CONSOLE, ConsoleHandler
from fusionsearch.tune.progress import fold_lines


def trial(fold, mask, status, round_=1, loss=None, seconds=None):
    result = {} if loss is None else {"val_loss": loss, "time_total_s": seconds}
    config = {"fold": fold, "mask": mask, "round": round_, "role": "search"}
    return SimpleNamespace(config=config, status=status, last_result=result)


def test_a_line_per_fold_with_its_round_counts_best_mask_and_estimate():
    trials = [trial(0, "0000", "TERMINATED", 0, 0.7, 10.0), trial(0, "1000", "TERMINATED", 1, 0.5, 20.0),
              trial(0, "0100", "RUNNING"), trial(0, "0010", "PENDING"),
              trial(1, "0000", "RUNNING", 0)]  # fmt: skip
    lines, states = fold_lines(trials, elapsed=75)
    assert lines[0].startswith("fold 0  round 1  done 2  running 1  queued 1  best 1000 (0.5000)  1m15s")
    assert lines[0].endswith("~0m15s left for the 2 proposed")  # median 15 s x 2 trials / 2 running
    assert lines[1].startswith("fold 1  round 0  done 0  running 1  queued 0  best -")
    assert states == [(0, 1, 2, 1, 1, "best 1000 (0.5000)"), (1, 0, 0, 1, 0, "best -")]


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_log_records_go_above_the_status_lines(monkeypatch, tty):
    stream = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logger = logging.getLogger("test-progress")
    logger.addHandler(ConsoleHandler())
    logger.propagate = False
    try:
        CONSOLE.show(["fold 0  round 0"], changed=True)
        logger.warning("a log record")
        CONSOLE.show(["fold 0  round 1"], changed=True)
        CONSOLE.show(["fold 0  round 1"], changed=False)
        CONSOLE.release()
    finally:
        logger.handlers.clear()
    if tty:  # drawn, erased (cursor up 1, clear) for the record, redrawn, then replaced in place
        redraw = "\x1b[1F\x1b[J"
        assert stream.getvalue() == (f"fold 0  round 0\n{redraw}a log record\nfold 0  round 0\n"
                                     f"{redraw}fold 0  round 1\n{redraw}fold 0  round 1\n")  # fmt: skip
    else:  # plain lines, the unchanged state not repeated
        assert stream.getvalue() == "fold 0  round 0\na log record\nfold 0  round 1\n"


def test_preprocessing_shows_a_bar_on_a_terminal_and_one_line_elsewhere(monkeypatch):
    from fusionsearch.console import Progress

    monkeypatch.setattr(CONSOLE, "enabled", True)
    for stream in (Terminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stream)
        progress = Progress("preprocessing", 4, width=8)
        for _ in range(4):
            progress.step()
        progress.close()
        last = stream.getvalue().rstrip("\n").rsplit("\n", 1)[-1].split("\x1b[J")[-1]
        assert last.startswith("preprocessing [########]  4/4  ") and "left" not in last
        draws = stream.getvalue().count("preprocessing")
        assert draws >= 2 if isinstance(stream, Terminal) else draws == 1  # redrawn in place / one line
