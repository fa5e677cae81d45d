"""Automatic per-layer ratios: a sensitivity scan (metric drop vs ratio, one group at a time)
and a greedy allocator that meets a global MACs or parameter target at the least metric loss.

The scan prunes each prunable group alone at each ratio and measures the metric, MACs and
parameters of the result (as in Li et al., "Pruning Filters for Efficient ConvNets",
arXiv:1608.08710, section 3.4). The allocator then raises, one step at a time, the ratio of
the group whose next step costs the least metric per MAC (or parameter) saved, until the
summed savings meet the target; the final plan is measured, not just predicted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._io import atomic_path, write_json
from torchslim.errors import ConfigError
from torchslim.profile import profile
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.graph import PruneError
from torchslim.prune.module_plan import RulePlan, build_rule_plan, has_rules
from torchslim.prune.plan import PrunePlan, build_plan

Metric = Callable[[nn.Module], float]  # higher is better (accuracy, Spearman, -perplexity)


@dataclass
class SensitivityScan:
    """Per group: ratio -> (metric, MACs, params) of the model pruned in that group alone."""

    baseline_metric: float
    macs: int
    params: int
    ratios: tuple[float, ...]
    groups: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_metric": self.baseline_metric,
            "macs": self.macs,
            "params": self.params,
            "ratios": list(self.ratios),
            "groups": self.groups,
        }

    def save(self, json_path: str | Path, png_path: str | Path | None = None) -> None:
        """Write the scan as JSON and (optionally) a metric-vs-ratio plot, both atomically."""
        write_json(json_path, self.to_dict())
        if png_path is not None:
            _plot(self, Path(png_path))


def _plan(model: nn.Module, inputs: tuple[Any, ...], importance: str) -> PrunePlan | RulePlan:
    return _build(model, inputs, StructuredPruneConfig(uniform_ratio=0.0, importance=importance))


def _build(
    model: nn.Module, inputs: tuple[Any, ...], config: StructuredPruneConfig
) -> PrunePlan | RulePlan:
    if has_rules(model):
        return build_rule_plan(model, inputs, config)
    return build_plan(model, inputs, config)


def _groups(plan: PrunePlan | RulePlan) -> list[Any]:
    if isinstance(plan, RulePlan):
        return plan.groups
    return [g for g in plan.groups if g.frozen_reason is None]


def _size(group: Any) -> int:
    return int(getattr(group, "n_units", getattr(group, "size", 0)))


def _label(group: Any) -> str:
    return str(group.name) if hasattr(group, "name") else ", ".join(group.layers[:3])


def _set_ratio(group: Any, ratio: float) -> None:
    n_keep = max(_size(group) - int(ratio * _size(group) + 0.5), 1)
    order = torch.argsort(group.scores, descending=True)[:n_keep]
    group.keep = None if n_keep == _size(group) else torch.sort(order).values


def _measure(plan: PrunePlan | RulePlan, metric: Metric | None) -> dict[str, float]:
    pruned = plan.pruned_copy().eval()
    report = profile(pruned, plan.example_inputs, measure_memory=False)
    out = {"macs": float(report.total.macs), "params": float(report.params)}
    if metric is not None:
        with torch.no_grad():
            out["metric"] = float(metric(pruned))
    return out


def group_names(
    model: nn.Module, example_inputs: Sequence[Any], importance: str = "l2"
) -> list[str]:
    """The names ``scan_sensitivity`` gives ``model``'s prunable groups: one scanned row each
    per ratio (what a scan will cost, known before it runs)."""
    return [_label(g) for g in _groups(_plan(model, tuple(example_inputs), importance))]


def removed_shares(
    model: nn.Module, example_inputs: Sequence[Any], config: StructuredPruneConfig
) -> dict[str, float]:
    """Per group, named as the scan names it: the share of its units that ``config``'s plan
    removes (the plan is built, not applied; module rules first, as the scan's)."""
    plan = _build(model, tuple(example_inputs), config)
    return {_label(g): 1.0 - _kept(g) / max(_size(g), 1) for g in _groups(plan)}


def _kept(group: Any) -> int:
    return _size(group) if group.keep is None else len(group.keep)


def scan_sensitivity(
    model: nn.Module,
    example_inputs: Sequence[Any],
    metric: Metric,
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    importance: str = "l2",
) -> SensitivityScan:
    """Prune each prunable group alone at each ratio; record metric, MACs and parameters."""
    if not ratios or not all(0.0 < r < 1.0 for r in ratios):
        raise ConfigError(f"ratios must be in (0, 1), got {tuple(ratios)!r}")
    plan = _plan(model, tuple(example_inputs), importance)
    groups = _groups(plan)
    if not groups:
        raise PruneError(f"{type(model).__name__} has no prunable group to scan")
    with torch.no_grad():
        baseline = float(metric(model.eval()))
    scan = SensitivityScan(baseline, plan.macs_before, plan.params_before, tuple(ratios))
    for group in groups:
        rows = []
        for ratio in ratios:
            _set_ratio(group, ratio)
            rows.append({"ratio": ratio, **_measure(plan, metric)})
        group.keep = None
        scan.groups[_label(group)] = rows
    return scan


def allocate(
    model: nn.Module,
    example_inputs: Sequence[Any],
    scan: SensitivityScan,
    target_ratio: float,
    by: str = "macs",
) -> PrunePlan | RulePlan:
    """A plan with per-group ratios from ``scan`` removing ``target_ratio`` of MACs/params.

    Greedy: the next step is the group whose next scanned ratio loses the least metric per
    unit saved (as scanned alone); after each step the combined plan is measured, and the loop
    stops once the measured saving meets the target.
    """
    if by not in ("macs", "params") or not 0.0 <= target_ratio < 1.0:
        raise ConfigError(f"by must be macs|params and target_ratio in [0, 1), got {by!r}, "
                          f"{target_ratio!r}")  # fmt: skip
    plan = _plan(model, tuple(example_inputs), "l2")
    groups = {_label(g): g for g in _groups(plan)}
    total = scan.macs if by == "macs" else scan.params
    level = dict.fromkeys(scan.groups, -1)  # index into scan.ratios; -1 = not pruned
    measured = {"macs": float(scan.macs), "params": float(scan.params)}
    while measured[by] > (1 - target_ratio) * total:
        best, best_cost = None, float("inf")
        for name, rows in scan.groups.items():
            if level[name] + 1 >= len(rows) or name not in groups:
                continue
            now = rows[level[name]] if level[name] >= 0 else None
            nxt = rows[level[name] + 1]
            gain = (now[by] if now else total) - nxt[by]
            loss = (now["metric"] if now else scan.baseline_metric) - nxt["metric"]
            cost = max(loss, 0.0) / max(gain, 1.0)
            if cost < best_cost:
                best, best_cost = name, cost
        if best is None:
            raise PruneError(f"the scanned ratios cannot remove {target_ratio:.0%} of {by}")
        level[best] += 1
        _set_ratio(groups[best], scan.ratios[level[best]])
        measured = _measure(plan, None)
    plan.macs_after, plan.params_after = int(measured["macs"]), int(measured["params"])
    return plan


def _plot(scan: SensitivityScan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, rows in scan.groups.items():
        xs = [0.0] + [row["ratio"] for row in rows]
        ys = [0.0] + [scan.baseline_metric - row["metric"] for row in rows]
        axis.plot(xs, ys, marker="o", label=name[:40])
    axis.set_xlabel("fraction of the group's units removed")
    axis.set_ylabel("metric drop vs unpruned")
    axis.set_title("pruning sensitivity per group")
    if len(scan.groups) <= 16:
        axis.legend(fontsize=6)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def load_scan(path: str | Path) -> SensitivityScan:
    """Read a scan written by ``SensitivityScan.save``."""
    data = json.loads(Path(path).read_text())
    scan = SensitivityScan(data["baseline_metric"], data["macs"], data["params"],
                           tuple(data["ratios"]))  # fmt: skip
    scan.groups = data["groups"]
    return scan
