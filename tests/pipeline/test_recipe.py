"""Recipes are validated whole before any work: every error names the line and the fix."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.pipeline import RecipeError, load_recipe, parse_recipe
from torchslim.pipeline.recipe import BUILT_IN
from torchslim.pipeline.registry import get_step, step_names

RECIPES = sorted(BUILT_IN.glob("*.yaml"))

GOOD = """\
version: 1
stages:
  - step: prune
    method: l2
    target: macs=0.5
  - step: finetune
    epochs: 2
  - step: quantize
    scheme: w8a8
"""


def test_a_good_recipe_round_trips_to_yaml():
    recipe = parse_recipe(GOOD)
    assert [s.step for s in recipe.stages] == ["prune", "finetune", "quantize"]
    assert recipe.stages[1].options.epochs == 2 and recipe.stages[1].line == 6
    assert parse_recipe(recipe.to_yaml()).to_dict() == recipe.to_dict()


TYPOS = [
    ("epochs: 2", "epoch: 2", r'<recipe>:7: .*no option .epoch.*Did you mean "epochs"'),
    ("step: finetune", "step: finetun", r'<recipe>:6: unknown step .finetun.*"finetune"'),
    ("target: macs=0.5", "target: macs=0", r"<recipe>:4: .*removes nothing"),
    ("epochs: 2", "epochs: 0", r"<recipe>:7: .*epochs must be >= 1"),
    ("version: 1", "version: 2", r"<recipe>:1: recipe version 2.*newer torchslim"),
    ("stages:", "stagez:", r'unknown key .stagez.*Did you mean "stages"'),
]
BROKEN = [
    (GOOD + "  - step: deploy\n  - step: finetune\n", r":10: step .deploy. .*must be the last"),
    ("version: 1\nstages: []\n", r"non-empty list"),
    ("version: 1\nstages: [\n", r"not valid YAML"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(GOOD.replace(old, new), why) for old, new, why in TYPOS] + BROKEN
)
def test_recipe_errors_name_the_line_and_the_fix(text, expected):
    with pytest.raises(RecipeError, match=expected):
        parse_recipe(text)


def test_recipe_file_errors_name_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.replace("method: l2", "methd: l2"))
    with pytest.raises(RecipeError, match=rf"{path}:4: .*no option .methd"):
        load_recipe(path)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_built_in_recipe_is_valid(path):
    assert load_recipe(path).stages


def test_every_registered_step_is_used_by_a_built_in_recipe():
    used = {stage.step for path in RECIPES for stage in load_recipe(path).stages}
    built_in = {n for n in step_names() if get_step(n).handler.__module__.startswith("torchslim.")}
    assert built_in <= used


def test_cli_lists_steps_and_validates():
    steps = CliRunner().invoke(app, ["recipe", "steps"], terminal_width=200)
    assert steps.exit_code == 0
    for name in step_names():
        assert name in steps.output
        for option, _, _ in get_step(name).option_rows():
            assert option in steps.output
    ok = CliRunner().invoke(app, ["recipe", "validate", str(RECIPES[0])])
    assert ok.exit_code == 0 and "valid" in ok.output
