"""``torchslim demo``: cost, then a recipe compresses the model, then the measured proof."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import torchslim
from torchslim.cli import app
from torchslim.pipeline.recipe import RecipeError

QUICK = """\
version: 1
stages:
  - step: prune
    method: l2
    target: macs=0.5
  - step: deploy
    precision: int8
    backend: onnxruntime
"""


@pytest.mark.slow  # profiles (a latency-model calibration when the cache is cold), then deploys
def test_demo_compresses_and_prints_what_the_recipe_bought(tmp_path):
    recipe = tmp_path / "quick.yaml"
    recipe.write_text(QUICK)
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "tiny-resnet", "--recipe", str(recipe), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for words in ("MACs", "x fewer", "x smaller", "speed-up vs fp32 eager", "artifact:"):
        assert words in result.output
    reloaded = torchslim.load(out)  # the demo's result is an artifact every command reads
    assert reloaded is not None


def test_demo_refuses_a_foreign_out_before_any_work(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "tiny-resnet", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_demo_rejects_a_recipe_typo_before_loading_the_model(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(QUICK.replace("method: l2", "methd: l2"))
    result = CliRunner().invoke(app, ["demo", "tiny-resnet", "--recipe", str(recipe)])
    assert isinstance(result.exception, RecipeError)  # main() prints it as one line
    assert "typo.yaml:4" in str(result.exception) and 'Did you mean "method"' in str(
        result.exception
    )


@pytest.mark.slow
def test_the_default_demo_runs_the_built_in_cnn_recipe():
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "cnn-prune-distill-int8" in result.output and "speed-up vs fp32 eager" in result.output
