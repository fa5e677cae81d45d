"""The pipeline: stages in order, one artifact every command reads, resume after a failure."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

import torchslim
from torchslim import zoo
from torchslim.cli import app
from torchslim.errors import ModelLoadError
from torchslim.pipeline import StepResult, parse_recipe
from torchslim.pipeline.registry import Step, register_step
from torchslim.pipeline.runner import RunOptions, compress

FAST = RunOptions(repeats=3, measure_stages=False)
PRUNE_QUANTIZE = """\
version: 1
stages:
  - step: prune
    method: l2
    target: macs=0.5
  - step: quantize
    weight: int8
    calibration_batches: 2
"""


def test_stages_run_in_order_and_the_artifact_reloads(tmp_path):
    entry = zoo.get("tiny-resnet")
    outcome = compress(entry, parse_recipe(PRUNE_QUANTIZE), tmp_path / "a", RunOptions(repeats=3))
    stages = outcome.details["stages"]
    assert [s["step"] for s in stages] == ["prune", "quantize"]
    assert stages[0]["figures"]["macs"] <= 0.55 * stages[0]["summary"]["macs_before"]
    assert outcome.after.params < outcome.before.params
    model = torchslim.load(tmp_path / "a")  # pruned shapes replayed, quantized weights loaded
    assert sum(p.numel() for p in model.parameters()) == stages[0]["figures"]["params"]
    assert entry.evaluate(model) == pytest.approx(outcome.after.metrics, abs=1e-6)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["artifact_format"] == "torchslim" and manifest["kind"] == "module"
    assert manifest["recipe"] == parse_recipe(PRUNE_QUANTIZE).to_dict()


def test_every_command_reads_an_artifact_as_model(tmp_path):
    compress(zoo.get("tiny-resnet"), parse_recipe(PRUNE_QUANTIZE), tmp_path / "a", FAST)
    artifact = str(tmp_path / "a")
    evaluated = CliRunner().invoke(app, ["evaluate", artifact, "--json", "--repeats", "3"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "cosine_vs_reference" in json.loads(evaluated.stdout)["metrics"]  # the zoo metric
    pruned = CliRunner().invoke(
        app, ["prune", artifact, "--method", "magnitude", "--target", "sparsity=0.5",
              "--out", str(tmp_path / "b"), "--json", "--repeats", "3"],
    )  # fmt: skip
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.stdout)["before"]["params"] == json.loads(evaluated.stdout)["params"]


def test_an_artifact_of_a_newer_format_is_refused(tmp_path):
    compress(zoo.get("tiny-resnet"), parse_recipe(PRUNE_QUANTIZE), tmp_path / "a", FAST)
    manifest_path = tmp_path / "a" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifact_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"format version 99.*upgrade torchslim"):
        torchslim.load(tmp_path / "a")


@dataclass(frozen=True)
class CountOptions:
    fail: bool = False


CALLS: list[str] = []
FAIL_ONCE: list[bool] = []


def run_count(model, options, context):
    CALLS.append("fail" if options.fail else "count")
    if options.fail and FAIL_ONCE:
        FAIL_ONCE.clear()
        raise RuntimeError("a stage failing midway")
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)  # a visible, deterministic change
    return StepResult({"calls": len(CALLS)})


register_step(Step("test-count", CountOptions, run_count, "test step",
                   restore=lambda model, options, record, context: None))  # fmt: skip


def test_a_failed_stage_writes_nothing_and_resume_gives_the_same_result(tmp_path):
    more = "  - step: test-count\n  - step: test-count\n    fail: true\n  - step: quantize"
    text = PRUNE_QUANTIZE.replace("  - step: quantize", more)
    recipe = parse_recipe(text)
    entry = zoo.get("tiny-resnet")
    CALLS.clear()
    FAIL_ONCE.append(True)
    with pytest.raises(RuntimeError, match="midway"):
        compress(entry, recipe, tmp_path / "run", FAST)
    assert not (tmp_path / "run").exists()
    resume = RunOptions(repeats=3, measure_stages=False, resume=True)
    resumed = compress(entry, recipe, tmp_path / "run", resume)
    assert CALLS == ["count", "fail", "fail"]  # prune and the first count did not run again
    straight = compress(entry, recipe, tmp_path / "straight", FAST)
    assert resumed.after.metrics == pytest.approx(straight.after.metrics)
    first = torchslim.load(tmp_path / "run").state_dict()
    second = torchslim.load(tmp_path / "straight").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resume_without_a_checkpoint_or_with_another_recipe_is_refused(tmp_path):
    from torchslim.errors import ConfigError

    entry, recipe = zoo.get("tiny-resnet"), parse_recipe(PRUNE_QUANTIZE)
    resume = RunOptions(repeats=3, measure_stages=False, resume=True)
    with pytest.raises(ConfigError, match="no checkpoint"):
        compress(entry, recipe, tmp_path / "run", resume)


def test_the_users_model_is_untouched_by_a_failing_recipe():
    model = zoo.get("tiny-resnet").load()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text = "version: 1\nstages:\n  - step: quantize\n    weight: int4-g7\n"
    with pytest.raises(Exception, match="group"):
        torchslim.compress(model, text, "/tmp/never-written", torch.randn(2, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_llm_recipe_packs_int4_weights(tmp_path):
    from torchslim.pipeline import load_recipe

    outcome = compress(zoo.get("tiny-llama"), load_recipe("llm-int4-gptq"), tmp_path / "q", FAST)
    assert outcome.after.size_bytes < 0.5 * outcome.before.size_bytes  # the packed codes
    assert (tmp_path / "q" / "model.quantized.safetensors").is_file()
    assert 0.9 < outcome.after.metrics["cosine_vs_reference"] < 1.0
    assert outcome.details["stages"][0]["summary"]["layers_gptq"] > 0


@pytest.mark.assets
def test_the_quick_recipe_keeps_pruned_weights_zero_through_fine_tuning(tmp_path):
    from torchslim.pipeline import load_recipe

    entry = zoo.get("fashion-cnn")
    outcome = compress(entry, load_recipe("quick-sparse-w8"), tmp_path / "q", FAST)
    assert outcome.after.metrics["accuracy"] > outcome.before.metrics["accuracy"] - 0.01
    model = torchslim.load(tmp_path / "q")
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    weights = [m.weight for m in model.modules() if isinstance(m, layers)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.5, abs=0.01)  # the 50 % survive fine-tuning and int8


def test_compress_a_module_with_its_own_calibration_data(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    calibration = [torch.randn(8, 16) for _ in range(4)]
    text = "version: 1\nstages:\n  - step: quantize\n    scheme: w8a8\n    calibration_batches: 4\n"
    outcome = torchslim.compress(model, text, tmp_path / "q", torch.randn(8, 16), calibration)
    assert 0.99 < outcome.after.metrics["cosine"] < 1.0  # int8 is close, not identical
    assert outcome.before.metrics["cosine"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="for a module"):
        torchslim.compress("tiny-resnet", text, tmp_path / "r", calibration=calibration)
