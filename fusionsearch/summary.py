"""Plain-text summaries of a search for the terminal."""

from __future__ import annotations

import math

import pyarrow as pa

from fusionsearch.driver import SearchResult

COLUMNS = (("round", "round", "{}"), ("mask", "mask", "{}"), ("parent_mask", "parent", "{}"),
           ("val_loss", "val_loss", "{:.4f}"), ("val_accuracy", "val_acc", "{:.3f}"),
           ("val_auc", "val_auc", "{:.3f}"), ("epochs_trained", "epochs", "{:.0f}"),
           ("train_seconds", "seconds", "{:.0f}"), ("status", "status", "{}"))  # fmt: skip


def _cell(value: object, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def candidates_text(table: pa.Table) -> str:
    """The candidates table, one line per candidate, the chosen one marked with ``*``."""
    ordered = table.sort_by([("round", "ascending"), ("mask", "ascending")]).to_pylist()
    rows = [[_cell(row.get(key), fmt) for key, _, fmt in COLUMNS] + ["*" if row.get("chosen") else ""]
            for row in ordered]  # fmt: skip
    header = [title for _, title, _ in COLUMNS] + ["chosen"]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def summary_text(result: SearchResult, num_points: int = 4) -> str:
    """Chosen mask vs late fusion, the candidates table, the cost against exhaustive search."""
    rows = {r["mask"]: r for r in result.table.to_pylist() if r["status"] == "ok"}
    lines = [candidates_text(result.table), ""]
    late = rows.get("0" * num_points)
    chosen = rows.get(str(result.best_mask)) if result.best_mask else None
    for title, row in (("chosen mask", chosen), ("late fusion", late)):
        if row:
            lines.append(
                f"{title:12} {row['mask']}: val_loss {row['val_loss']:.4f}, val_accuracy "
                f"{_cell(row.get('val_accuracy'), '{:.3f}')}, val_auc {_cell(row.get('val_auc'), '{:.3f}')}"
            )
    if chosen is None:
        lines.append("no candidate finished successfully: see the errors above and in the table")
    trained = result.table.num_rows
    failed = trained - len(rows)
    lines.append(
        f"candidates trained: {trained}{f' ({failed} failed)' if failed else ''}, against "
        f"{2**num_points} for exhaustive search"
    )
    if not math.isnan(result.wall_seconds):
        minutes, seconds = divmod(round(result.wall_seconds), 60)
        lines.append(f"wall time: {minutes}m {seconds:02d}s")
    lines.append(f"results: {result.experiment_dir}")
    return "\n".join(lines)
