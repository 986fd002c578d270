"""Held-out evaluation, after selection: each method's predictions on each test fold.

The search selects on validation losses only; this runs once it has finished. For every fold
it opens the test part (the only code that does), predicts with every method's checkpoints,
and stores the class probabilities in ``<experiment>/predictions.parquet``. Methods:

- ``unimodal MOD``: a single-stream network on one modality;
- ``late fusion``: mask 0000, the per-stream logits averaged (the search's round 0);
- ``chosen``: the mask the search chose on that fold (by validation loss);
- ``ensemble``: the brute-force ensemble, the mean of the class probabilities of all
  ``2**m - 1`` fusion configurations trained on that fold (only when all of them were).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from ray import tune

from fusionsearch import storage
from fusionsearch.cache import CachedDataset
from fusionsearch.checkpoint import load_model, read_meta
from fusionsearch.config import from_dict
from fusionsearch.device import DevicePolicy
from fusionsearch.mask import FusionMask
from fusionsearch.metrics import METRICS, classification_metrics
from fusionsearch.settings import DataConfig
from fusionsearch.training import Batches, load_fold, predict_logits

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.parquet"
PREDICTIONS = pa.schema(
    [
        ("fold", pa.int64()),
        ("method", pa.string()),
        ("mask", pa.string()),
        ("sample_id", pa.string()),
        ("label", pa.int64()),
        ("probabilities", pa.list_(pa.float32())),
    ]
)


def method_checkpoints(
    candidates: pa.Table, fold: int, num_points: int = 4
) -> dict[str, tuple[str, list[str]]]:
    """``{method: (mask, checkpoint locations)}`` of ``fold`` from the candidates table."""
    rows = [
        r for r in candidates.to_pylist() if r["fold"] == fold and r["status"] == "ok" and r["checkpoint"]
    ]
    empty = str(FusionMask.empty(num_points))
    methods: dict[str, tuple[str, list[str]]] = {}
    for r in sorted((r for r in rows if r["role"] == "unimodal"), key=lambda r: r["modality"]):
        methods[f"unimodal {r['modality']}"] = (empty, [r["checkpoint"]])
    for r in rows:
        if r["role"] == "search" and r["mask"] == empty:
            methods["late fusion"] = (empty, [r["checkpoint"]])
    for r in rows:
        if r["chosen"]:
            methods["chosen"] = (r["mask"], [r["checkpoint"]])
    # Each fusion configuration once: the search's version when it trained one, else the ensemble member.
    fusion = {}
    for r in sorted(rows, key=lambda r: r["role"] != "search"):
        if r["role"] in ("search", "ensemble") and r["mask"] != empty:
            fusion.setdefault(r["mask"], r["checkpoint"])
    if len(fusion) == 2**num_points - 1:
        methods["ensemble"] = (f"{len(fusion)} masks", [fusion[m] for m in sorted(fusion)])
    return methods


def ensemble_probabilities(members: Sequence[np.ndarray]) -> np.ndarray:
    """The brute-force ensemble: the mean of its members' class probabilities."""
    return np.mean(np.stack(members), axis=0)


def predict(
    model: torch.nn.Module, data: CachedDataset, policy: DevicePolicy, batch_size: int = 16
) -> np.ndarray:
    """Class probabilities (n, classes) of ``model`` on ``data``."""
    return predict_logits(policy.module(model), Batches(data, policy, batch_size)).softmax(1).numpy()


def predict_fold(data: dict[str, Any], fold: int, methods: dict[str, tuple[str, list[str]]]) -> pa.Table:
    """Every method's test-part probabilities on ``fold`` (a plain function; Ray runs it remotely)."""
    config = from_dict(DataConfig, data)
    test = load_fold(config, fold, parts=("test",))
    policy = DevicePolicy.select()
    columns: dict[str, list] = {name: [] for name in PREDICTIONS.names}
    for method, (mask, locations) in methods.items():
        members = []
        for location in locations:
            with tune.Checkpoint(location).as_directory() as folder:
                model, modality = load_model(folder), read_meta(folder).get("modality")
            members.append(predict(model, (test.single(modality) if modality else test).test, policy))
        probabilities = ensemble_probabilities(members)
        n = len(test.test)
        columns["fold"] += [fold] * n
        columns["method"] += [method] * n
        columns["mask"] += [mask] * n
        columns["sample_id"] += test.test.ids
        columns["label"] += test.test.labels.tolist()
        columns["probabilities"] += probabilities.tolist()
    return pa.table(columns, schema=PREDICTIONS)


def evaluate_search(
    experiment_dir: str, candidates: pa.Table, data: dict[str, Any], resources: dict[str, float] | None = None
) -> pa.Table:
    """Predict every fold's test part with every method (one Ray task per fold); store and return it."""
    folds = sorted(set(candidates["fold"].to_pylist()))
    resources = resources or {}
    task = ray.remote(predict_fold).options(
        num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0)
    )
    jobs = [task.remote(data, fold, method_checkpoints(candidates, fold)) for fold in folds]
    log.info("evaluating on the test parts of %d fold(s)", len(folds))
    predictions = pa.concat_tables(ray.get(jobs))
    storage.write_table(storage.join(experiment_dir, PREDICTIONS_FILE), predictions)
    return predictions


def fold_metrics(predictions: pa.Table) -> pa.Table:
    """One row per (method, fold) with every metric of :data:`fusionsearch.metrics.METRICS`."""
    rows = []
    keys = sorted(set(zip(predictions["method"].to_pylist(), predictions["fold"].to_pylist(), strict=True)))
    for method, fold in keys:
        part = predictions.filter(
            pa.compute.and_(
                pa.compute.equal(predictions["method"], method), pa.compute.equal(predictions["fold"], fold)
            )
        )
        probabilities = np.array(part["probabilities"].to_pylist())
        rows.append(
            {
                "method": method,
                "fold": fold,
                "mask": part["mask"][0].as_py(),
                **classification_metrics(part["label"].to_pylist(), probabilities),
            }
        )
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("method", pa.string()),
                ("fold", pa.int64()),
                ("mask", pa.string()),
                *[(m, pa.float64()) for m in METRICS],
            ]
        ),
    )
