"""Gradual pruning: reach the target in steps along a cubic schedule, fine-tuning in between.

Cubic sparsity schedule after Zhu & Gupta, "To prune, or not to prune" (arXiv:1710.01878):
``s_t = s_final * (1 - (1 - t / n) ** 3)``: large steps while the network is redundant, small
ones near the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.prune import PruneConfig, PruneResult, prune_
from torchslim.prune.config import NMPruneConfig, StructuredPruneConfig, UnstructuredPruneConfig


def cubic_schedule(final: float, steps: int) -> list[float]:
    """Cumulative targets after each of ``steps`` steps, ending exactly at ``final``."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    return [final * (1 - (1 - t / steps) ** 3) for t in range(1, steps + 1)]


class GradualPruner:
    """Prune ``model`` towards ``config``'s target in ``steps`` cubic steps.

    >>> pruner = GradualPruner(model, StructuredPruneConfig(target_macs_ratio=0.5), (x,), 4)
    >>> for _ in range(pruner.steps):
    ...     pruner.step()
    ...     fine_tune(model)

    Structured targets are cumulative (relative to the model as given): each step asks for the
    fraction of the *current* MACs/params that brings the total to the schedule's value.
    Unstructured masks are recomputed from the masked weights, so pruned weights stay pruned.
    N:M has no intermediate levels and is rejected.
    """

    def __init__(
        self,
        model: nn.Module,
        config: PruneConfig,
        example_inputs: Sequence[Any] | None = None,
        steps: int = 4,
    ) -> None:
        if isinstance(config, NMPruneConfig):
            raise ConfigError("N:M sparsity has no gradual schedule; use steps=1 (prune_)")
        self.model, self.config, self.example_inputs = model, config, example_inputs
        self.steps = steps
        self.targets = cubic_schedule(_final(config), steps)
        self.done = 0

    def step(self) -> PruneResult:
        """Apply the next step of the schedule (in place) and return what it changed."""
        if self.done >= self.steps:
            raise ConfigError(f"all {self.steps} steps are done")
        previous = self.targets[self.done - 1] if self.done else 0.0
        target = self.targets[self.done]
        config = _step_config(self.config, previous, target)
        result = prune_(self.model, config, self.example_inputs)
        self.done += 1
        return result


def prune_gradually_(
    model: nn.Module,
    config: PruneConfig,
    example_inputs: Sequence[Any] | None,
    steps: int,
    between_steps: Callable[[nn.Module, int], Any] | None = None,
) -> list[PruneResult]:
    """Run every step of a ``GradualPruner``; call ``between_steps(model, step)`` after each
    (fine-tuning: ``lambda m, s: finetune_(entry, m, FinetuneConfig(...))``)."""
    pruner = GradualPruner(model, config, example_inputs, steps)
    results = []
    for index in range(steps):
        results.append(pruner.step())
        if between_steps is not None:
            between_steps(model, index)
    return results


STRUCTURED_TARGETS = (
    "target_macs_ratio",
    "target_params_ratio",
    "target_latency_ratio",
    "uniform_ratio",
)


def _final(config: PruneConfig) -> float:
    if isinstance(config, UnstructuredPruneConfig):
        return config.sparsity
    assert isinstance(config, StructuredPruneConfig)
    for name in STRUCTURED_TARGETS:
        value = getattr(config, name)
        if value is not None:
            return float(value)
    raise ConfigError("a structured config needs a target")


def _step_config(config: PruneConfig, previous: float, target: float) -> PruneConfig:
    """The config of one step: cumulative sparsity, or the share of what is left to remove."""
    if isinstance(config, UnstructuredPruneConfig):
        return dataclasses.replace(config, sparsity=target)
    assert isinstance(config, StructuredPruneConfig)
    relative = 1 - (1 - target) / (1 - previous)  # of the current model, to reach `target`
    field = next(name for name in STRUCTURED_TARGETS if getattr(config, name) is not None)
    changes: dict[str, Any] = {field: max(0.0, min(relative, 0.999))}
    return dataclasses.replace(config, **changes)
