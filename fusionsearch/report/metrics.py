"""Held-out classification metrics (scikit-learn): per method and fold, and their mean ± std over folds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from sklearn import metrics

#: The paper's metrics and two more, in report order.
METRICS = ("accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity", "auc")


def classification_metrics(labels: Sequence[int], probabilities: np.ndarray) -> dict[str, float]:
    """Metrics of class ``probabilities`` (n, classes) against ``labels``; predictions are the argmax.

    Binary tasks: class 1 is positive (F1, sensitivity = recall of class 1, specificity =
    recall of class 0, AUC of class 1's probability). Multi-class: macro averages (F1,
    sensitivity, specificity one-vs-rest) and one-vs-rest macro AUC.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    classes = np.arange(probabilities.shape[1])
    predicted = probabilities.argmax(1)
    binary = len(classes) == 2
    confusion = metrics.multilabel_confusion_matrix(labels, predicted, labels=classes)  # (classes, 2, 2)
    tn, fp = confusion[:, 0, 0], confusion[:, 0, 1]
    specificity = np.divide(tn, tn + fp, out=np.full(len(classes), np.nan), where=(tn + fp) > 0)
    result = {
        "accuracy": metrics.accuracy_score(labels, predicted),
        "balanced_accuracy": metrics.balanced_accuracy_score(labels, predicted),
        "f1": metrics.f1_score(labels, predicted, average="binary" if binary else "macro", zero_division=0),
        "sensitivity": metrics.recall_score(
            labels, predicted, average="binary" if binary else "macro", zero_division=0
        ),
        "specificity": float(specificity[1] if binary else np.nanmean(specificity)),
        "auc": float("nan"),
    }
    if len(np.unique(labels)) == len(classes):
        scores = probabilities[:, 1] if binary else probabilities
        result["auc"] = metrics.roc_auc_score(labels, scores, multi_class="ovr", labels=classes)
    return {k: float(v) for k, v in result.items()}


def mean_and_std(per_fold: pa.Table, group: str = "method") -> pa.Table:
    """Mean and standard deviation over folds of every metric, one row per ``group`` value."""
    aggregations = [(m, f) for m in METRICS for f in ("mean", "stddev")]
    table = per_fold.group_by(group, use_threads=False).aggregate(aggregations)
    return table.rename_columns([n.replace("_stddev", "_std") for n in table.column_names])


def fold_metrics(predictions: pa.Table) -> pa.Table:
    """One row per (method, fold, mask) with every metric of :data:`METRICS` (a method has one
    mask per fold; the landscape's ``candidate`` method has one row per mask)."""
    rows = []
    groups: dict[tuple, list[int]] = {}
    keys = zip(*(predictions[c].to_pylist() for c in ("method", "fold", "mask")), strict=True)
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for (method, fold, mask), indices in sorted(groups.items()):
        part = predictions.take(indices)
        probabilities = np.array(part["probabilities"].to_pylist())
        rows.append(
            {
                "method": method,
                "fold": fold,
                "mask": mask,
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
