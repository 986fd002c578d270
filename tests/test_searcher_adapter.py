"""The Ray Tune searcher adapter's bookkeeping, driven directly (no Ray session needed)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.tune.search import Searcher

from fusionsearch.errors import UserError
from searchers import BeamSearcher, SFSASearcher


def complete(searcher, trial_id, mask, loss, checkpoint="checkpoint_000001", **config):
    """Report a trial's last result, as Tune does, with its checkpoint folder persisted in the experiment."""
    if searcher.experiment_dir and checkpoint:
        Path(searcher.experiment_dir, trial_id, checkpoint).mkdir(parents=True, exist_ok=True)
    config = {"mask": mask, **config}
    searcher.on_trial_complete(trial_id, {"val_loss": loss, "checkpoint_dir_name": checkpoint,
                                          **{f"config/{k}": v for k, v in config.items()}})  # fmt: skip


def finish(searcher, suggestions, losses):
    """Complete ``suggestions`` (trial id -> config) with ``losses[mask]`` (or ``losses[fold, mask]``)."""
    for trial_id, spec in suggestions.items():
        loss = losses.get((spec["fold"], spec["mask"]), losses.get(spec["mask"], 1.0))
        complete(searcher, trial_id, spec["mask"], loss, fold=spec["fold"], role=spec["role"],
                 modality=spec["modality"])  # fmt: skip


def drain(searcher, prefix):
    """Every suggestion the searcher has now."""
    out = {}
    while isinstance(spec := searcher.suggest(f"{prefix}{len(out)}"), dict):
        out[f"{prefix}{len(out)}"] = spec
    return out


def test_round_is_issued_whole_then_waits_then_finishes(tmp_path):
    searcher = SFSASearcher()
    searcher.set_experiment_dir(str(tmp_path))
    first = searcher.suggest("t0")
    assert first == {"mask": "0000", "parent": None, "parent_mask": None, "round": 0, "fold": 0,
                     "role": "search", "modality": None, "extension": 0, "epochs": None,
                     "repeat": 0, "workers": 1}  # fmt: skip
    assert searcher.suggest("t1") is None  # round 0 in flight
    complete(searcher, "t0", "0000", 1.0)
    round1 = [searcher.suggest(f"r1-{i}") for i in range(5)]
    assert [(s["mask"], s["role"]) for s in round1] == [
        ("1000", "search"), ("0100", "search"), ("0010", "search"), ("0001", "search"), ("0000", "control")
    ]  # fmt: skip
    assert {s["parent"] for s in round1} == {f"{tmp_path}/t0/checkpoint_000001"}
    assert searcher.suggest("extra") is None
    for i, loss in enumerate([1.5, 1.2, 1.1, 1.3, 0.9]):  # the continued baseline beats them all
        complete(searcher, f"r1-{i}", round1[i]["mask"], loss)
    assert searcher.suggest("done") == Searcher.FINISHED
    assert searcher.best_mask == "0000"
    assert (tmp_path / "candidates.parquet").is_file()


def test_unknown_trial_ids_are_matched_by_mask_or_ignored():
    searcher = SFSASearcher()
    searcher.suggest("t0")
    complete(searcher, "never-issued", "1111", 0.1)  # not a pending candidate: ignored
    assert searcher.table().num_rows == 0
    complete(searcher, "restarted-with-new-id", "0000", 0.9)  # a restarted trial of 0000
    assert searcher.table().to_pylist()[0]["trial_id"] == "restarted-with-new-id"


def test_errored_trial_is_a_failed_candidate():
    searcher = SFSASearcher()
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", None, error=True)
    row = searcher.table().to_pylist()[0]
    assert row["status"] == "failed" and row["val_loss"] is None and row["checkpoint"] is None
    assert searcher.suggest("t1") == Searcher.FINISHED  # nothing to extend


def test_save_restore_mid_round(tmp_path):
    searcher = BeamSearcher(beam_width=2, patience=1, experiment_dir=str(tmp_path / "exp"))
    searcher.suggest("t0")
    complete(searcher, "t0", "0000", 1.0)
    issued = [searcher.suggest(f"t{i}") for i in range(1, 6)]
    complete(searcher, "t1", issued[0]["mask"], 0.5)
    searcher.save(str(tmp_path / "state.pkl"))
    restored = BeamSearcher()
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.strategy == searcher.strategy and restored.suggest("t9") is None
    for i in range(2, 6):
        complete(restored, f"t{i}", issued[i - 1]["mask"], 0.8)
    assert restored.suggest("t10")["round"] == 2
    assert restored.table().num_rows == 6


def test_max_mode_and_concurrency_limit(tmp_path):
    searcher = SFSASearcher(metric="val_accuracy", mode="max", experiment_dir=str(tmp_path))

    def done(trial_id, accuracy, mask):
        (tmp_path / trial_id / "checkpoint_000000").mkdir(parents=True)
        searcher.on_trial_complete(trial_id, {"val_accuracy": accuracy, "config/mask": mask,
                                              "checkpoint_dir_name": "checkpoint_000000"})  # fmt: skip

    assert searcher.set_max_concurrency(2) is True
    searcher.suggest("t0")
    done("t0", 0.5, "0000")
    assert searcher.suggest("a") and searcher.suggest("b") and searcher.suggest("c") is None
    done("a", 0.9, "1000")
    done("b", 0.4, "0100")
    for trial_id in ("c", "d", "e"):  # the last is the control, the continued baseline
        done(trial_id, 0.6, searcher.suggest(trial_id)["mask"])
    assert searcher.best_mask == "1000"  # the highest accuracy wins in max mode


def test_folds_search_independently_and_choose_their_own_mask(tmp_path):
    searcher = SFSASearcher(folds=(0, 1))
    searcher.set_experiment_dir(str(tmp_path))
    round0 = drain(searcher, "a")
    assert sorted((s["fold"], s["mask"]) for s in round0.values()) == [(0, "0000"), (1, "0000")]
    finish(searcher, {"a0": round0["a0"]}, {"0000": 1.0})  # only fold 0 is done ...
    round1 = drain(searcher, "b")  # ... and fold 0's round 1 starts while fold 1 trains
    assert {s["fold"] for s in round1.values()} == {0} and len(round1) == 5  # 4 children, 1 control
    assert all(s["parent"] == f"{tmp_path}/a0/checkpoint_000001" for s in round1.values())
    finish(searcher, {"a1": round0["a1"]}, {"0000": 1.0})
    round1b = drain(searcher, "c")
    assert {s["fold"] for s in round1b.values()} == {1}
    assert all(s["parent"] == f"{tmp_path}/a1/checkpoint_000001" for s in round1b.values())  # its own fold's
    finish(searcher, round1, {"0100": 0.5})
    finish(searcher, round1b, {"0010": 0.5})
    for prefix in "de":
        finish(searcher, drain(searcher, prefix), {})  # no further improvement
    assert searcher.suggest("z") == Searcher.FINISHED
    assert searcher.chosen_masks() == {0: "0100", 1: "0010"}
    chosen = [(r["fold"], r["mask"]) for r in searcher.table().to_pylist() if r["chosen"]]
    assert sorted(chosen) == [(0, "0100"), (1, "0010")]


def test_replicates_search_in_parallel_each_from_its_own_lineage(tmp_path):
    searcher = SFSASearcher(folds=(0, 1), repeats=2, unimodal=("T1w",), experiment_dir=str(tmp_path))
    round0 = drain(searcher, "a")
    searches = sorted((s["fold"], s["repeat"], s["role"]) for s in round0.values())
    # The unimodal baselines train in replicate 0 only.
    assert searches == [(0, 0, "search"), (0, 0, "unimodal"), (0, 1, "search"), (1, 0, "search"),
                        (1, 0, "unimodal"), (1, 1, "search")]  # fmt: skip
    finish(searcher, round0, {})
    round1 = drain(searcher, "b")
    assert len(round1) == 4 * 5  # every (fold, replicate): 4 children and a control
    by_id = {(s["fold"], s["repeat"], "0000"): i for i, s in round0.items() if s["role"] == "search"}
    for s in round1.values():  # each replicate warm-starts from its own baseline
        assert s["parent"] == f"{tmp_path}/{by_id[s['fold'], s['repeat'], '0000']}/checkpoint_000001"
    # Fold 0: replicate 0 finds 0100, replicate 1 finds 0010; fold 1: both find nothing.
    for trial_id, s in round1.items():
        wins = {(0, 0): "0100", (0, 1): "0010"}.get((s["fold"], s["repeat"]))
        loss = 0.5 if s["mask"] == wins and s["role"] == "search" else 1.0
        complete(searcher, trial_id, s["mask"], loss, fold=s["fold"], role=s["role"], repeat=s["repeat"])
    for prefix in "cd":
        finish(searcher, drain(searcher, prefix), {})
    assert searcher.suggest("z") == Searcher.FINISHED
    assert searcher.chosen_masks() == {0: "0100", 1: "0000"}
    assert searcher.chosen_masks(repeat=1) == {0: "0010", 1: "0000"}
    chosen = sorted((r["fold"], r["repeat"], r["mask"]) for r in searcher.table().to_pylist() if r["chosen"])
    assert chosen == [(0, 0, "0100"), (0, 1, "0010"), (1, 0, "0000"), (1, 1, "0000")]


def test_pooled_search_scores_the_mean_over_folds(tmp_path):
    searcher = SFSASearcher(folds=(0, 1, 2), pooled=True, experiment_dir=str(tmp_path))
    round0 = drain(searcher, "a")
    assert len(round0) == 3  # the baseline on every fold
    assert drain(searcher, "x") == {}  # the round waits for all three
    finish(searcher, round0, {})
    round1 = drain(searcher, "b")
    assert len(round1) == 15 and {s["fold"] for s in round1.values()} == {0, 1, 2}  # 4 children, 1 control
    # 1000 is best on fold 0 alone, 0001 on average.
    finish(searcher, round1, {(0, "1000"): 0.1, (1, "1000"): 0.95, (2, "1000"): 0.95,
                              (0, "0001"): 0.5, (1, "0001"): 0.5, (2, "0001"): 0.5})  # fmt: skip
    assert searcher.chosen_masks() == {0: "0001", 1: "0001", 2: "0001"}


def test_unimodal_baselines_start_at_once_and_ensemble_fills_in_the_missing_masks(tmp_path):
    searcher = SFSASearcher(folds=(0,), unimodal=("T1w", "FLAIR"), ensemble=True)
    searcher.set_experiment_dir(str(tmp_path))
    first = drain(searcher, "a")
    roles = sorted((s["role"], s["modality"]) for s in first.values())
    assert roles == [("search", None), ("unimodal", "FLAIR"), ("unimodal", "T1w")]
    assert all(s["mask"] == "0000" and s["parent"] is None for s in first.values())
    finish(searcher, first, {})
    finish(searcher, drain(searcher, "b"), {"0100": 0.5})
    finish(searcher, drain(searcher, "c"), {})  # no improvement: the search ends
    ensemble = drain(searcher, "d")
    assert all(s["role"] == "ensemble" and s["parent_mask"] == "0000" for s in ensemble.values())
    trained = {r["mask"] for r in searcher.table().to_pylist() if r["role"] == "search"}
    assert {s["mask"] for s in ensemble.values()} == {f"{i:04b}" for i in range(1, 16)} - trained
    finish(searcher, ensemble, {})
    assert searcher.suggest("z") == Searcher.FINISHED
    assert searcher.best_mask == "0100"  # baselines and ensemble members are never chosen


def test_a_child_whose_parent_cannot_be_located_fails_loudly_instead_of_training_from_scratch(tmp_path):
    lost = SFSASearcher()  # as in a plain Tuner: nobody told it where the experiment lives
    lost.suggest("t0")
    complete(lost, "t0", "0000", 1.0)
    with pytest.raises(UserError, match="does not know where the experiment lives"):
        lost.suggest("t1")
    elsewhere = SFSASearcher(experiment_dir=str(tmp_path))  # told, but Tune named the folders otherwise
    elsewhere.suggest("t0")
    complete(elsewhere, "t0", "0000", 1.0, checkpoint=None)
    elsewhere.on_trial_complete("t0", None)  # (ignored: already completed)
    with pytest.raises(UserError, match=r"the checkpoint of 0000 \(parent of 1000\) was not found"):
        elsewhere.suggest("t1")


def test_a_checkpoint_named_by_tune_but_not_under_the_trial_id_fails_loudly(tmp_path):
    searcher = SFSASearcher(experiment_dir=str(tmp_path))  # Tune's default folder names, not trial ids
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"val_loss": 1.0, "checkpoint_dir_name": "checkpoint_000003",
                                      "config/mask": "0000"})  # fmt: skip
    assert searcher.table().to_pylist()[0]["checkpoint"] is None  # not at <experiment>/t0/checkpoint_000003
    with pytest.raises(UserError, match="not named by trial id"):
        searcher.suggest("t1")


def test_late_fusion_is_trained_as_long_as_the_chosen_lineage(tmp_path):
    """The chosen 0100 trained 12 + 7 epochs from scratch: late fusion continues 7 more from round 0."""
    searcher = SFSASearcher(experiment_dir=str(tmp_path))

    def finish_with_epochs(suggestions, losses, epochs):
        for trial_id, spec in suggestions.items():
            Path(tmp_path, trial_id, "checkpoint_000001").mkdir(parents=True, exist_ok=True)
            result = {"val_loss": losses.get(spec["mask"], 1.0), "checkpoint_dir_name": "checkpoint_000001",
                      "epochs_trained": epochs.get((spec["role"], spec["mask"]), 5)}  # fmt: skip
            searcher.on_trial_complete(trial_id, result)

    finish_with_epochs(drain(searcher, "a"), {"0000": 0.9}, {("search", "0000"): 12})
    finish_with_epochs(drain(searcher, "b"), {"0100": 0.5, "0000": 0.8}, {("search", "0100"): 7})
    round2 = drain(searcher, "c")
    assert {s["mask"] for s in round2.values()} == {"1100", "0110", "0101", "0100"}
    finish_with_epochs(round2, {"0100": 0.45}, {})  # the control (0100 continued) wins: no child passes
    longer = drain(searcher, "d")
    assert [(s["role"], s["mask"], s["parent_mask"], s["epochs"]) for s in longer.values()] == [
        ("longer", "0000", "0000", 7 + 5)  # 0100 (7 epochs), then its control (5): 12 beyond round 0
    ]
    assert next(iter(longer.values()))["parent"] == f"{tmp_path}/a0/checkpoint_000001"  # from round 0
    assert searcher.chosen_outcomes()[0, 0].candidate.control  # the continued parent's weights


def _tune_trial(trial_id, spec, status, loss=None):
    """A restored Tune trial as the searcher's callback sees it (id, config, status, last result)."""
    result = None
    if loss is not None:
        result = {"val_loss": loss, "checkpoint_dir_name": "checkpoint_000001", "config": spec}
    return SimpleNamespace(trial_id=trial_id, config=spec, status=status, last_result=result)


def test_a_searcher_state_newer_than_tunes_trials_proposes_its_unknown_trials_again(tmp_path):
    """Round 1 proposed after Tune's last saved state: without reconciling, the search would wait for
    those five trials forever (Tune has no such trials to run)."""
    searcher = SFSASearcher(experiment_dir=str(tmp_path))
    baseline = searcher.suggest("t0")
    complete(searcher, "t0", "0000", 1.0)
    round1 = drain(searcher, "old")
    assert len(round1) == 5 and searcher.suggest("x") is None
    searcher.save(str(tmp_path / "state.pkl"))
    restored = SFSASearcher()
    restored.restore(str(tmp_path / "state.pkl"))
    restored.reconcile([_tune_trial("t0", baseline, "TERMINATED", 1.0)])
    again = drain(restored, "new")
    assert sorted(s["mask"] for s in again.values()) == sorted(s["mask"] for s in round1.values())
    finish(restored, again, {"0100": 0.5})
    finish(restored, drain(restored, "r2"), {})
    assert restored.suggest("end") == Searcher.FINISHED and restored.best_mask == "0100"
    keys = [(r["role"], r["mask"], r["round"]) for r in restored.table().to_pylist()]
    assert len(keys) == len(set(keys)) == 1 + 5 + 4  # nothing trained twice


def test_a_searcher_state_older_than_tunes_trials_takes_their_results_and_trains_nothing_twice(tmp_path):
    """The searcher saved while the baseline ran; Tune saved later: the baseline finished and round 1's
    first child was proposed. The baseline's result is taken, the child is not proposed again."""
    searcher = SFSASearcher(experiment_dir=str(tmp_path))
    baseline = searcher.suggest("t0")
    searcher.save(str(tmp_path / "state.pkl"))
    Path(tmp_path, "t0", "checkpoint_000001").mkdir(parents=True)
    child = {**baseline, "mask": "1000", "round": 1, "parent_mask": "0000"}
    restored = SFSASearcher()
    restored.restore(str(tmp_path / "state.pkl"))
    restored.reconcile([_tune_trial("t0", baseline, "TERMINATED", 1.0), _tune_trial("c0", child, "PENDING")])
    rest = drain(restored, "new")
    assert sorted(s["mask"] for s in rest.values()) == ["0000", "0001", "0010", "0100"]  # 1000: Tune runs it
    complete(restored, "c0", "1000", 2.0, round=1)
    finish(restored, rest, {})
    assert restored.suggest("end") == Searcher.FINISHED
    assert restored.table().num_rows == 1 + 5
