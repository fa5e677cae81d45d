"""Pruning: unstructured / N:M masks and dependency-graph structured (channel) pruning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.profile import profile
from torchslim.prune.config import NMPruneConfig, StructuredPruneConfig, UnstructuredPruneConfig
from torchslim.prune.graph import PruneError, build_graph
from torchslim.prune.plan import ChannelGroup, PrunePlan, build_plan
from torchslim.prune.unstructured import (
    WeightMask,
    fold_masks_,
    magnitude_masks,
    nm_mask,
    nm_prune_,
    unstructured_prune_,
)

PruneConfig = UnstructuredPruneConfig | NMPruneConfig | StructuredPruneConfig


@dataclass(frozen=True)
class PruneResult:
    """What ``prune_`` changed. MACs are None when no example inputs were given.

    For masked (unstructured / N:M) pruning the parameter count does not change; ``sparsity``
    is the fraction of zeroed weights over the pruned layers.
    """

    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    sparsity: float | None = None
    plan: PrunePlan | None = None


def prune_(
    model: nn.Module, config: PruneConfig, example_inputs: Sequence[Any] | None = None
) -> PruneResult:
    """Prune ``model`` in place according to ``config``; raise and leave it untouched on failure.

    Structured pruning needs ``example_inputs`` (to trace and to measure MACs).
    """
    params_before = sum(p.numel() for p in model.parameters())
    if isinstance(config, StructuredPruneConfig):
        if example_inputs is None:
            raise ConfigError("structured pruning needs example_inputs to trace the model")
        plan = build_plan(model, tuple(example_inputs), config)
        plan.apply()
        return PruneResult(
            params_before, plan.params_after, plan.macs_before, plan.macs_after, plan=plan
        )
    macs_before = _macs(model, example_inputs)
    if isinstance(config, UnstructuredPruneConfig):
        per_layer = unstructured_prune_(model, config)
    elif isinstance(config, NMPruneConfig):
        per_layer = nm_prune_(model, config)
    else:
        raise ConfigError(f"unknown pruning config type {type(config).__name__}")
    modules = dict(model.named_modules())
    sizes = {name: modules[name].weight.numel() for name in per_layer}
    zeroed = sum(per_layer[name] * size for name, size in sizes.items())
    sparsity = zeroed / max(sum(sizes.values()), 1)
    return PruneResult(params_before, params_before, macs_before, macs_before, sparsity)


def _macs(model: nn.Module, example_inputs: Sequence[Any] | None) -> int | None:
    if example_inputs is None:
        return None
    return profile(model, tuple(example_inputs), measure_memory=False).total.macs


__all__ = [
    "ChannelGroup",
    "NMPruneConfig",
    "PruneError",
    "PrunePlan",
    "PruneResult",
    "StructuredPruneConfig",
    "UnstructuredPruneConfig",
    "WeightMask",
    "build_graph",
    "build_plan",
    "fold_masks_",
    "magnitude_masks",
    "nm_mask",
    "nm_prune_",
    "prune_",
    "unstructured_prune_",
]
