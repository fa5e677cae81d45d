"""quantize_: config checks, targeting, calibration errors, SQNR vs fp32, untouched on failure."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import tiny_convnet, tiny_images
from torchslim import QuantConfig, quantize_
from torchslim.errors import ConfigError, TorchslimError
from torchslim.quantize import (
    CalibrationError,
    QuantConv2d,
    QuantLinear,
    quantization_disabled,
    sqnr_db,
)

torch.set_num_threads(1)


def two_layer_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def images() -> torch.Tensor:
    return tiny_images(64)[0]


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    config = QuantConfig(
        weight="int4-g16", activation="uint8", observer="moving-average", ignore=("re:fc.*",),
        overrides={"re:conv.*": "int8"}, activation_overrides={"conv1": None},
    )  # fmt: skip
    assert config.observer == "moving_average"
    assert QuantConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match='Did you mean "weight"'):
        QuantConfig.from_dict({"weigth": "int8"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"weight": "int9"}, "bits=9"),
        ({"weight": "int4", "activation": "binary"}, "weight-only"),
        ({"activation": "int8-g8"}, "per group"),
        ({"dynamic": True}, "dynamic"),
        ({"observer": "minmx"}, "minmax"),
        ({"targets": ("re:(",)}, "bad regex"),
        ({"overrides": {"fc": None}}, "ignore"),
    ],
)
def test_config_rejects_bad_values(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**values)  # type: ignore[arg-type]


def test_w8a8_static_matches_fp32_by_sqnr(images: torch.Tensor) -> None:
    model = tiny_convnet().eval()
    reference = model(images)
    result = quantize_(model, QuantConfig(weight="int8", activation="uint8"), [images[:32]])
    assert isinstance(model[0], QuantConv2d) and isinstance(model[5], QuantLinear)
    assert sqnr_db(reference, model(images)) > 30
    assert [layer.name for layer in result.layers] == ["0", "5"]
    for layer in result.layers:
        assert layer.weight_sqnr_db > 35 and layer.activation_sqnr_db is not None
        assert layer.observer in ("minmax", "moving_average", "percentile", "mse", "kl")
    with quantization_disabled(model):  # the latent float weights are still there
        assert torch.allclose(model(images), reference, atol=1e-6)


def test_weight_only_and_dynamic_need_no_calibration(images: torch.Tensor) -> None:
    model = two_layer_mlp()
    x = torch.randn(16, 32)
    reference = model(x)
    quantize_(model, QuantConfig(weight="int4-g16"))
    assert model[0].input_quantizer is None
    assert sqnr_db(reference, model(x)) > 15
    dynamic = two_layer_mlp()
    result = quantize_(dynamic, QuantConfig(weight="int8", activation="int8", dynamic=True))
    assert result.layers[0].observer == "dynamic"
    assert sqnr_db(reference, dynamic(x)) > 30


def test_lower_bits_lose_more(images: torch.Tensor) -> None:
    reference = tiny_convnet().eval()(images)
    scores = []
    for fmt in ("int8", "int4", "ternary", "binary"):
        model = tiny_convnet().eval()
        quantize_(model, QuantConfig(weight=fmt))
        scores.append(sqnr_db(reference, model(images)))
    assert scores[0] > scores[1] > scores[3] and scores[1] > scores[2]
    assert scores[0] > 35


def test_targets_ignore_and_overrides(images: torch.Tensor) -> None:
    model = tiny_convnet().eval()
    result = quantize_(model, QuantConfig(weight="int4", ignore=("5",)))
    assert isinstance(model[5], nn.Linear) and not isinstance(model[5], QuantLinear)
    assert result.left_in_float == ("5",)
    mixed = tiny_convnet().eval()
    quantize_(mixed, QuantConfig(weight="int4", targets=("re:\\d",), overrides={"5": "int8"}))
    assert mixed[5].weight_quantizer.fmt.bits == 8 and mixed[0].weight_quantizer.fmt.bits == 4


@pytest.mark.parametrize("field", ["targets", "ignore", "overrides"])
def test_pattern_matching_nothing_names_it(field: str) -> None:
    model = tiny_convnet().eval()
    before = copy.deepcopy(model)
    value: object = {"re:decoder\\..*": "int8"} if field == "overrides" else ("re:decoder\\..*",)
    with pytest.raises(ConfigError, match="decoder"):
        quantize_(model, QuantConfig(**{field: value}))  # type: ignore[arg-type]
    assert same_state(model, before) and type(model[0]) is nn.Conv2d


def test_bad_calibration_names_the_batch_and_leaves_model_untouched(images: torch.Tensor) -> None:
    model = tiny_convnet().eval()
    before = copy.deepcopy(model)
    config = QuantConfig(weight="int8", activation="uint8")
    poisoned = images[:16].clone()
    poisoned[3, 0, 2, 2] = float("nan")
    with pytest.raises(CalibrationError, match="batch 1"):
        quantize_(model, config, [images[:16], poisoned])
    with pytest.raises(CalibrationError, match=r"batch 0.*empty"):
        quantize_(model, config, [images[:0]])
    with pytest.raises(CalibrationError, match="empty"):
        quantize_(model, config, [])
    with pytest.raises(CalibrationError, match="needs calibration"):
        quantize_(model, config)
    assert same_state(model, before) and type(model[0]) is nn.Conv2d
    assert torch.equal(model(images), before(images))


def test_group_size_that_does_not_fit_names_the_layer() -> None:
    model = tiny_convnet().eval()
    with pytest.raises(ConfigError, match="layer '0'"):
        quantize_(model, QuantConfig(weight="int4-g4"))
    assert type(model[0]) is nn.Conv2d


def test_quantizing_twice_is_refused(images: torch.Tensor) -> None:
    model = tiny_convnet().eval()
    quantize_(model, QuantConfig())
    with pytest.raises(TorchslimError, match="already quantized"):
        quantize_(model, QuantConfig())


def test_fixed_observer_is_used_everywhere(images: torch.Tensor) -> None:
    model = tiny_convnet().eval()
    result = quantize_(model, QuantConfig(activation="int8", observer="percentile"), [images])
    assert {layer.observer for layer in result.layers} == {"percentile"}
    assert "percentile" in str(result)
    assert result.to_dict()["layers"][0]["activation_format"] == "int8-tensor"


def test_fake_quant_passes_gradients_to_latent_weights(images: torch.Tensor) -> None:
    model = tiny_convnet().train()
    quantize_(model, QuantConfig(weight="int4", activation="uint8"), [images])
    model(images).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


class PaddedConv(nn.Conv2d):
    """A Conv2d subclass with its own forward (as EfficientNet's static "same" padding)."""

    def __init__(self) -> None:
        super().__init__(1, 4, 3)
        self.static_padding = nn.ZeroPad2d((0, 2, 0, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(self.static_padding(x), self.weight, self.bias)


def test_subclass_with_own_forward_keeps_its_forward(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(PaddedConv(), nn.ReLU()).eval()
    reference = model(images)
    quantize_(model, QuantConfig(weight="int4", activation="uint8"), [images])
    assert isinstance(model[0], QuantConv2d) and isinstance(model[0], PaddedConv)
    out = model(images)
    assert out.shape == reference.shape == (64, 4, 8, 8)
    assert 15 < sqnr_db(reference, out) < 60  # quantized (not float), through the padding
    assert isinstance(model[0].weight, nn.Parameter)  # the latent weight is back after the call


def test_auto_weight_range_never_loses_to_minmax() -> None:
    results = {}
    for observer in ("minmax", "auto"):
        model = two_layer_mlp()
        results[observer] = quantize_(model, QuantConfig(weight="int4-g16", observer=observer))
    for plain, auto in zip(results["minmax"].layers, results["auto"].layers, strict=True):
        assert auto.weight_observer == "mse" and plain.weight_observer == "minmax"
        assert auto.weight_sqnr_db >= plain.weight_sqnr_db
    gain = sum(a.weight_sqnr_db - p.weight_sqnr_db for a, p in zip(
        results["auto"].layers, results["minmax"].layers, strict=True))  # fmt: skip
    assert gain > 0.5  # clipping gaussian weights at 4 bits helps


def test_to_float_keeps_the_subclass_and_the_quantized_weight(images: torch.Tensor) -> None:
    from torchslim.quantize.modules import to_float

    torch.manual_seed(0)
    model = nn.Sequential(PaddedConv()).eval()
    quantize_(model, QuantConfig(weight="int4"))
    plain = to_float(model[0])
    assert type(plain) is PaddedConv and "weight_quantizer" not in dict(plain.named_children())
    assert torch.equal(plain(images), model(images))  # weight-only: same function
    assert isinstance(model[0], QuantConv2d)  # the quantized model is not changed


def test_calibration_does_not_touch_batchnorm_statistics(images: torch.Tensor) -> None:
    model = tiny_convnet().train()
    running_mean = model[1].running_mean.clone()
    quantize_(model, QuantConfig(weight="int8", activation="uint8"), [images])
    assert torch.equal(model[1].running_mean, running_mean)
    assert model.training and model[1].training  # the caller's mode is restored


def test_an_activation_override_alone_still_needs_calibration(images: torch.Tensor) -> None:
    model = tiny_convnet().eval()
    config = QuantConfig(weight="int8", activation_overrides={"5": "uint8"})
    with pytest.raises(CalibrationError, match="needs calibration"):
        quantize_(model, config)
    assert type(model[5]) is nn.Linear
    result = quantize_(model, config, [images])
    assert [layer.activation_format for layer in result.layers] == [None, "uint8-tensor"]
