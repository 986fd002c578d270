"""The Ray Tune searcher adapter's bookkeeping, driven directly (no Ray session needed)."""

from ray.tune.search import Searcher

from searchers import BeamSearcher, SFSASearcher


def complete(searcher, trial_id, mask, loss, checkpoint="checkpoint_000001"):
    searcher.on_trial_complete(trial_id, {"val_loss": loss, "checkpoint_dir_name": checkpoint,
                                          "config/mask": mask})  # fmt: skip


def test_round_is_issued_whole_then_waits_then_finishes(tmp_path):
    searcher = SFSASearcher()
    searcher.experiment_dir = str(tmp_path)
    first = searcher.suggest("t0")
    assert first == {"mask": "0000", "parent": None, "parent_mask": None, "round": 0}
    assert searcher.suggest("t1") is None  # round 0 in flight
    complete(searcher, "t0", "0000", 1.0)
    round1 = [searcher.suggest(f"r1-{i}") for i in range(4)]
    assert [s["mask"] for s in round1] == ["1000", "0100", "0010", "0001"]
    assert {s["parent"] for s in round1} == {f"{tmp_path}/t0/checkpoint_000001"}
    assert searcher.suggest("extra") is None
    for i, loss in enumerate([1.5, 1.2, 1.1, 1.3]):
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
    searcher = BeamSearcher(beam_width=2, patience=1)
    searcher.suggest("t0")
    complete(searcher, "t0", "0000", 1.0)
    issued = [searcher.suggest(f"t{i}") for i in range(1, 5)]
    complete(searcher, "t1", issued[0]["mask"], 0.5)
    searcher.save(str(tmp_path / "state.pkl"))
    restored = BeamSearcher()
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.strategy == searcher.strategy and restored.suggest("t9") is None
    for i in range(2, 5):
        complete(restored, f"t{i}", issued[i - 1]["mask"], 0.8)
    assert restored.suggest("t10")["round"] == 2
    assert restored.table().num_rows == 5


def test_max_mode_and_concurrency_limit():
    searcher = SFSASearcher(metric="val_accuracy", mode="max")
    assert searcher.set_max_concurrency(2) is True
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"val_accuracy": 0.5, "config/mask": "0000"})
    assert searcher.suggest("a") and searcher.suggest("b") and searcher.suggest("c") is None
    searcher.on_trial_complete("a", {"val_accuracy": 0.9, "config/mask": "1000"})
    searcher.on_trial_complete("b", {"val_accuracy": 0.4, "config/mask": "0100"})
    for trial_id in ("c", "d"):
        searcher.on_trial_complete(
            trial_id, {"val_accuracy": 0.6, "config/mask": searcher.suggest(trial_id)["mask"]}
        )
    assert searcher.best_mask == "1000"  # the highest accuracy wins in max mode
