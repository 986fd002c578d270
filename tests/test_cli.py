import subprocess
import sys

from fusionsearch.cli import main


def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "fusionsearch.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "smoke" in out


def test_smoke_trains_on_random_tensors(capsys):
    assert main(["smoke", "--size", "16", "--width", "0.125", "--steps", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "mask 0100" in out and "volumes/s" in out


def test_bad_mask_is_one_line_error_and_exit_2(capsys):
    assert main(["smoke", "--mask", "01", "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert "4 candidate fusion points" in err and "Traceback" not in err
