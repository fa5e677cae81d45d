"""Structured (dependency-graph) pruning: physically smaller models that still run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim.zoo as zoo
from torchslim.errors import ConfigError
from torchslim.profile import profile
from torchslim.prune import PruneError, StructuredPruneConfig, build_plan, prune_
from torchslim.zoo.architectures import resnet20

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet20() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = resnet20().eval()
    for module in model.modules():  # non-trivial BN so importance and outputs are meaningful
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(2, 1, 28, 28)


def test_resnet20_half_macs_physically_smaller_and_round_trips() -> None:
    model, x = _resnet20()
    macs_before = profile(model, (x,), measure_memory=False).total.macs
    params_before = sum(p.numel() for p in model.parameters())
    result = prune_(model, StructuredPruneConfig(target_macs_ratio=0.5), (x,))
    macs_after = profile(model, (x,), measure_memory=False).total.macs
    params_after = sum(p.numel() for p in model.parameters())
    assert macs_after <= 0.52 * macs_before
    assert macs_after >= 0.40 * macs_before  # did not overshoot wildly
    assert result.macs_after == macs_after and result.params_after == params_after
    assert params_after < params_before
    assert model(x).shape == (2, 10)
    assert model.conv1.out_channels < 16 and model.bn1.num_features == model.conv1.out_channels
    # a plain nn.Module: the state_dict loads into an identical pruned architecture
    clone = copy.deepcopy(model)
    for parameter in clone.parameters():
        parameter.data.zero_()
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone(x), model(x))


def test_ratio_zero_prunes_nothing_and_outputs_equal() -> None:
    model, x = _resnet20()
    expected = model(x)
    result = prune_(model, StructuredPruneConfig(target_macs_ratio=0.0), (x,))
    assert result.params_after == result.params_before
    torch.testing.assert_close(model(x), expected)


def test_residual_add_ties_branches_into_one_group() -> None:
    model, x = _resnet20()
    plan = build_plan(model, (x,), StructuredPruneConfig(target_macs_ratio=0.3))
    stem = next(g for g in plan.groups if "layer1.0.conv2" in g.layers and "conv1" in g.layers)
    assert {"bn1", "layer1.1.conv2", "layer1.2.conv2", "layer2.0.shortcut.0"} <= set(stem.layers)
    plan.apply()
    assert model.layer1[0].conv2.out_channels == model.conv1.out_channels
    assert model.layer2[0].shortcut[0].in_channels == model.conv1.out_channels


def test_plan_prints_layers_before_apply_and_does_not_mutate() -> None:
    model, x = _resnet20()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = build_plan(model, (x,), StructuredPruneConfig(target_macs_ratio=0.5))
    text = str(plan)
    assert "layer1.0.conv1" in text and "layer3.2.bn2" in text and "MACs" in text
    assert "not pruned (model output): fc" in text
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_params_target() -> None:
    model, x = _resnet20()
    result = prune_(model, StructuredPruneConfig(target_params_ratio=0.4), (x,))
    assert result.params_after <= 0.6 * result.params_before
    assert model(x).shape == (2, 10)


def test_round_to_keeps_multiples() -> None:
    model, x = _resnet20()
    prune_(model, StructuredPruneConfig(target_macs_ratio=0.5, round_to=4), (x,))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert module.out_channels % 4 == 0


@pytest.mark.parametrize("importance", ["l1", "bn_scale", "taylor"])
def test_other_importances(importance: str) -> None:
    model, x = _resnet20()
    if importance == "taylor":
        model(x).sum().backward()
    prune_(model, StructuredPruneConfig(target_macs_ratio=0.5, importance=importance), (x,))
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-resnet8"])
def test_zoo_models_half_macs(name: str) -> None:
    entry = zoo.get(name)
    model = entry.load().eval()
    inputs = tuple(entry.example_inputs(2))
    shape = model(*inputs).shape
    result = prune_(model, StructuredPruneConfig(target_macs_ratio=0.5), inputs)
    assert result.macs_before is not None and result.macs_after is not None
    assert result.macs_after <= 0.52 * result.macs_before
    assert result.params_after < result.params_before
    assert model(*inputs).shape == shape


def test_flatten_into_linear_slices_in_features() -> None:
    entry = zoo.get("tiny-cnn")
    model = entry.load().eval()
    inputs = tuple(entry.example_inputs(2))
    prune_(model, StructuredPruneConfig(target_macs_ratio=0.5), inputs)
    last_conv = model.features[4][0]
    assert model.classifier[2].in_features == last_conv.out_channels * 7 * 7


def test_depthwise_conv_couples_in_and_out() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    prune_(model, StructuredPruneConfig(target_macs_ratio=0.4), (x,))
    depthwise = model[3]
    assert (
        depthwise.groups == depthwise.in_channels == depthwise.out_channels == model[0].out_channels
    )
    assert depthwise.out_channels < 16
    assert model(x).shape == (2, 4)


def test_cat_offsets() -> None:
    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 1)
            self.head = nn.Conv2d(14, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))

    torch.manual_seed(0)
    model, x = Concat(), torch.randn(1, 3, 4, 4)
    a_weight = model.a.weight.detach().clone()
    head_weight = model.head.weight.detach().clone()
    prune_(model, StructuredPruneConfig(target_macs_ratio=0.4), (x,))
    assert model.head.in_channels == model.a.out_channels + model.b.out_channels < 14
    kept_a = [i for i in range(8) if any(torch.equal(a_weight[i], w) for w in model.a.weight)]
    torch.testing.assert_close(model.head.weight[:, : len(kept_a)], head_weight[:, kept_a])
    assert model(x).shape == (1, 4, 4, 4)


def test_unknown_parametrized_module_is_reported() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1, 8, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gain

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Scale(), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 2, 1))
    plan = build_plan(
        model, (torch.randn(1, 3, 8, 8),), StructuredPruneConfig(target_macs_ratio=0.3)
    )
    assert plan.unsupported == {"1": "Scale"}
    assert "NOT PRUNABLE: 1 (Scale)" in str(plan)
    plan.apply()
    assert model[0].out_channels == 8  # the channels feeding Scale are frozen


def test_untraceable_model_raises_and_leaves_model_unchanged() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y if y.sum() > 0 else -y

    model = DataDependent()
    with pytest.raises(PruneError, match="cannot trace"):
        prune_(model, StructuredPruneConfig(target_macs_ratio=0.5), (torch.randn(1, 3, 8, 8),))
    assert model.conv.out_channels == 8 and model.conv.weight.shape == (8, 3, 3, 3)


@pytest.mark.parametrize("ratio", [1.0, -0.5, 2])
def test_bad_ratio_raises_config_error(ratio: float) -> None:
    with pytest.raises(ConfigError, match="target_macs_ratio"):
        StructuredPruneConfig(target_macs_ratio=ratio)


def test_bad_structured_config() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        StructuredPruneConfig()
    with pytest.raises(ConfigError, match="importance"):
        StructuredPruneConfig(target_macs_ratio=0.5, importance="random")
    with pytest.raises(ConfigError, match="round_to"):
        StructuredPruneConfig(target_macs_ratio=0.5, round_to=0)


def test_untraceable_error_names_the_failing_line() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.mean() > 0:  # data-dependent branch: fx cannot trace it
                y = y * 2
            return y

    model = Branchy()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneError, match=r"in forward: `if y.mean\(\) > 0:"):
        prune_(model, StructuredPruneConfig(target_macs_ratio=0.5), (torch.randn(1, 3, 8, 8),))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_root_parameter_in_elementwise_op_is_sliced_with_its_channels() -> None:
    class Gain(nn.Module):  # a layer scale: a raw parameter multiplied into the features
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
            self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x) * self.gain)

    torch.manual_seed(0)
    model, x = Gain(), torch.randn(1, 3, 4, 4)
    gain = model.gain.detach().clone()
    prune_(model, StructuredPruneConfig(uniform_ratio=0.5), (x,))
    assert model.conv.out_channels == 4 == model.gain.shape[1] == model.head.in_channels
    kept = [i for i in range(8) if any(torch.equal(gain[0, i], g) for g in model.gain[0])]
    assert len(kept) == 4
    assert model(x).shape == (1, 2, 4, 4)


def test_parameter_of_other_width_in_functional_op_freezes_its_channels() -> None:
    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
            self.table = nn.Parameter(torch.ones(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x) @ self.table)

    model, x = Gain(), torch.randn(1, 3, 8, 8)
    with pytest.raises(PruneError, match=r"cannot be pruned and why: conv: op matmul"):
        prune_(model, StructuredPruneConfig(target_macs_ratio=0.3), (x,))
    assert model.conv.out_channels == 8  # untouched
