"""Gradual (cubic) schedules with fine-tuning between steps; sensitivity scan and allocator."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchslim.zoo as zoo
from torchslim.errors import ConfigError
from torchslim.profile import profile
from torchslim.prune import (
    NMPruneConfig,
    PruneError,
    StructuredPruneConfig,
    UnstructuredPruneConfig,
    fold_masks_,
)
from torchslim.prune.schedule import GradualPruner, cubic_schedule, prune_gradually_
from torchslim.prune.sensitivity import allocate, load_scan, scan_sensitivity

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cubic_schedule_front_loaded_and_exact() -> None:
    targets = cubic_schedule(0.9, 4)
    assert targets[-1] == pytest.approx(0.9)
    steps = [b - a for a, b in zip([0.0, *targets], targets, strict=False)]
    assert all(x > y for x, y in itertools.pairwise(steps))  # shrinking increments
    with pytest.raises(ConfigError, match="steps"):
        cubic_schedule(0.5, 0)


def test_gradual_unstructured_with_finetuning_between_steps_keeps_pruned_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    x, y = torch.randn(128, 16), torch.randint(0, 4, (128,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen: list[float] = []

    def finetune(m: nn.Module, step: int) -> None:
        zero_before = [(layer.weight == 0) for layer in (m[0], m[2])]
        for _ in range(5):
            optimizer.zero_grad()
            F.cross_entropy(m(x), y).backward()
            optimizer.step()
        for was_zero, layer in zip(zero_before, (m[0], m[2]), strict=True):
            assert bool((layer.weight[was_zero] == 0).all())  # masks hold while training
        seen.append(step)

    results = prune_gradually_(model, UnstructuredPruneConfig(sparsity=0.8), None, 3, finetune)
    assert seen == [0, 1, 2]
    sparsities = [r.sparsity for r in results]
    assert sparsities == pytest.approx(cubic_schedule(0.8, 3), abs=1e-3)
    fold_masks_(model)
    weights = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()])
    assert float((weights == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)


def test_gradual_structured_reaches_the_cumulative_macs_target() -> None:
    entry = zoo.get("tiny-resnet8")
    model = entry.load()
    inputs = tuple(entry.example_inputs(2))
    macs_before = profile(model, inputs, measure_memory=False).total.macs
    pruner = GradualPruner(model, StructuredPruneConfig(target_macs_ratio=0.5), inputs, 3)
    macs = []
    for _ in range(pruner.steps):
        pruner.step()
        macs.append(profile(model, inputs, measure_memory=False).total.macs)
    assert macs[0] > macs[1] > macs[2]
    assert 0.40 * macs_before <= macs[2] <= 0.53 * macs_before
    with pytest.raises(ConfigError, match="steps are done"):
        pruner.step()


def test_nm_has_no_gradual_schedule() -> None:
    with pytest.raises(ConfigError, match="N:M"):
        GradualPruner(nn.Linear(8, 8), NMPruneConfig(2, 4))


def _agreement_metric(
    reference: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> Callable[[nn.Module], float]:
    with torch.no_grad():
        expected = reference(*inputs)

    def metric(model: nn.Module) -> float:
        return float(F.cosine_similarity(model(*inputs), expected, dim=-1).mean())

    return metric


def test_sensitivity_scan_json_png_and_allocator_meets_target(tmp_path: Path) -> None:
    entry = zoo.get("tiny-cnn")
    model = entry.load()
    inputs = tuple(entry.example_inputs(8))
    metric = _agreement_metric(model, inputs)
    scan = scan_sensitivity(model, inputs, metric, ratios=(0.25, 0.5, 0.75))
    assert scan.baseline_metric == pytest.approx(1.0)
    assert len(scan.groups) >= 3
    for rows in scan.groups.values():
        assert [r["ratio"] for r in rows] == [0.25, 0.5, 0.75]
        assert rows[0]["macs"] >= rows[1]["macs"] >= rows[2]["macs"]  # more pruned, fewer MACs
    scan.save(tmp_path / "scan.json", tmp_path / "scan.png")
    assert (tmp_path / "scan.png").read_bytes()[:4] == b"\x89PNG"
    again = load_scan(tmp_path / "scan.json")
    assert again.groups == json.loads((tmp_path / "scan.json").read_text())["groups"]
    plan = allocate(model, inputs, again, target_ratio=0.4)
    assert 0.40 * plan.macs_before <= plan.macs_after <= 0.60 * plan.macs_before  # measured
    plan.apply()
    assert model(*inputs).shape == (8, 10)
    assert profile(model, inputs, measure_memory=False).total.macs == plan.macs_after


def test_sensitivity_scan_on_transformer_heads_and_neurons() -> None:
    entry = zoo.get("tiny-bert")
    model = entry.load()
    inputs = tuple(entry.example_inputs(4))
    scan = scan_sensitivity(model, inputs, _agreement_metric(model, inputs), ratios=(0.5,))
    assert any("heads" in name for name in scan.groups)
    assert any("neurons" in name for name in scan.groups)


def test_scan_rejects_bad_ratios_and_unreachable_targets() -> None:
    entry = zoo.get("tiny-cnn")
    model = entry.load()
    inputs = tuple(entry.example_inputs(2))
    metric = _agreement_metric(model, inputs)
    with pytest.raises(ConfigError, match="ratios"):
        scan_sensitivity(model, inputs, metric, ratios=(0.5, 1.0))
    scan = scan_sensitivity(model, inputs, metric, ratios=(0.25,))
    with pytest.raises(PruneError, match="cannot remove"):
        allocate(model, inputs, scan, target_ratio=0.95)
