"""The searchers and driver on a real local Ray, with a scripted trainable of known losses."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ray import tune

from conftest import plain_tune_search, scripted_driver, trial_key
from fusionsearch.cli import main
from fusionsearch.errors import UserError
from fusionsearch.mask import FusionMask
from fusionsearch.search.strategies import SFSA, BeamSearch, Outcome, best_outcome
from fusionsearch.tune.driver import load_result, read_run, resume_search, run_search, trial_slots
from processes import kill_tree
from searchers import BeamSearcher, ExhaustiveSearcher, SFSASearcher
from trainables.scripted import scripted_trainable

# SFSA: 0000 -> round 1 picks 0100 -> round 2 picks 0110 -> round 3 improves nothing: 10 trials.
LAND = {str(m): 2.0 for m in FusionMask.all_masks(4)}
LAND |= {"0000": 1.0, "1000": 0.9, "0100": 0.5, "0010": 0.7, "0001": 0.8, "0110": 0.4, "0101": 0.45,
         "1100": 0.6}  # fmt: skip


pytestmark = pytest.mark.usefixtures("local_ray")


def search(tmp_path, searcher, name="search", max_concurrent=1, **config):
    """A scripted search; one trial at a time unless ``max_concurrent`` says otherwise: half-second
    trials end before a second actor has started, which Tune then starts only to stop it again."""
    return run_search(
        searcher,
        trainable=scripted_trainable,
        config={"landscape": LAND, "duration": 0.5} | config,
        storage_path=tmp_path,
        name=name,
        resources={"cpu": 1},
        max_failures=0,
        max_concurrent=max_concurrent,
    )


def simulated(strategy):
    history = []
    while candidates := strategy.next_round(history):
        history += [Outcome(c, LAND[str(c.mask)]) for c in candidates]
    return history


def rows_by_round(table):
    rounds = {}
    for row in table.to_pylist():
        rounds.setdefault(row["round"], set()).add((row["mask"], row["parent_mask"]))
    return rounds


def test_sfsa_rounds_parents_and_checkpoints(tmp_path):
    # A round's trials wait for each other, so they provably run at once (round 1 in 4 actors).
    # Each round has its control beside the children: 4 + 1, 3 + 1, 2 + 1 trials, 4 CPUs.
    gather = {"dir": str(tmp_path / "gather"), "sizes": {"1": 4, "2": 4, "3": 3}}
    result = search(tmp_path, SFSASearcher(), max_concurrent=None, duration=0.5, gather=gather)
    expected = simulated(SFSA())
    assert rows_by_round(result.table) == rows_by_round_from(expected)
    assert str(result.best_mask) == str(best_outcome(expected).candidate.mask) == "0110"
    rows = result.table.to_pylist()
    assert all(r["status"] == "ok" for r in rows)
    assert [r["mask"] for r in rows if r["chosen"]] == ["0110"]
    # Every child's parent location opens with ray.tune.Checkpoint and holds the parent's mask.
    pids: dict[int, set[int]] = {}
    for row in rows:
        with tune.Checkpoint(row["checkpoint"]).as_directory() as directory:
            state = json.loads((Path(directory) / "state.json").read_text())
        assert state["mask"] == row["mask"] and state["parent_seen"] == row["parent_mask"]
        pids.setdefault(row["round"], set()).add(state["metrics"]["pid"])
    # Later rounds ran in round 1's actors, kept warm, not in fresh processes (stock Tune keeps
    # one idle actor); a reused actor still trained its own candidate from its own parent.
    assert len(pids[1]) >= 4 and pids[2] | pids[3] <= pids[1]
    controls = sorted((r["round"], r["mask"]) for r in rows if r["role"] == "control")
    assert controls == [(1, "0000"), (2, "0100"), (3, "0110")]
    # The table is persisted as Parquet under the experiment folder.
    assert load_result(result.experiment_dir).table.equals(result.table)
    assert Path(result.experiment_dir, "candidates.parquet").is_file()


def rows_by_round_from(history):
    rounds = {}
    for outcome in history:
        c = outcome.candidate
        rounds.setdefault(c.round, set()).add((str(c.mask), c.parent and str(c.parent)))
    return rounds


def test_beam_and_exhaustive_on_ray(tmp_path):
    beam = search(tmp_path, BeamSearcher(beam_width=2, patience=1), name="beam")
    assert rows_by_round(beam.table) == rows_by_round_from(simulated(BeamSearch(4, 2, 1)))
    exhaustive = search(tmp_path, ExhaustiveSearcher(), name="exhaustive", duration=0.1)
    assert sorted(exhaustive.table["mask"].to_pylist()) == sorted(LAND)
    assert str(exhaustive.best_mask) == "0110"


def test_concurrency_follows_the_clusters_resources_not_the_number_of_masks(tmp_path):
    # One fusion point (2 masks) on three folds: round 0 has three baselines, more than the 2**m
    # trials a search once ran at most (with max_concurrent=2 the third never starts and this fails);
    # the local Ray's 4 CPUs hold them all at once.
    gather = {"dir": str(tmp_path / "gather"), "sizes": {"0": 3}, "timeout": 30}
    result = run_search(SFSASearcher(num_points=1, folds=[0, 1, 2]), trainable=scripted_trainable,
                        config={"landscape": {"0": 1.0, "1": 0.5}, "duration": 0.1, "gather": gather},
                        storage_path=tmp_path, name="wide", resources={"cpu": 1}, max_failures=0)  # fmt: skip
    rows = result.table.to_pylist()
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows)  # baseline, child, control per fold
    assert sorted(p.name for p in (tmp_path / "gather" / "0").iterdir()) == ["0-0", "1-0", "2-0"]
    assert read_run(str(tmp_path / "wide")).max_concurrent is None  # counted from the cluster on resume too
    # What the cluster holds: the scarcest resource decides; a custom resource counts like the others.
    assert trial_slots({"cpu": 1, "gpu": 1}, {"CPU": 64.0, "GPU": 32.0}) == 32
    assert trial_slots({"cpu": 4, "gpu": 0.5}, {"CPU": 16.0, "GPU": 8.0}) == 4
    assert trial_slots(None, {"CPU": 3.0}) == 3 and trial_slots({"cpu": 8}, {"CPU": 4.0}) == 1
    assert trial_slots({"cpu": 1, "ssd": 1}, {"CPU": 8.0, "ssd": 2.0}) == 2


def test_failing_candidate_does_not_stall_the_search(tmp_path):
    result = search(tmp_path, SFSASearcher(), fail=["0100"])
    rows = {r["mask"]: r for r in result.table.to_pylist() if r["role"] == "search"}
    assert rows["0100"]["status"] == "failed" and "scripted failure of 0100" in rows["0100"]["error"]
    assert rows["0100"]["checkpoint"] is None
    # Without 0100, round 1's best is 0010 (0.7); the search goes on from it and finds 0110.
    assert rows["0110"]["parent_mask"] == "0010" and str(result.best_mask) == "0110"
    assert {m for m, r in rows.items() if r["round"] == 2} == {"1010", "0110", "0011"}


def test_sfsa_searcher_over_eight_block_points(tmp_path):
    rng = np.random.default_rng(8)
    land8 = {str(m): float(rng.random()) for m in FusionMask.all_masks(8)}
    result = run_search(SFSASearcher(num_points=8), trainable=scripted_trainable, config={"landscape": land8},
                        storage_path=tmp_path, name="m8", resources={"cpu": 1}, max_failures=0)  # fmt: skip
    history, strategy = [], SFSA(8)
    while candidates := strategy.next_round(history):
        history += [Outcome(c, land8[str(c.mask)]) for c in candidates]
    rows = result.table.to_pylist()
    assert sorted((r["round"], r["mask"], r["parent_mask"]) for r in rows) == sorted(
        (o.candidate.round, str(o.candidate.mask), o.candidate.parent and str(o.candidate.parent))
        for o in history
    )
    assert (
        str(result.best_mask) == str(strategy.chosen(history).candidate.mask)
        and len(str(result.best_mask)) == 8
    )


def test_searcher_in_a_plain_tuner_warm_starts_children_or_fails_loudly(tmp_path):
    from fusionsearch.search.experiment import trial_dirname

    # With Tune's own trial folder names and the searcher's callback: every child reads its parent.
    searcher = SFSASearcher()
    states = plain_tune_search(
        searcher, str(tmp_path), "default-names", callbacks=[searcher.checkpoint_locator()]
    )
    assert len(states) == 10 + 3 and states["search", "0000"] == (None, None)  # 3 rounds, a control each
    assert all(seen == parent for seen, parent in states.values())  # 12 children, each from its own parent
    assert not any(
        p.name.startswith("trial_") for p in (tmp_path / "default-names").iterdir()
    )  # Tune's names
    # Told where the experiment lives, with trial folders named by trial id: the same.
    searcher = SFSASearcher(experiment_dir=str(tmp_path / "plain"))
    states = plain_tune_search(searcher, str(tmp_path), "plain", trial_dirname_creator=trial_dirname)
    assert len(states) == 13 and all(seen == parent for seen, parent in states.values())
    # Told neither: the first child cannot be handed its parent, and the run fails saying why.
    with pytest.raises(Exception, match="does not know where the experiment lives"):
        plain_tune_search(SFSASearcher(), str(tmp_path), "lost")


def test_resuming_a_search_with_a_users_trainable_from_the_cli_says_how_to_do_it(tmp_path, capsys):
    search(tmp_path, ExhaustiveSearcher(num_points=1), name="own", duration=0.0)
    assert main(["resume", "own", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "own trainable 'trainables.scripted.scripted_trainable'" in err and "Traceback" not in err
    assert "resume_search(" in err and "trainable=scripted_trainable" in err
    assert len(err.strip().splitlines()) == 1  # one paragraph


def test_existing_experiment_is_never_overwritten(tmp_path):
    search(tmp_path, ExhaustiveSearcher(num_points=1), name="once", duration=0.0)
    with pytest.raises(UserError, match=r"already exists.*fusionsearch resume once"):
        search(tmp_path, SFSASearcher(), name="once")


@pytest.mark.slow
def test_a_resumable_checkpoint_lost_before_resume_restarts_its_trial_from_its_parent(
    tmp_path, caplog, monkeypatch
):
    # Round 1's 1000 reports a resumable checkpoint, then holds; the driver and its local Ray are
    # killed meanwhile and that checkpoint is lost (as when the storage fails between Tune deleting
    # an older checkpoint and uploading its state). Tune's state still names it: resume must not try
    # to restore it, and must not train again what finished before the kill.
    hold = {"masks": ["1000"], "seconds": 4.0}
    script = scripted_driver(tmp_path / "driver.py", storage=tmp_path, name="lost",
                             config={"landscape": LAND, "duration": 0.0, "hold": hold})  # fmt: skip
    process = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    experiment = tmp_path / "lost"
    partial = []
    deadline = time.time() + 180
    while time.time() < deadline and not partial:
        partial = [
            c
            for c in experiment.glob("*/checkpoint_*")
            if (c / "state.json").is_file() and '"partial": true' in (c / "state.json").read_text()
        ]
        time.sleep(0.1)
    assert partial, "1000's resumable checkpoint never appeared"
    # Tune registers it and saves its state; round 1's other trials (no duration) finish meanwhile,
    # so none finishes as the driver is killed (it would train again: docs/troubleshooting.md).
    time.sleep(1.5)
    # SIGKILL the driver and the local Ray it started (workers may sit in sessions of their own).
    kill_tree(process.pid)
    process.wait()
    before = {trial_key(r): r for r in load_result(str(experiment)).table.to_pylist()}
    assert before, "round 0 did not finish before the kill"
    for checkpoint in partial:
        shutil.rmtree(checkpoint)

    from fusionsearch.tune import driver

    kept = []  # when idle actors stay warm: the restored searcher says (no trial under Ray Train)
    monkeypatch.setattr(driver, "keep_warm", lambda count, when, real=driver.keep_warm: kept.append(when)
                        or real(count, when))  # fmt: skip
    with caplog.at_level("WARNING", logger="fusionsearch.tune.driver"):
        result = resume_search(str(experiment), trainable=scripted_trainable)
    assert isinstance(kept[0].__self__, SFSASearcher) and len(kept[0].__self__._records) == 13
    assert str(result.best_mask) == "0110"
    rows = {r["mask"]: r for r in result.table.to_pylist() if r["role"] == "search"}
    assert rows["1000"]["status"] == "ok" and rows["1000"]["parent_mask"] == "0000"
    with tune.Checkpoint(rows["1000"]["checkpoint"]).as_directory() as directory:
        state = json.loads((Path(directory) / "state.json").read_text())
    assert state["parent_seen"] == "0000" and not state["resumed"]  # started again from its parent
    assert any("mask 1000" in m and "is missing from the storage" in m for m in caplog.messages)
    after = result.table.to_pylist()
    assert len(after) == len({trial_key(r) for r in after}) == 10 + 3  # each trained once; 3 controls
    for row in after:
        if trial_key(row) in before:  # finished before the kill: the same trial, not retrained
            assert (row["trial_id"], row["started_at"]) == (before[trial_key(row)]["trial_id"],
                                                            before[trial_key(row)]["started_at"])  # fmt: skip


class _Budget(tune.Stopper):
    """A user's budget: ends the whole experiment after 3 finished trials."""

    def __init__(self) -> None:
        self.finished = 0

    def __call__(self, trial_id, result) -> bool:
        self.finished += bool(result.get("done"))
        return False

    def stop_all(self) -> bool:
        return self.finished >= 3


def test_a_search_a_stopper_ends_early_says_so_and_lists_the_trials_that_never_ran(tmp_path, caplog):
    searcher = SFSASearcher()
    tune.Tuner(
        scripted_trainable,
        param_space={"landscape": LAND},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="budget", storage_path=str(tmp_path), stop=_Budget(), verbose=0,
                                  callbacks=[searcher.checkpoint_locator()]),
    ).fit()  # fmt: skip
    rows = searcher.table().to_pylist()
    ran = [r for r in rows if r["status"] == "ok"]
    never = [r for r in rows if r["status"] == "not run"]
    assert len(ran) == 3 and never, rows  # round 1 was proposed, not all of it ran
    assert {(r["mask"], r["role"]) for r in ran + never} >= {("0000", "search"), ("0001", "search")}
    assert "the search ended before it finished" in caplog.text and "is not final" in caplog.text
    assert not any(r["chosen"] for r in never)
    from fusionsearch.report.summary import summary_text
    from fusionsearch.search.experiment import SearchResult

    text = summary_text(SearchResult(None, searcher.table(), str(tmp_path / "budget")))
    assert f"the search did not finish: {len(never)} proposed trial(s) never ran" in text
