"""The planted benchmark: brain-like phantoms whose label needs fusion inside the network.

Each sample is a 3D phantom (brain ellipsoid, white matter, ventricles, cortical CSF; random
size, pose and shape) seen through N >= 2 MRI-like contrasts, each with its own smooth bias
field and Rician-like noise. Findings are hyperintense spheres inside white matter.

Task ``xor`` (default): modality A may carry finding *a*, modality B finding *b*, the four
(a, b) cells are equally frequent, and ``label = a XOR b``. Each modality alone is then
independent of the label, and any additive combination of per-modality logits (late fusion)
is capped at 75 % accuracy, while fusing inside the network can approach 100 %. MMTM can solve
it, since *a* and *b* live in global channel statistics.

Task ``colocalized`` (needs spatial fusion at high resolution): A and B each carry
:data:`COLOCALIZED_FINDINGS` small findings (radius 0.12 of the edge). ``label = 1``: A's first
finding and B's first sit at the same place; every other B finding, and B's first when
``label = 0``, is a near miss of its A finding (2-3 radii away, touching no A finding). Each
modality alone, and any sum of per-modality evidence, is at chance; so are global channel
statistics, even with position-coded channels, because they would have to match *sets* of
positions. Fusing the feature maps while they still resolve a finding (the early points,
with the ``spatial`` module) can solve it; tested on image features in ``tests/test_synth.py``.

Task ``null`` (a control where fusion cannot help): findings *a* and *b* as in ``xor``, but
``label = a``. Modality A alone carries the label, B is independent of it, so late fusion
already reaches the ceiling; a search that adds fusion points here follows validation noise.

Extra modalities (N > 2) carry anatomy only. The ground truth of every sample is written to
``truth.csv`` beside the manifest.

Grids: ``cube`` (default) writes every modality on the phantom's own ``size``^3 grid over a
192 mm field of view. ``scanner`` resamples the phantom (in scanner coordinates) onto grids
the size of real scans: the first modality 193 x 229 x 193 at 1 mm (a T1w), the others
192 x 229 x 64 at 1 x 1 x 3 mm, tilted by 8-12 degrees (an oblique FLAIR), so that
preprocessing, cache size and loading are measured where users are.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
from scipy import ndimage

from fusionsearch.data.manifest import write_manifest
from fusionsearch.settings import ConfigError, check_choice

log = logging.getLogger(__name__)

TASKS = ("xor", "colocalized", "null")
#: Default finding radius of each task, as a fraction of the cube edge.
LESION_RADIUS = {"xor": 0.18, "colocalized": 0.12, "null": 0.18}
#: Findings per modality in the ``colocalized`` task.
COLOCALIZED_FINDINGS = 2
GRIDS = ("cube", "scanner")
#: ``scanner`` grids: (shape, spacing in mm) of the first modality and of the others.
SCANNER_GRIDS = (((193, 229, 193), (1.0, 1.0, 1.0)), ((192, 229, 64), (1.0, 1.0, 3.0)))
#: Tissue intensities (CSF, grey matter, white matter) of each contrast.
CONTRASTS = {
    "T1": (0.15, 0.50, 0.80),
    "FLAIR": (0.08, 0.65, 0.45),
    "T2": (1.00, 0.60, 0.40),
}
FIELD_OF_VIEW_MM = 192.0
TRUTH_FILE = "truth.csv"


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the planted benchmark.

    Attributes:
        n: number of samples (a multiple of 4 keeps the XOR cells exactly balanced).
        size: cube edge in voxels; the field of view is 192 mm whatever the size.
        seed: everything is a deterministic function of the seed.
        task: ``xor``, ``colocalized`` or ``null`` (see the module's docstring).
        modalities: number of contrasts, at least 2 (T1, FLAIR, T2, then T1 variants).
        lesion_radius: finding radius as a fraction of ``size`` (default: :data:`LESION_RADIUS` of the
            task: small findings for ``colocalized``, so that a near miss is a short distance).
        lesion_contrast: finding intensity above its surroundings (tissue scale is ~0-1).
        noise: standard deviation of the additive noise.
        grid: ``cube`` or ``scanner`` (real scan sizes, anisotropic and oblique: see the module).
    """

    n: int = 400
    size: int = 32
    seed: int = 0
    task: str = "xor"
    modalities: int = 2
    lesion_radius: float | None = None
    lesion_contrast: float = 1.0
    noise: float = 0.04
    grid: str = "cube"

    def __post_init__(self) -> None:
        check_choice("grid", self.grid, GRIDS)
        check_choice("task", self.task, TASKS)
        if self.modalities < 2:
            raise ConfigError(f"modalities={self.modalities}: the benchmark needs at least 2")
        if self.n < 8 or self.size < 16:
            raise ConfigError(f"n={self.n}, size={self.size}: need n >= 8 samples and size >= 16")

    @property
    def modality_names(self) -> list[str]:
        names = list(CONTRASTS)
        return names[: self.modalities] + [f"M{i + 1}" for i in range(len(names), self.modalities)]


def _contrast(name: str, index: int) -> tuple[float, float, float]:
    return CONTRASTS.get(name, CONTRASTS["T1"][::-1] if index % 2 else CONTRASTS["T1"])


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    a, b, c = np.radians(rng.uniform(-max_degrees, max_degrees, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _anatomy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fractions ``(3, S, S, S)`` for CSF, GM, WM, and the WM mask."""
    axis = np.linspace(-1, 1, size)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    coords = (grid - rng.uniform(-0.04, 0.04, 3)) @ _rotation(rng, 12).T
    brain_r = np.array([0.78, 0.88, 0.72]) * rng.uniform(0.9, 1.05, 3)

    def inside(radii: np.ndarray, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
        return (((coords - centre) / radii) ** 2).sum(-1) < 1

    brain = inside(brain_r)
    parenchyma = inside(brain_r * rng.uniform(0.9, 0.94))
    wm = inside(brain_r * rng.uniform(0.6, 0.72))
    ventricle_r = np.array([0.07, 0.2, 0.1]) * rng.uniform(0.8, 1.4)
    ventricles = inside(ventricle_r, (0.11, 0.04, 0.06)) | inside(ventricle_r, (-0.11, 0.04, 0.06))
    csf = (brain & ~parenchyma) | ventricles
    wm = wm & ~ventricles
    gm = parenchyma & ~wm & ~ventricles
    tissues = np.stack([csf, gm, wm]).astype(np.float32)
    return ndimage.gaussian_filter(tissues, sigma=(0, 0.7, 0.7, 0.7)), wm


def _sphere(size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    axes = np.ogrid[:size, :size, :size]
    distance = np.sqrt(sum((a - c) ** 2 for a, c in zip(axes, centre, strict=True)))
    return (1 / (1 + np.exp((distance - radius) / 0.5))).astype(np.float32)


def _centres(rng: np.random.Generator, wm: np.ndarray, radius: float, count: int, apart: float) -> list:
    """``count`` (1 or 2) finding centres deep in white matter; the second at least ``apart``
    voxels from the first where the anatomy allows, else as far from it as possible."""
    depth = ndimage.distance_transform_edt(wm)
    candidates = np.argwhere(depth >= min(radius * 0.5, depth.max() * 0.5)).astype(float)
    first = candidates[rng.integers(len(candidates))]
    if count == 1:
        return [first]
    distance = np.linalg.norm(candidates - first, axis=1)
    far = candidates[distance >= apart]
    second = far[rng.integers(len(far))] if len(far) else candidates[np.argmax(distance)]
    return [first, second]


def _colocalized_centres(
    rng: np.random.Generator, parenchyma: np.ndarray, radius: float, count: int, label: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` finding centres for A and for B in the parenchyma, pair by pair: B's first at A's
    first when ``label`` is 1, every other B finding a near miss of its A finding (2-3 radii away,
    and at least 2 radii from every A finding) where the anatomy allows, else the nearest it does."""
    depth = ndimage.distance_transform_edt(parenchyma)
    candidates = np.argwhere(depth >= min(radius, depth.max() * 0.5)).astype(float)

    def pick(near: np.ndarray | None, avoid: list[np.ndarray]) -> np.ndarray:
        gap = np.full(len(candidates), np.inf)
        for centre in avoid:
            gap = np.minimum(gap, np.linalg.norm(candidates - centre, axis=1))
        score = np.maximum(2 * radius - gap, 0)  # overlap with an avoided finding
        if near is not None:
            distance = np.linalg.norm(candidates - near, axis=1)
            score = score + np.maximum(2 * radius - distance, 0) + np.maximum(distance - 3 * radius, 0)
        allowed = np.flatnonzero(score <= score.min() + 1e-9)
        return candidates[rng.choice(allowed)]

    a: list[np.ndarray] = []
    for _ in range(count):
        a.append(pick(None, a))
    b = [a[0] + rng.uniform(-0.5, 0.5, 3) if label else pick(a[0], a)]
    b += [pick(centre, a) for centre in a[1:]]
    return a, b


def make_sample(config: SynthConfig, index: int, cell: int) -> tuple[list[np.ndarray], dict]:
    """The volumes and ground truth of sample ``index`` in XOR cell / colocalisation class ``cell``."""
    volumes, truth, _ = _planted(config, index, cell)
    return volumes, truth


def _planted(config: SynthConfig, index: int, cell: int) -> tuple[list[np.ndarray], dict, list[np.ndarray]]:
    """:func:`make_sample`, and each modality's findings as a boolean ``(S, S, S)`` mask."""
    rng = np.random.default_rng([config.seed, index])
    tissues, wm = _anatomy(rng, config.size)
    radius = (config.lesion_radius or LESION_RADIUS[config.task]) * config.size
    if config.task in ("xor", "null"):
        has = {"a": bool(cell & 2), "b": bool(cell & 1)}
        label = int(has["a"] != has["b"]) if config.task == "xor" else int(has["a"])
        a_centre, b_centre = _centres(rng, wm, radius, 2, apart=0.0)
        findings = {0: [a_centre] if has["a"] else [], 1: [b_centre] if has["b"] else []}
    else:
        has = {"a": True, "b": True}
        label = int(cell % 2)
        parenchyma = tissues[1:].sum(0) > 0.5
        a, b = _colocalized_centres(rng, parenchyma, radius, COLOCALIZED_FINDINGS, label)
        (a_centre, b_centre), findings = (a[0], b[0]), {0: a, 1: b}
    volumes, masks = [], []
    for m, name in enumerate(config.modality_names):
        image = np.tensordot(np.asarray(_contrast(name, m), np.float32), tissues, axes=1)
        spheres = np.zeros_like(image)
        if findings.get(m):
            spheres = np.max([_sphere(config.size, c, radius) for c in findings[m]], axis=0)
            image = image + config.lesion_contrast * spheres * (image > 0.05)
        masks.append(spheres > 0.5)
        axis = np.linspace(-1, 1, config.size)
        bias = np.exp(
            sum(c * g for c, g in zip(rng.normal(0, 0.12, 3), np.ix_(axis, axis, axis), strict=True))
        )
        image = np.abs(image * bias + rng.normal(0, config.noise, image.shape))
        volumes.append(image.astype(np.float32))
    truth = {
        "sample_id": f"synth-{index:05d}",
        "label": label,
        "finding_a": int(has["a"]),
        "finding_b": int(has["b"]),
        "radius_voxels": radius,
    }
    for finding, centre in (("a", a_centre), ("b", b_centre)):
        truth |= {f"{finding}_{axis}": round(float(c), 2) for axis, c in zip("xyz", centre, strict=True)}
    return volumes, truth, masks


def scanner_volume(
    volume: np.ndarray, affine: np.ndarray, modality: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` (on the grid of ``affine``) resampled onto modality ``modality``'s scanner grid,
    centred on the same point; returns the new volume and its affine (voxel -> mm)."""
    shape, spacing = SCANNER_GRIDS[min(modality, 1)]
    rotation = np.eye(3)
    if modality:  # an oblique acquisition: tilted about the left-right axis
        angle = np.radians(rng.uniform(8, 12) * rng.choice([-1, 1]))
        rotation = np.array(
            [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
        )
    target = np.eye(4)
    target[:3, :3] = rotation @ np.diag(spacing)
    target[:3, 3] = -rotation @ (np.array(shape) * np.array(spacing) / 2)
    source_from_target = np.linalg.inv(affine) @ target
    resampled = ndimage.affine_transform(
        volume,
        source_from_target[:3, :3],
        source_from_target[:3, 3],
        output_shape=shape,
        order=1,
        mode="constant",
        cval=0.0,
    )
    return resampled.astype(np.float32), target


def _cells(config: SynthConfig) -> np.ndarray:
    """Each sample's XOR cell / colocalisation class."""
    cells = np.resize(np.arange(4), config.n)
    np.random.default_rng(config.seed).shuffle(cells)
    return cells


def _cube_affine(config: SynthConfig) -> np.ndarray:
    """Voxel -> mm of the ``cube`` grid: ``size``^3 voxels over the field of view, centred."""
    voxel = FIELD_OF_VIEW_MM / config.size
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -FIELD_OF_VIEW_MM / 2
    return affine


def write_findings(root: str | Path, sample_ids: list[str], out: str | Path) -> dict[str, dict[str, Path]]:
    """The planted findings of samples of the benchmark in ``root`` (a folder :func:`generate`
    wrote), as NIfTI masks on their images' grids under ``out``: ``{sample_id: {modality: path}}``,
    for the modalities in which the sample has a finding. Empty when ``root`` is not a planted
    benchmark (no ``synth.json``)."""
    settings = Path(root) / "synth.json"
    if not settings.is_file():
        return {}
    config = SynthConfig(**json.loads(settings.read_text()))
    cells, affine = _cells(config), _cube_affine(config)
    Path(out).mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    for sample_id in sample_ids:
        index = int(sample_id.rsplit("-", 1)[-1])
        _, _, masks = _planted(config, index, int(cells[index]))
        for m, (name, mask) in enumerate(zip(config.modality_names, masks, strict=True)):
            if not mask.any():
                continue
            volume, grid = mask.astype(np.float32), affine
            if config.grid == "scanner":
                rng = np.random.default_rng([config.seed, index, m])  # the tilt the images got
                volume, grid = scanner_volume(volume, affine, m, rng)
            path = Path(out) / f"{sample_id}_{name}_findings.nii.gz"
            nib.save(nib.Nifti1Image((volume > 0.5).astype(np.uint8), grid), path)
            written.setdefault(sample_id, {})[name] = path
    return written


def generate(out: str | Path, config: SynthConfig, workers: int | None = None) -> Path:
    """Write the benchmark's NIfTI volumes, ``manifest.csv`` and ``truth.csv`` under ``out``.

    ``workers`` threads (default: one per CPU, at most 16) write the samples; gzip and NumPy
    release the GIL. Returns the manifest's path. Writes nothing outside ``out``; needs no network.
    """
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    cells, affine = _cells(config), _cube_affine(config)

    def write(index: int) -> dict:
        volumes, truth = make_sample(config, index, int(cells[index]))
        for m, (name, volume) in enumerate(zip(config.modality_names, volumes, strict=True)):
            path = images / f"{truth['sample_id']}_{name}.nii.gz"
            if config.grid == "scanner":
                volume, target = scanner_volume(
                    volume, affine, m, np.random.default_rng([config.seed, index, m])
                )
                nib.save(nib.Nifti1Image(volume, target), path)
            else:
                nib.save(nib.Nifti1Image(volume, affine), path)
            truth[name] = str(path.relative_to(out))
        return truth

    with ThreadPoolExecutor(workers or min(os.cpu_count() or 1, 16)) as pool:
        truths = list(pool.map(write, range(config.n)))
    ids = [t["sample_id"] for t in truths]
    columns = {"sample_id": ids, "subject_id": ids, "label": [t["label"] for t in truths]}
    columns |= {name: [t[name] for t in truths] for name in config.modality_names}
    manifest = write_manifest(pa.table(columns), out / "manifest.csv")
    truth_columns = [k for k in truths[0] if k not in config.modality_names]
    write_manifest(pa.table({k: [t[k] for t in truths] for k in truth_columns}), out / TRUTH_FILE)
    (out / "synth.json").write_text(json.dumps(asdict(config), indent=2))
    log.info("wrote %d samples (%s) to %s", config.n, ", ".join(config.modality_names), out)
    return manifest
