"""The search space: every choice is a valid recipe of registered steps."""

import pytest

from torchslim.errors import ConfigError
from torchslim.pipeline.recipe import parse_recipe
from torchslim.search import SearchConfig
from torchslim.search.space import depth_choices, describe, recipe_for, space_for
from torchslim.zoo.options import resolve_model


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
