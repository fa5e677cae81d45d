"""Sensitivity per layer and bit width, mixed precision under a size budget, the Pareto front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim import quantize_
from torchslim.errors import ConfigError
from torchslim.quantize import QuantFormat
from torchslim.quantize.mixed_precision import (
    greedy_path,
    pareto_front,
    plan_for_budget,
    save_pareto,
)
from torchslim.quantize.sensitivity import analyze_sensitivity, weight_bytes

torch.set_num_threads(1)
FORMATS = ("int8-tensor", "int4-tensor", "int2-tensor")


def mlp(seed: int = 0) -> nn.Module:
    """Three layers; the middle one is sensitive: most of its rows are 30x smaller than the rest,
    and the last layer scales them back up, so a per-tensor grid crushes what matters."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 4))  # fmt: skip
    with torch.no_grad():
        model[2].weight[4:].div_(30.0)
        model[2].bias[4:].div_(30.0)
        model[4].weight[:, 4:].mul_(30.0)  # the same function, ranges 30x apart
    return model.eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    return x, mlp()(x).argmax(-1)


def agreement(x: torch.Tensor, labels: torch.Tensor):  # type: ignore[no-untyped-def]
    def metric(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x).argmax(-1) == labels).float().mean())

    return metric


def test_weight_bytes_counts_codes_and_scales() -> None:
    assert weight_bytes((64, 16), QuantFormat.parse("int4")) == 64 * 16 // 2 + 64 * 4
    assert weight_bytes((64, 16), QuantFormat.parse("int4-tensor")) == 64 * 16 // 2 + 4
    assert weight_bytes((64, 16), QuantFormat.parse("int8-g8")) == 64 * 16 + 128 * 4


def test_sensitivity_orders_bit_widths_and_layers(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, labels = data
    report = analyze_sensitivity(mlp(), FORMATS, [x], agreement(x, labels))
    assert report.formats == FORMATS
    assert report.layers == ["0", "2", "4"] and len(report.entries) == 9
    assert report.baseline_metric == 1.0
    for layer in report.layers:
        sqnr = [e.output_sqnr_db for e in report.for_layer(layer)]
        assert sqnr[0] > max(sqnr[1:])  # the sensitive layer is crushed at both 4 and 2 bits
    robust = [e.output_sqnr_db for e in report.for_layer("0")]
    assert robust[0] > robust[1] > robust[2]
    int2 = {e.name: e for e in report.entries if e.weight_format == "int2-tensor"}
    assert int2["2"].output_sqnr_db < int2["0"].output_sqnr_db
    assert int2["2"].metric_drop is not None and int2["2"].metric_drop > 0


def test_budget_keeps_the_sensitive_layer_wider(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, _ = data
    report = analyze_sensitivity(mlp(), FORMATS, [x])
    path = greedy_path(report)
    sizes = [p.size_bytes for p in path]
    assert sizes == sorted(sizes, reverse=True) and len(path) == 7
    all_int4 = report.other_bytes + sum(
        e.size_bytes for e in report.entries if e.weight_format == "int4-tensor"
    )
    plan = plan_for_budget(report, all_int4)
    assert plan.size_bytes <= all_int4
    bits = {k: QuantFormat.parse(v).bits for k, v in plan.formats.items()}
    assert bits["2"] > bits["0"]  # the sensitive layer keeps more bits than the robust one
    model = mlp()
    result = quantize_(model, plan.to_config())
    assert {layer.name: layer.weight_format for layer in result.layers} == plan.formats
    with pytest.raises(ConfigError, match="budget"):
        plan_for_budget(report, 10)


def test_pareto_front_is_saved(data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    x, labels = data
    report = analyze_sensitivity(mlp(), FORMATS, [x])
    measured, front = pareto_front(mlp, report, [x], agreement(x, labels), points=4)
    assert 2 <= len(measured) <= 5 and front
    for plan in front:  # nothing measured is both smaller and better
        assert not any(q.size_bytes <= plan.size_bytes and q.metric > plan.metric for q in measured)
    save_pareto(measured, front, tmp_path / "front.json", tmp_path / "front.png")
    saved = json.loads((tmp_path / "front.json").read_text())
    assert len(saved["front"]) == len(front)
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sensitivity_needs_formats() -> None:
    with pytest.raises(ConfigError, match="format"):
        analyze_sensitivity(mlp(), (), [torch.randn(2, 16)])
