"""AWQ: folding keeps the float model's function; on planted outlier channels it beats RTN."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn

from torchslim import QuantConfig, quantize_, zoo
from torchslim.errors import ConfigError
from torchslim.quantize import (
    CalibrationError,
    load_quantized,
    quantization_disabled,
    save_quantized,
    sqnr_db,
)
from torchslim.quantize._blocks import BlockWalkError
from torchslim.quantize.awq import AWQConfig, awq_
from torchslim.quantize.gptq import gptq_

torch.set_num_threads(1)
OUTLIERS = [3, 17, 40]  # hidden channels whose activations we make 30x larger


def _plant_outliers(model: nn.Module) -> nn.Module:
    """Scale some norm outputs up 30x and the weights reading them down 30x (same function):
    a few input channels of q/k/v, gate/up and down carry large activations, as in real LLMs."""
    with torch.no_grad():
        for block in cast(Any, model).model.model.layers:
            for norm, layers in (
                (block.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                (block.post_attention_layernorm, ("gate_proj", "up_proj")),
            ):
                norm.weight[OUTLIERS] *= 30
                parent = block.self_attn if layers[0] == "q_proj" else block.mlp
                for name in layers:
                    getattr(parent, name).weight[:, OUTLIERS] /= 30
            block.mlp.up_proj.weight[OUTLIERS] *= 30
            block.mlp.down_proj.weight[:, OUTLIERS] /= 30
    return model


@pytest.fixture(scope="module")
def llama() -> tuple[nn.Module, list[tuple[torch.Tensor, ...]], torch.Tensor]:
    entry = zoo.get("tiny-llama")
    model = _plant_outliers(entry.load())
    return model, entry.calibration_batches(8, batch_size=4), entry.example_inputs(8)[0]


def test_awq_keeps_the_float_function_and_beats_round_to_nearest(
    llama: tuple, tmp_path: Path
) -> None:
    base, batches, x = llama
    reference = base(x)
    config = QuantConfig(weight="int4-g32", observer="minmax")
    nearest, model = copy.deepcopy(base), copy.deepcopy(base)
    quantize_(nearest, config)
    quantize_(model, config)
    report = awq_(model, batches)
    assert len(report) == 6  # q/k/v, gate/up, down per block; o skipped (grouped-query heads)
    assert all(v["loss_awq"] <= v["loss_nearest"] for v in report.values())
    assert all(v["alpha"] > 0 for v in report.values())  # the outliers are worth scaling
    with quantization_disabled(model):
        torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=1e-4)
    gain = sqnr_db(reference, model(x)) - sqnr_db(reference, nearest(x))
    assert gain > 3, gain
    for module in model.modules():  # the quantizers' ranges follow the scaled weights
        if hasattr(module, "weight_quantizer"):
            assert module.weight_sqnr_db() > 10
    gptq_(model, batches)  # AWQ + GPTQ: GPTQ works on the scaled weights
    assert sqnr_db(reference, model(x)) > sqnr_db(reference, nearest(x)) + gain - 0.5
    path = save_quantized(model, tmp_path / "awq.safetensors")  # codes + the scaled norms
    reloaded = load_quantized(zoo.get("tiny-llama").load(), path)
    torch.testing.assert_close(reloaded(x), model(x))


def test_awq_clip_search_lowers_the_error_further(llama: tuple) -> None:
    base, batches, x = llama
    reference = base(x)
    scores = {}
    for clip in (False, True):
        model = copy.deepcopy(base)
        quantize_(model, QuantConfig(weight="int3-g32", observer="minmax"))
        report = awq_(model, batches, AWQConfig(clip=clip))
        scores[clip] = sqnr_db(reference, model(x))
    clip_ratios = [v for group in report.values() for k, v in group.items() if "clip" in k]
    assert len(clip_ratios) == 8  # v, gate, up, down in each of the 2 blocks (q/k are not clipped)
    assert all(ratio <= 1.0 for ratio in clip_ratios)  # ratio 1 (no clipping) is a candidate
    assert not any(
        "q_proj" in k or "k_proj" in k for g in report.values() for k in g if "clip" in k
    )
    assert scores[True] > scores[False] + 0.2


def test_awq_scales_o_proj_when_heads_allow() -> None:
    entry = zoo.get("tiny-llama")
    model = entry.load()
    for block in model.model.model.layers:  # make v's outputs o's inputs one to one
        attention = block.self_attn
        attention.k_proj = nn.Linear(64, 64, bias=False)
        attention.v_proj = nn.Linear(64, 64, bias=False)
        attention.num_key_value_groups = 1
        attention.config.num_key_value_heads = 4
    x = entry.example_inputs(4)[0]
    reference = model(x)
    quantize_(model, QuantConfig(weight="int4-g16"))
    report = awq_(model, entry.calibration_batches(4), AWQConfig(grid_points=5))
    assert any(key.endswith("self_attn.o_proj") for key in report)
    with quantization_disabled(model):
        torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=1e-4)


def test_awq_refuses_bad_input_and_leaves_the_model_untouched(llama: tuple) -> None:
    model = copy.deepcopy(llama[0])
    quantize_(model, QuantConfig(weight="int4-g16"))
    before = copy.deepcopy(model.state_dict())
    nan = torch.zeros(2, 16, dtype=torch.float32).fill_(float("nan"))
    with pytest.raises(CalibrationError, match="batch 0"):
        awq_(model, [(nan,)])
    with pytest.raises(CalibrationError, match="empty"):
        awq_(model, [])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    mlp = nn.Sequential(nn.Linear(8, 8))
    quantize_(mlp, QuantConfig(weight="int4"))
    with pytest.raises(BlockWalkError, match="no decoder block list"):
        awq_(mlp, [torch.randn(2, 8)])
    float_llama = copy.deepcopy(llama[0])  # no quantize_ first: nothing to scale for
    with pytest.raises(BlockWalkError, match="run quantize_ first"):
        awq_(float_llama, llama[1][:1])


def test_awq_config_validates() -> None:
    with pytest.raises(ConfigError, match="grid_points"):
        AWQConfig(grid_points=1)
    with pytest.raises(ConfigError, match="Did you mean"):
        AWQConfig.from_dict({"grid_point": 10})
    assert AWQConfig.from_dict(AWQConfig(seed=3).to_dict()) == AWQConfig(seed=3)
