import os
import subprocess
import sys
import time

import pytest

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


@pytest.mark.parametrize("where", ["storage", "cache"])
def test_unwritable_storage_or_cache_is_refused_in_seconds_before_anything_starts(tmp_path, where):
    """An object store where nothing listens (or a cache folder that cannot be made): exit 2, one
    paragraph naming it, in seconds (not after pyarrow's ten seconds of retries), nothing built."""
    manifest = generate(tmp_path / "data", SynthConfig(n=12, size=16))
    env = os.environ | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "x",
                        "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    if where == "storage":
        options, location = ["--storage", "s3://nowhere/runs"], "--storage s3://nowhere/runs"
    else:
        (tmp_path / "file").write_text("a file, not a folder")
        options = ["--storage", str(tmp_path / "runs"), "--cache", str(tmp_path / "file" / "cache")]
        location = f"--cache {tmp_path / 'file' / 'cache'}"
    started = time.monotonic()
    argv = [sys.executable, "-m", "fusionsearch.cli", "run", "--data", str(manifest), "--folds=3", *options]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert f"{location}: cannot write there" in done.stderr and "Nothing was started" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data" / ".fusionsearch-cache").exists()  # nothing was built
    print(f"refused after {seconds:.1f} s (interpreter start and imports included)")
    assert seconds < 60
