"""Pruning: unstructured / N:M masks, and structured pruning that makes models smaller.

Structured pruning takes one of two routes, chosen per model by ``prune_``:

- module rules (``rules.py``) when a block is recognised (Hugging Face transformers and CNNs:
  attention heads with GQA groups, MLP neurons, inner conv channels), with config updates so
  ``save_pretrained`` / ``from_pretrained`` round-trip;
- otherwise a torch.fx dependency graph (``graph.py``) of coupled Conv/BN/Linear channels
  (residual adds, concatenations, depthwise convs, flatten).

Either way the plan prints before ``apply()``, ``PruneResult.record`` rebuilds the pruned
shapes from the original architecture, and a failure leaves the model untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchslim._compress import untouched_on_failure
from torchslim._hf_directory import is_hugging_face_model
from torchslim.errors import ConfigError
from torchslim.profile import profile
from torchslim.prune._inputs import positional_inputs
from torchslim.prune.artifact import (
    from_pretrained,
    load_pruned,
    load_pruned_artifact,
    resize_to_record,
    shape_record,
    update_hf_configs,
)
from torchslim.prune.blocks import DROPPED
from torchslim.prune.config import NMPruneConfig, StructuredPruneConfig, UnstructuredPruneConfig
from torchslim.prune.config_widths import (
    WidthPlan,
    build_width_plan,
    holds_hugging_face_model,
)
from torchslim.prune.depth import drop_layers_
from torchslim.prune.depth_plan import DepthWidthPlan, build_depth_plan
from torchslim.prune.graph import PruneError, build_graph
from torchslim.prune.measured_plan import MeasuredPlan, build_measured_plan
from torchslim.prune.module_plan import RulePlan, build_rule_plan, has_rules
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

    ``record`` (structured only) lets ``load_pruned`` rebuild the pruned shapes from the
    original architecture. For masked (unstructured / N:M) pruning the parameter count does not
    change; ``sparsity`` is the fraction of zeroed weights over the pruned layers.
    """

    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    sparsity: float | None = None
    plan: PrunePlan | RulePlan | WidthPlan | DepthWidthPlan | None = None
    record: dict[str, Any] = field(default_factory=dict)  # shapes to rebuild the pruned model


def prune_(
    model: nn.Module,
    config: PruneConfig,
    example_inputs: Any = None,
    calibration: Sequence[Sequence[Any]] | None = None,
) -> PruneResult:
    """Prune ``model`` in place according to ``config``; raise and leave it untouched on failure.

    Structured pruning needs ``example_inputs`` (to trace and to measure MACs): one tensor, a
    tuple of positional inputs or a dict of keyword inputs. The "wanda" method reads
    input-feature norms from ``calibration`` batches (default: the example inputs), and so
    does ``depth="auto"`` / ``"measured"`` to measure the output damage of each block drop and
    width step.
    """
    if example_inputs is not None:
        example_inputs = positional_inputs(model, example_inputs)
    params_before = sum(p.numel() for p in model.parameters())
    if isinstance(config, StructuredPruneConfig):
        if example_inputs is None:
            raise ConfigError("structured pruning needs example_inputs to trace the model")
        macs_before = _macs(model, example_inputs) if config.drop_layers else None
        plan: PrunePlan | RulePlan | WidthPlan | DepthWidthPlan
        with untouched_on_failure(model):
            if config.drop_layers:
                config = drop_layers_(model, example_inputs, config)
            if config.plans_depth:
                plan, record = _depth_and_widths(model, example_inputs, config, calibration)
            else:
                plan, record = _structured(model, example_inputs, config)
        macs_before = plan.macs_before if macs_before is None else macs_before
        return PruneResult(
            params_before, plan.params_after, macs_before, plan.macs_after, None, plan, record
        )
    macs_before = _macs(model, example_inputs)
    with untouched_on_failure(model):
        batches = calibration or ([tuple(example_inputs)] if example_inputs else None)
        if isinstance(config, UnstructuredPruneConfig):
            per_layer = unstructured_prune_(model, config, batches)
        elif isinstance(config, NMPruneConfig):
            per_layer = nm_prune_(model, config, batches)
        else:
            raise ConfigError(f"unknown pruning config type {type(config).__name__}")
    modules = dict(model.named_modules())
    sizes = {name: modules[name].weight.numel() for name in per_layer}
    zeroed = sum(per_layer[name] * size for name, size in sizes.items())
    sparsity = zeroed / max(sum(sizes.values()), 1)
    return PruneResult(params_before, params_before, macs_before, macs_before, sparsity)


def _structured(
    model: nn.Module, example_inputs: tuple[Any, ...], config: StructuredPruneConfig
) -> tuple[PrunePlan | RulePlan | WidthPlan, dict[str, Any]]:
    """A transformers model through its config widths; any other model through the fx
    dependency graph, or module rules where fx cannot trace it (wrapped HF models)."""
    if is_hugging_face_model(model):
        width_plan = build_width_plan(model, example_inputs, config)
        before = _own_shapes(model)
        width_plan.apply(config.importance)
        after = _own_shapes(model)
        return width_plan, shape_record(model, [n for n in after if after[n] != before.get(n)])
    try:
        plan = build_plan(model, example_inputs, config)
    except PruneError as error:
        if not (str(error).startswith("cannot trace") and has_rules(model)):
            raise
    else:
        plan.apply()
        return plan, shape_record(model, plan.touched_modules())
    if has_rules(model):
        rule_plan = build_rule_plan(model, example_inputs, config)
        rule_plan.apply()
        spans = {s.module for g in rule_plan.groups if g.keep is not None for s in g.spans}
        owners = {a[0] for g in rule_plan.groups if g.keep is not None for a in g.attrs}
        record = shape_record(model, spans | owners)
        update_hf_configs(model, rule_plan.groups, record)
        return rule_plan, record
    raise AssertionError("unreachable")


def _depth_and_widths(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    config: StructuredPruneConfig,
    calibration: Sequence[Sequence[Any]] | None,
) -> tuple[DepthWidthPlan, dict[str, Any]]:
    """Residual blocks dropped and widths pruned by predicted latency per damage
    (``depth_plan``) or by timing candidate plans (``measured_plan``); the record holds the
    dropped blocks and every module whose shapes changed."""
    if holds_hugging_face_model(model):
        raise ConfigError(
            f"depth={config.depth!r} drops residual blocks of plain models; for a transformers "
            "model give the layers to remove with drop_layers (its config records the new depth)"
        )
    if config.depth == "measured":
        plan: DepthWidthPlan = build_measured_plan(model, example_inputs, config, calibration)
    else:
        plan = build_depth_plan(model, example_inputs, config, calibration)
    before = _own_shapes(model)
    plan.apply()
    after = _own_shapes(model)
    changed = [n for n in after if n in before and after[n] != before[n]]
    record = {**shape_record(model, changed), **{name: dict(DROPPED) for name in plan.dropped}}
    return plan, dict(sorted(record.items()))


def _own_shapes(model: nn.Module) -> dict[str, Any]:
    """Every module's own tensor shapes and size attributes (what a reload must rebuild)."""
    return {name: shape_record(model, [name])[name] for name, _ in model.named_modules()}


def _macs(model: nn.Module, example_inputs: Sequence[Any] | None) -> int | None:
    if example_inputs is None:
        return None
    return profile(model, tuple(example_inputs), measure_memory=False).total.macs


__all__ = [
    "ChannelGroup",
    "DepthWidthPlan",
    "MeasuredPlan",
    "NMPruneConfig",
    "PruneError",
    "PrunePlan",
    "PruneResult",
    "RulePlan",
    "StructuredPruneConfig",
    "UnstructuredPruneConfig",
    "WeightMask",
    "WidthPlan",
    "build_depth_plan",
    "build_graph",
    "build_measured_plan",
    "build_plan",
    "build_rule_plan",
    "build_width_plan",
    "fold_masks_",
    "from_pretrained",
    "load_pruned",
    "load_pruned_artifact",
    "magnitude_masks",
    "nm_mask",
    "nm_prune_",
    "prune_",
    "resize_to_record",
    "shape_record",
    "unstructured_prune_",
]
