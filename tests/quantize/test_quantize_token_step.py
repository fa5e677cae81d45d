"""W4A8 with per-token activations through the pipeline and the CLI on the zoo's tiny LLaMA
(built from a config, random weights): the built-in recipe, the quantize step's ``dynamic`` and
GPTQ/AWQ with dynamic activations, ``torchslim quantize --scheme w4a8-token``, and refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import torchslim
from torchslim import zoo
from torchslim.cli import app
from torchslim.pipeline import RecipeError, load_recipe, parse_recipe
from torchslim.pipeline.runner import RunOptions, compress

FAST = RunOptions(repeats=3, measure_stages=False)
COSINE = "cosine_vs_reference"


def _quantize_stage(**options: object) -> str:
    lines = "".join(f"    {key}: {value}\n" for key, value in options.items())
    return f"version: 1\nstages:\n  - step: quantize\n    calibration_batches: 2\n{lines}"


def _input_formats(outcome) -> set[str | None]:  # type: ignore[no-untyped-def]
    layers = outcome.details["stages"][-1]["summary"]["quantize"]["layers"]
    return {layer["activation_format"] for layer in layers}


def test_the_built_in_recipe_rotates_gptqs_and_quantizes_inputs_per_token(tmp_path: Path) -> None:
    entry = zoo.get("tiny-llama")
    recipe = load_recipe("llm-rotate-gptq-w4a8-token")
    outcome = compress(entry, recipe, tmp_path / "r", FAST)
    rotate, quantize = (stage["summary"] for stage in outcome.details["stages"])
    assert rotate["blocks"] == 2
    assert quantize["method"] == "gptq" and quantize["layers_gptq"] == 15  # 7 a block, the head
    assert _input_formats(outcome) == {"int8-token"}
    assert {layer["observer"] for layer in quantize["quantize"]["layers"]} == {"dynamic"}
    assert 0.9 < outcome.after.metrics[COSINE] < 1.0
    assert outcome.after.size_bytes < 0.5 * outcome.before.size_bytes  # packed int4 codes
    reloaded = torchslim.load(tmp_path / "r")
    assert entry.evaluate(reloaded)[COSINE] > 0.9


@pytest.mark.parametrize("method", ["gptq", "awq_gptq"])
def test_gptq_and_awq_run_with_per_token_inputs_and_lower_the_error(
    method: str, tmp_path: Path
) -> None:
    entry = zoo.get("tiny-llama")
    formats = {"weight": "uint4-g16", "activation": "int8-token", "observer": "minmax"}
    rtn = compress(entry, parse_recipe(_quantize_stage(**formats)), tmp_path / "rtn", FAST)
    text = _quantize_stage(**formats, method=method)
    outcome = compress(entry, parse_recipe(text), tmp_path / method, FAST)
    assert _input_formats(outcome) == {"int8-token"}
    assert outcome.after.metrics[COSINE] > rtn.after.metrics[COSINE] - 0.005
    summary = outcome.details["stages"][0]["summary"]
    assert summary["layers_gptq"] == 15
    if method == "awq_gptq":
        assert summary["layers_awq"] == 6  # 3 scale groups a block


def test_dynamic_makes_a_per_tensor_input_dynamic(tmp_path: Path) -> None:
    entry = zoo.get("tiny-llama")
    text = _quantize_stage(weight="int8", activation="int8", dynamic="true", method="gptq")
    outcome = compress(entry, parse_recipe(text), tmp_path / "d", FAST)
    layers = outcome.details["stages"][0]["summary"]["quantize"]["layers"]
    assert {(layer["activation_format"], layer["observer"]) for layer in layers} == {
        ("int8-tensor", "dynamic")
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weight": "uint4-g16", "activation": "int8", "method": "gptq"}, "static input ranges"),
        ({"scheme": "w8a8", "method": "awq"}, "static input ranges"),
        ({"weight": "int4", "activation": "int8-token", "dynamic": "false"}, "dynamic: false"),
        ({"weight": "int4", "activation": "int8-token", "dynamic": "maybe"}, "dynamic"),
        ({"weight": "int4", "dynamic": "true"}, "activation=None"),
        ({"weight": "int8-token"}, "for activations"),
    ],
)
def test_a_step_that_cannot_work_is_refused_when_the_recipe_is_read(
    options: dict[str, str], message: str
) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe(_quantize_stage(**options))


def test_awq_refuses_inputs_whose_ranges_were_calibrated_before_it() -> None:
    from torchslim.quantize import QuantConfig, quantize_
    from torchslim.quantize.awq import AWQError, awq_

    entry = zoo.get("tiny-llama")
    model, batches = entry.load(), entry.calibration_batches(2)
    config = QuantConfig(weight="uint4-g16", activation="int8", observer="minmax")
    quantize_(model, config, calibration=batches)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AWQError, match=r"static int8-tensor range.*int8-token"):
        awq_(model, batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _invoke(model: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["quantize", model, *args, "--repeats", "3"])
    return result.exit_code, result.stdout, f"{result.output}{result.exception or ''}"


def test_the_cli_scheme_runs_gptq_with_per_token_inputs(tmp_path: Path) -> None:
    out = tmp_path / "w4a8"
    code, stdout, output = _invoke(
        "tiny-llama", "--scheme", "w4a8-token", "--method", "gptq",
        "--calibration-batches", "2", "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, output
    details = json.loads(stdout)["details"]
    assert details["execution"] == "simulated" and details["method"]["method"] == "gptq"
    layers = details["quantize"]["layers"]
    assert {(layer["weight_format"], layer["activation_format"]) for layer in layers} == {
        ("int4-g64", "int8-token")
    }
    assert details["method"]["loss_ratio_vs_rtn_median"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"][0]["options"]["scheme"] == "w4a8-token"


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("tiny-cnn", ("--scheme", "w4a8-token"), r"Conv2d.*int8-token"),
        ("tiny-llama", ("--scheme", "w4a8", "--method", "gptq"), "static input ranges"),
        ("tiny-llama", ("--scheme", "w8-dynamic", "--method", "gptq"), "--deploy auto"),
    ],
)
def test_the_cli_refuses_what_it_cannot_do(
    model: str, args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    code, _, output = _invoke(model, *args, "--calibration-batches", "2", "--out",
                              str(tmp_path / "x"))  # fmt: skip
    assert code != 0
    assert re.search(message, output), output
