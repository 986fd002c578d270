"""Where each modality looked: occlusion maps and their scores against planted findings (no Ray)."""

import numpy as np
import pytest
import torch

from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.preprocess import preprocess_masks, preprocess_sample
from fusionsearch.data.synth import SynthConfig, generate, write_findings
from fusionsearch.report.saliency import Saliency, localisation, occlusion_map
from fusionsearch.settings import PreprocessConfig

#: The region the model below reads: modality 0, voxels 4-7 on every axis of a 16^3 volume.
REGION = (slice(4, 8),) * 3


class ReadsOneRegion(torch.nn.Module):
    """Two classes; the class-1 logit is 4 x the mean of modality 0 inside :data:`REGION`. Modality 1
    and everything outside the region are ignored."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = 4 * x[:, 0][(slice(None), *REGION)].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


def test_occlusion_maps_only_the_modality_and_region_the_model_reads():
    image = torch.ones(1, 2, 16, 16, 16)
    model = ReadsOneRegion().eval()
    read = occlusion_map(model, image, modality=0, target=1, patch=4)
    ignored = occlusion_map(model, image, modality=1, target=1, patch=4)
    inside = np.zeros((16, 16, 16), dtype=bool)
    inside[REGION] = True
    assert read.shape == (16, 16, 16) and np.abs(ignored).max() < 1e-6  # the other modality: no effect
    assert (read[inside] > 0).all() and read.max() == read[inside].max()
    # Only patches that reach the region matter: nothing farther than a patch edge from it.
    far = np.ones((16, 16, 16), dtype=bool)
    far[0:12, 0:12, 0:12] = False
    assert np.abs(read[far]).max() < 1e-6
    score = localisation(read, inside)
    assert score.hit and score.mass_inside > 5 * score.volume_share


def test_localisation_scores_mass_share_and_pointing():
    findings = np.zeros((4, 4, 4), dtype=bool)
    findings[0, 0, :2] = True  # 2 of 64 voxels
    saliency = np.zeros((4, 4, 4))
    saliency[0, 0, 0], saliency[3, 3, 3], saliency[2, 2, 2] = 3.0, 1.0, -5.0  # negative mass is not counted
    score = localisation(saliency, findings)
    assert score.mass_inside == pytest.approx(0.75) and score.volume_share == pytest.approx(2 / 64)
    assert score.hit
    saliency[3, 3, 3] = 4.0  # the maximum moves outside
    assert not localisation(saliency, findings).hit
    assert localisation(np.zeros((4, 4, 4)), findings).mass_inside == 0.0  # a blank map: no mass anywhere


def test_planted_findings_reach_the_preprocessed_grid_where_the_images_show_them(tmp_path):
    root = tmp_path / "planted"
    manifest = read_manifest(generate(root, SynthConfig(n=8, size=20, seed=4, task="colocalized")))
    written = write_findings(root, manifest.sample_ids[:3], tmp_path / "findings")
    config = PreprocessConfig(shape=16)  # another grid than the data's: resampled and cropped with them
    for row, sample in enumerate(manifest.sample_ids[:3]):
        assert sorted(written[sample]) == ["FLAIR", "T1"]  # colocalized: findings in both modalities
        image = preprocess_sample(manifest.paths(row), config)
        masks = preprocess_masks(manifest.paths(row), written[sample], config)
        for channel, name in enumerate(manifest.modalities):
            mask, values = masks[name], image[channel].astype(np.float32)
            assert mask.shape == (16, 16, 16) and mask.any()
            # Findings are hyperintense: inside the mask the image is far above the brain elsewhere.
            assert values[mask].mean() > values[~mask & (values != 0)].mean() + 2
    assert write_findings(tmp_path / "findings", ["synth-00000"], tmp_path / "none") == {}  # not planted data


def test_the_summary_pairs_late_fusion_with_the_chosen_mask_on_the_same_subjects():
    def row(method, sample, modality, mass):
        return {"method": method, "sample_id": sample, "modality": modality, "mass_inside": mass,
                "volume_share": 0.01, "hit": mass > 0.2}  # fmt: skip

    rng = np.random.default_rng(0)
    chosen = rng.uniform(0.3, 0.5, 12)
    rows = [row("chosen", f"s{i}", "T1", m) for i, m in enumerate(chosen)]
    rows += [
        row("late fusion", f"s{i}", "T1", m - 0.1 - 0.01 * i) for i, m in enumerate(chosen)
    ]  # always less
    rows += [row(method, f"s{i}", "FLAIR", 0.3) for method in ("chosen", "late fusion") for i in range(12)]
    blank = np.zeros((2, 12))
    saliency = Saliency(
        fold=0, modalities=("T1", "FLAIR"), methods=("chosen", "late fusion"), masks=("1000", "0000"),
        sample_ids=tuple(f"s{i}" for i in range(12)), labels=blank[0], predicted=blank, planes=blank[0],
        images=blank, maps=blank, findings=None, projections=blank, patch=4, score_rows=tuple(rows),
    )  # fmt: skip
    summary = {(r["method"], r["modality"]): r for r in saliency.summary()}
    assert "difference" not in summary["chosen", "T1"]  # the reference itself
    late = summary["late fusion", "T1"]
    assert (
        late["difference"] == pytest.approx(0.1 + 0.01 * 5.5) and late["p"] < 0.001
    )  # 12 of 12 the same way
    assert late["mass_inside"] == pytest.approx(chosen.mean() - late["difference"])
    assert summary["chosen", "T1"]["hit_rate"] == 1.0 and summary["late fusion", "FLAIR"]["difference"] == 0.0
    assert np.isnan(summary["late fusion", "FLAIR"]["p"])  # no difference at all: no test
