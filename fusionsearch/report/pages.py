"""The report of a search: results in the paper's form, the search tree, ROC curves, the cost.

:func:`write_report` renders a search's :class:`~fusionsearch.report.data.Evaluation` as a
self-contained HTML page, a Markdown page with PNG figures, and CSV/Parquet tables under
``<experiment>/report``; :func:`write_comparison` puts several searches side by side.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from fusionsearch import storage
from fusionsearch.report.cost import cost_rows
from fusionsearch.report.data import Evaluation, chosen_frequency, chosen_text, load_evaluation
from fusionsearch.report.figures import (
    landscape_figure,
    landscape_order,
    method_title,
    roc_figure,
    rounds_figure,
    saliency_figure,
    tree_figure,
)
from fusionsearch.report.metrics import METRICS, mean_and_std
from fusionsearch.report.saliency import Saliency
from fusionsearch.search.experiment import REPORT_DIR
from fusionsearch.search.records import PER_SAMPLE


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
INTERVALS_HEADER = ["method", "test subjects", "accuracy [95 % CI]", "AUC [95 % CI]"]
COMPARISONS_HEADER = [
    "chosen mask vs",
    "subjects",
    "accuracy difference",
    "only chosen / only other right",
    "McNemar p",
    "AUC difference",
    "paired bootstrap p",
]


def interval_rows(evaluation: Evaluation) -> list[list[str]]:
    """Each method's pooled test accuracy and AUC with stratified bootstrap 95 % intervals."""
    return [
        [
            method_title(i["method"], evaluation.searcher),
            str(i["n"]),
            f"{i['accuracy']:.3f} [{i['accuracy_low']:.3f}, {i['accuracy_high']:.3f}]",
            f"{_fmt(i['auc'])} [{_fmt(i['auc_low'])}, {_fmt(i['auc_high'])}]",
        ]
        for i in evaluation.uncertainty.intervals
    ]


def comparison_rows(evaluation: Evaluation) -> list[list[str]]:
    """The chosen mask against late fusion, the best unimodal network and the ensemble, paired by subject."""
    return [
        [
            method_title(c.other, evaluation.searcher),
            str(c.n),
            f"{c.accuracy_difference:+.3f}",
            f"{c.only_chosen_right} / {c.only_other_right}",
            f"{c.mcnemar_p:.3g}",
            f"{c.auc_difference:+.3f}",
            _fmt(c.auc_p),
        ]
        for c in evaluation.uncertainty.comparisons
    ]


LANDSCAPE_HEADER = [
    "mask",
    "points",
    "folds",
    "validation loss",
    "test accuracy per fold",
    "test accuracy",
    "AUC",
]


def landscape_rows(evaluation: Evaluation) -> list[list[str]]:
    """Every trained mask: its validation loss and its held-out accuracy on each fold it was trained on
    (mean ± std over folds as in the results table)."""
    rows = evaluation.landscape.to_pylist()
    summary = {
        r["mask"]: r
        for r in mean_and_std(evaluation.landscape.drop_columns(["fold"]), group="mask").to_pylist()
    }
    losses: dict[str, list[float]] = {}
    for r in evaluation.candidates.to_pylist():
        if r["role"] != "unimodal" and r["val_loss"] is not None:
            losses.setdefault(r["mask"], []).append(r["val_loss"])
    table = []
    for mask in landscape_order(set(summary)):
        mine = sorted((r for r in rows if r["mask"] == mask), key=lambda r: r["fold"])
        s = summary[mask]
        table.append(
            [
                mask,
                str(mask.count("1")),
                ", ".join(str(r["fold"]) for r in mine),
                f"{statistics.mean(losses[mask]):.4f}" if mask in losses else "-",
                " / ".join(f"{r['accuracy']:.3f}" for r in mine),
                f"{_fmt(s['accuracy_mean'])} ± {_fmt(s['accuracy_std'])}",
                f"{_fmt(s['auc_mean'])} ± {_fmt(s['auc_std'])}",
            ]
        )
    return table


REPLICATE_POINTS_HEADER = ["fusion point (1: earliest)", "answers including it", "frequency [95 % CI]"]
REPLICATE_ACCURACY_HEADER = ["method", "held-out accuracy per replicate", "mean ± std", "range"]


def replicate_rows(evaluation: Evaluation) -> tuple[list[list[str]], list[list[str]]]:
    """Each fusion point's inclusion in the chosen masks; each method's accuracy per replicate."""
    r = evaluation.replicates
    if r is None:
        return [], []
    points = [
        [str(p.point), f"{p.count} of {p.n}",
         f"{p.frequency:.2f} [{p.low:.2f}, {p.high:.2f}]"]
        for p in r.inclusion
    ]  # fmt: skip
    accuracy = [
        [method_title(a.method, evaluation.searcher), " / ".join(f"{x:.3f}" for x in a.accuracies),
         f"{a.mean:.3f} ± {a.std:.3f}", f"{min(a.accuracies):.3f}-{max(a.accuracies):.3f}"]
        for a in r.accuracy
    ]  # fmt: skip
    return points, accuracy


SALIENCY_HEADER = ["model", "modality", "subjects with findings", "map mass inside the findings",
                   "their share of the volume", "pointing-game hits",
                   "chosen mask's mass inside minus this one's", "Wilcoxon p"]  # fmt: skip
DECISIONS_HEADER = ["fold", "round", "tested child", "against", "gain on the test half", "p (one-sided)",
                    "accepted"]  # fmt: skip


def saliency_rows(saliency: Saliency) -> list[list[str]]:
    """Per model and modality: subjects, mass inside the findings, their volume share, hit rate."""
    return [
        [r["method"], r["modality"], str(r["subjects"]), f"{r['mass_inside']:.3f}",
         f"{r['volume_share']:.3f}", f"{r['hit_rate']:.2f}",
         f"{r['difference']:+.3f}" if "difference" in r else "-", f"{r['p']:.2g}" if "p" in r else "-"]
        for r in saliency.summary()
    ]  # fmt: skip


def decision_rows(candidates: pa.Table) -> list[list[str]]:
    """Each round's decision: the child tested, its reference (its parent's control, or its parent),
    its loss decrease on the validation part's test half and the p-value, in fold and round order."""
    rows = [r for r in candidates.to_pylist() if r.get("accepted") is not None]
    table = []
    for r in sorted(
        rows, key=lambda r: (r["fold"], r.get("repeat") or 0, r["round"], r.get("extension") or 0)
    ):
        round_ = f"{r['round']}{' (extended)' if r.get('extension') else ''}"
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3g}"
        fold = str(r["fold"]) + (f" (replicate {r['repeat']})" if r.get("repeat") else "")
        table.append([fold, round_, r["mask"], r["reference"], f"{r['gain']:+.4f}", p,
                      "yes" if r["accepted"] else "no"])  # fmt: skip
    return table


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
    if evaluation.landscape.num_rows:
        figures["landscape"] = landscape_figure(evaluation)
    if evaluation.saliency is not None:
        figures["saliency"] = saliency_figure(evaluation.saliency)
    for name, png in figures.items():
        storage.write_bytes(storage.join(out, f"{name}.png"), png)
    tables = {
        "results": evaluation.results,
        "metrics_per_fold": evaluation.per_fold,
        # Per-sample losses stay in the experiment's candidates.parquet (CSV has no list type).
        "candidates": evaluation.candidates.drop_columns(
            [c for c in ("node_ip", "node_id", *PER_SAMPLE) if c in evaluation.candidates.column_names]
        ),
        "cost": pa.Table.from_pylist([{"item": k, "value": v} for k, v in cost_rows(evaluation.cost)]),
        "landscape": evaluation.landscape,
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
    folds = evaluation.cost.folds
    chosen = chosen_text(frequency, folds, evaluation.cost.repeats)
    landscape, replicated = [], []
    if evaluation.replicates is not None:
        points, accuracy = replicate_rows(evaluation)
        r = evaluation.replicates
        replicated = [
            (
                "Replicates: how much the answer owes to the seed",
                f"Each search ran {r.repeats} times with other training seeds (new weights, batch order and "
                f"augmentation) on the same split: {len(r.answers)} answers. How many of them include each "
                "fusion point, with an exact (Clopper-Pearson) 95 % binomial interval. A point in every "
                "answer is the search's finding; a point in some is the seed's. The tables above use the "
                "first replicate.",
                (REPLICATE_POINTS_HEADER, points),
                None,
            ),
            (
                "Replicates: held-out accuracy",
                "Each replicate's held-out accuracy, its test subjects pooled over folds, and the spread "
                "over replicates (the unimodal baselines trained once).",
                (REPLICATE_ACCURACY_HEADER, accuracy),
                None,
            ),
        ]
    if evaluation.landscape.num_rows:
        landscape.append(
            (
                "Landscape: every trained mask on the test folds",
                "Held-out accuracy of every fusion configuration this search trained, per fold (an "
                "exhaustive search trains them all). This is analysis after the selection: the search "
                "chose on validation losses only and never saw these figures. Does the fusion point "
                "matter on these data? Masks whose folds lie apart from late fusion's (0…0) say yes.",
                (LANDSCAPE_HEADER, landscape_rows(evaluation)),
                "landscape",
            )
        )
    looked = []
    if (saliency := evaluation.saliency) is not None:
        looked.append(
            (
                "Where each modality looked",
                f"Occlusion sensitivity (MONAI) of fold {saliency.fold}'s chosen mask and of late fusion on "
                f"{len(saliency.sample_ids)} test subjects (the first of each class): for each modality, how "
                "much the probability of the predicted class falls when a patch of that modality alone is "
                f"occluded ({saliency.patch}-voxel patches). "
                + (
                    "The table scores the whole 3D maps against the planted findings: the share of each "
                    "map's positive mass inside them (a map blind to them scores their share of the volume) "
                    "and how often the map's maximum lies inside one (the pointing game); late fusion's "
                    "row compares its mass inside with the chosen mask's on the same subjects (the mean "
                    "paired difference, and the Wilcoxon signed-rank test of the differences)."
                    if saliency.score_rows
                    else "The findings' positions are not known for these data, so the maps are not scored."
                ),
                (SALIENCY_HEADER, saliency_rows(saliency)) if saliency.score_rows else None,
                "saliency",
            )
        )
    if (final := evaluation.final) is not None:
        looked.append(("The final model", final.describe() + " `predict` and `export` use it.", None, None))
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
            "Uncertainty and paired comparisons",
            "Test predictions pooled over the searched folds (each test subject once). Intervals: "
            "percentile bootstrap over test subjects, stratified by class, seeded. Comparisons pair the "
            "chosen mask with each method on the same subjects: McNemar's exact test for accuracy, a "
            "paired bootstrap for AUC. "
            + (" ".join(f"Warning: {w}." for w in evaluation.uncertainty.warnings) or "No warning."),
            (INTERVALS_HEADER, interval_rows(evaluation)),
            None,
        ),
        (
            "Paired tests: the chosen mask against the baselines",
            "Positive differences favour the chosen mask.",
            (COMPARISONS_HEADER, comparison_rows(evaluation)),
            None,
        ),
        *replicated,
        *landscape,
        *looked,
        *(
            [
                (
                    "Round decisions: each addition against its control",
                    "Each round's best child (largest loss decrease over its reference on the selection "
                    "half of the validation subjects, where every trial also chose its best epoch) tested "
                    "on the other half: its mean per-sample loss decrease against the parent continued "
                    "for the same budget (control), or against the parent itself (--control none), with "
                    "a one-sided paired t-test. A child is added only if p < alpha.",
                    (DECISIONS_HEADER, decisions),
                    None,
                )
            ]
            if (decisions := decision_rows(evaluation.candidates))
            else []
        ),
        (
            "Search tree",
            "Every candidate with its parent, round and validation loss; each round's control (its parent "
            "continued) in grey italics, trials of a round tried again (twice the budget) marked +; the "
            "path to the chosen mask in red.",
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
    """Several searches side by side (results, chosen masks, cost, replicates); returns ``out``."""
    evaluations = [load_evaluation(d) for d in experiment_dirs]
    rows, cost, replicated = [], [], []
    for e in evaluations:
        rows += [[e.name, *r] for r in results_rows(e)]
        c = e.cost
        cost.append(
            [
                e.name,
                e.searcher,
                str(c.search_candidates),
                f"{c.search_compute:.3f} {c.unit}",
                f"{c.wall_hours:.3f}",
                ", ".join(f"{m} x{n}" for m, n in chosen_frequency(e.candidates).most_common()),
            ]
        )
        if e.replicates is not None:
            points, accuracy = replicate_rows(e)
            chosen = next((a[2] for a in accuracy if a[0] == method_title("chosen", e.searcher)), "-")
            inclusion = ", ".join(f"{p[0]}: {p[2]}" for p in points)
            replicated.append(
                [e.name, str(e.replicates.repeats), str(len(e.replicates.answers)), inclusion, chosen]
            )
    header = ["search", *RESULTS_HEADER]
    sections = [
        ("Results", header, rows),
        ("Cost", ["search", "searcher", "candidates", "search compute", "wall hours", "chosen masks"], cost),
    ]
    if replicated:
        sections.append(("Replicates", ["search", "replicates", "answers",
                                         "fusion point: frequency in the answers [95 % CI]",
                                         "chosen mask's held-out accuracy, mean ± std over replicates"],
                         replicated))  # fmt: skip
    markdown = ["# fusionsearch comparison"]
    page = f"<!doctype html><html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>"
    page += "<h1>fusionsearch comparison</h1>"
    for title, head, body in sections:
        markdown += [f"## {title}", _markdown_table(head, body)]
        page += f"<h2>{html.escape(title)}</h2>{_html_table(head, body)}"
    storage.write_bytes(storage.join(out, "comparison.md"), "\n\n".join(markdown).encode())
    storage.write_bytes(storage.join(out, "comparison.html"), (page + "</body></html>").encode())
    _write_csv(
        storage.join(out, "comparison.csv"), pa.table({h: [r[i] for r in rows] for i, h in enumerate(header)})
    )
    return out
