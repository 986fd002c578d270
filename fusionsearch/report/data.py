"""A finished search as its report shows it: loaded once from the experiment, rendered by the pages.

:func:`load_evaluation` gathers what a finished search stored (candidates, held-out
predictions, landscape, the run's settings) into an :class:`Evaluation`; the renderers
(:mod:`fusionsearch.report.pages` for HTML, Markdown and CSV, :mod:`fusionsearch.report.figures`,
:mod:`fusionsearch.report.summary` for the terminal) only read it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from fusionsearch import storage
from fusionsearch.errors import UserError
from fusionsearch.report.cost import Cost, search_cost
from fusionsearch.report.final import FinalModel, read_final
from fusionsearch.report.metrics import fold_metrics, mean_and_std
from fusionsearch.report.replicates import Replicates, replicates
from fusionsearch.report.saliency import Saliency, read_saliency
from fusionsearch.report.statistics import Uncertainty, uncertainty
from fusionsearch.search.experiment import LANDSCAPE_FILE, PREDICTIONS_FILE, read_candidates, read_run
from fusionsearch.settings import to_dict

METHOD_ORDER = ("unimodal", "late fusion", "chosen", "ensemble")


@dataclass(frozen=True)
class Evaluation:
    """Everything a report shows about one search."""

    name: str
    searcher: str
    num_points: int
    candidates: pa.Table
    predictions: pa.Table
    per_fold: pa.Table  # method x fold metrics
    results: pa.Table  # method: mean and std of every metric
    cost: Cost
    settings: dict[str, Any]  # the run's settings and metadata, as the report shows them
    uncertainty: Uncertainty
    landscape: pa.Table  # every trained mask's test metrics per fold (empty: evaluated before it existed)
    replicates: Replicates | None = None  # --repeats R > 1: answers and accuracy over the replicates
    saliency: Saliency | None = None  # fusionsearch saliency: where each modality looked
    final: FinalModel | None = None  # fusionsearch final: the chosen mask on every development subject


def load_evaluation(experiment_dir: str) -> Evaluation:
    """Read a search's candidates, held-out predictions and settings from its storage."""
    run = read_run(experiment_dir)
    candidates = read_candidates(experiment_dir)
    path = storage.join(experiment_dir, PREDICTIONS_FILE)
    if not storage.exists(path):
        raise UserError(
            f"{experiment_dir} has no held-out predictions ({PREDICTIONS_FILE}): the search has not "
            "finished; finish it with 'fusionsearch resume NAME', which evaluates it"
        )
    every = storage.read_table(path)
    if "repeat" not in every.column_names:  # evaluated before replicates existed
        every = every.append_column("repeat", pa.array([0] * every.num_rows, pa.int64()))
    # The paper's tables and paired tests: the first replicate (each test subject once per method).
    predictions = every.filter(pa.compute.equal(every["repeat"], 0))
    per_fold = fold_metrics(predictions)
    landscape_path = storage.join(experiment_dir, LANDSCAPE_FILE)
    landscape = fold_metrics(
        storage.read_table(landscape_path) if storage.exists(landscape_path) else predictions.slice(0, 0)
    )
    num_points = len(candidates["mask"][0].as_py())
    results = _ordered(mean_and_std(per_fold.drop_columns(["fold", "mask"])))
    mean_accuracy = {r["method"]: r["accuracy_mean"] for r in results.to_pylist()}
    return Evaluation(
        name=experiment_dir.rstrip("/").rsplit("/", 1)[-1],
        searcher=run.searcher,
        num_points=num_points,
        candidates=candidates,
        predictions=predictions,
        per_fold=per_fold,
        results=results,
        cost=search_cost(candidates, run, num_points),
        uncertainty=uncertainty(
            predictions.to_pylist(), mean_accuracy, seed=run.settings.train.seed if run.settings else 0
        ),
        landscape=landscape.drop_columns(["method"]),
        replicates=replicates(
            candidates, every, pooled=bool((run.metadata.get("search") or {}).get("pooled"))
        ),
        settings={
            **run.metadata,
            "searcher": run.searcher,
            "settings": to_dict(run.settings) if run.settings else None,
        },
        saliency=read_saliency(experiment_dir),
        final=read_final(experiment_dir),
    )


def _ordered(results: pa.Table) -> pa.Table:
    def rank(method: str) -> tuple[int, str]:
        return next(i for i, p in enumerate(METHOD_ORDER) if method.startswith(p)), method

    order = sorted(range(results.num_rows), key=lambda i: rank(results["method"][i].as_py()))
    return results.take(order)


def chosen_frequency(candidates: pa.Table) -> Counter:
    """How often each mask was chosen across folds (and replicates)."""
    rows = candidates.to_pylist()
    return Counter(r["mask"] for r in rows if r["chosen"])


def chosen_text(frequency: Counter, folds: int, repeats: int = 1) -> str:
    """``0100 on 3 of 5 fold(s), ...`` (``of 10 searches (5 folds x 2 replicates)`` with replicates)."""
    of = (
        f"{folds} fold(s)"
        if repeats == 1
        else f"{folds * repeats} searches ({folds} fold(s) x {repeats} replicates)"
    )
    return ", ".join(f"{mask} on {n} of {of}" for mask, n in frequency.most_common())
