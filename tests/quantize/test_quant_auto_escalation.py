"""observer="auto": per-layer escalation of collapsing per-tensor weights, observers chosen by the
layer's output SQNR, and cross-layer equalization through depthwise convs (exact in float)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim import QuantConfig, quantize_
from torchslim.errors import ConfigError
from torchslim.quantize import (
    CalibrationError,
    QuantConv2d,
    equalize_,
    fold_batchnorm_,
    quantization_disabled,
)
from torchslim.quantize._graph import trace
from torchslim.quantize.apply import channel_sqnr_db
from torchslim.quantize.calibrate import (
    MAX_SCORING_BATCHES,
    layer_output,
    quantized_weight,
    without_bias,
)
from torchslim.quantize.equalize import depthwise_chains
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.primitives import fake_quantize, sqnr_db

torch.set_num_threads(1)
FLOOR_8BIT = QuantConfig().collapse_floor_db(QuantFormat.parse("int8-tensor"))


def separable(seed: int = 0, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """conv 1x1 -> BN -> act -> depthwise 3x3 -> BN -> act -> conv 1x1, in eval mode, with BN
    statistics spread over three decades, as in BN-folded MobileNet/EfficientNet depthwise
    convs: per-tensor int8 rounds the small channels of the folded depthwise conv to zero."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), activation(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), activation(),
        nn.Conv2d(8, 4, 1),
    )  # fmt: skip
    with torch.no_grad():
        spread = torch.logspace(-3, 0, 8)  # (8,) gamma of the depthwise BN: 0.001 .. 1
        model[4].weight.copy_(spread[torch.randperm(8)])
        model[4].running_var.uniform_(0.5, 2.0)
        model[4].running_mean.uniform_(-0.1, 0.1)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(n: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def folded(seed: int = 0) -> nn.Module:
    model = separable(seed)
    fold_batchnorm_(model)
    return model


def test_per_tensor_minmax_collapses_the_folded_depthwise_conv() -> None:
    model = folded()
    quantize_(model, QuantConfig(weight="int8-tensor", observer="minmax"))
    depthwise = model[3]
    assert isinstance(depthwise, QuantConv2d)
    worst = float(channel_sqnr_db(depthwise.weight, depthwise.quantized_weight()).min())
    assert worst < FLOOR_8BIT  # the premise: a channel rounds (almost) to zero


def test_auto_escalates_the_collapsing_layer_and_records_it() -> None:
    model = folded()
    calibration = [(images(16, seed),) for seed in range(4)]
    result = quantize_(
        model, QuantConfig(weight="int8-tensor", activation="uint8", escalate=True), calibration
    )
    decisions = {layer.name: layer for layer in result.layers}
    escalation = decisions["3"].escalation
    assert escalation is not None and escalation.startswith("int8-tensor -> int8:")
    assert "(floor 24.1 dB)" in escalation and "layer output" in escalation
    assert decisions["3"].weight_format == "int8"
    assert result.to_dict()["layers"][1]["escalation"] == escalation
    assert "escalated" in str(result)
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d):  # no layer left below the floor
            worst = channel_sqnr_db(module.weight, module.quantized_weight()).min()
            assert float(worst) >= FLOOR_8BIT, name
            assert decisions[name].output_sqnr_db is not None
            assert decisions[name].output_sqnr_db >= FLOOR_8BIT, name
    # the 1x1 convs do not collapse and keep the requested per-tensor format
    for name in ("0", "6"):
        assert decisions[name].escalation is None
        assert decisions[name].weight_format == "int8-tensor"


def outlier_linear() -> tuple[nn.Module, list[tuple[torch.Tensor]]]:
    """A Linear fed sparse 100x outliers (one value in 10 000, as much energy as the rest):
    min-max rounds ordinary values coarsely, clipping loses the outliers' energy; no per-tensor
    scale keeps the output above the floor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16)).eval()
    batches = []
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(4096, 16, generator=generator)  # (4096, 16)
        spikes = torch.rand(4096, 16, generator=generator) < 1e-4  # (4096, 16)
        spikes[seed, seed] = True  # at least one per batch
        batches.append((torch.where(spikes, 100 * x.sign(), x),))
    return model, batches


def test_equalization_first_removes_the_need_to_escalate() -> None:
    model = folded()
    equalize_(model)
    calibration = [(images(16, seed),) for seed in range(4)]
    config = QuantConfig(weight="int8-tensor", activation="uint8", escalate=True)
    result = quantize_(model, config, calibration)
    assert all(layer.escalation is None for layer in result.layers), str(result)
    assert all(layer.output_sqnr_db >= FLOOR_8BIT for layer in result.layers)  # type: ignore[operator]


def test_auto_keeps_every_depthwise_channel_alive() -> None:
    calibration = [(images(16, seed),) for seed in range(4)]
    test_x = images(32, seed=99)
    reference = _depthwise_output(folded(), test_x)  # (B, 8, H, W)
    worst = {}
    for observer in ("minmax", "auto"):
        model = folded()
        config = QuantConfig(
            weight="int8-tensor", activation="uint8", observer=observer, escalate=observer == "auto"
        )
        quantize_(model, config, calibration)
        output = _depthwise_output(model, test_x)  # (B, 8, H, W)
        worst[observer] = min(sqnr_db(reference[:, c], output[:, c]) for c in range(8))
    assert worst["minmax"] < 10  # a channel lost
    assert worst["auto"] > FLOOR_8BIT


def _depthwise_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    outputs: list[torch.Tensor] = []
    handle = model[3].register_forward_hook(lambda m, args, out: outputs.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return outputs[0] - model[3].bias.detach().view(-1, 1, 1)  # the bias is not quantized


def test_auto_leaves_an_input_that_every_observer_collapses_in_float() -> None:
    model, batches = outlier_linear()
    config = QuantConfig(weight="int8", activation="uint8", escalate=True)
    result = quantize_(model, config, batches)
    layer = result.layers[0]
    assert max(layer.observer_scores.values()) < FLOOR_8BIT  # the premise
    assert layer.escalation is not None and "-> float" in layer.escalation
    assert layer.activation_format is None and model[0].input_quantizer is None
    assert layer.output_sqnr_db is not None and layer.output_sqnr_db > FLOOR_8BIT
    fixed = quantize_(
        outlier_linear()[0],
        QuantConfig(weight="int8", activation="uint8", observer="minmax"),
        batches,
    )
    assert fixed.layers[0].activation_format is not None  # a fixed observer never falls back


def test_floor_zero_never_escalates_and_fixed_observers_never_do() -> None:
    for config in (
        QuantConfig(weight="int8-tensor", escalate=True, sqnr_floor_db=0),
        QuantConfig(weight="int8-tensor", observer="mse"),
        QuantConfig(weight="int8-tensor", escalate=False),  # auto, escalation turned off
    ):
        result = quantize_(folded(), config, [(images(8),)])
        assert all(layer.escalation is None for layer in result.layers)
        assert all(layer.weight_format == "int8-tensor" for layer in result.layers)


def test_escalation_is_the_default_of_auto_only() -> None:
    assert QuantConfig().escalate is True
    assert QuantConfig(observer="minmax").escalate is False
    assert QuantConfig.from_dict(QuantConfig().to_dict()) == QuantConfig()
    result = quantize_(folded(), QuantConfig(weight="int8-tensor"), [(images(8),)])
    assert any(layer.escalation is not None for layer in result.layers)


def test_weight_only_auto_escalates_without_calibration_data_too() -> None:
    result = quantize_(folded(), QuantConfig(weight="int8-tensor", escalate=True))
    escalated = [layer.name for layer in result.layers if layer.escalation]
    assert escalated == ["3"]
    assert "layer output" not in str(result.layers[1].escalation)  # no data: weights only


def test_auto_picks_the_observer_with_the_best_layer_output_sqnr() -> None:
    model = folded()
    calibration = [(images(16, seed),) for seed in range(3)]
    config = QuantConfig(weight="int8", activation="uint8", observer="auto")
    result = quantize_(model, config, calibration)
    layer = result.layers[2]  # the last 1x1 conv, fed by ReLU outputs
    assert set(layer.observer_scores) == {"minmax", "moving_average", "percentile", "mse", "kl"}
    assert layer.observer == max(layer.observer_scores, key=layer.observer_scores.__getitem__)
    # recompute the recorded output SQNR from the installed quantizers on the same inputs
    inputs: list[torch.Tensor] = []
    module = model[6]
    handle = module.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    with torch.no_grad(), quantization_disabled(model):
        for (x,) in calibration[:MAX_SCORING_BATCHES]:  # the batches that score
            model(x)
    handle.remove()
    quantizer = module.input_quantizer
    assert quantizer is not None
    x = torch.cat(inputs)
    with torch.no_grad():
        q = fake_quantize(x, quantizer.fmt, quantizer.scale.view(()), quantizer.zero_point.view(()))
        reference = layer_output(module, x)
        noise = reference - layer_output(module, q, quantized_weight(module))
        signal = without_bias(module, reference)
    expected = 10 * torch.log10(signal.double().pow(2).sum() / noise.double().pow(2).sum())
    assert layer.output_sqnr_db == pytest.approx(float(expected), abs=0.05)


def test_sqnr_floor_is_validated_and_round_trips() -> None:
    config = QuantConfig(weight="int8-tensor", sqnr_floor_db=30.0)
    assert QuantConfig.from_dict(config.to_dict()) == config
    assert config.collapse_floor_db(QuantFormat.parse("int4")) == 30.0
    assert QuantConfig().collapse_floor_db(QuantFormat.parse("int4")) == pytest.approx(12.04, 0.01)
    for bad in (-1.0, 101, "20", True):
        with pytest.raises(ConfigError, match="sqnr_floor_db"):
            QuantConfig(sqnr_floor_db=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="escalate"):
        QuantConfig(observer="minmax", escalate=True)
    with pytest.raises(ConfigError, match="escalate"):
        QuantConfig(escalate="yes")  # type: ignore[arg-type]


def test_equalization_through_depthwise_keeps_float_outputs() -> None:
    model = folded()
    before = copy.deepcopy(model)
    x = images(8, seed=5)
    spread_before = _channel_spread(model[3].weight)
    chains = equalize_(model)
    pairs = {(chain.producer, chain.consumer) for chain in chains}
    assert {("0", "3"), ("3", "6")} <= pairs  # conv -> depthwise and depthwise -> conv
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=1e-4, atol=1e-5)
    assert _channel_spread(model[3].weight) < spread_before / 10
    fmt = QuantFormat.parse("int8-tensor")
    quantized = {}
    for name, candidate in (("before", before), ("after", model)):
        quantize_(candidate, QuantConfig(weight=fmt.short_name, observer="minmax"))
        dw = candidate[3]
        assert isinstance(dw, QuantConv2d)
        quantized[name] = float(channel_sqnr_db(dw.weight, dw.quantized_weight()).min())
    assert quantized["after"] > quantized["before"] + 20


def test_relu6_blocks_are_not_equalized() -> None:
    model = separable(activation=nn.ReLU6)
    fold_batchnorm_(model)
    before = copy.deepcopy(model)
    assert depthwise_chains(model, trace(model)) == []
    assert equalize_(model) == []
    x = images(4)
    with torch.no_grad():
        assert torch.equal(model(x), before(x))


def _channel_spread(weight: torch.Tensor) -> float:
    ranges = weight.detach().reshape(weight.shape[0], -1).abs().amax(1)  # (C,)
    return float(ranges.max() / ranges.min())


def test_escalation_skips_dead_layers_and_keeps_the_float_model_on_bad_data() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight.zero_()  # dead in float too: not a quantization collapse
    result = quantize_(model, QuantConfig(weight="int8-tensor", escalate=True))
    assert result.layers[0].escalation is None
    fresh = folded()
    before = copy.deepcopy(fresh.state_dict())
    bad = [(torch.full((2, 3, 12, 12), float("nan")),)]
    with pytest.raises(CalibrationError, match="NaN"):
        quantize_(fresh, QuantConfig(weight="int8-tensor", activation="uint8", escalate=True), bad)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert not any(isinstance(m, QuantConv2d) for m in fresh.modules())


def test_one_pass_bias_correction_equals_the_layer_by_layer_loop_on_one_batch() -> None:
    from torchslim.quantize.bias_correction import correct_bias_, correct_bias_one_pass_

    batch = images(16, seed=3)
    config = QuantConfig(weight="int4-tensor", activation="uint8", observer="minmax")
    models = []
    for _ in range(2):
        model = folded()
        quantize_(model, config, [(batch,)])
        models.append(model)
    slow = correct_bias_(models[0], [(batch,)])
    fast = correct_bias_one_pass_(models[1], [(batch[:8],), (batch[8:],)])  # concatenated
    assert slow.keys() == fast.keys() and max(fast.values()) > 1e-3  # it corrected something
    for (name, a), (_, b) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
