"""target="latency=R": the factorized model's latency, as the allocator estimates it (and as the
latency model predicts the whole factorized model), is at most 1 - R x the dense model's (R is the
share removed, as for macs=R); no layer is
factorized where its estimate is not faster than dense; bad values get one clear error.

The latency model is the fixed ``FAKE_LATENCY`` (no timing of this machine in unit tests)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torchslim
import torchslim.zoo
from models import FAKE_LATENCY
from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.lowrank import FactorizeConfig, factorize_
from torchslim.lowrank.latency import at_batch
from torchslim.profile import latency_cache, profile


@pytest.fixture(autouse=True)
def fake_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency_cache, "calibrated_model", lambda *args, **kwargs: FAKE_LATENCY)


class TinyCNN(nn.Module):
    """A wide 3x3 conv worth factorizing, and a 3x3 conv to 2 channels on a 4x4 map whose
    factorization (three convs, each with its own overhead) is not faster at batch 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.wide = nn.Conv2d(32, 32, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.small = nn.Conv2d(32, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 16, 16)
        x = torch.relu(self.wide(torch.relu(self.stem(x))))  # (B, 32, 16, 16)
        return self.small(self.pool(x)).flatten(1)  # (B, 32)


def latency(target: str, batch_size: int = 1, **options: Any) -> FactorizeConfig:
    return FactorizeConfig(
        method="tucker2",
        target=target,
        batch_size=batch_size,
        latency_source="predicted",
        **options,
    )


def predicted_s(model: nn.Module, inputs: tuple[Any, ...]) -> float:
    report = profile(model.eval(), inputs, measure_memory=False, count_calls=True)
    return FAKE_LATENCY.predict_report(report)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    same_values = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    return str(a) == str(b) and same_values


@pytest.mark.parametrize(("batch_size", "goal"), [(1, 0.8), (16, 0.6)])
def test_the_latency_target_is_met_by_the_estimate_and_by_the_whole_model(
    batch_size: int, goal: float
) -> None:
    entry = torchslim.zoo.get("tiny-resnet8")
    model = entry.load().eval()
    inputs = tuple(entry.example_inputs(1))
    dense_s = predicted_s(model, at_batch(inputs, batch_size))
    removed = round(1.0 - goal, 6)
    result = factorize_(model, latency(f"latency={removed}", batch_size), None, inputs)
    target = result.summary()["target"]
    assert target["unit"] == "latency" and target["kept_goal"] == pytest.approx(goal)
    assert target["batch_size"] == batch_size and target["source"] == "predicted"
    assert target["kept"] <= goal
    after_s = predicted_s(model, at_batch(inputs, batch_size))  # the model as factorized
    assert after_s / dense_s == pytest.approx(target["kept"], rel=1e-3)
    assert result.summary()["layers_factorized"] >= 1
    model(*at_batch(inputs, batch_size))  # still runs


@pytest.mark.parametrize("allocation", ["uniform", "sensitivity"])
def test_no_layer_is_factorized_where_its_estimate_is_not_faster(allocation: str) -> None:
    model, x = TinyCNN(), torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    config = latency("latency=0.4", 1, allocation=allocation)
    result = factorize_(model, config, [(x,)], (x[:1],))
    layers = result.layers
    for name, decision in layers.items():
        figures = decision["latency_ms"]
        if decision["applied"]:
            assert figures["factorized"] < figures["dense"], name
        else:
            assert figures["factorized"] is None and decision["reason"], name
    assert layers["wide"]["applied"]
    assert not layers["small"]["applied"]
    assert "no factorization estimated faster" in layers["small"]["reason"]
    assert isinstance(model.small, nn.Conv2d) and not isinstance(model.wide, nn.Conv2d)
    assert result.target["kept"] <= 0.6


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": "latency=1.5"}, r"latency=R \(R in \(0, 1\)"),
        ({"target": "latency=0"}, r"latency=R \(R in \(0, 1\)"),
        ({"target": "latency=0.5", "latency_source": "predcted"}, 'Did you mean "predicted"'),
        ({"target": "latency=0.5", "batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"target": "latency=0.5", "check_speed": False}, "check_speed=false does not apply"),
        ({"target": "macs=0.5", "latency_source": "measured"}, "latency target only"),
        ({"target": "params=0.5", "batch_size": 16}, "latency target only"),
        ({"energy": 0.9, "batch_size": 16}, "latency target only"),
    ],
)
def test_bad_latency_options_are_one_clear_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FactorizeConfig(method="tucker2", **options)


def test_an_unreachable_latency_target_says_what_is_reachable_and_leaves_the_model() -> None:
    model = TinyCNN()
    before = copy.deepcopy(model)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"cannot be reached at batch 1 .*lower R to at most"):
        factorize_(model, latency("latency=0.95"), None, (x,))
    assert same_state(model, before)
    assert all(not m._forward_hooks for m in model.modules())


def test_latency_target_from_the_command_line_and_an_unused_flag(tmp_path: Path) -> None:
    out = tmp_path / "lr"
    args = ["factorize", "tiny-resnet8", "--method", "tucker2", "--target", "latency=0.3",
            "--batch-size", "16", "--latency-source", "predicted", "--out", str(out),
            "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stage = json.loads(result.stdout)["details"]["stages"][0]["summary"]
    assert stage["target"]["unit"] == "latency" and stage["target"]["kept"] <= 0.7
    assert stage["target"]["batch_size"] == 16
    torchslim.load(out)
    unused = ["factorize", "tiny-resnet8", "--method", "tucker2", "--target", "macs=0.5",
              "--latency-source", "measured", "--out", str(tmp_path / "x")]  # fmt: skip
    refused = CliRunner().invoke(app, unused)
    assert refused.exit_code != 0
    assert "latency target only" in str(refused.exception or refused.output)
    assert not (tmp_path / "x").exists()


def test_a_recipe_stage_takes_latency_options_and_refuses_a_misspelt_one() -> None:
    from torchslim.pipeline import parse_recipe

    stage = "version: 1\nstages:\n  - step: factorize\n    method: tucker2\n    {}\n"
    text = "target: latency=0.5\n    batch_size: 16\n    latency_source: predicted"
    options = parse_recipe(stage.format(text)).stages[0].options
    assert isinstance(options, FactorizeConfig)
    assert options.kept_share() == ("latency", 0.5) and options.latency_batch_size == 16
    with pytest.raises(ConfigError, match='Did you mean "latency_source"'):
        parse_recipe(stage.format("target: latency=0.5\n    latency_sorce: measured"))


def test_thread_time_leaves_out_the_time_the_thread_does_not_run() -> None:
    from torchslim.evaluate.latency import measure_thread_time

    stats = measure_thread_time(lambda: time.sleep(0.02), warmup=0, repeats=3)
    assert stats.repeats == 3
    assert 0.0 <= stats.median < 10.0  # ms: the 20 ms asleep are no CPU time of the thread
