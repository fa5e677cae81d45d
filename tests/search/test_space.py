"""The search space: every choice is a valid recipe of registered steps."""

import json
from pathlib import Path

import pytest

from models import FAKE_LATENCY
from torchslim.errors import ConfigError
from torchslim.pipeline.recipe import parse_recipe
from torchslim.search import SearchConfig
from torchslim.search.space import depth_choices, describe, recipe_for, space_for
from torchslim.zoo.options import resolve_model


@pytest.fixture
def fake_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed latency model: no calibration of this machine in unit tests."""
    from torchslim.profile import latency_cache

    monkeypatch.setattr(latency_cache, "calibrated_model", lambda *args, **kwargs: FAKE_LATENCY)


def test_depth_choices_keep_the_layers_that_change_shape() -> None:
    from torchslim.distill.student import drop_layers

    model = resolve_model("fashion-resnet20").load()  # 3 stages of 3 blocks
    choices = depth_choices(model)
    assert choices == ("none", "2", "1,2")  # block 0 of a stage changes the shape: kept
    for choice in choices[1:]:  # every offered drop list is accepted by drop_layers
        drop_layers(model, [int(i) for i in choice.split(",")])


def test_every_choice_is_a_recipe_that_validates_as_yaml() -> None:
    entry = resolve_model("tiny-cnn")
    space = space_for(entry, entry.load(), SearchConfig(max_drop=0.1, objective="size"))
    assert space.recoveries == ("none",)  # a tiny model without training data: no recovery
    choices = {"depth": "none", "keep_macs": 0.6, "prune_method": "l2", "format": "mixed",
               "size_budget": 0.2}  # fmt: skip
    recipe = recipe_for(choices, space)
    assert [stage.step for stage in recipe.stages] == ["prune", "mixed_precision"]
    assert parse_recipe(recipe.to_yaml()).to_dict() == recipe.to_dict()  # reproducible as a file
    assert describe(choices) == "60 % MACs (l2), mixed int8/int4 at 0.20"


def test_a_fixed_recovery_the_model_has_no_data_for_is_refused() -> None:
    entry = resolve_model("tiny-cnn")
    with pytest.raises(ConfigError, match="training data"):
        space_for(entry, entry.load(), SearchConfig(max_drop=0.1, recovery="distill"))


def test_the_scan_discards_an_unrecovered_candidate_that_prunes_a_fragile_group() -> None:
    from torchslim.prune.sensitivity import group_names
    from torchslim.search.sensitivity import PlanShares, fragile_layer

    entry = resolve_model("tiny-cnn")
    model = entry.load()
    shares = PlanShares(entry, model)
    names = group_names(model, tuple(entry.example_inputs(1)))
    assert set(shares("l2", "macs=0.7")) == set(names)  # the plan's groups are the scan's
    first = max(names, key=lambda name: shares("l2", "macs=0.7")[name])  # the most cut at 30 %
    layers = [{"name": n, "drop": 5.0 if n == first else 0.1} for n in names]
    scan = {"state": "scanned", "ratio": 0.5, "layers": layers}
    space = space_for(entry, model, SearchConfig(max_drop=1.0, formats=("fp32",)))

    def reason(keep_macs: float) -> str:
        choices = {"depth": "none", "keep_macs": keep_macs, "prune_method": "l2", "format": "fp32"}
        return fragile_layer(recipe_for(choices, space).to_dict(), scan, shares, 1.0)

    assert shares("l2", "macs=0.7")[first] >= 0.5
    assert first in reason(0.3) and "drop of 5" in reason(0.3)
    assert shares("l2", "macs=0.1")[first] < 0.5
    assert reason(0.9) == ""  # removes less of the fragile group than the scan did
    assert fragile_layer({"stages": [{"step": "prune", "method": "l2", "target": "macs=0.7"},
                                     {"step": "finetune"}]}, scan, shares, 1.0) == ""  # fmt: skip
    assert fragile_layer(recipe_for({"depth": "none", "keep_macs": 0.3, "prune_method": "l2",
                                     "format": "fp32"}, space).to_dict(),
                         {**scan, "state": "skipped"}, shares, 1.0) == ""  # fmt: skip


def test_lowrank_is_searched_only_when_asked_and_builds_a_factorize_stage() -> None:
    from torch import nn

    from torchslim.search.space import factorize_method

    entry = resolve_model("tiny-cnn")
    model = entry.load()
    plain = SearchConfig(max_drop=0.1, formats=("fp32",))
    assert space_for(entry, model, plain).factorize is None
    assert "lowrank" not in plain.sampler_settings()  # a study started before it still resumes
    config = SearchConfig(max_drop=0.1, formats=("fp32",), lowrank=True)
    assert config.sampler_settings()["lowrank"] is True
    space = space_for(entry, model, config)
    assert space.factorize == "tucker2"
    assert factorize_method(nn.Sequential(nn.Linear(8, 8), nn.ReLU())) == "whitened"
    choices = {"depth": "none", "keep_macs": 0.6, "prune_method": "l2", "lowrank": 0.25,
               "format": "fp32"}  # fmt: skip
    recipe = recipe_for(choices, space)
    assert [stage.step for stage in recipe.stages] == ["prune", "factorize"]
    assert recipe.to_dict()["stages"][1]["target"] == "params=0.25"
    assert parse_recipe(recipe.to_yaml()).to_dict() == recipe.to_dict()
    assert describe(choices) == "60 % MACs (l2), low-rank -25 % params, fp32"
    assert [s.step for s in recipe_for({**choices, "lowrank": 0.0}, space).stages] == ["prune"]


def test_a_lowrank_trial_runs_and_writes_its_factorized_model(tmp_path: Path) -> None:
    from torchslim.evaluate import evaluate
    from torchslim.pipeline.artifact import load, model_source
    from torchslim.search.trial import TrialSpec, run_trial

    entry = resolve_model("tiny-cnn")
    original = entry.load()
    space = space_for(entry, original, SearchConfig(max_drop=0.1, formats=("fp32",), lowrank=True))
    choices = {"depth": "none", "keep_macs": 1.0, "lowrank": 0.5, "format": "fp32"}
    baseline = evaluate(original, entry, 1, 1, "cpu", 3)
    spec = TrialSpec(0, recipe_for(choices, space), model_source(entry), str(tmp_path / "t"), 1,
                     3, 0, "cosine_vs_reference", baseline)  # fmt: skip
    figures = run_trial(spec)
    assert "error" not in figures, figures.get("error")
    assert figures["params"] <= sum(p.numel() for p in original.parameters())
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert [stage["step"] for stage in manifest["stages"]] == ["factorize"]
    rebuilt = load(tmp_path / "t")  # layers kept whole or factorized: it rebuilds either way
    assert sum(p.numel() for p in rebuilt.parameters()) == figures["params"]


def test_auto_depth_is_offered_for_residual_models_and_builds_a_latency_aware_prune() -> None:
    entry = resolve_model("tiny-resnet14")
    model = entry.load()
    space = space_for(entry, model, SearchConfig(max_drop=1.0, formats=("fp32",)))
    assert space.depths[-1] == "auto"
    plain = resolve_model("tiny-cnn")  # no residual blocks: nothing for the planner to drop
    assert "auto" not in space_for(plain, plain.load(), SearchConfig(max_drop=1.0)).depths
    choices = {"depth": "auto", "keep_macs": 0.5, "prune_method": "l2", "format": "fp32"}
    recipe = recipe_for(choices, space)
    (stage,) = recipe.to_dict()["stages"]
    assert (stage["step"], stage["target"], stage["depth"]) == ("prune", "macs=0.5", "auto")
    assert parse_recipe(recipe.to_yaml()).to_dict() == recipe.to_dict()
    assert describe(choices) == "blocks + widths by latency, 50 % MACs (l2), fp32"
    unchanged = {"depth": "auto", "keep_macs": 1.0, "format": "fp32", "recovery": "finetune"}
    assert recipe_for(unchanged, space).stages == ()  # nothing pruned: nothing to recover


@pytest.mark.usefixtures("fake_latency")
def test_an_auto_depth_trial_drops_blocks_and_its_artifact_reloads(tmp_path: Path) -> None:
    from torchslim.evaluate import evaluate
    from torchslim.pipeline.artifact import load, model_source
    from torchslim.search.trial import TrialSpec, run_trial

    entry = resolve_model("tiny-resnet14")
    original = entry.load()
    space = space_for(entry, original, SearchConfig(max_drop=1.0, formats=("fp32",)))
    choices = {"depth": "auto", "keep_macs": 0.5, "prune_method": "l2", "format": "fp32"}
    baseline = evaluate(original, entry, 1, 1, "cpu", 3)
    spec = TrialSpec(0, recipe_for(choices, space), model_source(entry), str(tmp_path / "t"), 1,
                     3, 0, "cosine_vs_reference", baseline)  # fmt: skip
    figures = run_trial(spec)
    assert "error" not in figures, figures.get("error")
    assert figures["macs"] <= 0.5 * baseline.details.get("macs", figures["macs"] * 2) + 1
    rebuilt = load(tmp_path / "t")
    assert sum(p.numel() for p in rebuilt.parameters()) == figures["params"]


def test_a_study_without_auto_depth_does_not_resume_with_it(tmp_path: Path) -> None:
    from torchslim.search.study import open_study

    entry = resolve_model("tiny-resnet14")
    config = SearchConfig(max_drop=1.0, formats=("fp32",))
    open_study(tmp_path, config, resume=False)  # as a search before the choice existed
    space = space_for(entry, entry.load(), config)
    with pytest.raises(ConfigError, match="depths"):
        open_study(tmp_path, config, resume=True, space=space)


@pytest.mark.usefixtures("fake_latency")
def test_a_structure_predicted_over_the_latency_limit_is_discarded_before_recovery(
    tmp_path: Path,
) -> None:
    from torchslim.evaluate import evaluate
    from torchslim.pipeline.artifact import model_source
    from torchslim.search.run import LATENCY_SLACK, _latency_limit
    from torchslim.search.trial import TrialSpec, run_trial

    entry = resolve_model("tiny-resnet14")
    original = entry.load()
    space = space_for(entry, original, SearchConfig(max_drop=1.0, formats=("fp32",)))
    choices = {"depth": "none", "keep_macs": 0.9, "prune_method": "l2", "format": "fp32"}
    baseline = evaluate(original, entry, 1, 1, "cpu", 3)

    def run(limit: float, name: str) -> dict:
        spec = TrialSpec(0, recipe_for(choices, space), model_source(entry), str(tmp_path / name),
                         1, 3, 0, "cosine_vs_reference", baseline, latency_limit=limit)  # fmt: skip
        return run_trial(spec)

    slow = run(0.2, "slow")  # 90 % of the MACs cannot run in a fifth of the time
    assert "latency model predicts" in slow["discarded"] and "limit 0.20" in slow["discarded"]
    assert not (tmp_path / "slow").exists()  # nothing trained, measured or written
    fits = run(1.5, "fits")
    assert "discarded" not in fits and fits["latency_ms"] > 0
    target = SearchConfig(max_drop=1.0, objective="latency", target_ratio=0.3)
    assert _latency_limit(target, choices) == pytest.approx(0.3 * LATENCY_SLACK)
    assert _latency_limit(target, {**choices, "format": "int8"}) is None  # not what it predicts
    assert _latency_limit(SearchConfig(max_drop=1.0), choices) is None  # no target: none


def test_a_new_search_in_a_directory_holding_a_study_says_to_resume(tmp_path: Path) -> None:
    from torchslim.search.study import open_study

    config = SearchConfig(max_drop=1.0, formats=("fp32",))
    open_study(tmp_path, config, resume=False)
    with pytest.raises(ConfigError, match=r"already holds a search study.*--resume"):
        open_study(tmp_path, config, resume=False)
    assert open_study(tmp_path, config, resume=True) is not None  # the stored one, untouched
