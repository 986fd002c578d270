"""A finished search applied to new subjects: ``fusionsearch predict``.

The search's final model (``fusionsearch final``, :mod:`fusionsearch.report.final`) predicts
every sample of a new manifest when it has one; otherwise (or with ``folds=True``) the chosen
configuration of each fold (replicate 0) does, and the prediction is the mean of the folds'
class probabilities (the folds' models as an ensemble), with each fold's probabilities and their
spread (standard deviation over folds) kept. ``fold=K`` uses fold K's model alone: on that
fold's test subjects it reproduces the report's held-out predictions exactly. The samples the
final model trained on are counted (figures on them are no held-out figures).

The new samples are preprocessed exactly as the search's were: the run record's preprocessing
settings and modality order, through the same cache code (an entry per sample and setting, so
predicting twice preprocesses once). Orientation needs no check (every volume is reoriented
to the search's axis codes); the voxel size does when the search kept each scan's own grid
(``spacing=None``): then a scan of another voxel size would show the network another physical
scale, and is refused with the size the search saw.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import torch

from fusionsearch import storage
from fusionsearch.console import Progress
from fusionsearch.data.cache import CachedDataset, PreprocessCache
from fusionsearch.data.manifest import Manifest, read_manifest
from fusionsearch.data.validate import is_class_index, validate_manifest
from fusionsearch.errors import DataError, UserError
from fusionsearch.model.checkpoint import load_model
from fusionsearch.model.device import DevicePolicy
from fusionsearch.report.evaluation import predict as network_probabilities
from fusionsearch.report.final import FinalModel, chosen_rows, read_final
from fusionsearch.report.statistics import METRIC_FUNCTIONS, bootstrap_interval
from fusionsearch.search.experiment import RunRecord, read_run

log = logging.getLogger(__name__)

#: Relative difference of voxel sizes taken as the same size (header rounding).
VOXEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class FoldModel:
    """A model that predicts: one fold's chosen configuration, or the final model (``fold=None``)."""

    fold: int | None
    mask: str
    checkpoint: str
    final: FinalModel | None = field(default=None, compare=False, repr=False)  # the final model's record

    @property
    def name(self) -> str:
        """``fold<k>`` or ``final``: its column prefix and file name."""
        return "final" if self.fold is None else f"fold{self.fold}"

    def __str__(self) -> str:
        return f"the final model ({self.mask})" if self.fold is None else f"fold {self.fold} ({self.mask})"


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict` returns.

    Attributes:
        table: one row per sample: ``sample_id``, ``predicted`` (class), ``probability_<c>`` (mean
            over the models) and ``spread_<c>`` (their standard deviation) per class, and each
            model's ``<name>_probability_<c>``; ``label`` when the manifest has labels.
        models: the models that predicted.
        metrics: with labels: ``{metric: (value, low, high)}`` (95 % bootstrap intervals).
        trained_on: how many of the samples the final model trained on (their metrics are not
            held-out figures); 0 for the folds' models.
    """

    table: pa.Table
    models: list[FoldModel]
    metrics: dict[str, tuple[float, float, float]] | None
    trained_on: int = 0


def fold_models(experiment_dir: str, fold: int | None = None, folds: bool = False) -> list[FoldModel]:
    """The models of a finished search that predict: its final model when it has one (unless
    ``folds``), else each fold's chosen configuration (``fold``: that one only)."""
    rows = chosen_rows(experiment_dir)
    final = read_final(experiment_dir) if fold is None and not folds else None
    if final is not None:
        return [FoldModel(None, final.mask, final.checkpoint, final)]
    models = [FoldModel(r["fold"], r["mask"], r["checkpoint"]) for r in rows]
    if fold is not None:
        models = [m for m in models if m.fold == fold]
        if not models:
            raise UserError(
                f"--fold {fold}: the search {experiment_dir} has no chosen configuration on that fold"
            )
    return models


def check_modalities(run: RunRecord, manifest: Manifest) -> Manifest:
    """``manifest`` with the search's modalities in the search's order; a missing or extra one refused."""
    expected = list(run.metadata.get("modalities") or manifest.modalities)
    missing = [m for m in expected if m not in manifest.modalities]
    extra = [m for m in manifest.modalities if m not in expected]
    if missing or extra:
        which = (f" (missing: {missing})" if missing else "") + (f" (not used: {extra})" if extra else "")
        raise DataError(
            f"the manifest in {manifest.root} has modalities {manifest.modalities}; the search was trained "
            f"on {expected}{which}; give one image column per modality the search used, named as there"
        )
    return manifest.select_modalities(expected)


def check_voxel_size(run: RunRecord, manifest: Manifest) -> None:
    """Refuse scans whose voxel size differs from the search's, when the search kept native grids."""
    if run.settings is None or run.settings.data.preprocess.spacing is not None:
        return  # resampled to a fixed spacing: any voxel size is fine
    training = Path(run.metadata.get("manifest", ""))
    if not training.is_file():
        log.warning(
            "the search's manifest %s is not here: the voxel size of new scans is not checked", training
        )
        return
    reference = read_manifest(training)
    modality = reference.modalities[0]
    expected = np.asarray(nib.load(reference.paths(0)[modality]).header.get_zooms()[:3], dtype=float)
    for row, sample in enumerate(manifest.sample_ids):
        zooms = np.asarray(nib.load(manifest.paths(row)[modality]).header.get_zooms()[:3], dtype=float)
        if not np.allclose(zooms, expected, rtol=VOXEL_TOLERANCE):
            raise DataError(
                f"sample {sample}: its {modality} voxels are {_mm(zooms)}, the search's were "
                f"{_mm(expected)}; it kept each scan's own grid (no --spacing), so the network would see "
                "another physical scale: resample the scans to the search's voxel size, or search with "
                "--spacing"
            )


def predict(
    experiment_dir: str,
    manifest_path: str | os.PathLike,
    *,
    fold: int | None = None,
    folds: bool = False,
    cache: str | None = None,
    device: str | None = None,
    batch_size: int = 16,
    data_root: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Prediction:
    """The chosen configuration of the search at ``experiment_dir`` applied to a new manifest.

    Everything is checked before a model loads: the search finished, the modalities, every
    volume readable (:func:`validate_manifest`), the voxel size. Labels are optional; with
    them, the metrics come with 95 % bootstrap intervals.
    """
    run = read_run(experiment_dir)
    if run.settings is None:
        raise UserError(
            f"the search {experiment_dir} trained {run.trainable}: its models are not fusionsearch's"
        )
    models = fold_models(experiment_dir, fold, folds)
    manifest = check_modalities(run, read_manifest(manifest_path, labelled=False))
    labelled = manifest.table["label"].null_count == 0
    classes = run.settings.model.num_classes
    validate_manifest(manifest, labelled=False, data_root=data_root)  # ids and volumes; any class mix
    wrong = labelled and [
        (i, y)
        for i, y in zip(manifest.sample_ids, manifest.labels, strict=True)
        if not is_class_index(y, classes)
    ]
    if wrong:
        raise DataError(
            f"{len(wrong)} label(s) of the manifest are not class indices 0..{classes - 1} (first: sample "
            f"{wrong[0][0]}, label {wrong[0][1]!r}); map label values to classes, or leave out the labels"
        )
    check_voxel_size(run, manifest)
    root = cache or str(Path(manifest_path).resolve().parent / ".fusionsearch-cache")
    preprocessing = PreprocessCache(root, run.settings.data.preprocess)
    preprocessing.build(manifest, workers=workers)
    labels = manifest.labels if labelled else [-1] * len(manifest)
    data = preprocessing.open_keys(preprocessing.keys(manifest), labels, manifest.sample_ids)
    policy = DevicePolicy.select(device)
    networks = []
    for model in models:
        with storage.local_copy(model.checkpoint) as folder:
            networks.append(load_model(folder))
    probabilities = model_probabilities(networks, data, policy, batch_size)
    table = _table(manifest, models, probabilities, labelled)
    metrics = None
    if labelled:
        truth, mean = np.asarray(manifest.labels, dtype=int), probabilities.mean(0)
        metrics = {
            name: (METRIC_FUNCTIONS[name](truth, mean), *bootstrap_interval(truth, mean, name))
            for name in ("accuracy", "auc")
        }
    final = models[0].final
    trained_on = len(set(manifest.sample_ids) & set(final.samples)) if final else 0
    return Prediction(table, models, metrics, trained_on)


def model_probabilities(
    networks: list[torch.nn.Module], data: CachedDataset, policy: DevicePolicy, batch_size: int = 16
) -> np.ndarray:
    """Class probabilities of every network on ``data``: (networks, samples, classes), with a
    progress bar over the networks."""
    probabilities = []
    progress = Progress("predicting", len(networks))
    for network in networks:
        probabilities.append(network_probabilities(network, data, policy, batch_size))
        progress.step()
    progress.close()
    return np.stack(probabilities)


def _table(
    manifest: Manifest, models: list[FoldModel], probabilities: np.ndarray, labelled: bool
) -> pa.Table:
    """The :attr:`Prediction.table` of ``probabilities`` (models x samples x classes)."""
    mean, spread = probabilities.mean(0), probabilities.std(0)
    columns: dict[str, pa.Array | list] = {"sample_id": manifest.sample_ids}
    if labelled:
        columns["label"] = pa.array(manifest.labels, pa.int64())
    columns["predicted"] = pa.array(mean.argmax(1), pa.int64())
    classes = range(probabilities.shape[2])
    columns |= {f"probability_{c}": pa.array(mean[:, c], pa.float64()) for c in classes}
    columns |= {f"spread_{c}": pa.array(spread[:, c], pa.float64()) for c in classes}
    for model, each in zip(models, probabilities, strict=True):
        columns |= {f"{model.name}_probability_{c}": pa.array(each[:, c], pa.float64()) for c in classes}
    return pa.table(columns)


def _mm(zooms: np.ndarray) -> str:
    return " x ".join(f"{z:g}" for z in zooms) + " mm"
