"""factorize_: exact at full rank, data-aware beats plain SVD on its own inputs, targets met,
bad ranks refused with the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import tiny_convnet
from torchslim.errors import ConfigError
from torchslim.lowrank import CPConv, FactorizeConfig, LowRankLinear, Tucker2Conv, factorize_


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16))


def anisotropic_inputs(n: int = 256, seed: int = 1) -> torch.Tensor:
    """Inputs whose few directions carry most of the variance (as real activations do)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, 24)  # (24,)
    return torch.randn(n, 24, generator=g) * scales  # (n, 24)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_svd_at_the_weights_own_rank_reproduces_the_layer() -> None:
    model, x = mlp(), anisotropic_inputs()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a rank-4 weight: rank 4 is exact, and smaller than dense
        model[0].weight.copy_(torch.randn(32, 4, generator=g) @ torch.randn(4, 24, generator=g))
    reference = model(x)
    result = factorize_(model, FactorizeConfig(rank=4, targets=("0",), check_speed=False))
    assert isinstance(model[0], LowRankLinear) and result.layers["0"]["applied"]
    assert result.layers["0"]["params_after"] == 4 * (24 + 32)
    torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=1e-4)


def test_a_rank_that_saves_nothing_leaves_the_layer_whole_and_says_so() -> None:
    model = mlp()
    result = factorize_(model, FactorizeConfig(rank=16, check_speed=False))
    assert isinstance(model[2], nn.Linear) and not result.layers["2"]["applied"]
    assert "no saving" in result.layers["2"]["reason"]


def test_whitened_svd_has_smaller_output_error_on_its_calibration_inputs() -> None:
    x = anisotropic_inputs()
    errors = {}
    for method in ("svd", "whitened"):
        model = mlp()
        layer = copy.deepcopy(model[0])
        config = FactorizeConfig(method=method, rank=4, targets=("0",), check_speed=False)
        factorize_(model, config, calibration=[(x,)])
        errors[method] = (model[0](x) - layer(x)).pow(2).sum().item()
    assert errors["whitened"] < 0.5 * errors["svd"]


def test_tucker2_at_the_kernels_own_ranks_reproduces_the_convolution() -> None:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1))
    core = torch.randn(4, 4, 3, 3, generator=g)  # (r_out, r_in, kh, kw)
    last, first = torch.randn(16, 4, generator=g), torch.randn(4, 12, generator=g)
    with torch.no_grad():
        model[0].weight.copy_(torch.einsum("or,rskl,si->oikl", last, core, first))
    x = torch.randn(2, 12, 9, 9, generator=g)
    reference = model(x)
    factorize_(model, FactorizeConfig(method="tucker2", rank=4, check_speed=False))
    assert isinstance(model[0], Tucker2Conv)
    torch.testing.assert_close(model(x), reference, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation"), [(1, 1, 1), (2, 1, 1), ((2, 1), (0, 2), (1, 2))]
)
def test_cp_at_the_kernels_own_rank_reproduces_the_convolution(stride, padding, dilation) -> None:
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(12, 16, (3, 5), stride=stride, padding=padding, dilation=dilation)
    model = nn.Sequential(conv)
    factors = [torch.randn(n, 3, generator=g) for n in (16, 12, 3, 5)]  # a rank-3 kernel
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,ir,yr,xr->oiyx", *factors))
    x = torch.randn(2, 12, 11, 13, generator=g)
    reference = model(x)
    result = factorize_(model, FactorizeConfig(method="cp", rank=3, check_speed=False))
    assert isinstance(model[0], CPConv) and result.layers["0"]["kind"] == "cp"
    assert result.layers["0"]["params_after"] == 3 * (12 + 3 + 5 + 16)
    assert model(x).shape == reference.shape
    torch.testing.assert_close(model(x), reference, atol=1e-3, rtol=1e-3)


def test_cp_under_a_params_target_runs_and_is_smaller() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
    x = torch.randn(1, 8, 12, 12)
    shape = model(x).shape
    config = FactorizeConfig(method="cp", target="params=0.5", check_speed=False)
    summary = factorize_(model, config).summary()
    assert summary["params_after"] <= 0.5 * summary["params_before"]
    assert model(x).shape == shape


def test_a_params_target_removes_at_least_that_fraction_of_the_targeted_layers() -> None:
    model = mlp()
    result = factorize_(model, FactorizeConfig(target="params=0.5", check_speed=False)).summary()
    assert result["params_after"] <= 0.5 * result["params_before"]
    assert result["layers_factorized"] >= 1


def test_a_macs_target_on_convolutions_counts_positions() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
    )
    x = torch.randn(1, 8, 12, 12)
    config = FactorizeConfig(method="tucker2", target="macs=0.5", check_speed=False)
    result = factorize_(model, config, example_inputs=(x,))
    assert result.summary()["layers_factorized"] >= 1
    model(x)  # still runs


def test_speed_check_records_latency_and_every_layer_left_whole_says_why() -> None:
    model, x = mlp(), anisotropic_inputs(8)
    result = factorize_(model, FactorizeConfig(rank=2), example_inputs=(x,))
    for decision in result.layers.values():
        assert set(decision["latency_ms"]) == {"dense", "factorized"}
        assert decision["applied"] or "measured slower" in decision["reason"]


@pytest.mark.parametrize(
    "config",
    [
        FactorizeConfig(rank=17, check_speed=False),  # the last layer has 16 outputs
        FactorizeConfig(method="tucker2", rank=5, check_speed=False),  # conv has 1 input channel
    ],
)
def test_a_rank_larger_than_a_layer_allows_is_refused_and_the_model_untouched(
    config: FactorizeConfig,
) -> None:
    model = mlp() if config.method == "svd" else tiny_convnet()
    before = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="larger than layer"):
        factorize_(model, config)
    assert same_state(model, before) and str(model) == str(before)


def test_whitened_without_calibration_and_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="calibration"):
        factorize_(mlp(), FactorizeConfig(method="whitened", rank=2, check_speed=False))
    with pytest.raises(ConfigError, match="one of"):
        FactorizeConfig(rank=2, energy=0.9)
    with pytest.raises(ConfigError, match="target"):
        FactorizeConfig(target="macs=1.5")
