"""The training loop without Ray: warm start end to end, checkpoints, resume."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import Recorder, cached_data
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.model.checkpoint import load_model, read_meta
from fusionsearch.search.records import Trial
from fusionsearch.settings import ModelConfig, PreprocessConfig, RunSettings, TrainConfig
from fusionsearch.train.candidate import CandidateConfig
from fusionsearch.train.folds import load_fold
from fusionsearch.train.loop import fit

PREPROCESS = PreprocessConfig(shape=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Settings over a cached 24-sample planted benchmark at 16^3."""
    root = tmp_path_factory.mktemp("tiny")
    manifest = generate(root / "data", SynthConfig(n=24, size=16, seed=3))
    return RunSettings(
        data=cached_data(manifest, root / "cache", PREPROCESS),
        model=ModelConfig(width=0.125),
        train=TrainConfig(epochs=3, patience=10, batch_size=8, lr=3e-3, checkpoint_interval=0),
    )


def test_a_round_tried_again_replays_its_first_attempt_then_trains_another_budget(tiny, tmp_path):
    """An extension: the same trial from the same parent, twice the epochs, the first budget's batches
    (at a constant rate a replay of the first attempt; a cosine schedule stretches over the doubled
    budget, so there the first epochs see the same batches at other rates)."""
    tiny = replace(tiny, train=replace(tiny.train, schedule="constant"))
    data = load_fold(tiny.data, 0)
    parent = Recorder(tmp_path / "parent")
    fit(CandidateConfig(Trial("0000"), tiny), parent, data=data)
    attempts = []
    for extension in (0, 1):
        trial = Trial("0100", round=1, parent_mask="0000", extension=extension)
        attempts.append(Recorder(tmp_path / f"attempt{extension}"))
        fit(CandidateConfig(trial, tiny, parent="x"), attempts[-1], parent=parent.checkpoints[-1], data=data)
    first, second = ([r for r in a.reports if not r.get("final")] for a in attempts)
    assert [r["epoch"] for r in first] == [0, 1, 2, 3] and [r["epoch"] for r in second] == list(range(7))
    for a, b in zip(first, second, strict=False):  # the first attempt's epochs again, to the float
        assert a["val_loss"] == b["val_loss"] and a.get("train_loss") == b.get("train_loss")
    assert attempts[1].reports[-1]["epochs_trained"] == 6


def test_child_starts_exactly_where_its_parent_ended(tiny, tmp_path):
    data = load_fold(tiny.data, 0)
    parent = Recorder(tmp_path / "parent")
    final = fit(CandidateConfig(Trial("0000"), tiny), parent, data=data)
    assert final["val_loss"] == min(r["val_loss"] for r in parent.reports if "epoch" in r)
    # Every epoch is reported, the last included (epoch 0: before any update), then the final result.
    assert [r["epoch"] for r in parent.reports[:-1]] == [0, 1, 2, 3]
    assert "train_loss" in parent.reports[-2] and not parent.reports[-2].get("final")
    assert parent.reports[-1]["final"] and final["best_epoch"] in (0, 1, 2, 3)

    child = Recorder(tmp_path / "child")
    fit(CandidateConfig(Trial("0100", parent_mask="0000"), tiny, parent="x"), child,
        parent=parent.checkpoints[-1], data=data)  # fmt: skip
    assert child.reports[0]["epoch"] == 0
    assert abs(child.reports[0]["val_loss"] - final["val_loss"]) < 1e-5


def test_a_training_part_one_sample_over_whole_batches_trains_with_batch_norm(tiny, tmp_path):
    """A last batch of one sample would stop batch norm (torch raises in training): it sits out."""
    data = load_fold(tiny.data, 0)
    batch = len(data.train) - 1  # two batches: all but one sample, then one
    assert batch > 1
    settings = replace(tiny, train=replace(tiny.train, epochs=2, batch_size=batch))
    recorder = Recorder(tmp_path / "one-over")
    final = fit(CandidateConfig(Trial("0100"), settings), recorder, data=data)
    trained = [r for r in recorder.reports if "train_loss" in r and not r.get("final")]
    assert [r["epoch"] for r in trained] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in trained)
    assert final["final"] and np.isfinite(final["val_loss"])


def test_with_a_long_interval_only_the_final_checkpoint_is_written_and_time_is_accounted(tiny, tmp_path):
    recorder = Recorder(tmp_path)
    settings = replace(tiny, train=replace(tiny.train, checkpoint_interval=3600))
    final = fit(CandidateConfig(Trial("0110"), settings), recorder, data=load_fold(tiny.data, 0))
    assert len(recorder.reports) == 5 and len(recorder.checkpoints) == 1  # epochs 0-3, then the final
    assert read_meta(recorder.checkpoints[0])["metrics"]["final"]
    assert not (recorder.checkpoints[0] / "training.pt").exists()  # the final one: best weights only
    parts = [final[k] for k in ("step_seconds", "eval_seconds", "checkpoint_seconds", "setup_seconds")]
    assert all(p > 0 for p in parts) and sum(parts) <= final["train_seconds"]
    assert read_meta(recorder.checkpoints[0])["metrics"]["step_seconds"] == final["step_seconds"]


def test_validating_every_kth_epoch_reports_and_checkpoints_only_validated_epochs(tiny, tmp_path):
    data = load_fold(tiny.data, 0)
    every = replace(tiny, train=replace(tiny.train, epochs=5, eval_every=2))
    first = Recorder(tmp_path / "first")
    final = fit(CandidateConfig(Trial("0010"), every), first, data=data)
    assert [r["epoch"] for r in first.reports[:-1]] == [0, 2, 4, 5]  # every 2nd epoch, and the last
    assert final["best_epoch"] in (0, 2, 4, 5) and final["epochs_trained"] == 5
    assert len(first.checkpoints) == 4  # interval 0: each validated epoch's, then the final one
    # Half the validations of the same training: less validation time, the same steps.
    each = Recorder(tmp_path / "each")
    fit(
        CandidateConfig(Trial("0010"), replace(every, train=replace(every.train, eval_every=1))),
        each,
        data=data,
    )
    assert [r["epoch"] for r in each.reports[:-1]] == [0, 1, 2, 3, 4, 5]
    assert [r["train_loss"] for r in each.reports if r["epoch"] in (2, 4, 5) and "train_loss" in r][:3] == [
        r["train_loss"] for r in first.reports[1:4]
    ]
    # A retry resumes after the validated epoch of its checkpoint.
    resumed = Recorder(tmp_path / "resumed")
    fit(CandidateConfig(Trial("0010"), every), resumed, resume=first.checkpoints[0], data=data)
    assert [r["epoch"] for r in resumed.reports[:-1]] == [4, 5]
    assert resumed.reports[-1]["val_loss"] == pytest.approx(final["val_loss"], abs=1e-4)


def test_the_epoch_where_training_stops_is_always_validated():
    from fusionsearch.train.loop import LoopState

    train = TrainConfig(epochs=9, patience=3, eval_every=2)
    best_at_0 = {"val_loss": 0.5, "epoch": 0}
    # Epoch 3: patience runs out (3 epochs without improving), so it is validated although odd.
    assert [LoopState(epoch=e, best=best_at_0).validates(train) for e in (1, 2, 3)] == [False, True, True]
    best_at_6 = {"val_loss": 0.5, "epoch": 6}
    assert [LoopState(epoch=e, best=best_at_6).validates(train) for e in (7, 8, 9)] == [False, True, True]
    assert LoopState(epoch=9, best={"val_loss": 0.4, "epoch": 8}).validates(train)  # the last epoch


def test_the_recipe_is_seeded_and_a_child_still_starts_at_its_parent(tiny, tmp_path):
    recipe = replace(
        tiny, train=replace(tiny.train, augment="standard", schedule="cosine", class_weights="balanced")
    )
    data = load_fold(tiny.data, 0)
    runs = [Recorder(tmp_path / name) for name in ("a", "b")]
    for recorder in runs:
        fit(CandidateConfig(Trial("0000"), recipe), recorder, data=data)
    assert [r["train_loss"] for r in runs[0].reports[1:-1]] == [
        r["train_loss"] for r in runs[1].reports[1:-1]
    ]
    plain = Recorder(tmp_path / "plain")
    fit(CandidateConfig(Trial("0000"), tiny), plain, data=data)
    assert runs[0].reports[1]["train_loss"] != plain.reports[1]["train_loss"]  # the recipe did something
    child = Recorder(tmp_path / "child")
    fit(
        CandidateConfig(Trial("0100", parent_mask="0000"), recipe),
        child,
        parent=runs[0].checkpoints[-1],
        data=data,
    )
    assert child.reports[0]["epoch"] == 0
    assert child.reports[0]["val_loss"] == pytest.approx(runs[0].reports[-1]["val_loss"], abs=1e-5)


def test_final_checkpoint_restores_the_best_model_strictly(tiny, tmp_path):
    recorder = Recorder(tmp_path)
    fit(CandidateConfig(Trial("1001"), tiny), recorder, data=load_fold(tiny.data, 0))
    meta = read_meta(recorder.checkpoints[-1])
    assert meta["format_version"] == 1 and meta["mask"] == "1001" and meta["metrics"]["final"]
    assert meta["settings"]["model"]["width"] == 0.125
    model = load_model(recorder.checkpoints[-1])
    assert str(model.mask) == "1001" and sorted(model.fusion) == ["0", "3"]


def test_retry_resumes_from_its_own_epoch_checkpoint(tiny, tmp_path):
    data = load_fold(tiny.data, 0)
    first = Recorder(tmp_path / "first")
    fit(CandidateConfig(Trial("0010"), tiny), first, data=data)
    resumed = Recorder(tmp_path / "resumed")
    fit(CandidateConfig(Trial("0010"), tiny), resumed, resume=first.checkpoints[0], data=data)
    assert [r["epoch"] for r in resumed.reports[:-1]] == [2, 3]  # epoch 1's checkpoint: goes on at 2
    assert resumed.reports[-1]["final"]
    # Same seed, same data order, restored optimizer: the resumed run repeats the original.
    assert resumed.reports[-1]["val_loss"] == pytest.approx(first.reports[-1]["val_loss"], abs=1e-4)


def test_final_checkpoint_as_resume_reports_again_without_training(tiny, tmp_path):
    data = load_fold(tiny.data, 0)
    first = Recorder(tmp_path / "first")
    final = fit(CandidateConfig(Trial("0001"), tiny), first, data=data)
    again = Recorder(tmp_path / "again")
    fit(CandidateConfig(Trial("0001"), tiny), again, resume=first.checkpoints[-1], data=data)
    assert len(again.reports) == 1 and again.reports[0]["val_loss"] == final["val_loss"]
    assert again.reports[0]["started_at"] == final["started_at"]


def test_peak_rss_is_measured_from_each_trials_start():
    # A reused actor trains trial after trial: one trial's peak must not carry into the next.
    from trainables.candidate import _peak_rss_mb, _reset_peak_rss

    block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    high = _peak_rss_mb()
    del block
    _reset_peak_rss()
    assert _peak_rss_mb() < high - 200


def test_a_childs_gain_standard_error_is_that_of_its_paired_per_sample_losses(tiny, tmp_path):
    import math

    import torch

    from fusionsearch.model.device import DevicePolicy
    from fusionsearch.train.folds import Batches
    from fusionsearch.train.inference import predict_logits

    data = load_fold(tiny.data, 0)
    parent = Recorder(tmp_path / "parent")
    fit(CandidateConfig(Trial("0000"), tiny), parent, data=data)
    child = Recorder(tmp_path / "child")
    longer = replace(tiny, train=replace(tiny.train, epochs=6))
    final = fit(CandidateConfig(Trial("0100", parent_mask="0000"), longer, parent="x"), child,
                parent=parent.checkpoints[-1], data=data)  # fmt: skip
    val = Batches(data.val, DevicePolicy.select("cpu"), 8)

    def losses(checkpoint):
        logits = predict_logits(load_model(checkpoint).eval(), val)
        return torch.nn.functional.cross_entropy(logits, val.data.labels, reduction="none").numpy()

    if final["best_epoch"] == 0:  # never beat its parent: no gain, no error
        assert final["val_loss_gain_se"] == 0.0
    else:  # epoch 0 is the parent's final weights; the best epoch is the child's final checkpoint
        gains = losses(parent.checkpoints[-1]) - losses(child.checkpoints[-1])
        expected = np.std(gains, ddof=1) / math.sqrt(len(gains))
        assert final["val_loss_gain_se"] == pytest.approx(expected, rel=1e-4) and expected > 0
        select = data.val_select  # val_loss is the selection half's; the test half is reported per sample
        assert 0 < select.sum() < len(select)
        assert gains[select].mean() == pytest.approx(
            parent.reports[-1]["val_loss"] - final["val_loss"], abs=1e-5
        )
        assert final["holdout_losses"] == pytest.approx(losses(child.checkpoints[-1])[~select], abs=1e-5)
        assert final["start_losses"] == pytest.approx(losses(parent.checkpoints[-1])[~select], abs=1e-5)
        assert final["val_loss_start"] == pytest.approx(parent.reports[-1]["val_loss"], abs=1e-5)
        # Chance: -log of the training part's class frequency (add-one) of each test-half sample's label.
        counts = np.bincount(data.train.labels.numpy(), minlength=2) + 1.0
        chance = -np.log(counts / counts.sum())[data.val.labels.numpy()[~select]]
        assert final["chance_losses"] == pytest.approx(chance.tolist())


def test_a_rounds_children_and_control_see_identical_batches(tiny, tmp_path, monkeypatch):
    """Common random numbers: the data order and augmentation depend on (seed, fold, round), not the mask."""
    import fusionsearch.train.loop as loop

    recipe = replace(tiny, train=replace(tiny.train, augment="standard", epochs=2))
    data = load_fold(tiny.data, 0)
    parent = Recorder(tmp_path / "parent")
    fit(CandidateConfig(Trial("0000"), recipe), parent, data=data)
    seen, step = [], loop.train_step

    def recording(model, optimizer, policy, images, labels, weights=None, scale=1.0):
        seen[-1].append((images.clone(), labels.clone()))
        return step(model, optimizer, policy, images, labels, weights, scale)

    monkeypatch.setattr(loop, "train_step", recording)
    trials = [Trial("0100", round=1, parent_mask="0000"),
              Trial("0000", role="control", round=1, parent_mask="0000"),
              Trial("0010", round=2, parent_mask="0000"),
              Trial("0100", round=1, parent_mask="0000", repeat=1)]  # fmt: skip
    for trial in trials:
        seen.append([])
        out = Recorder(tmp_path / trial.role / f"{trial.mask}-{trial.repeat}")
        fit(CandidateConfig(trial, recipe, parent="x"), out, parent=parent.checkpoints[-1], data=data)
    child, control, later, replicate = seen
    assert len(child) == len(control) == 2  # 2 epochs of 1 batch (8 training samples, batch 8)
    for (x, y), (cx, cy) in zip(child, control, strict=True):
        assert torch.equal(x, cx) and torch.equal(y, cy)  # the same samples, the same augmentation draws
    assert not all(torch.equal(x, lx) for (x, _), (lx, _) in zip(child, later, strict=True))  # another round
    # Another replicate of the same round: other augmentation draws (and new weights: another seed).
    assert not all(torch.equal(x, rx) for (x, _), (rx, _) in zip(child, replicate, strict=True))
    seeds = {loop.candidate_seed(CandidateConfig(Trial("0100", repeat=r), recipe)) for r in range(3)}
    assert len(seeds) == 3


def test_a_trial_restored_without_its_final_checkpoint_finds_it_in_its_folder_and_reports_it_again(
    tiny, tmp_path
):
    """A driver killed after a trial's final report but before Tune saved its state: Tune restores the
    trial with an earlier checkpoint (or none). The trial's folder still holds the final one, which
    it takes instead (``own_checkpoint``), and ``fit`` reports that result again without training."""
    import shutil

    import pyarrow.fs as pafs

    from trainables.candidate import latest_final

    data = load_fold(tiny.data, 0)
    first = Recorder(tmp_path / "first")
    final = fit(CandidateConfig(Trial("0100"), tiny), first, data=data)
    trial, local = tmp_path / "trial", pafs.LocalFileSystem()
    assert latest_final(str(trial), local) is None  # a new trial: no folder yet
    for index, checkpoint in enumerate(first.checkpoints[:-1]):  # the epochs' checkpoints, as Tune names them
        shutil.copytree(checkpoint, trial / f"checkpoint_{index:06d}")
    assert latest_final(str(trial), local) is None  # interrupted mid-training: Tune's checkpoint holds
    shutil.copytree(first.checkpoints[-1], trial / f"checkpoint_{len(first.checkpoints) - 1:06d}")
    found = latest_final(str(trial), local)
    assert found == str(trial / f"checkpoint_{len(first.checkpoints) - 1:06d}")
    again = Recorder(tmp_path / "again")
    metrics = fit(CandidateConfig(Trial("0100"), tiny), again, resume=Path(found), data=data)
    assert (metrics["val_loss"], metrics["best_epoch"]) == (final["val_loss"], final["best_epoch"])
    assert len(again.reports) == 1 and again.reports[0]["final"]  # reported again, not trained
