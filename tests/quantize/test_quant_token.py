"""Per-token dynamic activations ("int8-token"): the format's maths (a scale per row of the last
dim, zero rows, NaN/Inf refused, equal to per tensor when every row is the same) and the
fake-quant Linear path (no calibration, tokens independent, refused on a conv and for weights)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import tiny_convnet
from torchslim.errors import ConfigError, NonFiniteInputError, TorchslimError
from torchslim.quantize import QuantConfig, QuantFormat, quantize_, quantize_dequantize, sqnr_db
from torchslim.quantize.config import parse_activation_format
from torchslim.quantize.modules import QuantLinear
from torchslim.quantize.primitives import dynamic_qparams
from torchslim.quantize.storage import load_quantized, save_quantized

TOKEN = QuantFormat.parse("int8-token")
TENSOR = QuantFormat.parse("int8-tensor")


def _tokens(seed: int = 0) -> torch.Tensor:
    """(B, T, C) activations whose tokens differ in magnitude by up to 10^4, as an LLM's do."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, 32, generator=generator)  # (B, T, C)
    magnitudes = torch.logspace(-2, 2, 12).reshape(2, 6, 1)  # (B, T, 1)
    return x * magnitudes


def test_the_name_parses_to_a_symmetric_per_token_int8_activation_format() -> None:
    assert (TOKEN.kind, TOKEN.bits, TOKEN.symmetric, TOKEN.granularity) == ("int", 8, True, "token")
    assert TOKEN.short_name == "int8-token"
    assert QuantFormat.parse(TOKEN.short_name) == TOKEN
    assert parse_activation_format("int8-token") == TOKEN
    assert parse_activation_format("uint8-token").symmetric is False
    assert parse_activation_format("fp8-e4m3-token").granularity == "token"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: QuantFormat.parse("bf16-token"), "range-based kind"),
        (lambda: QuantFormat.parse("kmeans-16-token"), "range-based kind"),
        (lambda: QuantFormat.parse("int8-tokn"), "Did you mean"),
        (lambda: QuantConfig(weight="int8-token"), "for activations"),
        (lambda: QuantConfig(overrides={"fc": "int4-token"}), "for activations"),
        (lambda: QuantConfig(activation="int8-g32"), "int8-token"),
    ],
)
def test_a_token_format_where_it_cannot_apply_is_one_clear_error(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_each_token_gets_its_own_scale_from_its_own_max() -> None:
    x = _tokens()  # (B, T, C)
    scale, zero_point = dynamic_qparams(x, TOKEN)  # (B, T, 1) x 2
    assert scale.shape == (2, 6, 1) and zero_point.shape == (2, 6, 1)
    assert torch.equal(zero_point, torch.zeros_like(zero_point))
    torch.testing.assert_close(scale, x.abs().amax(-1, keepdim=True) / 127.5)
    error = (quantize_dequantize(x, TOKEN) - x).abs()  # (B, T, C)
    assert bool((error <= scale * (0.5 + 1e-5)).all())  # every value rounded, none clipped


def test_per_token_keeps_small_tokens_that_one_scale_per_tensor_flattens() -> None:
    x = _tokens()
    token, tensor = quantize_dequantize(x, TOKEN), quantize_dequantize(x, TENSOR)
    small = x[0, :3]  # the three smallest tokens, 10^-2..10^-1.3 times the largest
    assert sqnr_db(small, token[0, :3]) > 38.0  # ~8 bits on each token
    assert sqnr_db(small, tensor[0, :3]) < 5.0  # rounded to the largest token's grid
    assert sqnr_db(x, token) > sqnr_db(x, tensor)


def test_zero_tokens_stay_exactly_zero_and_finite() -> None:
    x = _tokens()
    x[0, 2] = 0.0
    x[1, 5] = 0.0
    scale, _ = dynamic_qparams(x, TOKEN)
    assert scale[0, 2, 0] == 1.0 and scale[1, 5, 0] == 1.0  # an empty range: scale 1, never 0
    out = quantize_dequantize(x, TOKEN)
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out[0, 2], torch.zeros(32)) and torch.equal(out[1, 5], torch.zeros(32))
    assert torch.equal(quantize_dequantize(torch.zeros(3, 8), TOKEN), torch.zeros(3, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_a_token_is_one_clear_error(bad: float) -> None:
    x = _tokens()
    x[1, 3, 7] = bad
    with pytest.raises(NonFiniteInputError, match=r"1 of 12 tokens hold NaN or Inf"):
        quantize_dequantize(x, TOKEN)
    layer = nn.Sequential(nn.Linear(32, 8))
    quantize_(layer, QuantConfig(weight="int8", activation="int8-token"))
    with pytest.raises(NonFiniteInputError, match=r"int8-token.*\(2, 6, 32\)"):
        layer(x)


def test_it_equals_per_tensor_when_every_token_is_the_same() -> None:
    row = torch.randn(32, generator=torch.Generator().manual_seed(1))
    x = row.expand(3, 5, 32).clone()  # (B, T, C), every token equal
    token_scale, _ = dynamic_qparams(x, TOKEN)
    tensor_scale, _ = dynamic_qparams(x, TENSOR)
    assert torch.equal(token_scale, tensor_scale.expand_as(token_scale))
    assert torch.equal(quantize_dequantize(x, TOKEN), quantize_dequantize(x, TENSOR))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()


def test_a_linear_quantizes_its_input_per_token_without_calibration() -> None:
    model = _mlp()
    reference = copy.deepcopy(model)
    result = quantize_(model, QuantConfig(weight="int4-g16", activation="int8-token"))
    assert [(d.activation_format, d.observer) for d in result.layers] == [
        ("int8-token", "dynamic")
    ] * 2
    first = model[0]
    assert isinstance(first, QuantLinear) and first.input_quantizer is not None
    assert first.input_quantizer.dynamic  # per token is dynamic whatever config.dynamic says
    x = _tokens()
    with torch.no_grad():
        expected = F.linear(quantize_dequantize(x, TOKEN), first.quantized_weight(), first.bias)
        assert torch.equal(first(x), expected)
        out, fp32 = model(x), reference(x)
    assert sqnr_db(fp32, out) > 15.0  # int4 weights in groups of 16 dominate the error


def test_a_tokens_output_does_not_depend_on_the_other_tokens() -> None:
    """Per token, a batch's rows are quantized independently (per tensor they share a scale)."""
    x = _tokens()
    outputs = {}
    for name in ("int8-token", "int8"):
        model = _mlp()
        quantize_(model, QuantConfig(weight="int8", activation=name, dynamic=True))
        with torch.no_grad():
            outputs[name] = (model(x)[0, :2], model(x[:1, :2]))  # small tokens: alone, batched
    alone, batched = outputs["int8-token"]
    torch.testing.assert_close(alone, batched[0], rtol=1e-5, atol=1e-7)  # matmul blocking only
    alone, batched = outputs["int8"]
    assert (alone - batched[0]).abs().max() > 100 * 1e-7 + 1e-5 * alone.abs().max()


def test_a_conv_with_a_per_token_input_is_refused_and_the_model_left_as_it_was() -> None:
    model = tiny_convnet().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"Conv2d.*int8-token.*per-tensor format"):
        quantize_(model, QuantConfig(weight="int8", activation="int8-token"))
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_convs_can_take_a_per_tensor_input_beside_per_token_linears() -> None:
    model = tiny_convnet().eval()
    convs = "re:" + "|".join(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    overrides = {convs: "int8"}
    config = QuantConfig(activation="int8-token", dynamic=True, activation_overrides=overrides)
    result = quantize_(model, config)
    formats = {d.module_type: d.activation_format for d in result.layers}
    assert formats == {"Conv2d": "int8-tensor", "Linear": "int8-token"}
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 1, 8, 8))).all()


def test_the_packed_file_reloads_a_per_token_input_as_dynamic(tmp_path) -> None:
    model = _mlp()
    quantize_(model, QuantConfig(weight="int4-g16", activation="int8-token"))
    path = save_quantized(model, tmp_path / "m.safetensors")
    loaded = load_quantized(_mlp(), path)
    x = _tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    quantizer = loaded[0].input_quantizer
    assert quantizer.fmt == TOKEN and quantizer.dynamic


def test_lsq_has_no_static_scale_to_learn_for_a_per_token_input() -> None:
    model = _mlp()
    quantize_(model, QuantConfig(weight="int8", activation="int8-token"))
    with pytest.raises(TorchslimError, match="dynamic"):
        model[0].input_quantizer.enable_lsq()
