import pytest

from fusionsearch import ConfigError, ModelConfig
from fusionsearch.settings import from_dict, to_dict


def test_round_trip():
    config = ModelConfig(modalities=3, width=0.5, fusion="spatial")
    assert from_dict(ModelConfig, to_dict(config)) == config


def test_unknown_keys_are_rejected_with_allowed_list():
    with pytest.raises(ConfigError, match=r"unknown ModelConfig setting\(s\) \['widht'\]; allowed: \["):
        from_dict(ModelConfig, {"widht": 0.5})


def test_invalid_values():
    with pytest.raises(ConfigError, match="stem_stride"):
        ModelConfig(stem_stride=3)
    with pytest.raises(ConfigError, match="num_classes"):
        ModelConfig(num_classes=1)


def test_exhaustive_search_over_many_points_needs_force():
    from fusionsearch.settings import SearchConfig

    with pytest.raises(ConfigError, match="m=8 fusion points trains 255 masks per fold"):
        SearchConfig(searcher="exhaustive").check_points(8)
    with pytest.raises(ConfigError, match="brute-force ensemble over m=8"):
        SearchConfig(ensemble=True).check_points(8)
    SearchConfig(searcher="exhaustive", force=True).check_points(8)
    SearchConfig(searcher="exhaustive").check_points(4)
    SearchConfig(searcher="sfsa").check_points(16)


def test_one_searcher_registry_builds_every_searcher_the_settings_allow():
    from fusionsearch.pipeline import make_searcher
    from fusionsearch.settings import SEARCHERS, SearchConfig
    from searchers import REGISTRY

    assert tuple(REGISTRY) == SEARCHERS
    for name in SEARCHERS:
        searcher = make_searcher(SearchConfig(searcher=name, beam_width=3, min_delta=0.01), ["T1w", "FLAIR"])
        assert type(searcher) is REGISTRY[name] and searcher.name == name
        if name in ("sfsa", "beam"):  # the rules reach the strategy
            assert searcher.strategy.min_delta == 0.01
        if name == "beam":
            assert searcher.strategy.beam_width == 3
