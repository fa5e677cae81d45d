"""Structured pruning plan: rank channel groups, pick channels to meet a MACs/params target,
print it, then slice the weights so the model is physically smaller.

DepGraph-style group pruning (arXiv:2301.12900); BN-scale importance after Network Slimming
(arXiv:1708.06519); Taylor importance after Molchanov et al. (arXiv:1906.10771).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim._targets import matches
from torchslim.profile import profile
from torchslim.prune._slicing import keep_indices, member_owner, slice_member
from torchslim.prune._target import cost, target_of
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.graph import DependencyGraph, PruneError, build_graph


@dataclass
class ChannelGroup:
    """Coupled channels: pruning channel i removes it from every member at once."""

    root: int
    size: int
    layers: list[str]
    scores: torch.Tensor  # (size,) group importance of each channel
    frozen_reason: str | None
    keep: torch.Tensor | None = None  # sorted kept channel indices; None = all


@dataclass
class PrunePlan:
    """What ``apply()`` will do; ``print(plan)`` shows every group before anything changes."""

    model: nn.Module
    example_inputs: tuple[Any, ...]
    graph: DependencyGraph
    groups: list[ChannelGroup]
    macs_before: int = 0
    params_before: int = 0
    macs_after: int = 0
    params_after: int = 0
    unsupported: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"PrunePlan for {type(self.model).__name__}: MACs {self.macs_before:,} -> "
            f"{self.macs_after:,} ({_ratio(self.macs_after, self.macs_before)}), params "
            f"{self.params_before:,} -> {self.params_after:,} "
            f"({_ratio(self.params_after, self.params_before)})"
        ]
        for group in self.groups:
            kept = group.size if group.keep is None else len(group.keep)
            status = f"kept {kept}/{group.size}, removed {group.size - kept}"
            if group.frozen_reason:
                status = f"not pruned ({group.frozen_reason})"
            lines.append(f"  group {group.root}: {status}: {', '.join(group.layers)}")
        for name, kind in self.unsupported.items():
            lines.append(f"  NOT PRUNABLE: {name} ({kind}) has parameters torchslim cannot slice")
        return "\n".join(lines)

    def pruned_copy(self) -> nn.Module:
        """A deep copy of the model with this plan's channels sliced away."""
        pruned = copy.deepcopy(self.model)
        keep = {g.root: g.keep for g in self.groups if g.keep is not None}
        done: set[tuple[int, int]] = set()
        for member in self.graph.members:
            slice_member(pruned, member, keep_indices(self.graph, member.layout, keep), done)
        return pruned

    def apply(self) -> nn.Module:
        """Slice the model in place; on any failure the model is left untouched."""
        pruned = self.pruned_copy()
        with torch.no_grad():
            pruned.eval()
            pruned(*self.example_inputs)  # fails here, before the original is touched
        pruned.train(self.model.training)
        modules = {m.name for m in self.graph.members if m.kind != "param"}
        params = {m.name for m in self.graph.members if m.kind == "param"}
        for name in sorted(modules | params):
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            source = pruned.get_submodule(parent_name) if parent_name else pruned
            setattr(parent, child, getattr(source, child))
        return self.model

    def touched_modules(self) -> set[str]:
        """Names of the modules whose shapes ``apply()`` changes (for the reload record)."""
        keep = {g.root for g in self.groups if g.keep is not None}
        return {
            member_owner(m)
            for m in self.graph.members
            if any(self.graph.root(s.source) in keep for s in m.layout)
        }


def build_plan(
    model: nn.Module, example_inputs: tuple[Any, ...], config: StructuredPruneConfig
) -> PrunePlan:
    """Trace ``model``, score its channel groups, and choose channels to meet the target."""
    graph = build_graph(model, example_inputs)
    modules = dict(model.named_modules())
    groups = []
    for root, sources in sorted(graph.groups().items()):
        names = sorted(
            {m.name for m in graph.members if any(graph.root(s.source) == root for s in m.layout)}
        )
        owners = [graph.source_owner[s] for s in sources]
        reason = graph.frozen_reason(root)
        if reason is None and any(matches(owner, config.ignore) for owner in owners):
            reason = "ignored by config"
        scores = _group_scores(graph, root, modules, config.importance)
        groups.append(ChannelGroup(root, graph.source_size[root], names, scores, reason))
    plan = PrunePlan(model, example_inputs, graph, groups, unsupported=dict(graph.unsupported))
    before = profile(model, example_inputs, measure_memory=False)
    plan.macs_before, plan.params_before = before.total.macs, before.params
    _choose(plan, config)
    return plan


def _group_scores(
    graph: DependencyGraph, root: int, modules: dict[str, nn.Module], importance: str
) -> torch.Tensor:
    total = torch.zeros(graph.source_size[root])
    for member in graph.members:
        module = modules.get(member.name)
        if module is None:  # a raw parameter: adds no score of its own
            continue
        per_feature = _feature_scores(module, member.kind, importance)
        if per_feature is None:
            continue
        offset = 0
        for segment in member.layout:
            width = segment.length * segment.expand
            if graph.root(segment.source) == root:
                chunk = per_feature[offset : offset + width].view(segment.length, segment.expand)
                total += chunk.sum(1).float()
            offset += width
    return total


def _feature_scores(module: nn.Module, kind: str, importance: str) -> torch.Tensor | None:
    if kind in ("ln", "param"):
        return None
    if kind == "bn":
        if importance == "bn_scale" and isinstance(module, nn.modules.batchnorm._BatchNorm):
            return module.weight.detach().abs() if module.weight is not None else None
        return None
    if importance == "bn_scale":
        return None
    parameter = module.weight
    assert isinstance(parameter, torch.Tensor)
    weight = parameter.detach()
    if importance == "taylor":
        if parameter.grad is None:
            raise PruneError("importance 'taylor' needs gradients: run loss.backward() first")
        values = (weight * parameter.grad).abs()
    else:
        values = weight.abs() if importance == "l1" else weight.pow(2)
    dim = 1 if kind == "in" or isinstance(module, nn.Embedding) else 0
    return values.transpose(0, dim).flatten(1).sum(1)  # (features along dim,)


def _choose(plan: PrunePlan, config: StructuredPruneConfig) -> None:
    """Binary search on how many of the globally lowest (group-normalized) channels to drop."""
    prunable = [g for g in plan.groups if g.frozen_reason is None]
    if config.uniform_ratio is not None:
        _uniform(prunable, config.uniform_ratio, config.round_to)
        after = profile(plan.pruned_copy(), plan.example_inputs, measure_memory=False)
        plan.macs_after, plan.params_after = after.total.macs, after.params
        return
    found = target_of(config)
    assert found is not None
    what, target = found
    if target > 0.0 and not prunable:
        raise PruneError(_nothing_prunable(plan))
    if not prunable or target == 0.0:
        plan.macs_after, plan.params_after = plan.macs_before, plan.params_before
        return
    ranked = []  # (normalized score, group index, channel)
    for index, group in enumerate(prunable):
        normalized = group.scores / group.scores.mean().clamp_min(1e-12)
        ranked += [(float(v), index, c) for c, v in enumerate(normalized)]
    ranked.sort()

    batches = config.latency_batch_sizes

    def removed(count: int) -> float:
        _set_keep(prunable, ranked[:count], config.round_to)
        return 1 - cost(plan.pruned_copy(), plan.example_inputs, what, batches) / full

    _set_keep(prunable, [], config.round_to)
    full = max(cost(plan.pruned_copy(), plan.example_inputs, what, batches), 1e-12)
    low, high = 0, len(ranked)
    while low < high:
        middle = (low + high) // 2
        if removed(middle) >= target:
            high = middle
        else:
            low = middle + 1
    if removed(low) < target:
        _set_keep(prunable, [], config.round_to)
        raise PruneError(
            f"target {target:.0%} fewer {what} is out of reach even with one channel left per "
            "group. " + _nothing_prunable(plan)
        )
    _set_keep(prunable, ranked[:low], config.round_to)
    after = profile(plan.pruned_copy(), plan.example_inputs, measure_memory=False)
    plan.macs_after, plan.params_after = after.total.macs, after.params


def _uniform(groups: list[ChannelGroup], fraction: float, round_to: int) -> None:
    for group in groups:
        n_keep = max(group.size - int(fraction * group.size + 0.5), 1)  # nearest count
        n_keep = min(group.size, -(-n_keep // round_to) * round_to)
        order = torch.argsort(group.scores, descending=True)[:n_keep]
        group.keep = None if n_keep == group.size else torch.sort(order).values


def _nothing_prunable(plan: PrunePlan) -> str:
    """Why the channels that cannot be pruned are frozen (largest groups first)."""
    frozen = sorted((g for g in plan.groups if g.frozen_reason), key=lambda g: -g.size)
    reasons = "; ".join(
        f"{', '.join(g.layers[:3]) or g.root}: {g.frozen_reason}" for g in frozen[:6]
    )
    layers = "; ".join(f"{name} ({kind})" for name, kind in plan.unsupported.items())
    unsupported = f" Layers with parameters torchslim cannot slice: {layers}." if layers else ""
    return f"Channels that cannot be pruned and why: {reasons or 'none'}.{unsupported}"


def _set_keep(
    groups: list[ChannelGroup], drop: list[tuple[float, int, int]], round_to: int
) -> None:
    dropped: dict[int, list[int]] = {}
    for _, index, channel in drop:
        dropped.setdefault(index, []).append(channel)
    for index, group in enumerate(groups):
        removed = dropped.get(index, [])
        n_keep = max(group.size - len(removed), 1)
        n_keep = min(group.size, -(-n_keep // round_to) * round_to)  # round up, keep >= 1
        order = torch.argsort(group.scores, descending=True)[:n_keep]
        group.keep = None if n_keep == group.size else torch.sort(order).values


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.1%}" if before else "n/a"
