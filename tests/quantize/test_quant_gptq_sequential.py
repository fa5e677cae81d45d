"""Sequential GPTQ on tiny decoders: block walking, true-sequential groups, lower error than RTN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim import QuantConfig, quantize_, zoo
from torchslim.quantize import CalibrationError, quantization_disabled, sqnr_db
from torchslim.quantize._attention import attention_probe
from torchslim.quantize._blocks import (
    BlockWalkError,
    advance,
    capture_block_inputs,
    find_blocks,
    input_groups,
    run_block,
)
from torchslim.quantize.gptq import GPTQConfig, gptq_

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def llama() -> tuple[nn.Module, list[tuple[torch.Tensor, ...]], torch.Tensor]:
    entry = zoo.get("tiny-llama")
    return entry.load(), entry.calibration_batches(8, batch_size=4), entry.example_inputs(8)[0]


def test_block_walk_reproduces_the_model(llama: tuple) -> None:
    model, _, x = llama
    name, blocks = find_blocks(model)
    assert name == "model.model.layers" and len(blocks) == 2
    final_norm_input: list[torch.Tensor] = []
    hook = model.model.model.norm.register_forward_pre_hook(
        lambda mod, args: final_norm_input.append(args[0])
    )
    with torch.no_grad():
        model(x)
    hook.remove()
    calls = capture_block_inputs(model, blocks[0], [(x,)])
    for block in blocks:
        calls = advance(block, calls)
    torch.testing.assert_close(calls[0].hidden, final_norm_input[0])


def test_true_sequential_groups_follow_the_call_order(llama: tuple) -> None:
    model, batches, _ = llama
    _, blocks = find_blocks(model)
    calls = capture_block_inputs(model, blocks[0], batches[:1])
    linears = {n: m for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)}
    assert input_groups(blocks[0], linears, calls[0]) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]


def test_attention_probe_reproduces_the_block_and_reports_probabilities(llama: tuple) -> None:
    model, batches, _ = llama
    _, blocks = find_blocks(model)
    call = capture_block_inputs(model, blocks[0], batches[:1])[0]
    reference = run_block(blocks[0], call)
    seen: list[torch.Tensor] = []
    with attention_probe(blocks[0].self_attn, lambda probs, values: seen.append(probs)):
        probed = run_block(blocks[0], call)
    torch.testing.assert_close(probed, reference, atol=1e-5, rtol=1e-5)
    (probs,) = seen  # (B, heads, T, S): causal rows summing to one
    assert probs.shape == (4, 4, 16, 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 4, 16))
    assert float(probs.triu(1).abs().max()) == 0.0
    assert model.model.config._attn_implementation != "torchslim_attention_probe"  # restored


def test_gpt2_blocks_are_found_and_an_mlp_is_refused() -> None:
    name, blocks = find_blocks(zoo.get("tiny-gpt2").load())
    assert name == "model.transformer.h" and len(blocks) == 2
    with pytest.raises(BlockWalkError, match="no decoder block list"):
        find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))


@pytest.mark.parametrize("act_order", [False, True])
def test_sequential_gptq_beats_round_to_nearest(llama: tuple, act_order: bool) -> None:
    base, batches, x = llama
    reference = base(x)
    config = QuantConfig(weight="int3-g16", observer="minmax")
    nearest, model = copy.deepcopy(base), copy.deepcopy(base)
    quantize_(nearest, config)
    quantize_(model, config)
    report = gptq_(model, batches, GPTQConfig(mode="sequential", act_order=act_order))
    assert len(report) == 15  # 7 Linears x 2 blocks + the (untied) LM head
    ratios = sorted(v["loss_gptq"] / v["loss_nearest"] for v in report.values())
    assert ratios[-1] < 0.95  # every layer: lower output error on its own inputs
    assert ratios[len(ratios) // 2] < 0.9  # random weights, isotropic inputs: modest gains
    assert sqnr_db(reference, model(x)) > sqnr_db(reference, nearest(x)) + 0.5
    for module in model.modules():  # latent weights on the grid
        if hasattr(module, "quantized_weight"):
            assert torch.allclose(module.quantized_weight(), module.weight.detach(), atol=1e-6)


def test_sequential_mode_refuses_a_model_without_blocks() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    quantize_(model, QuantConfig(weight="int4"))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(BlockWalkError, match="GPTQConfig"):
        gptq_(model, [torch.randn(4, 8)], GPTQConfig(mode="sequential"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_calibration_leaves_the_decoder_untouched(llama: tuple) -> None:
    model = copy.deepcopy(llama[0])
    quantize_(model, QuantConfig(weight="int4-g16"))
    before = copy.deepcopy(model.state_dict())
    good = llama[1][0]
    with pytest.raises(CalibrationError, match="batch 1"):
        gptq_(model, [good, (good[0][:, :0],)])
    with pytest.raises(CalibrationError, match="empty"):
        gptq_(model, [])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with quantization_disabled(model):
        assert model(llama[2]).isfinite().all()
