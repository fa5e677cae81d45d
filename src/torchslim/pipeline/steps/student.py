"""The ``drop_layers`` step: a shallower student (DistilBERT-style, arXiv 1910.01108).

Drops layers ``layers`` of each stack of repeated blocks (transformer layers, ResNet blocks that
keep their input's shape); follow it with ``distill`` to recover from the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step


@dataclass(frozen=True)
class DropLayersOptions:
    """``layers``: indices dropped from every stack, e.g. [1, 3]."""

    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.layers or any(not isinstance(i, int) or i < 0 for i in self.layers):
            raise ConfigError(
                f"layers must be non-negative indices, e.g. [1, 3]; got {self.layers}"
            )


def run_drop_layers(
    model: nn.Module, options: DropLayersOptions, context: StepContext
) -> StepResult:
    from torchslim.distill.student import drop_layers

    student, dropped = drop_layers(model, list(options.layers))
    return StepResult(dropped.to_dict(), model=student)


def restore_drop_layers(
    model: nn.Module, options: DropLayersOptions, record: dict[str, Any], context: StepContext
) -> nn.Module:
    from torchslim.distill.student import drop_layers

    return drop_layers(model, list(options.layers))[0]


register_step(
    Step(
        "drop_layers",
        DropLayersOptions,
        run_drop_layers,
        "drop repeated layers (a student)",
        restore=restore_drop_layers,
    )
)
