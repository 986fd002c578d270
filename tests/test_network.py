import pytest
import torch

from conftest import SIZE, randomise, tiny_config
from fusionsearch import (
    FUSION_MODULES,
    ConfigError,
    FusionMask,
    FusionNet,
    MaskError,
    WarmStartError,
    build_fusion,
    warm_start,
)
from fusionsearch.model.network import build_network

ALL_MASKS = FusionMask.all_masks(4)
PAIRS = [(parent, child) for parent in ALL_MASKS for child in parent.extensions()]


@pytest.mark.parametrize("fusion", ["mmtm", "spatial"])
@pytest.mark.parametrize("modalities", [2, 3])
def test_output_shape_for_every_mask(fusion, modalities):
    x = torch.randn(2, modalities, SIZE, SIZE, SIZE)
    for mask in ALL_MASKS:
        model = FusionNet(tiny_config(fusion=fusion, modalities=modalities, num_classes=3), mask).eval()
        assert model(x).shape == (2, 3)
        assert sorted(model.fusion) == [str(p) for p in mask.active]


def test_fusion_points_change_the_function_once_trained():
    # Fusion modules must actually be wired in: with non-identity weights, 0100 differs from 0000.
    x = torch.randn(2, 2, SIZE, SIZE, SIZE)
    fused = FusionNet(tiny_config(), "0100").eval()
    randomise(fused)
    late = FusionNet(tiny_config(), "0000").eval()
    late.load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("fusion.")})
    assert (fused(x) - late(x)).abs().max() > 1e-3


def test_output_is_mean_of_stream_logits():
    model = FusionNet(tiny_config(modalities=3), "0000").eval()
    randomise(model)
    x = torch.randn(2, 3, SIZE, SIZE, SIZE)
    per_stream = [s(x[:, i : i + 1]) for i, s in enumerate(model.streams)]
    torch.testing.assert_close(model(x), torch.stack(per_stream).mean(0))


@pytest.mark.parametrize("fusion", sorted(FUSION_MODULES))
def test_fresh_fusion_module_is_identity(fusion):
    module = build_fusion(fusion, [8, 8, 8])
    features = [torch.randn(2, 8, 3, 4, 5) for _ in range(3)]
    for before, after in zip(features, module(features), strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize("fusion", ["mmtm", "spatial"])
def test_identity_insertion_for_every_parent_and_extension(fusion):
    """A child warm-started from any parent computes the parent's function exactly."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, SIZE, SIZE, SIZE)
    config = tiny_config(fusion=fusion)
    parents = {}
    for seed, mask in enumerate(ALL_MASKS):
        parents[mask] = FusionNet(config, mask).eval()
        randomise(parents[mask], seed)
    for parent_mask, child_mask in PAIRS:
        parent = parents[parent_mask]
        # Built as the training loop builds a child: streams allocated, not initialised.
        child = build_network(config, child_mask, torch.device("cpu"), streams_loaded=True).eval()
        report = warm_start(child, parent.state_dict())
        new_point = (set(child_mask.active) - set(parent_mask.active)).pop()
        expected_new = {k for k in child.state_dict() if k.startswith(f"fusion.{new_point}.")}
        assert set(report.new) == expected_new and expected_new
        assert set(report.loaded) == set(parent.state_dict())
        with torch.no_grad():
            diff = (child(x) - parent(x)).abs().max().item()
        assert diff < 1e-5, f"{parent_mask} -> {child_mask}: max abs diff {diff}"


def test_a_network_built_on_the_device_is_initialised_as_a_plain_one():
    torch.manual_seed(7)
    built = build_network(tiny_config(), "0110", torch.device("cpu"))
    torch.manual_seed(7)
    plain = FusionNet(tiny_config(), "0110")
    for (key, a), b in zip(built.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_warm_start_rejects_parent_with_point_child_lacks():
    parent = FusionNet(tiny_config(), "0110")
    child = FusionNet(tiny_config(), "0101")
    with pytest.raises(WarmStartError, match=r"'fusion\.2"):
        warm_start(child, parent.state_dict())


def test_warm_start_rejects_shape_mismatch_naming_the_key():
    parent = FusionNet(tiny_config(width=0.25), "0000")
    child = FusionNet(tiny_config(width=0.125), "0100")
    with pytest.raises(WarmStartError, match=r"'streams\.0\.conv1\.weight' has shape"):
        warm_start(child, parent.state_dict())


def test_warm_start_rejects_a_different_backbone():
    parent = FusionNet(tiny_config(depth=10), "0000")
    child = FusionNet(tiny_config(depth=18), "0100")
    with pytest.raises(WarmStartError, match="different backbone"):
        warm_start(child, parent.state_dict())


def test_bad_masks_and_settings_are_clear_errors():
    with pytest.raises(MaskError, match="4 candidate fusion points"):
        FusionNet(tiny_config(), "01")
    with pytest.raises(MaskError, match="0s and 1s"):
        FusionNet(tiny_config(), "01x0")
    with pytest.raises(MaskError, match="single stream"):
        FusionNet(tiny_config(modalities=1), "0100")
    with pytest.raises(ConfigError, match=r"choose one of \['mmtm', 'spatial'\]"):
        FusionNet(tiny_config(fusion="concat"), "0100")
    with pytest.raises(ConfigError, match=r"choose one of \[10, 18, 34\]"):
        tiny_config(depth=50)


def test_wrong_input_channels_is_a_clear_error():
    model = FusionNet(tiny_config(), "0000")
    with pytest.raises(ValueError, match=r"expected input \(B, 2, D, H, W\)"):
        model(torch.randn(1, 3, SIZE, SIZE, SIZE))


@pytest.mark.parametrize("depth", [10, 34])
def test_depths(depth):
    model = FusionNet(tiny_config(depth=depth), "1001").eval()
    assert model(torch.randn(1, 2, SIZE, SIZE, SIZE)).shape == (1, 2)


def medicalnet_file(path, width, seed=0, extra=None):
    """A MedicalNet-style file: {"state_dict": {"module.<MONAI name>": ...}} with a segmentation head."""
    from monai.networks.nets import resnet

    torch.manual_seed(seed)
    backbone = resnet.resnet18(spatial_dims=3, n_input_channels=1, conv1_t_stride=2, widen_factor=width)
    state = {f"module.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    state["module.conv_seg.0.weight"] = torch.randn(2, 3, 1, 1, 1)
    torch.save({"state_dict": state | (extra or {})}, path)
    return backbone


def test_init_streams_maps_medicalnet_keys_onto_every_stream(tmp_path):
    from fusionsearch.model.pretrained import load_streams, stream_state_dict

    backbone = medicalnet_file(tmp_path / "r18.pth", width=0.125)
    model = FusionNet(tiny_config(), "0100")
    fc_before = model.streams[0].fc.weight.clone()
    assert load_streams(model.streams, stream_state_dict(tmp_path / "r18.pth"), "r18.pth") == len(
        [k for k in backbone.state_dict() if not k.startswith("fc.")]
    )
    for stream in model.streams:
        assert torch.equal(stream.conv1.weight, backbone.conv1.weight)
        assert torch.equal(stream.layer4[1].bn2.running_var, backbone.layer4[1].bn2.running_var)
    assert torch.equal(model.streams[0].fc.weight, fc_before)  # the classifier keeps its own initialisation


def test_init_streams_rejects_a_file_that_does_not_fit_naming_the_key(tmp_path):
    from fusionsearch.model.pretrained import PretrainedError, load_streams, stream_state_dict

    model = FusionNet(tiny_config(), "0000")
    medicalnet_file(tmp_path / "wide.pth", width=0.25)
    with pytest.raises(
        PretrainedError, match=r"'conv1.weight' has shape \(16, 1, 7, 7, 7\) in the file but \(8,"
    ):
        load_streams(model.streams, stream_state_dict(tmp_path / "wide.pth"), "wide.pth")
    medicalnet_file(tmp_path / "odd.pth", width=0.125, extra={"module.layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(PretrainedError, match=r"its key 'layer5\.0\.conv1\.weight' is not in a stream"):
        load_streams(model.streams, stream_state_dict(tmp_path / "odd.pth"), "odd.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match=r"junk\.pth: cannot read it"):
        stream_state_dict(tmp_path / "junk.pth")


@pytest.mark.parametrize(("depth", "points"), [(18, 8), (10, 4)])
def test_block_fusion_points_after_every_residual_block(depth, points):
    config = tiny_config(points="blocks", depth=depth)
    assert config.num_points == points
    mask = "1" * points
    model = FusionNet(config, mask).eval()
    assert [p for p, _ in model.points] == [s for s in ("layer1", "layer2", "layer3", "layer4")
                                            for _ in range(points // 4)]  # fmt: skip
    assert model(torch.randn(2, 2, SIZE, SIZE, SIZE)).shape == (2, 2)
    with pytest.raises(MaskError, match=f"{points} candidate fusion points"):
        FusionNet(config, "0" * (points + 1))


def test_warm_start_is_exact_at_block_points():
    config = tiny_config(points="blocks")
    parent = FusionNet(config, "00100000")
    randomise(parent)
    child = FusionNet(config, "00100001")
    warm_start(child, parent.state_dict())
    x = torch.randn(2, 2, SIZE, SIZE, SIZE)
    assert torch.allclose(parent.eval()(x), child.eval()(x), atol=1e-5)
    stage_of_point_7 = child.fusion["7"]  # after the second block of layer4: layer4's channels
    assert stage_of_point_7 is not None and str(child.mask) == "00100001"


def test_group_norm_replaces_every_batch_norm_so_a_sample_does_not_depend_on_its_batch():
    """--norm group: MONAI 1.6 passes ``norm`` to its ResNet's stem only, so the streams' blocks are
    swapped; in training mode a sample's output then does not change with the other samples."""
    torch.manual_seed(0)
    batch = torch.randn(4, 2, SIZE, SIZE, SIZE)
    outputs = {}
    for norm in ("batch", "group"):
        model = build_network(tiny_config(norm=norm, fusion="spatial"), "1100", torch.device("cpu")).train()
        kinds = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
        assert kinds == ({"BatchNorm3d"} if norm == "batch" else {"GroupNorm"})
        outputs[norm] = (model(batch)[:2], model(batch[:2]))
        if norm == "group":  # warm start and checkpoints: the same keys as a fresh group-norm network
            fresh = build_network(tiny_config(norm=norm, fusion="spatial"), "1000", torch.device("cpu"))
            assert set(fresh.state_dict()) <= set(model.state_dict())
    torch.testing.assert_close(*outputs["group"])  # the first two samples, alone or among four
    assert not torch.allclose(*outputs["batch"])
