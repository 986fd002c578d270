import argparse
import dataclasses
import os
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field

import pytest

from conftest import free_port
from fusionsearch import settings
from fusionsearch.cli import _subparsers, add_options, build_parser, given, main, run_settings
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


RECORDS = (settings.SearchConfig, settings.TrainConfig, settings.ResourceConfig, settings.ModelConfig,
           settings.PreprocessConfig)  # fmt: skip


def _other_value(f: dataclasses.Field, hint, how: settings.Option) -> tuple[list[str], object]:
    """Command-line words setting field ``f`` to a value other than its default, and that value."""
    default = f.default
    if hint is bool:
        return [], not default
    if how.choices:
        value = next(c for c in how.choices if c != default)
    else:
        kind = next(t for t in (typing.get_args(hint) or (hint,)) if t in (int, float, str))
        value = "x" if kind is str else kind((default or 1) * 0.5 + 3)
    return [str(value)], value


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_every_setting_with_option_metadata_is_an_option_of_run_that_reaches_its_record(record):
    """The options are made from the records' field metadata: a new setting is one edit."""
    parser = build_parser()
    hints = typing.get_type_hints(record)
    fields = [(f, f.metadata["cli"]) for f in dataclasses.fields(record) if "cli" in f.metadata]
    assert fields
    run = next(sub for sub in _subparsers(parser) if sub.prog.endswith(" run"))
    flags = {action.dest: action.option_strings[0] for action in run._actions if action.option_strings}
    for f, how in fields:
        words, value = _other_value(f, hints[f.name], how)
        args = parser.parse_args(["run", flags[f.name], *words])
        assert given(args, record) == {f.name: value}, f.name
        assert (
            given(parser.parse_args(["run", "--data", "m.csv"]), record) == {}
        )  # the record's defaults apply


def test_demo_defaults_apply_without_data_only_and_the_help_says_so(capsys):
    demo = run_settings(build_parser().parse_args(["run"]))
    real = run_settings(build_parser().parse_args(["run", "--data", "m.csv"]))
    assert (demo["train"].epochs, demo["train"].lr) == (settings.DEMO["epochs"], settings.DEMO["lr"])
    assert (demo["model"].width, demo["preprocess"].shape) == (settings.DEMO["width"], settings.DEMO["shape"])
    assert real["train"] == settings.TrainConfig() and real["model"] == settings.ModelConfig()
    assert real["preprocess"] == settings.PreprocessConfig() and real["search"] == settings.SearchConfig()
    given_lr = run_settings(build_parser().parse_args(["run", "--lr", "0.01"]))
    assert given_lr["train"].lr == 0.01  # what the user gives beats the demo's
    assert main(["run", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "max epochs per candidate (default: 30; 12 for the planted demo)" in out
    assert "--size EDGE cube edge after crop/pad (default: 64; 32 for the planted demo)" in out
    assert "--no-unimodal skip the unimodal baselines" in out


def test_a_record_of_ones_own_becomes_options_with_no_other_edit():
    @dataclass(frozen=True)
    class Sampling:
        temperature: float = field(default=1.0, metadata=settings.option("softmax temperature"))
        rounds: int | None = field(default=None, metadata=settings.option("rounds", unset="until done"))
        keep: bool = field(default=True, metadata=settings.option("forget the history"))
        internal: int = 7  # no metadata: not an option

    parser = argparse.ArgumentParser()
    add_options(parser, Sampling)
    args = parser.parse_args(["--temperature", "0.5", "--no-keep"])
    assert Sampling(**given(args, Sampling)) == Sampling(temperature=0.5, keep=False)
    help_text = " ".join(parser.format_help().split())
    assert "softmax temperature (default: 1)" in help_text and "rounds (default: until done)" in help_text
    assert "--internal" not in help_text
