"""Depth + width pruning chosen by timing candidate plans (``depth="measured"``): every candidate
meets the target, the fastest acceptable one is kept, the timer is asked at every latency batch
size, the result reloads, and the option is validated in config and CLI words. The timer is
injected (a deterministic cost of the profiled forward): no wall-clock assertions."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.profile.conv_kernels import channel_block
from torchslim.prune import (
    MeasuredPlan,
    PruneError,
    PruneResult,
    StructuredPruneConfig,
    prune_,
)
from torchslim.prune import measured_plan as measured
from torchslim.prune._target import geometric_mean
from torchslim.prune.apply import config_from_words
from torchslim.prune.artifact import resize_to_record
from torchslim.prune.blocks import DROPPED
from torchslim.prune.plan import build_plan
from torchslim.zoo.architectures import ResNet


def _resnet14() -> tuple[nn.Module, tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    model: nn.Module = ResNet(14).eval()  # two blocks per stage: 4 shape-preserving residual blocks
    calibration: list[tuple[torch.Tensor, ...]] = [(torch.randn(4, 1, 12, 12),) for _ in range(2)]
    inputs: tuple[torch.Tensor, ...] = (torch.randn(1, 1, 12, 12),)
    return model, inputs, calibration


class FakeTimer:
    """Deterministic seconds: 1 us per leaf module run plus 1 ns per conv weight per image (a
    per-op overhead and a cost growing with the widths); it records the batch sizes and the
    number of calls it is asked to time."""

    def __init__(self) -> None:
        self.batches: set[int] = set()
        self.calls = 0

    def __call__(self, calls: Sequence[tuple[nn.Module, tuple[torch.Tensor, ...]]]) -> list[float]:
        self.calls += len(calls)
        self.batches |= {inputs[0].shape[0] for _, inputs in calls}
        return [self.seconds(module, inputs[0].shape[0]) for module, inputs in calls]

    @staticmethod
    def seconds(module: nn.Module, batch: int) -> float:
        leaves = [m for m in module.modules() if not list(m.children())]
        ops = sum(not isinstance(m, nn.Identity) for m in leaves)
        weights = sum(m.weight.numel() for m in leaves if isinstance(m, nn.Conv2d))
        return 1e-6 * ops + 1e-9 * weights * batch


Planned = tuple[PruneResult, FakeTimer, nn.Module, list[tuple[torch.Tensor, ...]]]


@pytest.fixture(scope="module")
def planned() -> Planned:
    """One ``prune_`` with depth="measured" (the timer injected), shared: planning builds about
    ten width plans."""
    model, inputs, calibration = _resnet14()
    timer = FakeTimer()  # deterministic: the paired original always times the same
    config = StructuredPruneConfig(target_macs_ratio=0.5, depth="measured", round_to=16,
                                   latency_batch_sizes=(1, 16))  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(measured, "time_calls", timer)
        result = prune_(model, config, inputs, calibration)
    return result, timer, model, calibration


def test_every_candidate_meets_the_target_and_the_fastest_acceptable_is_kept(
    planned: Planned,
) -> None:
    result, timer, _, _ = planned
    plan = result.plan
    assert isinstance(plan, MeasuredPlan) and plan.chosen is not None
    full = plan.macs_before
    assert len(plan.timed) >= 3 and timer.batches == {1, 16}
    for candidate in plan.timed:  # at most OVERSHOOT of the original past the target
        assert (0.5 - measured.OVERSHOOT) * full <= candidate.cost <= 0.5 * full
        assert len(candidate.seconds) == len(candidate.speedups) == 2
    pruned_model = planned[2]
    chosen = plan.chosen  # the timer saw the chosen candidate as the pruned model is now
    assert chosen.seconds == (
        FakeTimer.seconds(pruned_model, 1),
        FakeTimer.seconds(pruned_model, 16),
    )
    least = min(c.damage for c in plan.timed)
    assert plan.acceptable_damage == pytest.approx(least * (1 + measured.DAMAGE_SLACK))
    acceptable = [c for c in plan.timed if c.damage <= plan.acceptable_damage]
    fastest = max(geometric_mean(c.speedups) for c in acceptable)
    assert chosen in acceptable and geometric_mean(chosen.speedups) == fastest
    start = plan.start.batch_latency_s
    assert all(
        x == pytest.approx(s0 / s)
        for x, s0, s in zip(chosen.speedups, start, chosen.seconds, strict=True)
    )
    assert result.macs_after == plan.macs_after == chosen.cost
    assert plan.latency_s == geometric_mean(chosen.seconds) < plan.start.latency_s
    assert "->" in str(plan) and "MeasuredPlan" in str(plan)


def test_candidates_offer_block_drops_and_widths_per_stage(planned: Planned) -> None:
    plan = planned[0].plan
    assert isinstance(plan, MeasuredPlan)
    counts = {len(c.dropped) for c in plan.timed}
    assert 0 in counts and len(counts) >= 2
    assert len({c.dropped for c in plan.timed}) > len(counts)  # the swapped block set
    assert {c.round_to for c in plan.timed} <= {16, math.lcm(16, channel_block()), None}


def test_the_pruned_model_reloads_from_its_record(planned: Planned) -> None:
    result, _, model, calibration = planned
    dropped = [name for name, entry in result.record.items() if entry == DROPPED]
    assert dropped == result.plan.dropped  # type: ignore[union-attr]
    assert all(isinstance(model.get_submodule(n), nn.Identity) for n in dropped)
    fresh = _resnet14()[0]
    resize_to_record(fresh, json.loads(json.dumps(result.record)))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(*calibration[0]), model(*calibration[0]))
        assert model(*calibration[0]).shape == (4, 10)


def test_widths_within_one_stage_prune_only_that_stage() -> None:
    config = StructuredPruneConfig(target_macs_ratio=0.5, depth="measured")
    step = measured._width_config(config, "MACs", 0.2, 16, "layer3")
    assert step.depth == "off" and step.round_to == 16 and step.target_macs_ratio == 0.2
    model, inputs, _ = _resnet14()
    thinner = dict(build_plan(model, inputs, step).pruned_copy().named_modules())
    changed = {
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))
        and thinner[name].weight.shape[0] != module.weight.shape[0]
    }  # output channels removed
    assert changed and all(name.startswith("layer3.") for name in changed)


def test_out_of_reach_target_is_a_clear_error_and_leaves_the_model_untouched() -> None:
    model, inputs, calibration = _resnet14()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = StructuredPruneConfig(target_macs_ratio=0.5, depth="measured", ignore=("re:.*",))
    with pytest.raises(PruneError, match="out of reach: no depth/width candidate"):
        prune_(model, config, inputs, calibration)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_time_calls_returns_one_positive_median_per_call() -> None:
    small, large = nn.Conv2d(2, 2, 3), nn.Conv2d(2, 8, 3)
    x = (torch.randn(1, 2, 8, 8),)
    seconds = measured.time_calls([(small, x), (large, x)])
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"uniform_ratio": 0.3, "depth": "measured"}, "depth='measured' trades"),
        ({"target_macs_ratio": 0.5, "depth": "measured", "drop_layers": (1,)}, "one or the other"),
    ],
)
def test_bad_measured_options_are_config_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StructuredPruneConfig(**fields)  # type: ignore[arg-type]


def test_words_carry_depth_measured_and_its_batch_sizes() -> None:
    config = config_from_words("l2", "macs=0.5", depth="measured", latency_batch_sizes=(1, 8))
    assert isinstance(config, StructuredPruneConfig)
    assert config.depth == "measured" and config.latency_batch_sizes == (1, 8)
    with pytest.raises(ConfigError, match="--depth applies to structured targets"):
        config_from_words("magnitude", "sparsity=0.5", depth="measured")
    with pytest.raises(ConfigError, match="--depth auto, --depth measured or"):
        config_from_words("l2", "macs=0.5", latency_batch_sizes=(1, 8))
