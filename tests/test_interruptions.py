"""Mistakes refused before launch, deterministic failures not retried, clean interruption and resume."""

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import ray
from ray import tune

from conftest import BaselineThenOne, cached_data, scripted_driver, tiny_search, trial_key, wait_for
from fusionsearch import storage
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.mask import FusionMask
from fusionsearch.search.records import outcome
from fusionsearch.search.strategies import SFSA
from fusionsearch.settings import (
    DataConfig,
    ModelConfig,
    PreprocessConfig,
    RunSettings,
    TrainConfig,
    to_dict,
)
from fusionsearch.tune.driver import load_result, run_search
from searchers import RoundSearcher, SFSASearcher

CLI = [sys.executable, "-m", "fusionsearch.cli"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data"), SynthConfig(n=24, size=16, seed=1))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--folds", "2"], "folds=2: need at least 3"),
        (["--folds", "3", "--fold", "5"], "fold=5: choose one of 0..2"),
        (["--gpus", "4"], "--gpus 4: torch sees 0 CUDA device(s) on this machine"),
        (["--gpus", "0", "--cpus-per-trial", "64"], "--cpus-per-trial 64: this machine has"),
        (["--gpus", "0", "--init-streams", "{tmp}/junk.pth"], "junk.pth: cannot read it"),
    ],
)
def test_mistakes_are_refused_in_seconds_before_anything_starts(manifest, tmp_path, capsys, options, message):
    """``fusionsearch run`` in this process (a command's exit code and one-paragraph error through
    a subprocess, with its imports, are tested in test_cli: each of these took 8-10 s that way)."""
    from fusionsearch import cli

    cache = tmp_path / "cache"
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    argv = [
        "run",
        "--data",
        str(manifest),
        "--storage",
        str(tmp_path / "runs"),
        "--cache",
        str(cache),
        *options,
    ]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one paragraph
    assert not cache.exists() and not (tmp_path / "runs").exists()  # nothing built, nothing searched


def test_a_deterministic_failure_in_a_trial_fails_once_with_its_message(tmp_path, session_ray):
    ray.init(address=session_ray, log_to_driver=False)
    try:
        settings = RunSettings(data=DataConfig(index="nowhere", cache="nowhere", folds=3))
        # Fold 4 of 3: every trial's config is rejected, the same way on every try.
        result = run_search(
            SFSASearcher(folds=[4]),
            config={"settings": settings},
            storage_path=tmp_path,
            name="bad",
            resources={"cpu": 1},
            max_failures=3,
        )
    finally:
        ray.shutdown()
    [row] = result.table.to_pylist()  # round 0 failed: nothing to extend
    assert row["status"] == "failed" and row["error"].startswith("ConfigError: fold=4 must be in 0..2")
    trial = Path(result.experiment_dir, row["trial_id"])
    assert len((trial / "result.json").read_text().splitlines()) == 1  # one report, one try
    assert not (trial / "error.txt").exists()  # Tune saw no exception, so it retried nothing


def test_a_trial_given_a_gpu_it_cannot_see_fails_once_naming_its_node(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSIONSEARCH_CPU_FALLBACK", raising=False)
    # A logical GPU:
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        settings = RunSettings(data=DataConfig(index="nowhere", cache="nowhere", folds=3))
        result = run_search(
            SFSASearcher(),
            config={"settings": settings},
            storage_path=tmp_path,
            name="gpu",
            resources={"cpu": 1, "gpu": 1},
            max_failures=3,
        )
        node = ray.util.get_node_ip_address()
    finally:
        ray.shutdown()
    [row] = result.table.to_pylist()
    assert (
        row["status"] == "failed"
        and "sees no CUDA device" in row["error"]
        and f"on node {node}" in row["error"]
    )
    assert not Path(result.experiment_dir, row["trial_id"], "error.txt").exists()


class CorruptParent(tune.Callback):
    """Overwrites the weights of the baseline's final checkpoint as soon as it finishes."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.config["mask"] == "0000":
            Path(trial.checkpoint.path, "model.pt").write_bytes(b"not a tensor file")


@pytest.mark.slow
def test_a_corrupt_parent_checkpoint_fails_its_child_naming_the_location(manifest, tmp_path, session_ray):
    settings = RunSettings(
        data=cached_data(manifest, tmp_path / "cache", PreprocessConfig(shape=16)),
        model=ModelConfig(width=0.125),
        train=TrainConfig(epochs=1, patience=1, batch_size=8),
    )
    ray.init(address=session_ray, log_to_driver=False)
    try:
        result = run_search(
            RoundSearcher(BaselineThenOne()),
            config={"settings": to_dict(settings)},
            storage_path=tmp_path,
            name="corrupt",
            resources={"cpu": 1},
            max_failures=2,
            callbacks=[CorruptParent()],
        )
    finally:
        ray.shutdown()
    rows = {r["mask"]: r for r in result.table.to_pylist() if r["role"] == "search"}
    parent, child = rows["0000"], rows["0100"]
    assert parent["status"] == "ok" and child["status"] == "failed"
    assert "CheckpointError" in child["error"] and "model.pt cannot be read" in child["error"]
    assert parent["checkpoint"] in child["error"]  # names the parent's location
    assert len(Path(tmp_path, "corrupt", child["trial_id"], "result.json").read_text().splitlines()) == 1


def _sfsa_answer(rows, extend: bool = False):
    """What SFSA chooses from these trials' reports, replayed without Ray (the uninterrupted answer):
    the keys of the trials it trains and the key of its answer."""
    by_key = {trial_key(r): r for r in rows}
    history, strategy = [], SFSA(extend=extend)  # otherwise the command line's rules are its defaults

    def key(c):
        return "control" if c.control else "search", str(c.mask), c.round, c.extension

    while candidates := strategy.next_round(history):
        history += [outcome(c, [by_key[key(c)]]) for c in candidates]
    return {key(o.candidate) for o in history}, key(strategy.chosen(history).candidate)


@pytest.mark.slow
def test_signals_stop_cleanly_and_resume_gives_the_uninterrupted_answer(manifest, tmp_path):
    """SIGTERM stops the search, SIGINT (Ctrl-C) stops its resume, a second resume finishes it: each
    stop keeps what finished, and the answer is the uninterrupted one, with nothing retrained."""
    storage, experiment = tmp_path / "runs", tmp_path / "runs" / "x"
    finished: dict = {}  # trial key -> row, of the candidates finished before each stop
    for command, signum, code in [
        (tiny_search(manifest, storage, "x", tmp_path / "cache", extend=True), signal.SIGTERM, 143),
        (["resume", "x", "--storage", str(storage)], signal.SIGINT, 130),
    ]:
        run = subprocess.Popen([*CLI, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(_finished(experiment)) > len(finished) or run.poll() is not None,  # noqa: B023
                 what="a candidate to finish")  # fmt: skip
        assert run.poll() is None, "the search ended before it could be interrupted"
        os.kill(run.pid, signum)
        out, err = run.communicate(timeout=300)
        assert run.returncode == code, err[-3000:]
        assert f"continue with 'fusionsearch resume x --storage {storage}'" in err
        # No traceback of the command itself (trial workers' lines, forwarded by Ray with their pid,
        # may show the interrupted trial's KeyboardInterrupt).
        assert not [line for line in err.splitlines() if "Traceback" in line and "pid=" not in line]
        assert "held-out" not in out
        assert not (experiment / "report").exists() and not (experiment / "predictions.parquet").exists()
        now = _finished(experiment)
        assert set(finished) < set(now)  # every stop kept what had finished, and each run added some
        finished = now

    done = subprocess.run(
        [*CLI, "resume", "x", "--storage", str(storage)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in load_result(str(experiment)).table.to_pylist() if r["role"] != "longer"]
    assert all(r["status"] == "ok" for r in rows) and len(rows) == len({trial_key(r) for r in rows})
    trained, chosen = _sfsa_answer(rows, extend=True)
    assert {trial_key(r) for r in rows} == trained and [trial_key(r) for r in rows if r["chosen"]] == [chosen]
    for row in rows:  # finished before a signal: the same trial, not retrained
        if trial_key(row) in finished:
            before = finished[trial_key(row)]
            assert (row["trial_id"], row["started_at"]) == (before["trial_id"], before["started_at"])
    assert (experiment / "report" / "report.html").is_file()


def _finished(experiment: Path) -> dict:
    """The finished candidates of the table so far, by trial key (none before the table exists)."""
    if not (experiment / "candidates.parquet").is_file():
        return {}
    return {trial_key(r): r for r in load_result(str(experiment)).table.to_pylist() if r["status"] == "ok"}


@pytest.mark.slow
def test_two_searches_started_at_once_under_one_name_one_runs(tmp_path):
    land = {str(m): 1.0 for m in FusionMask.all_masks(4)}
    config = {"landscape": land, "duration": 0.0}
    scripts = [
        scripted_driver(tmp_path / f"driver{i}.py", storage=tmp_path / "runs", name="same", config=config)
        for i in range(2)
    ]
    runs = [
        subprocess.Popen(
            [sys.executable, str(s)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for s in scripts
    ]
    errors = [r.communicate(timeout=300)[1] for r in runs]
    codes = sorted(r.returncode for r in runs)
    assert codes[0] == 0 and codes[1] != 0, errors
    loser = errors[[r.returncode for r in runs].index(codes[1])]
    assert "an experiment named 'same' already exists" in loser
    rows = load_result(str(tmp_path / "runs" / "same")).table.num_rows
    assert rows == 5 + 1  # the winner's search, whole: 4 children and the control

    # Its search state truncated (as a copy over a full disk leaves it): resume refuses, saying so,
    # instead of Tune's logging the failure and starting the search over beside the finished trials.
    (state,) = (tmp_path / "runs" / "same").glob("search_gen_state-*.json")
    state.write_bytes(state.read_bytes()[:40])
    refused = subprocess.run([*CLI, "resume", "same", "--storage", str(tmp_path / "runs")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert f"the search state {state} is damaged" in refused.stderr and "Traceback" not in refused.stderr


@pytest.fixture
def small_filesystem(tmp_path):
    """A 40 MB tmpfs (as root); the test is skipped where mounting is not allowed."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_an_upload_to_a_full_disk_leaves_the_previous_file_whole(tmp_path, small_filesystem):
    """What Tune's uploads of its state go through (storage.tune_filesystem): a copy that runs out of
    space keeps the previous version; pyarrow's own local filesystem leaves it truncated."""
    source = tmp_path / "upload"
    source.mkdir()
    (source / "state.json").write_bytes(os.urandom(41 << 20))  # more than the 40 MB there
    ours = storage.tune_filesystem(str(small_filesystem))
    assert pickle.loads(pickle.dumps(ours)) == ours  # handed to Ray's workers
    for filesystem, whole in [(ours, True), (pafs.LocalFileSystem(), False)]:
        target = small_filesystem / filesystem.type_name
        target.mkdir()
        (target / "state.json").write_bytes(b"the previous version")
        with pytest.raises(OSError, match="No space left on device"):
            pafs.copy_files(str(source), str(target), destination_filesystem=filesystem)
        assert ((target / "state.json").read_bytes() == b"the previous version") == whole
        assert [p.name for p in target.iterdir()] == ["state.json"]  # no partial file left


@pytest.mark.slow
def test_a_full_storage_stops_the_search_and_resume_finishes_it(manifest, tmp_path, small_filesystem):
    storage = small_filesystem
    # Checkpoints after every epoch (~17 MB each at this width) fill 40 MB within round 1.
    argv = tiny_search(
        manifest, storage, "full", tmp_path / "cache", "--checkpoint-interval", "0", "--epochs", "3"
    )
    run = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stderr[-3000:]
    assert f"the storage of {storage}/full is full" in run.stderr and "No space left on device" in run.stderr
    assert f"continue with 'fusionsearch resume full --storage {storage}'" in run.stderr
    assert "Traceback" not in run.stderr.split("fusionsearch run: error:")[-1]
    # Tune's state, uploaded over its previous copy while the disk was full, is whole (its last
    # complete version): each file loads, and no partial upload is left beside them.
    experiment_files = [p.name for p in (storage / "full").iterdir()]
    assert not [n for n in experiment_files if n.endswith(".partial")], experiment_files
    for state in (storage / "full").glob("experiment_state-*.json"):
        json.loads(state.read_text())
    for state in [
        *(storage / "full").glob("search_gen_state-*.json"),
        *(storage / "full").glob("searcher-state-*"),
    ]:
        pickle.loads(state.read_bytes())  # Tune's cloudpickle output
    before = {
        trial_key(r): r for r in load_result(str(storage / "full")).table.to_pylist() if r["status"] == "ok"
    }

    subprocess.run(["mount", "-o", "remount,size=400m", str(storage)], check=True)  # space is back
    done = subprocess.run([*CLI, "resume", "full", "--storage", str(storage)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in load_result(str(storage / "full")).table.to_pylist() if r["role"] != "longer"]
    assert all(r["status"] == "ok" for r in rows) and len(rows) == len({trial_key(r) for r in rows})
    trained, chosen = _sfsa_answer(rows)
    assert {trial_key(r) for r in rows} == trained and [trial_key(r) for r in rows if r["chosen"]] == [chosen]
    for row in rows:  # finished before the storage filled up: not retrained
        if trial_key(row) in before:
            assert row["trial_id"] == before[trial_key(row)]["trial_id"]
