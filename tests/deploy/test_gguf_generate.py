"""GGUF export onto llama.cpp blocks and KV-cache generation: exact packing, round trips."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from torchslim import QuantConfig, quantize_, zoo
from torchslim.deploy.generate import generate_torch
from torchslim.deploy.gguf_llama import block_type, pack_blocks, weight_codes
from torchslim.errors import ConfigError
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import quant_modules

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "kind, fmt", [("Q4_0", "int4-g32"), ("Q4_1", "uint4-g32"), ("Q8_0", "int8-g32")]
)
def test_blocks_dequantize_to_the_codes_times_float16_scales(kind: str, fmt: str) -> None:
    gguf = pytest.importorskip("gguf")
    parsed = QuantFormat.parse(fmt)
    assert block_type(parsed) == kind
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(parsed.qmin, parsed.qmax + 1, (6, 96), generator=generator)
    scale = torch.rand(6, 3, generator=generator) * 0.1 + 1e-3  # (out, blocks)
    zero = torch.randint(0, 16, (6, 3), generator=generator) if kind == "Q4_1" else scale * 0
    packed = pack_blocks(codes, scale, zero, kind)
    assert packed.shape == (6, 3 * gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]][1])
    values = torch.from_numpy(gguf.quants.dequantize(packed, gguf.GGMLQuantizationType[kind]))
    s16 = scale.half().float().repeat_interleave(32, 1)  # (out, in)
    if kind == "Q4_1":
        minimum = (-zero * scale).half().float().repeat_interleave(32, 1)
        expected = codes * s16 + minimum
    else:
        expected = codes * s16
    torch.testing.assert_close(values.float(), expected, rtol=1e-6, atol=1e-6)


def test_formats_without_a_block_type_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="int4-g32"):
        block_type(QuantFormat.parse("int4-g64"))


def test_weight_codes_reproduce_the_fake_quant_weight() -> None:
    model = zoo.get("tiny-llama").load()
    quantize_(model, QuantConfig(weight="uint4-g32", observer="minmax", ignore=("re:.*lm_head",)))
    for module in quant_modules(model).values():
        codes, scale, zero = weight_codes(module)
        rebuilt = (codes.float().reshape(*scale.shape, -1) - zero[..., None]) * scale[..., None]
        torch.testing.assert_close(rebuilt.reshape(codes.shape), module.quantized_weight().detach())


def test_kv_cache_generation_equals_full_recomputation() -> None:
    model = zoo.get("tiny-llama").load().eval()
    prompt = [5, 17, 3, 42, 9]
    result = generate_torch(model, prompt, max_new_tokens=6)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            logits = model(torch.tensor([ids]))  # (1, T, V): no cache
            ids.append(int(logits[0, -1].argmax()))
    assert result.new_tokens == ids[len(prompt) :]
    assert result.prefill_ms > 0 and result.decode_tokens_per_s > 0
    with pytest.raises(ConfigError, match="prompt"):
        generate_torch(model, [], 4)
    on_cpu_time = generate_torch(model, prompt, max_new_tokens=6, clock="thread_cpu")
    assert on_cpu_time.new_tokens == result.new_tokens and on_cpu_time.prefill_ms > 0
    with pytest.raises(ConfigError, match="clock='cpu'; allowed: wall, thread_cpu"):
        generate_torch(model, prompt, 4, clock="cpu")


@pytest.mark.slow
@pytest.mark.assets
def test_smollm2_gguf_round_trip_through_transformers_and_llama_cpp(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from torchslim.deploy.generate import llama_cpp_window_nlls, load_llama_cpp
    from torchslim.deploy.gguf_llama import export_gguf
    from torchslim.zoo._assets import package_file
    from torchslim.zoo.text import SMOLLM_GGUF, token_windows, window_nlls

    entry = zoo.get("smollm2-135m")
    model = entry.load()
    quantize_(model, QuantConfig(weight="int4-g32", observer="minmax", ignore=("re:.*lm_head",)))
    export = export_gguf(model, package_file(*SMOLLM_GGUF), tmp_path / "q4_0.gguf")
    assert len(export.written) == 210 and set(export.written.values()) == {"Q4_0"}
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="q4_0.gguf")
    loaded = dict(back.named_parameters())
    for name, module in quant_modules(model).items():
        expected = module.quantized_weight().detach()
        got = loaded[name.split("model.", 1)[1] + ".weight"].detach()
        assert float((got - expected).abs().max()) <= 1e-3 * float(expected.abs().max())
    window = token_windows("austen-eval", 512)[:1]
    torch_nll = float(window_nlls(model, window)[0])
    pytest.importorskip("llama_cpp")
    llm = load_llama_cpp(export.path, threads=1, context=512, all_logits=True)
    llama_nll = float(llama_cpp_window_nlls(llm, window)[0])
    assert math.isclose(llama_nll, torch_nll, rel_tol=0.01)  # llama.cpp: int8 activations


@pytest.mark.assets
def test_llama_cpp_greedy_tokens_equal_full_recomputation() -> None:
    pytest.importorskip("llama_cpp")
    from torchslim.deploy.generate import generate_llama_cpp, load_llama_cpp
    from torchslim.zoo._assets import package_file
    from torchslim.zoo.text import SMOLLM_GGUF, token_windows

    path = package_file(*SMOLLM_GGUF)
    prompt = token_windows("austen-eval", 512)[0, :16].tolist()
    result = generate_llama_cpp(load_llama_cpp(path, threads=1, context=64), prompt, 6)
    full = load_llama_cpp(path, threads=1, context=64, all_logits=True)
    ids = list(prompt)
    for _ in range(6):  # no cache: the whole sequence each time, every position's logits kept
        full.reset()
        full.eval(ids)
        ids.append(int(full.scores[len(ids) - 1].argmax()))
    assert result.new_tokens == ids[len(prompt) :]
    assert len(set(result.new_tokens)) > 1  # not one id repeated (the all-zero logits row)


@pytest.mark.parametrize(
    "args, message",
    [
        (["tiny-llama", "--prompt", "hi"], "tokenizer"),
        (["missing.gguf", "--prompt", "hi", "--device", "cuda"], "--device cuda"),
    ],
)
def test_generate_command_errors_say_what_to_do(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from torchslim.cli import app

    result = CliRunner().invoke(app, ["generate", *args])
    assert result.exit_code != 0
    assert message in str(result.exception) + result.output


@pytest.mark.slow
@pytest.mark.assets
def test_the_gguf_step_runs_smollm2_on_llama_cpp(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from torchslim.pipeline import parse_recipe
    from torchslim.pipeline.runner import RunOptions, compress

    recipe = parse_recipe(
        "version: 1\nstages:\n  - step: quantize\n    weight: int4-g32\n    observer: minmax\n"
        "    ignore: ['re:.*lm_head']\n    calibration_batches: 2\n  - step: gguf\n"
    )
    outcome = compress(zoo.get("smollm2-135m"), recipe, tmp_path / "g",
                       RunOptions(repeats=3, measure_stages=False))  # fmt: skip
    gguf_bytes = outcome.details["stages"][1]["summary"]["gguf_bytes"]
    assert (tmp_path / "g" / "model.gguf").stat().st_size == gguf_bytes
    assert gguf_bytes < 0.2 * outcome.before.size_bytes  # 4-bit blocks vs fp32
    before, after = outcome.before.metrics, outcome.after.metrics
    assert after["perplexity_austen"] < 1.3 * before["perplexity_austen"]
