"""Held-out evaluation, after selection: each method's predictions on each test fold.

The search selects on validation losses only; this runs once it has finished. For every fold
it opens the test part (the only code that does) and predicts with every method's checkpoints;
the driver runs :func:`predict_fold` as one Ray task per fold and stores the class
probabilities in ``<experiment>/predictions.parquet``. Methods:

- ``unimodal MOD``: a single-stream network on one modality;
- ``late fusion``: mask 0000, the per-stream logits averaged (the search's round 0);
- ``late fusion, equal epochs``: the same continued from round 0 until it has trained as many
  epochs as the chosen mask's whole lineage did (role ``longer``), so that the chosen mask's
  advantage over it is not one of training time;
- ``chosen``: the mask the search chose on that fold (by validation loss);
- ``ensemble``: the brute-force ensemble, the mean of the class probabilities of all
  ``2**m - 1`` fusion configurations trained on that fold (only when all of them were).

It also predicts with every fusion configuration trained on the fold (method ``candidate``,
one per mask: the *landscape*, ``<experiment>/landscape.parquet``). That is analysis after the
fact, for the report's landscape figure; the search never sees it. Each checkpoint is
predicted once, however many methods and masks share it.

With replicates (``--repeats``), each replicate's late fusion, chosen mask, equal-epochs late
fusion and ensemble are predicted too (column ``repeat``); the unimodal baselines and the
landscape are replicate 0's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from fusionsearch import storage
from fusionsearch.data.cache import CachedDataset
from fusionsearch.mask import NUM_POINTS, FusionMask
from fusionsearch.model.checkpoint import load_model, read_meta
from fusionsearch.model.device import DevicePolicy
from fusionsearch.report.statistics import LONGER_LATE_FUSION
from fusionsearch.search.records import replicate
from fusionsearch.settings import DataConfig
from fusionsearch.train.folds import Batches, load_fold
from fusionsearch.train.inference import predict_logits

log = logging.getLogger(__name__)

PREDICTIONS = pa.schema(
    [
        ("fold", pa.int64()),
        ("repeat", pa.int64()),
        ("method", pa.string()),
        ("mask", pa.string()),
        ("sample_id", pa.string()),
        ("label", pa.int64()),
        ("probabilities", pa.list_(pa.float32())),
    ]
)


def method_checkpoints(
    candidates: pa.Table, fold: int, num_points: int = NUM_POINTS, repeat: int = 0
) -> dict[str, tuple[str, list[str]]]:
    """``{method: (mask, checkpoint locations)}`` of ``fold``'s replicate ``repeat`` from the
    candidates table."""
    rows = _finished(candidates, fold, repeat)
    empty = str(FusionMask.empty(num_points))
    methods: dict[str, tuple[str, list[str]]] = {}
    for r in sorted((r for r in rows if r["role"] == "unimodal"), key=lambda r: r["modality"]):
        methods[f"unimodal {r['modality']}"] = (empty, [r["checkpoint"]])
    for r in rows:
        if r["role"] == "search" and r["mask"] == empty:
            methods["late fusion"] = (empty, [r["checkpoint"]])
    for r in rows:
        if r["role"] == "longer":
            methods[LONGER_LATE_FUSION] = (empty, [r["checkpoint"]])
    for r in rows:
        if r["chosen"]:
            methods["chosen"] = (r["mask"], [r["checkpoint"]])
    fusion = {m: c for m, c in landscape_checkpoints(candidates, fold, repeat).items() if m != empty}
    if len(fusion) == 2**num_points - 1:
        methods["ensemble"] = (f"{len(fusion)} masks", [fusion[m] for m in sorted(fusion)])
    return methods


def landscape_checkpoints(candidates: pa.Table, fold: int, repeat: int = 0) -> dict[str, str]:
    """``{mask: checkpoint location}`` of every configuration trained on ``fold`` (in replicate
    ``repeat``; late fusion included), once each: the chosen version of the chosen mask (it may be
    a control's weights), else the search's first version of a mask when it trained one, else the
    ensemble member."""
    masks: dict[str, str] = {}
    rows = _finished(candidates, fold, repeat)
    for r in sorted(rows, key=lambda r: (not r["chosen"], r["role"] != "search")):
        if r["role"] != "unimodal":
            masks.setdefault(r["mask"], r["checkpoint"])
    return dict(sorted(masks.items()))


def _finished(candidates: pa.Table, fold: int, repeat: int = 0) -> list[dict]:
    """The rows of the trials of ``fold``'s replicate ``repeat`` that finished with a checkpoint."""
    return [
        r
        for r in candidates.to_pylist()
        if replicate(r) == (fold, repeat) and r["status"] == "ok" and r["checkpoint"]
    ]


def ensemble_probabilities(members: Sequence[np.ndarray]) -> np.ndarray:
    """The brute-force ensemble: the mean of its members' class probabilities."""
    return np.mean(np.stack(members), axis=0)


def ensemble_folds(predictions: pa.Table, fold: int = 0) -> pa.Table:
    """Several folds' predictions of the same test subjects (a reserved test part) as one fold: each
    method's (and mask's) mean class probabilities over the folds' models, per sample."""
    groups: dict[tuple[int, str, str, str], list[dict]] = {}
    for row in predictions.to_pylist():
        groups.setdefault((row["repeat"], row["method"], row["mask"], row["sample_id"]), []).append(row)
    rows = [
        {**members[0], "fold": fold,
         "probabilities": ensemble_probabilities([np.asarray(m["probabilities"]) for m in members]).tolist()}
        for members in groups.values()
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=PREDICTIONS)


def predict(
    model: torch.nn.Module, data: CachedDataset, policy: DevicePolicy, batch_size: int = 16
) -> np.ndarray:
    """Class probabilities (n, classes) of ``model`` on ``data``."""
    return predict_logits(policy.module(model), Batches(data, policy, batch_size)).softmax(1).numpy()


def predict_fold(
    data: DataConfig,
    fold: int,
    methods: dict[str, tuple[str, list[str]]],
    landscape: dict[str, str] | None = None,
    repeat: int = 0,
    device: str | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Test-part probabilities on ``fold`` of every method, and of every mask of ``landscape``
    (method ``candidate``), of replicate ``repeat``: two :data:`PREDICTIONS` tables, predicted on
    ``device`` (default: a GPU if one is visible). A plain function; the driver runs it remotely
    or itself."""
    test = load_fold(data, fold, parts=("test",))
    policy = DevicePolicy.select(device)
    predicted: dict[str, np.ndarray] = {}

    def probabilities_of(location: str) -> np.ndarray:
        if location not in predicted:
            with storage.local_copy(location) as folder:
                model, modality = load_model(folder), read_meta(folder).get("modality")
            predicted[location] = predict(model, (test.single(modality) if modality else test).test, policy)
        return predicted[location]

    def table(rows: list[tuple[str, str, np.ndarray]]) -> pa.Table:
        columns: dict[str, list] = {name: [] for name in PREDICTIONS.names}
        n = len(test.test)
        for method, mask, probabilities in rows:
            columns["fold"] += [fold] * n
            columns["repeat"] += [repeat] * n
            columns["method"] += [method] * n
            columns["mask"] += [mask] * n
            columns["sample_id"] += test.test.ids
            columns["label"] += test.test.labels.tolist()
            columns["probabilities"] += probabilities.tolist()
        return pa.table(columns, schema=PREDICTIONS)

    methods_rows = [
        (method, mask, ensemble_probabilities([probabilities_of(c) for c in locations]))
        for method, (mask, locations) in methods.items()
    ]
    landscape_rows = [("candidate", m, probabilities_of(c)) for m, c in (landscape or {}).items()]
    return table(methods_rows), table(landscape_rows)
