"""Structured pruning by module rules (``rules.py``): choose units, print the plan, apply it.

Every group loses the same fraction of its units (heads, neurons, channels), ranked by group
importance inside the group. Uniform counts keep a Hugging Face config able to describe the
pruned model (one ``intermediate_size``, one ``num_attention_heads`` for all layers), which is
what lets ``save_pretrained`` / ``from_pretrained`` round-trip. A MACs or parameter target is
met by a binary search on that fraction, measuring the pruned copy each time.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.profile import profile
from torchslim.prune._target import cost, target_of
from torchslim.prune._units import UnitGroup, score_units, slice_groups
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.graph import PruneError
from torchslim.prune.rules import find_unit_groups, not_covered

SEARCH_STEPS = 14


@dataclass
class RulePlan:
    """What ``apply()`` will do to a model pruned by module rules; print it before applying."""

    model: nn.Module
    example_inputs: tuple[Any, ...]
    groups: list[UnitGroup]
    not_pruned: dict[str, str] = field(default_factory=dict)
    fraction: float = 0.0
    macs_before: int = 0
    params_before: int = 0
    macs_after: int = 0
    params_after: int = 0

    @property
    def unsupported(self) -> dict[str, str]:
        """Custom layers with parameters that no rule can prune (by name)."""
        return {k: v for k, v in self.not_pruned.items() if v.startswith("custom layer")}

    def __str__(self) -> str:
        lines = [
            f"RulePlan for {type(self.model).__name__}: {self.fraction:.1%} of each group's units "
            f"removed; MACs {self.macs_before:,} -> {self.macs_after:,}, params "
            f"{self.params_before:,} -> {self.params_after:,}"
        ]
        for group in self.groups:
            lines.append(
                f"  {group.name}: kept {group.kept}/{group.n_units} {group.kind}, removed "
                f"{group.n_units - group.kept}"
            )
        kept = len(self.not_pruned) - len(self.unsupported)
        lines.append(f"  {kept} layer(s) kept whole: residual-stream width is not pruned")
        cut_heads = [g for g in self.groups if g.kind == "heads" and g.keep is not None]
        if any("KV groups" not in g.name for g in cut_heads):
            lines.append(
                "  reload: head counts a config cannot describe (hidden_size / heads sets the "
                "head size): reload with torchslim.prune.from_pretrained or torchslim.load"
            )
        for name, reason in self.unsupported.items():
            lines.append(f"  NOT PRUNABLE: {name}: {reason}")
        return "\n".join(lines)

    def pruned_copy(self) -> nn.Module:
        """A deep copy of the model with this plan's units sliced away."""
        pruned = copy.deepcopy(self.model)
        slice_groups(pruned, self.groups)
        return pruned

    def measure_pruned(self) -> tuple[int, int]:
        """MACs and parameters of the pruned copy; PruneError if that copy does not run."""
        try:
            return _measure(self.pruned_copy(), self.example_inputs)
        except Exception as error:
            raise PruneError(
                f"the pruned model does not run ({type(error).__name__}: {error}); a rule "
                "matched a block whose units are also used elsewhere: pass it in `ignore`"
            ) from error

    def apply(self) -> nn.Module:
        """Slice the model in place; on any failure the model is left untouched."""
        self.measure_pruned()  # fails here, before the original is touched
        pruned = self.pruned_copy()
        new_modules = dict(pruned.named_modules())
        for name in sorted({s.module for g in self.groups for s in g.spans}):
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, new_modules[name])
        for group in self.groups:
            for module_name, attribute, per_unit in group.attrs:
                setattr(self.model.get_submodule(module_name), attribute, group.kept * per_unit)
        return self.model


def has_rules(model: nn.Module) -> bool:
    """True when a module rule recognises at least one block of ``model``."""
    return bool(find_unit_groups(model))


def build_rule_plan(
    model: nn.Module, example_inputs: tuple[Any, ...], config: StructuredPruneConfig
) -> RulePlan:
    """Find the rule groups of ``model``, score them and choose units to meet the target."""
    groups = find_unit_groups(model, config.ignore)
    if not groups:
        raise PruneError(
            f"no prunable block found in {type(model).__name__} (all ignored, or no rule fits)"
        )
    modules = dict(model.named_modules())
    for group in groups:
        score_units(group, modules, config.importance)
    plan = RulePlan(model, example_inputs, groups, not_covered(model, groups))
    plan.macs_before, plan.params_before = _measure(model, example_inputs)
    if config.uniform_ratio is not None:
        _set_fraction(plan, config.uniform_ratio, config.round_to)
    else:
        _search(plan, config)
    plan.macs_after, plan.params_after = plan.measure_pruned()
    return plan


def _set_fraction(plan: RulePlan, fraction: float, round_to: int) -> None:
    plan.fraction = fraction
    for group in plan.groups:
        step = 1 if group.kind == "heads" else round_to
        n_keep = max(group.n_units - math.floor(fraction * group.n_units + 0.5), 1)  # nearest
        n_keep = min(group.n_units, -(-n_keep // step) * step)
        order = torch.argsort(group.scores, descending=True)[:n_keep]
        group.keep = None if n_keep == group.n_units else torch.sort(order).values


def _search(plan: RulePlan, config: StructuredPruneConfig) -> None:
    found = target_of(config)
    assert found is not None
    what, target = found
    full = max(cost(plan.model, plan.example_inputs, what, config.latency_batch_sizes), 1e-12)

    def removed(fraction: float) -> float:
        _set_fraction(plan, fraction, config.round_to)
        macs, params = plan.measure_pruned()  # PruneError when the pruned copy does not run
        counted: float
        if what == "MACs":
            counted = macs
        elif what == "parameters":
            counted = params
        else:
            sizes = config.latency_batch_sizes
            counted = cost(plan.pruned_copy(), plan.example_inputs, what, sizes)
        return 1 - counted / full

    if target == 0.0:
        _set_fraction(plan, 0.0, config.round_to)
        return
    most = removed(0.999)
    if most < target:
        _set_fraction(plan, 0.0, config.round_to)
        kept = ", ".join(list(plan.not_pruned)[:6])
        raise PruneError(
            f"target {target:.0%} fewer {what} is out of reach: pruning every block to one unit "
            f"removes {most:.1%}; the rest sits in layers that cannot be pruned here ({kept}, ... "
            "the residual-stream width is kept). Lower the target."
        )
    low, high = 0.0, 0.999
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        if removed(middle) >= target:
            high = middle
        else:
            low = middle
    _set_fraction(plan, high, config.round_to)


def _measure(model: nn.Module, example_inputs: tuple[Any, ...]) -> tuple[int, int]:
    report = profile(model, example_inputs, measure_memory=False)
    return report.total.macs, report.params
