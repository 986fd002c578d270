"""Check a dataset before anything trains on it, reporting every problem at once."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from fusionsearch.data.manifest import SUBJECT, Manifest
from fusionsearch.errors import DataError


def check_volume(path: Path) -> str | None:
    """Why the NIfTI image at ``path`` cannot be used, or ``None`` if it can."""
    if not path.is_file():
        return f"file {path} does not exist"
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises many kinds for broken files
        return f"file {path} is not a readable NIfTI image ({type(error).__name__}: {error})"
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        return f"file {path} has shape {data.shape}; expected a 3D volume (or 4D with one volume)"
    if not np.isfinite(data).all():
        return f"file {path} contains {int((~np.isfinite(data)).sum())} NaN/infinite voxels"
    if data.min() == data.max():
        return f"file {path} is constant ({data.min():g} everywhere)"
    return None


def table_problems(
    manifest: Manifest, num_classes: int, folds: int, labelled: bool = True
) -> tuple[list[str], dict]:
    """Dataset-wide problems, and per-sample problems of the table (ids, subjects, and with
    ``labelled`` the labels and the subjects per class the folds need)."""
    dataset: list[str] = []
    per_sample: dict[str, list[str]] = defaultdict(list)
    ids = manifest.sample_ids
    for sample, count in Counter(ids).items():
        if count > 1:
            per_sample[sample].append(f"sample_id appears {count} times; ids must be unique")
    subjects_per_class: dict[int, set] = defaultdict(set)
    for row, (sample, subject, label) in enumerate(zip(ids, manifest.subjects, manifest.labels, strict=True)):
        if subject is None or subject == "":
            per_sample[sample].append(f"no {SUBJECT}")
        if labelled and is_class_index(label, num_classes):
            subjects_per_class[int(label)].add(subject)
        elif labelled:
            per_sample[sample].append(
                f"label {label!r} is not a class index 0..{num_classes - 1}; map label values to "
                "classes when importing (e.g. 'data import-bids --positive fcd')"
            )
        for modality in manifest.modalities:
            if not manifest.table[modality][row].is_valid:
                per_sample[sample].append(f"no {modality} image")
    if labelled and len(subjects_per_class) < 2:
        dataset.append(
            f"only class(es) {sorted(subjects_per_class)} present; classification needs at least two classes"
        )
    for label, subjects in sorted(subjects_per_class.items()):
        if len(subjects) < folds:
            dataset.append(
                f"class {label} has {len(subjects)} subject(s), fewer than the {folds} folds "
                f"requested; use --folds {max(len(subjects), 2)} or fewer, or add subjects"
            )
    return dataset, per_sample


def is_class_index(label: object, num_classes: int) -> bool:
    if isinstance(label, bool) or not isinstance(label, int | float):
        return False
    return float(label).is_integer() and 0 <= label < num_classes


def validate_manifest(
    manifest: Manifest,
    *,
    num_classes: int = 2,
    folds: int = 5,
    workers: int = 8,
    data_root: str | os.PathLike | None = None,
    labelled: bool = True,
) -> None:
    """Raise :class:`DataError` listing every problem of ``manifest``, one line per sample.

    Checks the table (unique ids, subjects, and with ``labelled`` labels in
    ``0..num_classes-1``, at least two classes, at least ``folds`` subjects per class; without,
    the labels are not looked at: new subjects to predict) and opens every image (exists, readable,
    3D or 4D with one volume, finite, not constant). Images must lie inside ``data_root``
    (default: the manifest's folder); a path that escapes it is refused without being opened,
    so a crafted manifest cannot make fusionsearch read arbitrary files.
    """
    dataset, per_sample = table_problems(manifest, num_classes, folds, labelled)
    root = Path(os.path.normpath(Path(data_root or manifest.root).absolute()))
    jobs = []
    for row, sample in enumerate(manifest.sample_ids):
        for modality, path in manifest.paths(row).items():
            if not manifest.table[modality][row].is_valid:
                continue
            if root not in Path(os.path.normpath(path)).parents:
                per_sample[sample].append(
                    f"{modality} path {path} is outside the dataset root {root}; move the manifest "
                    "above the images, or pass --data-root with the folder that holds them"
                )
                continue
            jobs.append((sample, modality, path))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(check_volume, [path for _, _, path in jobs])
        for (sample, modality, _), problem in zip(jobs, results, strict=True):
            if problem:
                per_sample[sample].append(f"{modality} {problem}")
    lines = [f"dataset: {p}" for p in dataset]
    lines += [f"sample {sample}: {'; '.join(found)}" for sample, found in per_sample.items()]
    if lines:
        raise DataError(
            f"the dataset in {manifest.root} has "
            + " and ".join(
                ([f"problems in {len(per_sample)} sample(s)"] if per_sample else [])
                + (["dataset-wide problems"] if dataset else [])
            )
            + "; fix them (or drop those rows from the manifest) and validate again:",
            lines,
        )
