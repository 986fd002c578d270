"""Import a BIDS tree (e.g. OpenNeuro ds004199, OASIS-3) into a manifest.

Files are matched by suffix (``*_T1w.nii.gz``), so ``acq-``/``run-``/``ses-`` entities may vary
per subject. Sessions (``ses-`` or ``sess-`` folders) give one sample each, grouped by subject.
Labels come from ``participants.tsv`` or from a separate table joined on participant (and
session where it has a session column).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa

from fusionsearch.data.manifest import LABEL, SAMPLE, SESSION, SUBJECT, read_text_table
from fusionsearch.errors import DataError

NULL_VALUES = ["n/a", "N/A", "NA", "nan", ""]


@dataclass
class ImportReport:
    """What an import picked and skipped, and why."""

    class_counts: dict[int, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        counts = ", ".join(f"class {c}: {n}" for c, n in sorted(self.class_counts.items()))
        out = [f"imported {sum(self.class_counts.values())} sample(s) ({counts or 'none'})"]
        out += [f"chose {choice}" for choice in self.choices]
        out += [f"skipped {sample}: {reason}" for sample, reason in self.skipped]
        return out


def _strip(value: str, prefixes: Sequence[str]) -> str:
    for prefix in prefixes:
        if value.startswith(prefix):
            return value[len(prefix) :]
    return value


def _sessions(subject_dir: Path) -> list[tuple[str | None, Path]]:
    sessions = sorted(p for p in subject_dir.iterdir() if p.is_dir() and p.name.startswith(("ses-", "sess-")))
    if sessions:
        return [(_strip(p.name, ("sess-", "ses-")), p) for p in sessions]
    return [(None, subject_dir)]


def _candidates(folder: Path, modality: str) -> list[Path]:
    return sorted(
        p for suffix in (".nii.gz", ".nii") for p in folder.rglob(f"*_{modality}{suffix}") if p.is_file()
    )


def _choose(candidates: list[Path]) -> tuple[Path, str]:
    """The candidate with the smallest voxels (finest resolution); ties by name."""
    voxel = {p: float(np.prod(nib.load(p).header.get_zooms()[:3])) for p in candidates}
    best = min(candidates, key=lambda p: (voxel[p], p.name))
    return best, f"{best.name} (voxel {voxel[best]:.3g} mm^3, the finest of {len(candidates)})"


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def read_labels(
    path: Path, label_column: str, participant_column: str, session_column: str | None
) -> dict[tuple[str, str | None], str | None]:
    """``{(participant, session or None): label value}`` from a TSV/CSV table."""
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist; pass --labels with the table of labels")
    delimiter = "\t" if path.suffix in (".tsv", ".txt") else ","
    table = read_text_table(path, delimiter=delimiter, null_values=NULL_VALUES)
    for column in (label_column, participant_column):
        if column not in table.column_names:
            raise DataError(
                f"labels file {path} has no column {column!r}; its columns are {table.column_names} "
                "(choose with --label-column / --participant-column)"
            )
    use_session = session_column is not None and session_column in table.column_names
    sessions = table[session_column].to_pylist() if use_session else [None] * table.num_rows
    return {
        (
            _strip(str(participant), ("sub-",)),
            _strip(str(session), ("sess-", "ses-")) if session is not None else None,
        ): label
        for participant, session, label in zip(
            table[participant_column].to_pylist(), sessions, table[label_column].to_pylist(), strict=True
        )
    }


def import_bids(
    root: str | os.PathLike,
    modalities: Sequence[str],
    *,
    positive: Sequence[str],
    negative: Sequence[str] | None = None,
    label_column: str = "group",
    labels_file: str | os.PathLike | None = None,
    participant_column: str = "participant_id",
    session_column: str | None = "session_id",
    relative_to: str | os.PathLike | None = None,
) -> tuple[pa.Table, ImportReport]:
    """Build a manifest table from the BIDS tree at ``root``.

    Args:
        modalities: BIDS suffixes, one stream each (e.g. ``["T1w", "FLAIR"]``).
        positive: label values of class 1 (e.g. ``["fcd"]``).
        negative: label values of class 0; default: every other value. Values in neither
            are skipped with the reason.
        label_column: the label column of ``participants.tsv`` or of ``labels_file``.
        labels_file: a separate TSV/CSV of labels (e.g. clinical data), joined on
            ``participant_column`` and, if it has one, ``session_column``.
        relative_to: folder the manifest will be written to; image paths are made relative
            to it (absolute if that is not possible).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"BIDS root {root} is not a folder; pass the dataset's top folder")
    labels_path = Path(labels_file) if labels_file else root / "participants.tsv"
    labels = read_labels(labels_path, label_column, participant_column, session_column)
    base = Path(relative_to or ".").resolve()
    report = ImportReport()
    rows: list[dict] = []
    subjects = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-"))
    if not subjects:
        raise DataError(f"BIDS root {root} has no sub-* folders; is it the dataset's top folder?")
    for subject_dir in subjects:
        participant = _strip(subject_dir.name, ("sub-",))
        for session, folder in _sessions(subject_dir):
            sample = subject_dir.name + (f"_ses-{session}" if session else "")
            row = _sample_row(sample, folder, modalities, report)
            if row is None:
                continue
            value = labels.get((participant, session), labels.get((participant, None)))
            label = _class_of(value, positive, negative)
            if isinstance(label, str):
                report.skipped.append((sample, label))
                continue
            paths = {m: os.path.relpath(p.resolve(), base) for m, p in row.items()}
            rows.append({SAMPLE: sample, SUBJECT: subject_dir.name, SESSION: session, LABEL: label, **paths})
    report.class_counts = dict(Counter(r[LABEL] for r in rows))
    columns = [SAMPLE, SUBJECT, SESSION, LABEL, *modalities]
    if all(r[SESSION] is None for r in rows):
        columns.remove(SESSION)
    table = pa.table(
        {c: pa.array([r[c] for r in rows], pa.int64() if c == LABEL else pa.string()) for c in columns}
    )
    return table, report


def _sample_row(sample: str, folder: Path, modalities: Sequence[str], report: ImportReport) -> dict | None:
    row = {}
    for modality in modalities:
        candidates = _candidates(folder, modality)
        if not candidates:
            report.skipped.append((sample, f"no {modality} image (*_{modality}.nii[.gz])"))
            return None
        if len(candidates) > 1:
            row[modality], why = _choose(candidates)
            others = ", ".join(p.name for p in candidates if p != row[modality])
            report.choices.append(f"{sample} {modality}: {why}; not {others}")
        else:
            row[modality] = candidates[0]
    return row


def _class_of(value: str | None, positive: Sequence[str], negative: Sequence[str] | None) -> int | str:
    """The class index of a label value, or the reason it has none."""
    if value is None:
        return "no label"
    if any(_same_value(value, p) for p in positive):
        return 1
    if negative is None or any(_same_value(value, n) for n in negative):
        return 0
    return f"label {value!r} is neither positive {list(positive)} nor negative {list(negative)}"
