"""Plain-text summaries of a search for the terminal."""

from __future__ import annotations

import math

import pyarrow as pa

from fusionsearch.report.cost import cost_rows
from fusionsearch.report.data import Evaluation, chosen_frequency, chosen_text
from fusionsearch.report.pages import COMPARISONS_HEADER, RESULTS_HEADER, comparison_rows, results_rows
from fusionsearch.search.experiment import SearchResult
from fusionsearch.search.records import replicate

COLUMNS = (("fold", "fold", "{}"), ("round", "round", "{}"), ("role", "role", "{}"), ("mask", "mask", "{}"),
           ("parent_mask", "parent", "{}"), ("val_loss", "val_loss", "{:.4f}"),
           ("val_accuracy", "val_acc", "{:.3f}"), ("val_auc", "val_auc", "{:.3f}"),
           ("epochs_trained", "epochs", "{:.0f}"), ("train_seconds", "seconds", "{:.0f}"),
           ("gain", "gain", "{:+.4f}"), ("p_value", "p", "{:.3g}"), ("status", "status", "{}"))  # fmt: skip


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def candidates_text(table: pa.Table) -> str:
    """The candidates table, one line per trial, the chosen ones marked with ``*``."""
    replicated = "repeat" in table.column_names and len(set(table["repeat"].to_pylist())) > 1
    columns = (COLUMNS[0], ("repeat", "rep", "{}"), *COLUMNS[1:]) if replicated else COLUMNS
    order = [("fold", "ascending"), ("round", "ascending"), ("role", "descending"), ("mask", "ascending")]
    if replicated:
        order.insert(1, ("repeat", "ascending"))
    rows = []
    for row in table.sort_by(order).to_pylist():
        row["role"] = " ".join(filter(None, [row["role"], row["modality"]])) + (
            "+" if row.get("extension") else ""
        )
        rows.append([_cell(row.get(key), fmt) for key, _, fmt in columns] + ["*" if row["chosen"] else ""])
    return text_table([title for _, title, _ in columns] + ["chosen"], rows)


def training_warnings(table: pa.Table) -> list[str]:
    """Trials trained from scratch whose best epoch is epoch 0, their untrained start, as
    ``warning: ...`` or ``note: ...`` lines.

    Such a network never learned. If nothing else of its fold learned either, that is a warning:
    the search compared untrained networks (seen with a learning rate too high for a full-width
    network). If a fused network of the fold did learn, it is a finding, not a training problem:
    this network (late fusion, or one modality alone) cannot learn what fusing earlier can, as on
    the planted XOR demo, where neither modality alone nor their averaged logits carry the label.
    """
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    messages = []
    for row in rows:
        if row["parent_mask"] is not None or row["best_epoch"] != 0 or (row["epochs_trained"] or 0) < 1:
            continue
        who = " ".join(filter(None, [row["role"], row["modality"], row["mask"]]))
        epochs = f"{row['epochs_trained']:.0f} epoch(s)"
        stuck = f"fold {row['fold']}: {who} never beat its untrained start in {epochs}"
        learners = [r for r in rows if replicate(r) == replicate(row) and (r["best_epoch"] or 0) > 0
                    and "1" in r["mask"]]  # fmt: skip
        if learners:
            example = min(learners, key=lambda r: r["val_loss"])["mask"]
            messages.append(
                f"note: {stuck}, while fused networks did (e.g. {example}): expected when the label needs "
                "the modalities combined before the logits (the planted XOR demo); not a training problem"
            )
        else:
            messages.append(
                f"warning: {stuck}, so it did not learn; lower --lr, train longer, or check the labels"
            )
    return messages


def summary_text(result: SearchResult, evaluation: Evaluation | None = None) -> str:
    """The candidates table, the chosen mask of every fold, held-out results and cost."""
    table = result.table
    lines = [candidates_text(table), ""]
    frequency = chosen_frequency(table)
    folds = len(set(table["fold"].to_pylist()))
    repeats = len(set(table["repeat"].to_pylist())) if "repeat" in table.column_names else 1
    if frequency:
        lines.append(f"chosen mask: {chosen_text(frequency, folds, repeats)}")
    else:
        lines.append("no candidate finished successfully: see the errors above and in the table")
    failed = table["status"].to_pylist().count("failed")
    if failed:
        lines.append(f"{failed} trial(s) failed")
    never = table["status"].to_pylist().count("not run")
    if never:
        lines.append(
            f"warning: the search did not finish: {never} proposed trial(s) never ran; resume it to finish"
        )
    lines += training_warnings(table)
    if evaluation is not None:
        lines += ["", "held-out test folds (mean ± std over folds):"]
        lines.append(text_table(RESULTS_HEADER, results_rows(evaluation)))
        if evaluation.uncertainty.comparisons:
            lines += ["", "the chosen mask against the baselines, on the same test subjects:"]
            lines.append(text_table(COMPARISONS_HEADER, comparison_rows(evaluation)))
        lines += [f"warning: {w}" for w in evaluation.uncertainty.warnings]
        lines += ["", text_table(["cost", ""], cost_rows(evaluation.cost))]
    if not math.isnan(result.wall_seconds):
        minutes, seconds = divmod(round(result.wall_seconds), 60)
        lines.append(f"wall time of this command: {minutes}m {seconds:02d}s")
    lines.append(f"results: {result.experiment_dir}")
    if evaluation is not None:
        lines.append(f"report: {result.experiment_dir}/report/report.html")
    return "\n".join(lines)
