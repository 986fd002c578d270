"""Small fake datasets written with nibabel: a ds004199-like and an OASIS-3-like BIDS tree."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

PARTICIPANTS_HEADER = [
    "participant_id", "group", "sex", "age_epilepsyonset", "age_scan", "mri _diagnosis", "map", "spect",
    "pet", "invasive_EEG", "op", "age_op", "histopathology", "1year_outcome", "latest_outcome",
    "time_follow-up", "hemisphere", "lobe",
]  # fmt: skip


def write_volume(path: Path, shape=(12, 12, 12), zoom=1.0, seed=0, origin=None) -> Path:
    """A random, non-constant NIfTI volume with voxel size ``zoom`` (number or 3-tuple)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape, dtype=np.float32) + 0.1
    affine = np.diag([*np.broadcast_to(zoom, 3), 1.0])
    affine[:3, 3] = origin if origin is not None else -np.asarray(shape[:3]) * np.broadcast_to(zoom, 3) / 2
    nib.save(nib.Nifti1Image(data, affine), path)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps({"MagneticFieldStrength": 3}))
    return path


def ds004199_tree(root: Path) -> Path:
    """ds004199's layout: acq labels varying per subject, FLAIR on its own grid, ROI masks.

    sub-00001 fcd, T1w iso08 + FLAIR T2sel on a coarser grid (+ a FLAIR_roi lesion mask)
    sub-00002 hc,  T1w sag111 + FLAIR tse3dvfl
    sub-00003 fcd, T1w only: skipped, no FLAIR
    sub-00004 hc,  two T1w candidates (sag111 at 1.1 mm, iso08 at 0.8 mm) + FLAIR corhipp4mm
    sub-00005 n/a group: skipped, no label
    sub-00006 fcd, T1w iso08 + FLAIR traAcpc4mm
    """
    anat = lambda s: root / f"sub-{s}" / "anat"  # noqa: E731
    write_volume(anat("00001") / "sub-00001_acq-iso08_T1w.nii.gz", zoom=0.8, seed=1)
    write_volume(anat("00001") / "sub-00001_acq-T2sel_FLAIR.nii.gz", shape=(9, 10, 8), zoom=1.0, seed=2)
    write_volume(anat("00001") / "sub-00001_acq-T2sel_FLAIR_roi.nii.gz", shape=(9, 10, 8), seed=3)
    write_volume(anat("00002") / "sub-00002_acq-sag111_T1w.nii.gz", zoom=1.1, seed=4)
    write_volume(anat("00002") / "sub-00002_acq-tse3dvfl_FLAIR.nii.gz", zoom=1.0, seed=5)
    write_volume(anat("00003") / "sub-00003_acq-iso08_T1w.nii.gz", zoom=0.8, seed=6)
    write_volume(anat("00004") / "sub-00004_acq-sag111_T1w.nii.gz", zoom=1.1, seed=7)
    write_volume(anat("00004") / "sub-00004_acq-iso08_T1w.nii.gz", zoom=0.8, seed=8)
    write_volume(anat("00004") / "sub-00004_acq-corhipp4mm_FLAIR.nii.gz", zoom=(1, 1, 4), seed=9)
    write_volume(anat("00005") / "sub-00005_acq-iso08_T1w.nii.gz", zoom=0.8, seed=10)
    write_volume(anat("00005") / "sub-00005_acq-T2sel_FLAIR.nii.gz", seed=11)
    write_volume(anat("00006") / "sub-00006_acq-iso08_T1w.nii.gz", zoom=0.8, seed=12)
    write_volume(anat("00006") / "sub-00006_acq-traAcpc4mm_FLAIR.nii.gz", zoom=(1, 1, 4), seed=13)
    groups = {"00001": "fcd", "00002": "hc", "00003": "fcd", "00004": "hc", "00005": "n/a", "00006": "fcd"}
    lines = ["\t".join(PARTICIPANTS_HEADER)]
    for subject, group in groups.items():
        row = [f"sub-{subject}", group, "m", "n/a", "23", "n/a"] + ["n/a"] * (len(PARTICIPANTS_HEADER) - 6)
        lines.append("\t".join(row))
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "fake ds004199", "BIDSVersion": "1.6.0"})
    )
    return root


def oasis_tree(root: Path) -> tuple[Path, Path]:
    """OASIS-3's layout: several sessions per subject (one ``sess-``), one without T2w, CDR labels."""
    sessions = {
        ("OAS30001", "ses-d0129"): True,
        ("OAS30001", "sess-d0800"): True,
        ("OAS30002", "ses-d0100"): True,
        ("OAS30002", "ses-d0500"): False,  # no T2w
        ("OAS30003", "ses-d0001"): True,
    }
    for seed, ((subject, session), has_t2) in enumerate(sessions.items()):
        anat = root / f"sub-{subject}" / session / "anat"
        stem = f"sub-{subject}_{session}"
        write_volume(anat / f"{stem}_run-01_T1w.nii.gz", seed=seed)
        if has_t2:
            write_volume(anat / f"{stem}_acq-TSE_T2w.nii.gz", seed=100 + seed)
    labels = root.parent / "clinical.csv"
    labels.write_text(
        "subject,session,cdr\n"
        "OAS30001,d0129,0\nOAS30001,d0800,0.5\nOAS30002,d0100,1.0\nOAS30002,d0500,1\nOAS30003,d0001,0.0\n"
    )
    return root, labels
