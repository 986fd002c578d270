import pytest

from fusionsearch import FusionMask, MaskError


def test_parse_and_active_points():
    mask = FusionMask.parse("0101", num_points=4)
    assert mask.active == (1, 3)
    assert str(mask) == "0101"
    assert 1 in mask and 0 not in mask
    assert list(mask) == [False, True, False, True]


@pytest.mark.parametrize("text", ["", "01a0", "0120", "01 1", "x"])
def test_parse_rejects_non_bits(text):
    with pytest.raises(MaskError, match="0s and 1s"):
        FusionMask.parse(text)


def test_parse_rejects_wrong_length_and_names_the_count():
    with pytest.raises(MaskError, match="4 candidate fusion points"):
        FusionMask.parse("010", num_points=4)


def test_extensions_add_exactly_one_point():
    assert [str(m) for m in FusionMask("0100").extensions()] == ["1100", "0110", "0101"]
    assert FusionMask("1111").extensions() == []
    for child in FusionMask("1010").extensions():
        assert FusionMask("1010").is_subset(child)
        assert len(child.active) == 3


def test_all_masks_enumerates_every_subset_once():
    masks = FusionMask.all_masks(4)
    assert len(masks) == 16 == len(set(masks))
    assert masks[0] == FusionMask.empty(4) and masks[-1] == FusionMask("1111")
    assert len(FusionMask.all_masks(3)) == 8


def test_masks_are_hashable_and_ordered():
    assert {FusionMask("01"): 1}[FusionMask.parse("01")] == 1
    assert sorted([FusionMask("10"), FusionMask("01")]) == [FusionMask("01"), FusionMask("10")]


def test_with_point_out_of_range():
    with pytest.raises(MaskError, match="outside"):
        FusionMask("00").with_point(2)
