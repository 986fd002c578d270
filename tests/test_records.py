"""The typed records at the boundaries: trial configs, run records, per-fold search state (no Ray)."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from fusionsearch import storage
from fusionsearch.errors import UserError
from fusionsearch.mask import FusionMask
from fusionsearch.search.experiment import RUN_FILE, RunRecord, create, read_run, write_run
from fusionsearch.search.records import SCHEMA, TRIAL_FIELDS, FoldSearch, Trial
from fusionsearch.search.strategies import SFSA
from fusionsearch.settings import ConfigError, DataConfig, RunSettings, TrainConfig, to_dict
from fusionsearch.train.candidate import CandidateConfig

SETTINGS = RunSettings(data=DataConfig(index="i", cache="c", folds=3), train=TrainConfig(epochs=3))


def test_a_trial_config_round_trips_and_unknown_keys_are_rejected():
    candidate = CandidateConfig(Trial("0110", 2, "search", 2, "0100"), SETTINGS, "s3://b/x/ckpt")
    config = json.loads(json.dumps(candidate.config()))  # as Ray and JSON carry it
    assert set(config) == {*TRIAL_FIELDS, "parent", "settings"} and config["mask"] == "0110"
    assert CandidateConfig.from_config(config) == candidate
    with pytest.raises(ConfigError, match=r"unknown candidate setting\(s\) \['lr'\]"):
        CandidateConfig.from_config(config | {"lr": 0.1})
    with pytest.raises(ConfigError, match=r"fold=3 must be in 0\.\.2"):
        CandidateConfig(Trial("0000", fold=3), SETTINGS)
    with pytest.raises(ConfigError, match="only unimodal names one"):
        Trial("0000", role="unimodal")


def test_the_table_schema_holds_every_trial_field():
    assert set(TRIAL_FIELDS) <= set(SCHEMA.names)


def test_run_record_round_trips_and_reads_format_1(tmp_path):
    run = RunRecord(resources={"cpu": 2, "gpu": 1}, max_concurrent=8, max_failures=1, settings=SETTINGS,
                    searcher="beam", metadata={"manifest": "m.csv"})  # fmt: skip
    write_run(str(tmp_path), run)
    assert json.loads((tmp_path / RUN_FILE).read_text())["format_version"] == 2
    assert read_run(str(tmp_path)) == run
    # Format 1, written by fusionsearch before the run record was typed.
    legacy = {"resources": {"cpu": 1, "gpu": 0}, "max_concurrent": None, "max_failures": 2,
              "metadata": {"command": "run", "searcher": "sfsa", "settings": to_dict(SETTINGS)}}  # fmt: skip
    storage.write_json(str(tmp_path / RUN_FILE), legacy)
    old = read_run(str(tmp_path))
    assert (old.searcher, old.settings, old.max_concurrent, old.default_trainable) == (
        "sfsa",
        SETTINGS,
        None,  # as many trials at once as the cluster holds
        True,
    )
    storage.write_json(str(tmp_path / RUN_FILE), {"format_version": 99})
    with pytest.raises(Exception, match="format version 99"):
        read_run(str(tmp_path))


def test_fold_search_closes_a_round_on_the_mean_over_its_folds():
    group = FoldSearch((0, 1))
    trials = group.trials(SFSA().next_round([]))
    assert [(t.mask, t.fold, t.round, t.parent_mask) for t in trials] == [
        ("0000", 0, 0, None),
        ("0000", 1, 0, None),
    ]
    for trial, loss in zip(trials, (0.4, 0.6), strict=True):
        group.record(trial, {"val_loss": loss})
    group.close_round()
    assert group.round == [] and len(group.history) == 1
    assert group.history[0].loss == pytest.approx(0.5) and group.history[0].candidate.mask == FusionMask(
        "0000"
    )
    trials = group.trials(SFSA().next_round(group.history))
    assert sum(t.role == "control" for t in trials) == 2  # the continued parent, on each fold
    reports = {"1000": [None, None], "0100": [{"val_loss": float("nan")}, {"val_loss": 0.3}],
               "0010": [{"val_loss": 0.2}, {"val_loss": 0.4}]}  # fmt: skip
    for trial in trials:
        if trial.mask in reports:
            group.record(trial, reports[trial.mask][trial.fold])
    group.close_round()
    losses = {str(o.candidate.mask): o.loss for o in group.history if not o.candidate.control}
    # A candidate that failed on any fold has failed; one never reported (0001) too.
    assert losses["1000"] is None and losses["0100"] is None and losses["0001"] is None
    assert losses["0010"] == pytest.approx(0.3)


def test_of_searches_started_at_once_under_one_name_exactly_one_creates_the_experiment(tmp_path):
    target = str(tmp_path / "runs" / "x")
    barrier = threading.Barrier(8)

    def attempt(_):
        barrier.wait()
        try:
            create(target)
            return "created"
        except UserError as error:
            return str(error)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    assert outcomes.count("created") == 1
    assert all("already exists" in o and "nothing was deleted" in o for o in outcomes if o != "created")


def test_a_network_trained_from_scratch_that_never_beat_its_start_is_warned_about():
    from fusionsearch.report.summary import training_warnings

    def row(mask, parent, best_epoch, role="search", status="ok", modality=None, fold=0):
        return {"fold": fold, "role": role, "modality": modality, "mask": mask, "parent_mask": parent,
                "status": status, "best_epoch": best_epoch, "epochs_trained": 4.0,
                "val_loss": 0.5}  # fmt: skip

    learned = [row("0000", None, 3), row("1000", "0000", 0), row("0000", None, 2, "unimodal", modality="T1")]
    assert training_warnings(pa.Table.from_pylist(learned, schema=SCHEMA)) == []  # a child may keep epoch 0
    stuck = [
        row("0000", None, 0),
        row("0000", None, 0, "unimodal", modality="FLAIR"),
        row("0100", None, 0, status="failed"),
    ]
    warnings = training_warnings(pa.Table.from_pylist(stuck, schema=SCHEMA))
    assert len(warnings) == 2 and "search 0000 never beat its untrained start in 4 epoch(s)" in warnings[0]
    assert "unimodal FLAIR 0000" in warnings[1] and "--lr" in warnings[1]
    assert all(w.startswith("warning: ") for w in warnings)
    # The planted XOR demo: late fusion cannot learn, a fused child of the same fold did. A note, no advice.
    xor = [row("0000", None, 0), row("0010", "0000", 5), row("0000", None, 0, fold=1)]
    note, other_fold = training_warnings(pa.Table.from_pylist(xor, schema=SCHEMA))
    assert (
        note.startswith("note: fold 0: search 0000 never beat") and "e.g. 0010" in note and "--lr" not in note
    )
    assert other_fold.startswith("warning: fold 1")  # nothing of fold 1 learned


def test_a_pooled_candidates_evidence_joins_its_folds():
    group = FoldSearch((0, 1))
    trials = group.trials(SFSA().next_round([]))
    for trial in trials:
        report = {"val_loss": 0.4 + 0.2 * trial.fold, "val_loss_start": 0.7, "best_epoch": trial.fold,
                  "holdout_losses": [trial.fold, 1.0], "start_losses": [2.0, 2.0]}  # fmt: skip
        group.record(trial, report)
    group.close_round()
    outcome = group.history[0].evidence
    assert outcome.loss == pytest.approx(0.5) and outcome.start_loss == pytest.approx(0.7)
    assert outcome.holdout == (0.0, 1.0, 1.0, 1.0) and outcome.start == (2.0,) * 4  # fold 0's, then fold 1's
    assert outcome.best_epoch == 1  # 0 only if no fold trained past its start


def test_a_trial_with_its_own_epochs_trains_exactly_that_many():
    from fusionsearch.train.candidate import CandidateConfig

    fixed = CandidateConfig(Trial("0000", role="longer", parent_mask="0000", epochs=7), SETTINGS)
    assert (fixed.settings.train.epochs, fixed.settings.train.patience) == (7, 7)
    assert CandidateConfig.from_config(fixed.config()).settings.train.epochs == 7  # through Ray's dict
    assert CandidateConfig(Trial("0000"), SETTINGS).settings.train == SETTINGS.train
