"""Where each modality looked: per-modality occlusion sensitivity of a finished search's models.

For one test subject and one modality, the map at a voxel is how much the probability of the
class the network predicted falls when a patch of *that modality* around the voxel is occluded,
the other modalities left as they were (MONAI's :class:`~monai.visualize.OcclusionSensitivity`,
Gaussian occlusion, over a wrapper that varies one input channel). Positive: the network
needed that region of that modality for its answer. Occlusion rather than Grad-CAM: Grad-CAM
maps have the resolution of the last stage (1-4 voxels per edge at the search's small
shapes), and a per-modality map needs no per-stream layer choice. The price is one forward
pass per patch position: about ``(edge / (patch / 2))^3`` per modality, subject and model.

The chosen mask of a fold and late fusion (0000, the search's round 0) are mapped on the same
test subjects: the first ``subjects`` of each class in the fold's test order (not picked by
correctness, so the figures below are unbiased; the report shows correctly and wrongly
classified ones among them). On the planted benchmark (``fusionsearch synth``) the findings'
positions are known, carried through the same preprocessing as the images
(:func:`~fusionsearch.data.preprocess.preprocess_masks`): :func:`localisation` scores each map
by the share of its positive mass inside the modality's findings (against the share of the
volume they occupy, what a map that ignores them scores) and by the pointing game (is the
map's maximum inside a finding).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusionsearch import storage
from fusionsearch.data.cache import CachedDataset
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.preprocess import preprocess_masks
from fusionsearch.data.synth import write_findings
from fusionsearch.errors import UserError
from fusionsearch.model.checkpoint import load_model
from fusionsearch.model.device import DevicePolicy
from fusionsearch.report.evaluation import method_checkpoints
from fusionsearch.report.evaluation import predict as network_probabilities
from fusionsearch.search.experiment import PREDICTIONS_FILE, read_candidates, read_run
from fusionsearch.train.folds import load_fold

log = logging.getLogger(__name__)

SALIENCY_FILE = "saliency.npz"
#: The models mapped: the fold's chosen mask, and late fusion as its reference.
METHODS = ("chosen", "late fusion")
#: The arrays of a stored :class:`Saliency` (besides the optional findings).
ARRAYS = ("labels", "predicted", "planes", "images", "maps", "projections")
#: Share of overlap between neighbouring occlusion patches (MONAI's default is 0.6).
OVERLAP = 0.5


def default_patch(edge: int) -> int:
    """The occlusion patch edge (voxels) for volumes of ``edge`` voxels: about a sixth of it, even
    (patches then step by half their edge), at least 4."""
    return max(4, 2 * (edge // 12))


class _OneModality(torch.nn.Module):
    """``model`` seen as a function of channel ``modality`` of ``image`` alone: ``(B, 1, D, H, W)``
    in, the class logits out."""

    def __init__(self, model: torch.nn.Module, image: torch.Tensor, modality: int) -> None:
        super().__init__()
        self.model, self.image, self.modality = model, image, modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.image.expand(x.shape[0], -1, -1, -1, -1).clone()
        full[:, self.modality : self.modality + 1] = x
        return self.model(full)


def occlusion_map(
    model: torch.nn.Module, image: torch.Tensor, modality: int, target: int, patch: int, n_batch: int = 32
) -> np.ndarray:
    """``(D, H, W)``: the drop in the probability of class ``target`` when a ``patch``-voxel patch
    of channel ``modality`` of ``image`` (``(1, N, D, H, W)``, on the model's device) is occluded
    around each voxel."""
    from monai.visualize import OcclusionSensitivity

    occlusion = OcclusionSensitivity(
        _OneModality(model, image, modality).eval(),  # MONAI restores the wrapper's mode afterwards
        mask_size=patch,
        n_batch=n_batch,
        verbose=False,
        overlap=OVERLAP,
        activate=lambda logits: logits.softmax(1),  # a one-channel input would get a sigmoid
    )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's own indexing deprecations
        probability = model(image).softmax(1)[0, target]
        occluded, _ = occlusion(image[:, modality : modality + 1])
    return (probability - occluded[0, target]).float().cpu().numpy()


@dataclass(frozen=True)
class Localisation:
    """How one map lies on one modality's planted findings.

    Attributes:
        mass_inside: share of the map's positive mass inside the findings.
        volume_share: share of the volume the findings occupy (what a map blind to them scores).
        hit: the map's maximum lies inside a finding (the pointing game).
    """

    mass_inside: float
    volume_share: float
    hit: bool


def localisation(saliency: np.ndarray, findings: np.ndarray) -> Localisation:
    """Score ``saliency`` (``(D, H, W)``) against the boolean ``findings`` of the same shape."""
    positive = np.clip(saliency, 0, None)
    total = positive.sum()
    return Localisation(
        mass_inside=float(positive[findings].sum() / total) if total > 0 else 0.0,
        volume_share=float(findings.mean()),
        hit=bool(findings.flat[int(np.argmax(saliency))]),
    )


@dataclass(frozen=True)
class Saliency:
    """Occlusion maps of one fold's test subjects (:func:`compute_saliency`), as the report shows them.

    The maps are 3D; what is kept is what the report draws (axial planes, the last array axis
    after reorientation to RAS) and the scores computed on the whole volumes.

    Attributes:
        fold: the fold whose models and test subjects are mapped.
        modalities: the input channels, in order.
        methods: the models mapped (:data:`METHODS`) and ``masks`` their fusion masks.
        sample_ids, labels: the subjects mapped; ``predicted``: ``(methods, S)`` each model's class.
        planes: ``(S,)`` the axial plane drawn for each subject (the one holding most of the chosen
            model's positive map mass).
        images: ``(S, N, X, Y)`` the preprocessed inputs on that plane; ``maps``: ``(methods, S, N, X, Y)``
            the maps there; ``findings``: ``(S, N, X, Y)`` planted findings there, or ``None``.
        projections: ``(methods, S, N, X, Y)`` each map's maximum over the axial planes (the class
            means are taken of these: subjects differ in anatomy, so no plane is common to all).
        scores: :meth:`scores` rows, from the whole volumes.
        patch: occlusion patch edge in voxels.
    """

    fold: int
    modalities: tuple[str, ...]
    methods: tuple[str, ...]
    masks: tuple[str, ...]
    sample_ids: tuple[str, ...]
    labels: np.ndarray
    predicted: np.ndarray
    planes: np.ndarray
    images: np.ndarray
    maps: np.ndarray
    findings: np.ndarray | None
    projections: np.ndarray
    patch: int
    score_rows: tuple[dict, ...] = ()

    def scores(self) -> list[dict]:
        """One row per method, subject and modality with findings: ``method``, ``sample_id``,
        ``modality`` and :class:`Localisation`'s fields."""
        return list(self.score_rows)

    def summary(self) -> list[dict]:
        """Per method and modality: subjects scored, mean mass inside the findings, mean volume
        share, pointing-game hit rate; for the methods after the first, ``difference``: the first's
        mass inside minus theirs, mean over the same subjects, and ``p``: the Wilcoxon signed-rank
        test of those paired differences (two-sided; ``nan`` when every difference is 0)."""
        from scipy.stats import wilcoxon

        groups: dict[tuple[str, str], dict[str, float]] = {}
        rows: dict[tuple[str, str], list[dict]] = {}
        for row in self.score_rows:
            groups.setdefault((row["method"], row["modality"]), {})[row["sample_id"]] = row["mass_inside"]
            rows.setdefault((row["method"], row["modality"]), []).append(row)
        summary = []
        for (method, modality), group in rows.items():
            entry = {"method": method, "modality": modality, "subjects": len(group),
                     "mass_inside": float(np.mean([r["mass_inside"] for r in group])),
                     "volume_share": float(np.mean([r["volume_share"] for r in group])),
                     "hit_rate": float(np.mean([r["hit"] for r in group]))}  # fmt: skip
            first = groups.get((self.methods[0], modality), {})
            if method != self.methods[0] and first:
                differences = np.array(
                    [first[s] - v for s, v in groups[method, modality].items() if s in first]
                )
                entry["difference"] = float(differences.mean())
                entry["p"] = float(wilcoxon(differences).pvalue) if differences.any() else float("nan")
            summary.append(entry)
        return summary

    def to_bytes(self) -> bytes:
        names = ("fold", "modalities", "methods", "masks", "sample_ids", "patch", "score_rows")
        meta = {k: getattr(self, k) for k in names}
        arrays = {k: getattr(self, k) for k in ARRAYS}
        if self.findings is not None:
            arrays["findings"] = self.findings
        buffer = io.BytesIO()
        np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Saliency:
        with np.load(io.BytesIO(data)) as arrays:
            meta = json.loads(str(arrays["meta"]))
            return cls(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()},
                **{k: arrays[k] for k in ARRAYS},
                findings=arrays["findings"] if "findings" in arrays.files else None,
            )


def read_saliency(experiment_dir: str) -> Saliency | None:
    """The saliency :func:`compute_saliency` stored in the experiment, if any."""
    path = storage.join(experiment_dir, SALIENCY_FILE)
    return Saliency.from_bytes(storage.read_bytes(path)) if storage.exists(path) else None


def compute_saliency(
    experiment_dir: str,
    fold: int = 0,
    subjects: int = 8,
    patch: int | None = None,
    device: str | None = None,
) -> Saliency:
    """Occlusion maps of ``fold``'s chosen mask and late fusion on the first ``subjects`` test
    subjects of each class; stored as ``<experiment>/saliency.npz`` (the report shows them)."""
    run = read_run(experiment_dir)
    if run.settings is None:
        raise UserError(
            f"{experiment_dir} trained with {run.trainable}: its checkpoints are not networks to map"
        )
    if not storage.exists(storage.join(experiment_dir, PREDICTIONS_FILE)):
        name = experiment_dir.rstrip("/").rsplit("/", 1)[-1]
        raise UserError(
            f"the search {experiment_dir} has not finished (it has no held-out evaluation); finish it with "
            f"'fusionsearch resume {name}', then map it"
        )
    if subjects < 1:
        raise UserError(f"--subjects {subjects}: give at least 1 subject per class")
    methods = method_checkpoints(read_candidates(experiment_dir), fold)
    if "chosen" not in methods:
        folds = sorted({r["fold"] for r in read_candidates(experiment_dir).to_pylist() if r["chosen"]})
        raise UserError(
            f"--fold {fold}: the search has no chosen configuration on that fold; choose one of {folds}"
        )
    mapped = [m for m in METHODS if m in methods]
    test = load_fold(run.settings.data, fold, parts=("test",)).test
    labels = test.labels.numpy()
    rows = [i for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:subjects]]
    ids = [test.ids[i] for i in rows]
    chosen = CachedDataset([test.arrays[i] for i in rows], labels[rows].tolist(), ids)
    images = np.stack([a.astype(np.float32) for a in chosen.arrays])
    edge = min(images.shape[2:])
    patch = patch or default_patch(edge)
    if not 1 <= patch <= edge:
        raise UserError(
            f"--patch {patch}: the patch edge must be 1-{edge} voxels (the volumes' smallest edge)"
        )
    policy = DevicePolicy.select(device)
    findings = _findings(run, ids, images.shape)  # (S, N, X, Y, Z) or None
    modalities = tuple(run.metadata.get("modalities") or [f"M{m}" for m in range(images.shape[1])])
    count, shape = len(ids), images.shape[1:-1]  # shape: (N, X, Y)
    planes = np.zeros(count, dtype=np.int64)
    drawn = np.zeros((len(mapped), count, *shape), dtype=np.float16)
    projections = np.zeros_like(drawn)
    predicted, scores = np.zeros((len(mapped), count), dtype=np.int64), []
    for k, method in enumerate(mapped):
        with storage.local_copy(methods[method][1][0]) as folder:
            model = policy.module(load_model(folder)).eval()
        predicted[k] = network_probabilities(model, chosen, policy).argmax(1)
        log.info("mapping %s (%s) on %d test subjects of fold %d", method, methods[method][0], count, fold)
        for s, image in enumerate(images):  # one subject's 3D maps at a time: 128^3 volumes add up
            batch, target = policy.batch(torch.from_numpy(image[None])), int(predicted[k, s])
            volume = np.stack([occlusion_map(model, batch, m, target, patch) for m in range(len(modalities))])
            if k == 0:  # the plane drawn: where the chosen model's maps hold most mass
                planes[s] = np.clip(volume, 0, None).sum(axis=(0, 1, 2)).argmax()
            drawn[k, s], projections[k, s] = volume[..., planes[s]], volume.max(axis=-1)
            for m, modality in enumerate(modalities):
                if findings is not None and findings[s, m].any():
                    score = dataclasses.asdict(localisation(volume[m], findings[s, m]))
                    scores.append({"method": method, "sample_id": ids[s], "modality": modality, **score})
    saliency = Saliency(
        fold=fold,
        modalities=modalities,
        methods=tuple(mapped),
        masks=tuple(methods[m][0] for m in mapped),
        sample_ids=tuple(ids),
        labels=labels[rows],
        predicted=predicted,
        planes=planes,
        images=np.stack([image[..., z] for image, z in zip(images, planes, strict=True)]).astype(np.float16),
        maps=drawn,
        findings=None
        if findings is None
        else np.stack([f[..., z] for f, z in zip(findings, planes, strict=True)]),
        projections=projections,
        patch=patch,
        score_rows=tuple(scores),
    )
    storage.write_bytes(storage.join(experiment_dir, SALIENCY_FILE), saliency.to_bytes())
    return saliency


def _findings(run, sample_ids: list[str], shape: tuple[int, ...]) -> np.ndarray | None:
    """The planted findings of ``sample_ids`` on the preprocessed grid, when the search's data are
    the planted benchmark and still where the search read them; else ``None``."""
    manifest_path = Path(run.metadata.get("manifest", ""))
    if not manifest_path.is_file():
        return None
    with tempfile.TemporaryDirectory(prefix="fusionsearch-findings-") as folder:
        written = write_findings(manifest_path.parent, sample_ids, folder)
        if not written:
            return None
        manifest = read_manifest(manifest_path)
        modalities = list(run.metadata.get("modalities") or manifest.modalities)
        manifest = manifest.select_modalities(modalities)
        findings = np.zeros(shape, dtype=bool)
        for s, sample in enumerate(sample_ids):
            masks = written.get(sample, {})
            if masks:
                carried = preprocess_masks(
                    manifest.paths(manifest.sample_ids.index(sample)), masks, run.settings.data.preprocess
                )
                for name, mask in carried.items():
                    findings[s, modalities.index(name)] = mask
        return findings
