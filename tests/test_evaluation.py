"""Held-out evaluation: metrics, the methods of each fold, the ensemble, and test-part isolation."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as sk

from conftest import cached_data
from fusionsearch.data.cache import read_index
from fusionsearch.data.splits import make_folds
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.errors import DataError
from fusionsearch.report.evaluation import landscape_checkpoints, method_checkpoints, predict
from fusionsearch.report.metrics import classification_metrics, fold_metrics
from fusionsearch.settings import ModelConfig, PreprocessConfig, RunSettings, TrainConfig, to_dict
from fusionsearch.tune.driver import evaluate_search, run_search
from searchers import ExhaustiveSearcher


def test_binary_metrics_match_a_known_confusion_matrix():
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    positive = [0.9, 0.8, 0.7, 0.2, 0.6, 0.55, 0.3, 0.1]  # TP 3, FN 1, FP 2, TN 2
    result = classification_metrics(labels, np.column_stack([1 - np.array(positive), positive]))
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["sensitivity"] == pytest.approx(3 / 4) and result["specificity"] == pytest.approx(2 / 4)
    assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert result["auc"] == pytest.approx(sk.roc_auc_score(labels, positive)) and result["auc"] == 0.8125


def test_multiclass_metrics_equal_scikit_learn_macro_averages():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    probabilities = rng.dirichlet(np.ones(3), 60)
    predicted = probabilities.argmax(1)
    result = classification_metrics(labels, probabilities)
    assert result["f1"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    assert result["sensitivity"] == pytest.approx(sk.recall_score(labels, predicted, average="macro"))
    specificity = [sk.recall_score(labels == c, predicted == c, pos_label=False) for c in range(3)]
    assert result["specificity"] == pytest.approx(np.mean(specificity))
    assert result["auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities, multi_class="ovr"))


def rows(entries):
    base = {"status": "ok", "chosen": False, "modality": None, "parent_mask": None}
    return pa.Table.from_pylist(
        [base | {"fold": 0, "checkpoint": f"ck/{e['role']}-{e['mask']}"} | e for e in entries]
    )


def test_methods_of_a_fold_and_the_ensemble_of_exactly_the_fusion_configurations():
    search = [{"role": "search", "mask": m} for m in ("0000", "1000", "0100", "0010", "0001", "1100")]
    search[5]["chosen"] = True
    unimodal = [{"role": "unimodal", "mask": "0000", "modality": m} for m in ("T1w", "FLAIR")]
    members = [
        {"role": "ensemble", "mask": f"{i:04b}"} for i in range(1, 16)
    ]  # 1000 etc. also trained by the search
    methods = method_checkpoints(rows(search + unimodal + members), 0)
    assert methods["chosen"] == ("1100", ["ck/search-1100"]) and methods["late fusion"][1] == [
        "ck/search-0000"
    ]
    assert methods["unimodal T1w"][1] == ["ck/unimodal-0000"]
    mask, checkpoints = methods["ensemble"]
    assert mask == "15 masks" and len(checkpoints) == 15
    assert "ck/search-0000" not in checkpoints and "ck/ensemble-0000" not in checkpoints
    assert "ck/search-1100" in checkpoints and "ck/ensemble-1100" not in checkpoints  # the search's version
    # One fusion configuration (0111, which the search did not train) missing: no ensemble.
    without = [m for m in members if m["mask"] != "0111"]
    assert "ensemble" not in method_checkpoints(rows(search + without), 0)


def test_landscape_is_every_configuration_trained_on_the_fold_once():
    search = [{"role": "search", "mask": m} for m in ("0000", "1000", "0100")]
    search.append({"role": "search", "mask": "0010", "status": "failed", "checkpoint": None})
    unimodal = [{"role": "unimodal", "mask": "0000", "modality": "T1w"}]
    members = [{"role": "ensemble", "mask": m} for m in ("1000", "0001")]
    other_fold = [{"role": "search", "mask": "1111", "fold": 1}]
    landscape = landscape_checkpoints(rows(search + unimodal + members + other_fold), 0)
    assert landscape == {
        "0000": "ck/search-0000",  # late fusion, not the unimodal network of the same mask
        "0001": "ck/ensemble-0001",
        "0100": "ck/search-0100",
        "1000": "ck/search-1000",  # the search's version, not the ensemble member
    }


def test_fold_metrics_give_one_row_per_mask_of_the_landscape():
    probabilities = [[0.2, 0.8], [0.7, 0.3], [0.6, 0.4], [0.9, 0.1]]  # predicts 1, 0, 0, 0
    table = pa.Table.from_pylist(
        [
            {
                "fold": f,
                "method": "candidate",
                "mask": mask,
                "sample_id": str(i),
                "label": label,
                "probabilities": p if mask == "0000" else p[::-1],
            }
            for f in (0, 1)
            for mask in ("0000", "1000")
            for i, (label, p) in enumerate(zip([1, 0, 0, 1], probabilities, strict=True))
        ]
    )
    per_mask = {(r["fold"], r["mask"]): r["accuracy"] for r in fold_metrics(table).to_pylist()}
    assert per_mask == {(0, "0000"): 0.75, (0, "1000"): 0.25, (1, "0000"): 0.75, (1, "1000"): 0.25}


@pytest.mark.slow
def test_selection_never_reads_the_test_part_and_the_ensemble_is_the_mean_of_its_members(local_ray, tmp_path):
    manifest = generate(tmp_path / "data", SynthConfig(n=24, size=16, seed=4))
    data = cached_data(manifest, tmp_path / "cache", PreprocessConfig(shape=16))
    settings = RunSettings(data=data, model=ModelConfig(width=0.125),
                           train=TrainConfig(epochs=1, patience=1, batch_size=8))  # fmt: skip
    index = read_index(data.index).to_pydict()
    test_rows = make_folds(index["label"], index["subject_id"], 3, 0)[0].test
    # Hide fold 0's test part: a search (training and selection) that touched it would fail.
    hidden = {}
    for row in test_rows:
        key = index["key"][row]
        entry = tmp_path / "cache" / key[:2] / f"{key}.npy"
        hidden[entry] = entry.read_bytes()
        os.remove(entry)
    # One warm actor: cheaper than four starting (their imports) for trials of a second each.
    result = run_search(ExhaustiveSearcher(folds=[0]), config={"settings": to_dict(settings)},
                        storage_path=tmp_path / "runs", name="ex", resources={"cpu": 1},
                        max_concurrent=1)  # fmt: skip
    table = result.table
    assert set(table["status"].to_pylist()) == {"ok"}
    roles = table["role"].to_pylist()
    chosen_row = next(r for r in table.to_pylist() if r["chosen"])
    # Late fusion at equal epochs: continued for the chosen child's own epochs (none if 0000 won).
    assert roles.count("search") == 16 and roles.count("longer") == (chosen_row["mask"] != "0000")
    for longer in (r for r in table.to_pylist() if r["role"] == "longer"):
        assert longer["epochs"] == chosen_row["epochs_trained"] == longer["epochs_trained"]
    with pytest.raises(DataError, match="missing or damaged entr"):  # the test part is needed only now
        evaluate_search(result.experiment_dir, table, data)
    for entry, content in hidden.items():
        entry.write_bytes(content)
    predictions = evaluate_search(result.experiment_dir, table, data).to_pylist()
    assert (tmp_path / "runs" / "ex" / "predictions.parquet").is_file()
    landscape = pq.read_table(tmp_path / "runs" / "ex" / "landscape.parquet").to_pylist()
    assert sorted({r["mask"] for r in landscape}) == [f"{i:04b}" for i in range(16)]
    assert {r["method"] for r in landscape} == {"candidate"} and len(landscape) == 16 * len(test_rows)
    by_method = {}
    for r in predictions:
        by_method.setdefault(r["method"], []).append(r)
    assert set(by_method) == {"late fusion", "chosen", "ensemble"} | (
        {"late fusion, equal epochs"} if "longer" in roles else set()
    )
    assert sorted(r["sample_id"] for r in by_method["ensemble"]) == sorted(
        index["sample_id"][r] for r in test_rows
    )
    searched = [r["val_loss"] for r in table.to_pylist() if r["role"] == "search"]
    assert chosen_row["val_loss"] == min(searched)  # exhaustive: the best validation loss
    # The ensemble's probabilities are the mean of the 15 fusion configurations' (not 0000's).
    from fusionsearch.model.checkpoint import load_model
    from fusionsearch.model.device import DevicePolicy
    from fusionsearch.train.folds import load_fold

    test = load_fold(data, 0, parts=("test",)).test
    members = [predict(load_model(r["checkpoint"]), test, DevicePolicy.select())
               for r in table.to_pylist() if r["mask"] != "0000" and r["role"] == "search"]  # fmt: skip
    ensemble = np.array([r["probabilities"] for r in by_method["ensemble"]])
    assert len(members) == 15
    np.testing.assert_allclose(ensemble, np.mean(members, axis=0), atol=1e-6)
    np.testing.assert_array_equal([r["label"] for r in by_method["ensemble"]], test.labels.numpy())
    # ... and each landscape entry is that mask's own prediction.
    for r in (r for r in table.to_pylist() if r["role"] == "search"):
        mine = np.array([e["probabilities"] for e in landscape if e["mask"] == r["mask"]])
        expected = predict(load_model(r["checkpoint"]), test, DevicePolicy.select())
        np.testing.assert_allclose(mine, expected, atol=1e-6)


def test_cost_adds_up_the_trials_and_their_efficiency():
    from fusionsearch.report.cost import cost_rows, search_cost
    from fusionsearch.search.experiment import RunRecord
    from fusionsearch.search.records import SCHEMA

    def row(mask, role, train, step, evaluate, checkpoint, setup=None, fold=0):
        return {
            "fold": fold,
            "role": role,
            "modality": "T1" if role == "unimodal" else None,
            "mask": mask,
            "status": "ok",
            "train_seconds": train,
            "step_seconds": step,
            "eval_seconds": evaluate,
            "checkpoint_seconds": checkpoint,
            "setup_seconds": setup,
            "started_at": 100.0,
            "finished_at": 100.0 + train,
            "chosen": False,
        }

    table = pa.Table.from_pylist(
        [
            row("0000", "search", 100, 80, 10, 5, 3),
            row("0100", "search", 300, 280, 10, 5, 2),
            row("0000", "unimodal", 100, 40, 10, 40),  # from an older version: no setup time
        ],
        schema=SCHEMA,
    )
    run = RunRecord(resources={"cpu": 8, "gpu": 1}, max_concurrent=4, max_failures=2, searcher="sfsa")
    cost = search_cost(table, run, num_points=4)
    assert (cost.unit, cost.search_candidates, cost.baseline_trials) == ("GPU-hours", 2, 1)
    assert cost.search_compute == pytest.approx(400 / 3600) and cost.total_compute == pytest.approx(
        500 / 3600
    )
    assert cost.exhaustive_compute == pytest.approx(200 * 16 / 3600)  # the mean search candidate x 16 masks
    assert cost.efficiency == pytest.approx(400 / 500)
    assert (cost.eval_share, cost.checkpoint_share) == (pytest.approx(30 / 500), pytest.approx(50 / 500))
    assert cost.setup_share == pytest.approx(5 / 500)
    older = search_cost(table.drop_columns(["setup_seconds"]), run, num_points=4)
    assert older.setup_share is None and older.efficiency == cost.efficiency
    assert ["efficiency: share of trial time in training steps", "0.80"] in cost_rows(cost)


def test_mcnemar_is_the_exact_test_on_the_discordant_pairs():
    from fusionsearch.report.statistics import mcnemar

    a = np.array([True, True, True, False, False])
    b = np.array([True, False, False, True, False])
    assert mcnemar(a, b) == (2, 1, pytest.approx(1.0))  # 2 vs 1 discordant: nothing to see
    six = np.array([True] * 6 + [False] * 4)
    assert mcnemar(six, np.zeros(10, bool)) == (6, 0, pytest.approx(2 * 0.5**6))  # 0.03125 by hand
    assert mcnemar(six, six)[2] == 1.0


def test_stratified_bootstrap_interval_matches_the_hand_computed_one():
    from fusionsearch.report.statistics import auc, bootstrap_interval

    # Two subjects per class, one right and one wrong in each: a stratified resample draws two per
    # class, so the number right is Binomial(4, 1/2); P(0 right) = 1/16 > 2.5 %, so the 95 % interval
    # of the accuracy is [0, 1].
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    assert bootstrap_interval(labels, probabilities, "accuracy", seed=1) == (0.0, 1.0)
    assert bootstrap_interval(labels, np.eye(2)[labels], "accuracy") == (1.0, 1.0)  # always right
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 2, 60), rng.random(60)
    assert auc(y, np.stack([1 - p, p], 1)) == pytest.approx(sk.roc_auc_score(y, p))
    low, high = bootstrap_interval(y, np.stack([1 - p, p], 1), "auc", seed=2)
    assert low < sk.roc_auc_score(y, p) < high
    assert bootstrap_interval(y, np.stack([1 - p, p], 1), "auc", seed=2) == (low, high)  # seeded


def test_metrics_on_all_resamples_at_once_equal_them_one_resample_at_a_time():
    from fusionsearch.report.statistics import _resamples, accuracy, auc, resampled

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 40)
    p = np.round(rng.random(40), 1)  # ties, within and across the classes
    binary = np.stack([1 - p, p], 1)
    draws = _resamples(y, 50, 7)
    for metric, one in (("accuracy", accuracy), ("auc", auc)):
        expected = [one(y[i], binary[i]) for i in draws]
        assert resampled(metric, y, binary, 50, 7) == pytest.approx(expected, abs=1e-12)
    y3 = rng.integers(0, 3, 30)
    three = rng.dirichlet(np.ones(3), 30)
    expected = [auc(y3[i], three[i]) for i in _resamples(y3, 20, 1)]
    assert resampled("auc", y3, three, 20, 1) == pytest.approx(expected, nan_ok=True)


def test_paired_comparisons_and_the_too_small_warning():
    from fusionsearch.report.statistics import paired_auc_test, uncertainty

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    perfect = np.eye(2)[labels] * 0.8 + 0.1
    assert paired_auc_test(labels, perfect, perfect) == (0.0, 1.0)
    noise = rng.random(40)
    coin = np.stack([1 - noise, noise], 1)

    def rows(method, probabilities, n=40):
        return [{"fold": 0, "method": method, "mask": "-", "sample_id": f"s{i:02d}", "label": int(labels[i]),
                 "probabilities": probabilities[i].tolist()} for i in range(n)]  # fmt: skip

    result = uncertainty(rows("chosen", perfect) + rows("late fusion", coin) + rows("unimodal T1", perfect),
                         {"unimodal T1": 1.0})  # fmt: skip
    by_other = {c.other: c for c in result.comparisons}
    late = by_other["late fusion"]
    wrong = int(np.sum(coin.argmax(1) != labels))
    assert (late.n, late.only_chosen_right, late.only_other_right) == (40, wrong, 0)
    assert late.accuracy_difference == pytest.approx(wrong / 40) and late.mcnemar_p < 0.001
    assert late.auc_difference > 0 and late.auc_p < 0.05
    # The best unimodal network classifies every subject like the chosen mask: nothing to tell apart.
    assert by_other["unimodal T1"].mcnemar_p == 1.0
    assert result.warnings == ["only 0 of 40 test subjects are classified differently by the chosen mask and "
                               "unimodal T1: too few to tell the two apart"]  # fmt: skip
    assert {i["method"] for i in result.intervals} == {"chosen", "late fusion", "unimodal T1"}


def test_the_held_out_predictions_are_made_in_the_driver_only_for_a_cpu_search_on_one_node():
    from fusionsearch.tune.driver import in_driver

    one, dead = {"Alive": True}, {"Alive": False}
    assert in_driver({"cpu": 1, "gpu": 0}, [one, dead]) and in_driver({}, [one])
    assert not in_driver({"cpu": 1, "gpu": 1}, [one])  # a GPU: a Ray task that Ray gives one
    assert not in_driver({"cpu": 1}, [one, one])  # a cluster: one task per fold, on its nodes
