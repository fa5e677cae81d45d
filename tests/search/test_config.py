"""The search's settings: every bad value is one ConfigError naming it and the fix."""

from pathlib import Path

import pytest

from torchslim.errors import ConfigError
from torchslim.search import SearchConfig, parse_budget, parse_target
from torchslim.search.metric import metric_of


def test_budget_units() -> None:
    assert parse_budget("30m") == 1800.0
    assert parse_budget("90s") == 90.0
    assert parse_budget("1.5h") == 5400.0
    assert parse_budget("600") == 600.0
    with pytest.raises(ConfigError, match="30m"):
        parse_budget("half an hour")


def test_target_must_name_the_objective() -> None:
    assert parse_target("latency=0.7", "latency") == pytest.approx(0.3)  # share removed
    assert parse_target("size=0", "size") == 1.0
    with pytest.raises(ConfigError, match="--target size=RATIO"):
        parse_target("latency=0.3", "size")
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        parse_target("latency=1", "latency")
    with pytest.raises(ConfigError, match="OBJECTIVE=RATIO"):
        parse_target("0.3", "latency")


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="max_drop"):
        SearchConfig(max_drop=-1.0)
    with pytest.raises(ConfigError, match='Did you mean "latency"'):
        SearchConfig(max_drop=1.0, objective="latncy")
    with pytest.raises(ConfigError, match="not both"):
        SearchConfig(max_drop=1.0, workers=2, ray_address="auto")
    with pytest.raises(ConfigError, match="format 'mixed'"):
        SearchConfig(max_drop=1.0, objective="latency", formats=("mixed",))
    with pytest.raises(ConfigError, match="generation"):
        SearchConfig(max_drop=1.0, generation=0)


def test_sampling_settings_exclude_what_does_not_change_the_trials() -> None:
    one = SearchConfig(max_drop=1.0, workers=1, budget_seconds=60)
    many = SearchConfig(max_drop=1.0, workers=4, budget_seconds=600)
    assert one.sampler_settings() == many.sampler_settings()
    assert one.sampler_settings() != SearchConfig(max_drop=1.0, seed=1).sampler_settings()


def test_metric_units_and_direction() -> None:
    accuracy = metric_of(["accuracy"])
    assert accuracy.drop(0.92, 0.91) == pytest.approx(1.0)  # one point of accuracy
    spearman = metric_of(["wordsim353_spearman", "simlex999_spearman"])
    assert spearman.name == "wordsim353_spearman"
    assert spearman.drop(0.60, 0.58) == pytest.approx(0.02)
    perplexity = metric_of(["perplexity_austen"])
    assert perplexity.drop(10.0, 12.0) == pytest.approx(2.0)  # higher perplexity is worse
    assert perplexity.score(12.0) < perplexity.score(10.0)
    with pytest.raises(ConfigError, match="not one of"):
        metric_of(["accuracy"], "bleu")


def test_the_lowrank_flag_reaches_the_config_and_belongs_to_search_mode() -> None:
    from torchslim.commands.search import SearchFlags, check_mode

    assert SearchFlags(max_drop=1.0, lowrank=True).config(None, 5).lowrank is True
    assert SearchFlags(max_drop=1.0).config(None, 5).lowrank is False
    with pytest.raises(ConfigError, match="--lowrank belong to search mode"):
        check_mode(Path("r.yaml"), SearchFlags(lowrank=True), {})
