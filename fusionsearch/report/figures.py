"""The report's figures, drawn without pyplot (no GUI backend): ROC curves, search trees, losses per
round, landscapes, saliency maps."""

from __future__ import annotations

import io
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from fusionsearch.search.records import parent_row, replicate, row_key

if TYPE_CHECKING:
    from fusionsearch.report.data import Evaluation
    from fusionsearch.report.saliency import Saliency


def method_title(method: str, searcher: str) -> str:
    """Display names: the chosen mask of an exhaustive search is its best mask."""
    if method == "chosen":
        return "exhaustive: best mask" if searcher == "exhaustive" else f"{searcher}: chosen mask"
    return {"late fusion": "late fusion (0000)", "ensemble": "brute-force ensemble"}.get(method, method)


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


def _parent_node(r: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, str, int, int] | None:
    """The node a trial warm-started from (:func:`~fusionsearch.search.records.parent_row`)."""
    parent = parent_row(r, rows)
    return None if parent is None else row_key(parent)


def _chosen_path(rows: list[dict[str, Any]]) -> set[tuple[str, str, int, int]]:
    by_node = {row_key(r): r for r in rows}
    path, node = set(), next((row_key(r) for r in rows if r["chosen"]), None)
    while node in by_node:
        path.add(node)
        node = _parent_node(by_node[node], rows)
    return path


def tree_figure(evaluation: Evaluation) -> bytes:
    """Every fold's search tree (every replicate's): candidates and controls by round with their
    validation loss; the chosen path in red."""
    search = [r for r in evaluation.candidates.to_pylist() if r["role"] in ("search", "control")]
    searches = sorted({replicate(r) for r in search})
    tallest = max(Counter((*replicate(r), r["round"]) for r in search).values())
    rounds = 1 + max(r["round"] for r in search)
    # One row per search, so the figure keeps its width (and its text legible) however many folds.
    figure = Figure(figsize=(2.0 * rounds + 0.6, (0.42 * tallest + 1.1) * len(searches)))
    axes = figure.subplots(len(searches), 1, squeeze=False)
    for ax, (fold, repeat) in zip(axes[:, 0], searches, strict=True):
        rows = [r for r in search if replicate(r) == (fold, repeat)]
        path = _chosen_path(rows)
        place = {}
        for round_ in sorted({r["round"] for r in rows}):
            members = sorted(
                (r for r in rows if r["round"] == round_),
                key=lambda r: (r.get("extension") or 0, r["role"] == "control", r["mask"]),
            )
            for i, r in enumerate(members):
                place[row_key(r)] = (round_ + 0.35 * (r.get("extension") or 0), -(i - (len(members) - 1) / 2))
        for r in rows:
            parent = _parent_node(r, rows)
            if parent in place:
                (x0, y0), (x1, y1) = place[parent], place[row_key(r)]
                on_path = row_key(r) in path and parent in path
                ax.plot(
                    [x0, x1],
                    [y0, y1],
                    color="crimson" if on_path else "0.75",
                    lw=2 if on_path else 0.8,
                    ls=":" if r["role"] == "control" else "-",
                    zorder=1,
                )
        for r in rows:
            x, y = place[row_key(r)]
            loss = "failed" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
            on_path = row_key(r) in path
            style = {"color": "crimson", "fontweight": "bold"} if on_path else {}
            if r["role"] == "control":
                style = {"color": "0.4", "fontstyle": "italic"}
            label = (
                f"{'ctrl ' if r['role'] == 'control' else ''}{r['mask']}{'+' if r.get('extension') else ''}"
            )
            ax.text(
                x,
                y,
                f"{label}  {loss}",
                ha="center",
                va="center",
                fontsize=8,
                family="monospace",
                bbox={"boxstyle": "round", "fc": "white", "ec": "crimson" if on_path else "0.6"},
                zorder=2,
                **style,
            )
        fold_rounds = sorted({r["round"] for r in rows})
        ax.set(
            xlim=(-0.6, rounds - 0.2),
            ylim=(-tallest / 2 - 0.3, tallest / 2 + 0.3),
            xticks=fold_rounds,
            yticks=[],
            xlabel="round",
            title=f"fold {fold}" + (f", replicate {repeat}" if len({r for _, r in searches}) > 1 else ""),
        )
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
    figure.suptitle(
        "search tree: mask and validation loss (ctrl: the round's control; +: round tried again; "
        "chosen path in red)",
        fontsize=10,
        y=1.0,
    )
    figure.tight_layout()
    return _png(figure)


def rounds_figure(evaluation: Evaluation) -> bytes:
    """Validation loss of every candidate by round, and each fold's best-so-far line."""
    search = [
        r for r in evaluation.candidates.to_pylist() if r["role"] == "search" and r["val_loss"] is not None
    ]
    figure = Figure(figsize=(5.5, 4))
    axes = figure.subplots()
    for fold, repeat in sorted({replicate(r) for r in search}):
        rows = [r for r in search if replicate(r) == (fold, repeat)]
        rounds = sorted({r["round"] for r in rows})
        best = np.minimum.accumulate([min(r["val_loss"] for r in rows if r["round"] == k) for k in rounds])
        name = f"fold {fold}" + (f" r{repeat}" if repeat else "")
        line = axes.plot(rounds, best, marker="o", lw=2, label=f"{name} best so far")
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


def landscape_order(masks: set[str]) -> list[str]:
    """Masks by number of fusion points, then earliest point first (late fusion leftmost)."""
    return sorted(masks, key=lambda m: (m.count("1"), [-int(c) for c in m]))


def landscape_figure(evaluation: Evaluation) -> bytes:
    """Held-out accuracy of every trained mask, one dot per fold, the mean as a bar; each fold's
    chosen mask ringed; late fusion's mean as a dashed line."""
    rows = evaluation.landscape.to_pylist()
    masks = landscape_order({r["mask"] for r in rows})
    chosen = {
        (r["fold"], r["mask"])
        for r in evaluation.candidates.to_pylist()
        if r["chosen"] and not r.get("repeat")
    }
    folds = sorted({r["fold"] for r in rows})
    figure = Figure(figsize=(max(5.5, 0.38 * len(masks) + 1.5), 4))
    axes = figure.subplots()
    x = {m: i for i, m in enumerate(masks)}
    for k, fold in enumerate(folds):
        mine = [r for r in rows if r["fold"] == fold]
        offset = (k - (len(folds) - 1) / 2) * 0.12
        axes.scatter(
            [x[r["mask"]] + offset for r in mine],
            [r["accuracy"] for r in mine],
            s=18,
            label=f"fold {fold}",
            edgecolors=["crimson" if (fold, r["mask"]) in chosen else "none" for r in mine],
            linewidths=1.5,
            zorder=3,
        )
    means = [np.mean([r["accuracy"] for r in rows if r["mask"] == m]) for m in masks]
    axes.bar(range(len(masks)), means, width=0.7, color="0.85", zorder=1, label="mean over folds")
    if masks and masks[0].count("1") == 0:
        axes.axhline(means[0], ls="--", color="0.4", lw=1, zorder=2, label="late fusion (mean)")
    axes.set_xticks(range(len(masks)), masks, rotation=90, family="monospace", fontsize=8)
    low = min([r["accuracy"] for r in rows], default=0.5)
    axes.set(
        ylim=(min(0.4, low - 0.05), 1.02),
        ylabel="test accuracy",
        title="landscape: held-out accuracy of every trained mask (chosen: red ring)",
    )
    axes.title.set_fontsize(10)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(figure)


def shown_subjects(saliency: Saliency, count: int = 2) -> list[int]:
    """The subjects the saliency figure draws: up to ``count`` the chosen model classified correctly
    and up to ``count`` it did not, in test order."""
    right = saliency.predicted[0] == saliency.labels
    return [*np.flatnonzero(right)[:count], *np.flatnonzero(~right)[:count]]


def saliency_figure(saliency: Saliency) -> bytes:
    """Each modality's occlusion map over its input plane, per model, for a few test subjects (right
    and wrong), planted findings outlined; then the class-mean maps (axial maximum projections)."""
    methods, modalities = saliency.methods, saliency.modalities
    subjects = shown_subjects(saliency)
    classes = [int(c) for c in np.unique(saliency.labels)]
    columns = [(k, m) for m in range(len(modalities)) for k in range(len(methods))]
    figure = Figure(figsize=(2.1 * len(columns), 2.2 * (len(subjects) + len(classes))))
    grid = figure.subplots(len(subjects) + len(classes), len(columns), squeeze=False)
    for row, s in enumerate(subjects):
        top = max(float(saliency.maps[:, s].max()), 1e-6)  # one scale per subject: models comparable
        for col, (k, m) in enumerate(columns):
            axes = grid[row, col]
            axes.imshow(np.rot90(saliency.images[s, m].astype(np.float32)), cmap="gray")
            heat = np.rot90(np.clip(saliency.maps[k, s, m].astype(np.float32), 0, None))
            axes.imshow(np.ma.masked_less_equal(heat, 0.05 * top), cmap="hot", alpha=0.6, vmin=0, vmax=top)
            if saliency.findings is not None and saliency.findings[s, m].any():
                axes.contour(np.rot90(saliency.findings[s, m]), levels=[0.5], colors="cyan", linewidths=0.8)
            verdict = "right" if saliency.predicted[k, s] == saliency.labels[s] else "wrong"
            axes.set_title(f"{modalities[m]}, {methods[k]} ({saliency.masks[k]}): {verdict}", fontsize=6)
        grid[row, 0].set_ylabel(f"{saliency.sample_ids[s]}\nlabel {saliency.labels[s]}", fontsize=7)
    for offset, c in enumerate(classes):
        row, members = len(subjects) + offset, saliency.labels == c
        for col, (k, m) in enumerate(columns):
            mean = np.clip(saliency.projections[k, members, m].astype(np.float32), 0, None).mean(axis=0)
            grid[row, col].imshow(np.rot90(mean), cmap="hot")
            grid[row, col].set_title(f"{modalities[m]}, {methods[k]}: class mean", fontsize=6)
        grid[row, 0].set_ylabel(f"class {c}\n(mean of {members.sum()})", fontsize=7)
    for axes in grid.flat:
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle(
        f"where each modality looked (fold {saliency.fold}): occlusion sensitivity for the predicted class,"
        f" {saliency.patch}-voxel patches; findings in cyan",
        fontsize=8,
    )
    return _png(figure)
