"""Held-out evaluation: metrics, the methods of each fold, the ensemble, and test-part isolation."""

import os

import numpy as np
import pyarrow as pa
import pytest
from sklearn import metrics as sk

from conftest import cached_data
from fusionsearch.data.cache import read_index
from fusionsearch.data.splits import make_folds
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.driver import evaluate_search, run_search
from fusionsearch.errors import DataError
from fusionsearch.report.evaluation import method_checkpoints, predict
from fusionsearch.report.metrics import classification_metrics
from fusionsearch.settings import ModelConfig, PreprocessConfig, RunSettings, TrainConfig, to_dict
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
    result = run_search(ExhaustiveSearcher(folds=[0]), config={"settings": to_dict(settings)},
                        storage_path=tmp_path / "runs", name="ex", resources={"cpu": 1})  # fmt: skip
    table = result.table
    assert table.num_rows == 16 and set(table["status"].to_pylist()) == {"ok"}
    with pytest.raises(DataError, match="no entry"):  # the test part is needed only now
        evaluate_search(result.experiment_dir, table, data)
    for entry, content in hidden.items():
        entry.write_bytes(content)
    predictions = evaluate_search(result.experiment_dir, table, data).to_pylist()
    assert (tmp_path / "runs" / "ex" / "predictions.parquet").is_file()
    by_method = {}
    for r in predictions:
        by_method.setdefault(r["method"], []).append(r)
    assert set(by_method) == {"late fusion", "chosen", "ensemble"}
    assert sorted(r["sample_id"] for r in by_method["ensemble"]) == sorted(
        index["sample_id"][r] for r in test_rows
    )
    chosen = next(r for r in table.to_pylist() if r["chosen"])
    assert chosen["val_loss"] == min(table["val_loss"].to_pylist())  # exhaustive: the best validation loss
    # The ensemble's probabilities are the mean of the 15 fusion configurations' (not 0000's).
    from fusionsearch.model.checkpoint import load_model
    from fusionsearch.model.device import DevicePolicy
    from fusionsearch.train.folds import load_fold

    test = load_fold(data, 0, parts=("test",)).test
    members = [predict(load_model(r["checkpoint"]), test, DevicePolicy.select())
               for r in table.to_pylist() if r["mask"] != "0000"]  # fmt: skip
    ensemble = np.array([r["probabilities"] for r in by_method["ensemble"]])
    assert len(members) == 15
    np.testing.assert_allclose(ensemble, np.mean(members, axis=0), atol=1e-6)
    np.testing.assert_array_equal([r["label"] for r in by_method["ensemble"]], test.labels.numpy())
