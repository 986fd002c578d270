"""The report of a search: results in the paper's form, the search tree, ROC curves, the cost.

:func:`load_evaluation` gathers what a finished search stored (candidates, held-out
predictions, the run's settings); :func:`write_report` turns it into a self-contained HTML
page, a Markdown page with PNG figures, and CSV/Parquet tables under ``<experiment>/report``;
:func:`write_comparison` puts several searches side by side.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from matplotlib.figure import Figure

from fusionsearch import storage
from fusionsearch.driver import load_result, read_run
from fusionsearch.errors import UserError
from fusionsearch.evaluation import PREDICTIONS_FILE, fold_metrics
from fusionsearch.metrics import METRICS, mean_and_std

REPORT_DIR = "report"
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
    cost: dict[str, Any]
    settings: dict[str, Any]


def load_evaluation(experiment_dir: str) -> Evaluation:
    """Read a search's candidates, held-out predictions and settings from its storage."""
    run = read_run(experiment_dir)
    candidates = load_result(experiment_dir).table
    path = storage.join(experiment_dir, PREDICTIONS_FILE)
    if not storage.exists(path):
        raise UserError(
            f"{experiment_dir} has no held-out predictions ({PREDICTIONS_FILE}): the search has not "
            "finished; finish it with 'fusionsearch resume NAME', which evaluates it"
        )
    predictions = storage.read_table(path)
    per_fold = fold_metrics(predictions)
    meta = run.get("metadata", {})
    searcher = meta.get("searcher", "search")
    num_points = len(candidates["mask"][0].as_py())
    results = _ordered(mean_and_std(per_fold.drop_columns(["fold", "mask"])))
    return Evaluation(
        name=experiment_dir.rstrip("/").rsplit("/", 1)[-1],
        searcher=searcher,
        num_points=num_points,
        candidates=candidates,
        predictions=predictions,
        per_fold=per_fold,
        results=results,
        cost=search_cost(candidates, run, searcher, num_points),
        settings=meta,
    )


def _ordered(results: pa.Table) -> pa.Table:
    def rank(method: str) -> tuple[int, str]:
        return next(i for i, p in enumerate(METHOD_ORDER) if method.startswith(p)), method

    order = sorted(range(results.num_rows), key=lambda i: rank(results["method"][i].as_py()))
    return results.take(order)


def method_title(method: str, searcher: str) -> str:
    """Display names: the chosen mask of an exhaustive search is its best mask."""
    if method == "chosen":
        return "exhaustive: best mask" if searcher == "exhaustive" else f"{searcher}: chosen mask"
    return {"late fusion": "late fusion (0000)", "ensemble": "brute-force ensemble"}.get(method, method)


def chosen_frequency(candidates: pa.Table) -> Counter:
    """How often each mask was chosen across folds."""
    rows = candidates.to_pylist()
    return Counter(r["mask"] for r in rows if r["chosen"])


def search_cost(candidates: pa.Table, run: dict[str, Any], searcher: str, num_points: int) -> dict[str, Any]:
    """Trials trained, compute hours, wall time, and what exhaustive search needs for the same folds."""
    rows = [r for r in candidates.to_pylist() if r["status"] == "ok" or r["train_seconds"]]
    search = [r for r in rows if r["role"] == "search"]
    folds = len({r["fold"] for r in candidates.to_pylist()})
    resources = run.get("resources") or {}
    gpus = resources.get("gpu") or 0
    unit, per_trial = ("GPU-hours", gpus) if gpus else ("CPU-hours", resources.get("cpu", 1))
    seconds = [r["train_seconds"] or 0.0 for r in search]
    starts = [r["started_at"] for r in rows if r["started_at"]]
    ends = [r["finished_at"] for r in rows if r["finished_at"]]
    exhaustive_candidates = 2**num_points * folds
    mean_seconds = float(np.mean(seconds)) if seconds else float("nan")
    return {
        "folds": folds,
        "search candidates": len(search),
        "search candidates per fold": len(search) / folds if folds else float("nan"),
        "baseline trials": len(rows) - len(search),
        "unit": unit,
        "search compute": sum(seconds) * per_trial / 3600,
        "total compute": sum(r["train_seconds"] or 0.0 for r in rows) * per_trial / 3600,
        "wall hours": (max(ends) - min(starts)) / 3600 if starts and ends else float("nan"),
        "exhaustive candidates": exhaustive_candidates,
        "exhaustive compute": (
            sum(seconds) * per_trial / 3600
            if searcher == "exhaustive"
            else mean_seconds * exhaustive_candidates * per_trial / 3600
        ),
        "exhaustive compute is": "measured"
        if searcher == "exhaustive"
        else "estimated: mean candidate x count",
        "peak RSS per trial MB (median, max)": _median_and_max([r.get("peak_rss_mb") for r in rows]),
    }


def _median_and_max(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{np.median(known):.0f}, {max(known):.0f}" if known else "-"


# --- figures --------------------------------------------------------------------------
def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def roc_figure(evaluation: Evaluation) -> bytes:
    """ROC curves per method, test predictions pooled over folds (binary tasks)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = Figure(figsize=(5.5, 5))
    axes = figure.subplots()
    rows = evaluation.predictions.to_pylist()
    for method in evaluation.results["method"].to_pylist():
        part = [r for r in rows if r["method"] == method]
        labels = np.array([r["label"] for r in part])
        probabilities = np.array([r["probabilities"] for r in part])
        if probabilities.shape[1] != 2 or len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probabilities[:, 1])
        auc = roc_auc_score(labels, probabilities[:, 1])
        axes.plot(fpr, tpr, lw=2, label=f"{method_title(method, evaluation.searcher)} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    axes.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title="ROC, test folds pooled",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def _chosen_path(rows: list[dict[str, Any]]) -> set[str]:
    by_mask = {r["mask"]: r for r in rows}
    path, mask = set(), next((r["mask"] for r in rows if r["chosen"]), None)
    while mask:
        path.add(mask)
        mask = by_mask.get(mask, {}).get("parent_mask")
    return path


def tree_figure(evaluation: Evaluation) -> bytes:
    """Every fold's search tree: candidates by round with their validation loss; the chosen path in red."""
    search = [r for r in evaluation.candidates.to_pylist() if r["role"] == "search"]
    folds = sorted({r["fold"] for r in search})
    tallest = max(Counter((r["fold"], r["round"]) for r in search).values())
    rounds = 1 + max(r["round"] for r in search)
    # One row per fold, so the figure keeps its width (and its text legible) however many folds.
    figure = Figure(figsize=(1.8 * rounds + 0.6, (0.42 * tallest + 1.1) * len(folds)))
    axes = figure.subplots(len(folds), 1, squeeze=False)
    for ax, fold in zip(axes[:, 0], folds, strict=True):
        rows = [r for r in search if r["fold"] == fold]
        path = _chosen_path(rows)
        place = {}
        for round_ in sorted({r["round"] for r in rows}):
            members = sorted((r for r in rows if r["round"] == round_), key=lambda r: r["mask"])
            for i, r in enumerate(members):
                place[r["mask"]] = (round_, -(i - (len(members) - 1) / 2))
        for r in rows:
            if r["parent_mask"] in place:
                (x0, y0), (x1, y1) = place[r["parent_mask"]], place[r["mask"]]
                on_path = r["mask"] in path and r["parent_mask"] in path
                ax.plot(
                    [x0, x1],
                    [y0, y1],
                    color="crimson" if on_path else "0.75",
                    lw=2 if on_path else 0.8,
                    zorder=1,
                )
        for r in rows:
            x, y = place[r["mask"]]
            loss = "failed" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
            style = {"color": "crimson", "fontweight": "bold"} if r["mask"] in path else {}
            ax.text(
                x,
                y,
                f"{r['mask']}  {loss}",
                ha="center",
                va="center",
                fontsize=8,
                family="monospace",
                bbox={"boxstyle": "round", "fc": "white", "ec": "crimson" if r["mask"] in path else "0.6"},
                zorder=2,
                **style,
            )
        fold_rounds = sorted({r["round"] for r in rows})
        ax.set(
            xlim=(-0.6, rounds - 0.4),
            ylim=(-tallest / 2 - 0.3, tallest / 2 + 0.3),
            xticks=fold_rounds,
            yticks=[],
            xlabel="round",
            title=f"fold {fold}",
        )
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
    figure.suptitle("search tree: mask and validation loss (chosen path in red)", fontsize=10, y=1.0)
    figure.tight_layout()
    return _png(figure)


def rounds_figure(evaluation: Evaluation) -> bytes:
    """Validation loss of every candidate by round, and each fold's best-so-far line."""
    search = [
        r for r in evaluation.candidates.to_pylist() if r["role"] == "search" and r["val_loss"] is not None
    ]
    figure = Figure(figsize=(5.5, 4))
    axes = figure.subplots()
    for fold in sorted({r["fold"] for r in search}):
        rows = [r for r in search if r["fold"] == fold]
        rounds = sorted({r["round"] for r in rows})
        best = np.minimum.accumulate([min(r["val_loss"] for r in rows if r["round"] == k) for k in rounds])
        line = axes.plot(rounds, best, marker="o", lw=2, label=f"fold {fold} best so far")
        axes.scatter(
            [r["round"] + 0.08 for r in rows],
            [r["val_loss"] for r in rows],
            s=12,
            alpha=0.5,
            color=line[0].get_color(),
        )
    losses = [r["val_loss"] for r in search]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:  # late rounds' gains are small
        axes.set_yscale("log")
    axes.set(xlabel="round", ylabel="validation loss", title="validation loss per round")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize=8)
    return _png(figure)


# --- tables and pages -----------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def results_rows(evaluation: Evaluation) -> list[list[str]]:
    """The paper's table: one row per method, ``mean ± std`` over folds for every metric."""
    rows = []
    masks = {
        m: Counter(
            evaluation.per_fold.filter(pa.compute.equal(evaluation.per_fold["method"], m))["mask"].to_pylist()
        )
        for m in evaluation.results["method"].to_pylist()
    }
    for row in evaluation.results.to_pylist():
        mask = ", ".join(f"{m} x{n}" if n > 1 else m for m, n in masks[row["method"]].most_common())
        cells = [f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}" for m in METRICS]
        rows.append([method_title(row["method"], evaluation.searcher), mask, *cells])
    return rows


RESULTS_HEADER = ["method", "mask", *METRICS]


def cost_rows(cost: dict[str, Any]) -> list[list[str]]:
    unit = cost["unit"]
    return [
        ["folds", _fmt(cost["folds"])],
        [
            "search candidates trained (per fold)",
            f"{cost['search candidates']} ({cost['search candidates per fold']:.1f})",
        ],
        ["baseline trials (unimodal, ensemble members)", _fmt(cost["baseline trials"])],
        [f"search compute ({unit})", f"{cost['search compute']:.3f}"],
        [f"total compute incl. baselines ({unit})", f"{cost['total compute']:.3f}"],
        ["wall time (hours)", f"{cost['wall hours']:.3f}"],
        ["exhaustive search: candidates", _fmt(cost["exhaustive candidates"])],
        [
            f"exhaustive search: compute ({unit}, {cost['exhaustive compute is']})",
            f"{cost['exhaustive compute']:.3f}",
        ],
        ["peak RSS per trial, MB (median, max)", cost["peak RSS per trial MB (median, max)"]],
    ]


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto}"
)


def _write_csv(path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    storage.write_bytes(path, buffer.getvalue())


def write_report(experiment_dir: str) -> Evaluation:
    """Write ``report.html`` (self-contained), ``report.md`` with PNG figures, and the tables as
    CSV and Parquet under ``<experiment>/report``; returns the evaluation shown."""
    evaluation = load_evaluation(experiment_dir)
    out = storage.join(experiment_dir, REPORT_DIR)
    figures = {
        "results_roc": roc_figure(evaluation),
        "search_tree": tree_figure(evaluation),
        "val_loss_rounds": rounds_figure(evaluation),
    }
    for name, png in figures.items():
        storage.write_bytes(storage.join(out, f"{name}.png"), png)
    tables = {
        "results": evaluation.results,
        "metrics_per_fold": evaluation.per_fold,
        "candidates": evaluation.candidates.drop_columns(["node_ip", "node_id"]),
        "cost": pa.Table.from_pylist([{"item": k, "value": str(v)} for k, v in evaluation.cost.items()]),
    }
    for name, table in tables.items():
        storage.write_table(storage.join(out, f"{name}.parquet"), table)
        _write_csv(storage.join(out, f"{name}.csv"), table)
    frequency = chosen_frequency(evaluation.candidates)
    sections = _sections(evaluation, frequency)
    markdown = [f"# fusionsearch report: {evaluation.name}", ""]
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(evaluation.name)}</title>"
        f"<style>{STYLE}</style></head><body><h1>fusionsearch report: {html.escape(evaluation.name)}</h1>"
    ]
    for title, text, table, figure in sections:
        markdown += [f"## {title}", "", text, ""]
        page += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(text)}</p>"]
        if table:
            markdown += [_markdown_table(*table), ""]
            page.append(_html_table(*table))
        if figure:
            markdown += [f"![{title}]({figure}.png)", ""]
            encoded = base64.b64encode(figures[figure]).decode()
            page.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{encoded}'>")
    settings = json.dumps(evaluation.settings, indent=2)
    markdown += ["## Settings", "", "```json", settings, "```", ""]
    page += ["<h2>Settings</h2>", f"<pre>{html.escape(settings)}</pre>", "</body></html>"]
    storage.write_bytes(storage.join(out, "report.md"), "\n".join(markdown).encode())
    storage.write_bytes(storage.join(out, "report.html"), "\n".join(page).encode())
    return evaluation


def _sections(evaluation: Evaluation, frequency: Counter) -> list[tuple[str, str, Any, str | None]]:
    folds = evaluation.cost["folds"]
    chosen = ", ".join(f"{mask} on {n} of {folds} fold(s)" for mask, n in frequency.most_common())
    return [
        (
            "Results on the held-out test folds",
            f"{evaluation.searcher} search, {folds}-fold subject-grouped cross-validation; each fold's "
            "search selects on its validation part and every method is evaluated once on the fold's test "
            f"part. Mean ± std over folds. Chosen: {chosen}.",
            (RESULTS_HEADER, results_rows(evaluation)),
            "results_roc",
        ),
        (
            "Search tree",
            "Every candidate with its parent, round and validation loss; the path to the chosen mask in red.",
            None,
            "search_tree",
        ),
        (
            "Validation loss per round",
            "Each round's candidates and the best loss so far, per fold.",
            None,
            "val_loss_rounds",
        ),
        (
            "Cost",
            "What this search cost, against an exhaustive search over the same folds.",
            (["item", "value"], cost_rows(evaluation.cost)),
            None,
        ),
    ]


def write_comparison(experiment_dirs: list[str], out: str) -> str:
    """Several searches side by side (results, chosen masks, cost); returns ``out``."""
    evaluations = [load_evaluation(d) for d in experiment_dirs]
    rows, cost = [], []
    for e in evaluations:
        rows += [[e.name, *r] for r in results_rows(e)]
        c = e.cost
        cost.append(
            [
                e.name,
                e.searcher,
                str(c["search candidates"]),
                f"{c['search compute']:.3f} {c['unit']}",
                f"{c['wall hours']:.3f}",
                ", ".join(f"{m} x{n}" for m, n in chosen_frequency(e.candidates).most_common()),
            ]
        )
    header = ["search", *RESULTS_HEADER]
    cost_header = ["search", "searcher", "candidates", "search compute", "wall hours", "chosen masks"]
    storage.write_bytes(
        storage.join(out, "comparison.md"),
        "\n\n".join(
            [
                "# fusionsearch comparison",
                _markdown_table(header, rows),
                "## Cost",
                _markdown_table(cost_header, cost),
            ]
        ).encode(),
    )
    storage.write_bytes(
        storage.join(out, "comparison.html"),
        (
            f"<!doctype html><html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>"
            f"<h1>fusionsearch comparison</h1>{_html_table(header, rows)}<h2>Cost</h2>"
            f"{_html_table(cost_header, cost)}</body></html>"
        ).encode(),
    )
    _write_csv(
        storage.join(out, "comparison.csv"), pa.table({h: [r[i] for r in rows] for i, h in enumerate(header)})
    )
    return out
