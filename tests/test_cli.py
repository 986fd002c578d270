import subprocess
import sys

from conftest import free_port
from fusionsearch.cli import main
from fusionsearch.data.synth import SynthConfig, generate


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


def test_unreachable_cluster_is_a_prompt_one_paragraph_error(tmp_path):
    # Where nothing listens, ray.init alone would retry for about 13 minutes.
    address = f"127.0.0.1:{free_port()}"
    manifest = generate(tmp_path / "data", SynthConfig(n=12, size=16))
    done = subprocess.run([sys.executable, "-m", "fusionsearch.cli", "run", "--data", str(manifest),
                           "--address", address, "--folds", "3", "--storage", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert f"cannot reach the Ray cluster at '{address}'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / ".fusionsearch-cache").exists()  # nothing was built
