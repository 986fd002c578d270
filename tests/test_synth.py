import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from fusionsearch.cli import main
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.synth import SynthConfig, generate, make_sample
from fusionsearch.data.validate import validate_manifest

#: A classifier on one modality is "at chance" within this margin of 50 % (n = 200, 5-fold CV:
#: the standard error of an accuracy near 0.5 is ~0.035, so 0.12 is over 3 standard errors).
CHANCE_TOLERANCE = 0.12


@pytest.fixture(scope="module")
def xor_features():
    """Per-modality image features of 200 XOR samples: finding-sized box-filter max, 99.5th pct."""
    config = SynthConfig(n=200, size=32, seed=1)
    cells = np.resize(np.arange(4), config.n)
    features, labels, truths = [], [], []
    for i in range(config.n):
        volumes, truth = make_sample(config, i, int(cells[i]))
        row = []
        for volume in volumes:
            row += [ndimage.uniform_filter(volume, size=5).max(), np.percentile(volume, 99.5)]
        features.append(row)
        labels.append(truth["label"])
        truths.append(truth)
    return np.array(features), np.array(labels), truths


def cv_accuracy(x, y, interaction=False):
    steps = [StandardScaler()]
    if interaction:
        steps.append(PolynomialFeatures(2, interaction_only=True))
    return cross_val_score(make_pipeline(*steps, LogisticRegression(max_iter=2000)), x, y, cv=5).mean()


def test_ground_truth_is_balanced_xor(xor_features):
    _, labels, truths = xor_features
    a = np.array([t["finding_a"] for t in truths])
    b = np.array([t["finding_b"] for t in truths])
    assert np.array_equal(labels, a ^ b)
    assert labels.mean() == 0.5
    # The label is independent of each finding: P(label | a) = P(label | b) = 1/2 exactly.
    for finding in (a, b):
        assert labels[finding == 1].mean() == 0.5 == labels[finding == 0].mean()


def test_each_modality_alone_is_at_chance_and_both_with_interaction_are_not(xor_features):
    features, labels, _ = xor_features
    for modality in (features[:, :2], features[:, 2:]):
        assert abs(cv_accuracy(modality, labels) - 0.5) < CHANCE_TOLERANCE
        assert abs(cv_accuracy(modality, labels, interaction=True) - 0.5) < CHANCE_TOLERANCE
    # Additive combination cannot represent XOR either; the interaction can.
    assert abs(cv_accuracy(features, labels) - 0.5) < CHANCE_TOLERANCE
    assert cv_accuracy(features, labels, interaction=True) > 0.9


def test_findings_are_visible_in_their_own_modality_only(xor_features):
    features, _, truths = xor_features
    a = np.array([t["finding_a"] for t in truths])
    # Modality A's box-filter max separates samples with and without finding a ...
    assert features[a == 1, 0].min() > np.median(features[a == 0, 0])
    # ... and says nothing about b.
    b = np.array([t["finding_b"] for t in truths])
    assert abs(features[b == 1, 0].mean() - features[b == 0, 0].mean()) < 0.05


@pytest.fixture(scope="module")
def colocalized():
    """120 samples of the colocalized task: (volumes, truth) each, classes alternating."""
    config = SynthConfig(n=120, size=32, seed=3, task="colocalized")
    return [make_sample(config, i, i % 2) for i in range(config.n)]


def test_colocalized_pairs_meet_or_narrowly_miss(colocalized):
    # Label 1: A's first finding and B's first sit at the same place; label 0: a near miss.
    for _, truth in colocalized:
        distance = np.linalg.norm([truth[f"a_{x}"] - truth[f"b_{x}"] for x in "xyz"])
        radius = truth["radius_voxels"]
        assert truth["finding_a"] == truth["finding_b"] == 1
        assert distance < 1.0 if truth["label"] else 1.5 * radius <= distance <= 3 * radius + 1


def test_colocalized_is_solved_by_fusing_maps_and_not_by_each_modality_or_their_sum(colocalized):
    labels = np.array([t["label"] for _, t in colocalized])
    per_modality, joint = [], []
    for (a, b), _ in colocalized:
        row = []
        for volume in (a, b):  # what one stream sees: how bright its findings are, and where the brightest is
            box = ndimage.uniform_filter(volume, size=5)
            row += [box.max(), *np.unravel_index(box.argmax(), box.shape), np.percentile(volume, 99.5)]
        per_modality.append(row)
        # Early spatial fusion: the two maps multiplied voxel by voxel (as a 1x1x1 mix and a ReLU can).
        joint.append([(ndimage.gaussian_filter(a, 1) * ndimage.gaussian_filter(b, 1)).max()])
    x = np.array(per_modality)
    assert abs(cv_accuracy(x[:, :5], labels) - 0.5) < CHANCE_TOLERANCE  # modality A alone
    assert abs(cv_accuracy(x[:, 5:], labels) - 0.5) < CHANCE_TOLERANCE  # modality B alone
    assert abs(cv_accuracy(x, labels) - 0.5) < CHANCE_TOLERANCE  # their sum: late fusion
    assert cv_accuracy(np.array(joint), labels) > 0.95  # the fused map at the same place


def test_cli_writes_valid_dataset_with_ground_truth(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "bench"), "--n", "24", "--size", "16", "--modalities", "3"]) == 0
    manifest = read_manifest(tmp_path / "bench" / "manifest.csv")
    assert manifest.modalities == ["T1", "FLAIR", "T2"]
    validate_manifest(manifest, folds=5)
    assert sorted(manifest.labels) == [0] * 12 + [1] * 12
    assert (tmp_path / "bench" / "truth.csv").read_text().startswith('"sample_id","label","finding_a"')


def test_generator_is_deterministic():
    config = SynthConfig(n=8, size=16, seed=5)
    first, second = make_sample(config, 3, 1)[0], make_sample(config, 3, 1)[0]
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))


def test_null_task_label_is_in_modality_a_alone():
    # The control where fusion cannot help: label = finding a; modality B carries b, independent of it.
    config = SynthConfig(n=120, size=32, seed=2, task="null")
    cells = np.resize(np.arange(4), config.n)
    features, labels, truths = [], [], []
    for i in range(config.n):
        volumes, truth = make_sample(config, i, int(cells[i]))
        features.append([ndimage.uniform_filter(v, size=5).max() for v in volumes])
        labels.append(truth["label"])
        truths.append(truth)
    x, y = np.array(features), np.array(labels)
    assert all(t["label"] == t["finding_a"] for t in truths)
    b = np.array([t["finding_b"] for t in truths])
    assert np.mean(b[y == 1]) == np.mean(b[y == 0]) == 0.5  # B is exactly independent of the label
    assert cv_accuracy(x[:, :1], y) > 0.9  # modality A alone reaches the ceiling (late fusion suffices)
    assert abs(cv_accuracy(x[:, 1:], y) - 0.5) < CHANCE_TOLERANCE  # modality B alone is at chance


def test_scanner_grid_writes_real_scan_sizes_that_preprocess_onto_one_grid(tmp_path):
    import nibabel as nib

    from fusionsearch.data.preprocess import preprocess_sample
    from fusionsearch.settings import PreprocessConfig

    manifest = read_manifest(generate(tmp_path, SynthConfig(n=8, size=32, seed=4, grid="scanner")))
    t1, flair = (nib.load(manifest.paths(0)[m]) for m in manifest.modalities)
    assert t1.shape == (193, 229, 193) and tuple(map(float, t1.header.get_zooms())) == (1.0, 1.0, 1.0)
    assert flair.shape == (192, 229, 64) and tuple(map(float, flair.header.get_zooms())) == (1.0, 1.0, 3.0)
    tilt = np.degrees(np.arccos(abs(flair.affine[1, 1])))
    assert 8 <= tilt <= 12  # an oblique acquisition
    assert np.allclose(t1.affine[:3, :3], np.eye(3))
    image = preprocess_sample(manifest.paths(0), PreprocessConfig(shape=32, spacing=6.0))
    assert image.shape == (2, 32, 32, 32) and np.isfinite(image).all()
    # Both modalities land on one grid: the brain masks (non-zero voxels) overlap almost fully.
    a, b = image[0] != 0, image[1] != 0
    assert (a & b).sum() / (a | b).sum() > 0.8
