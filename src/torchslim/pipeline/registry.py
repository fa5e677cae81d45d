"""The step registry: every technique the pipeline can run, by name, with its options class.

A step is ``handler(model, options, context) -> StepResult``: it changes ``model`` in place (or
returns a replacement, e.g. a deployed runtime) and says what it did. ``restore(model, options,
record, context)`` replays the structural part of a finished stage (new shapes, dropped layers)
in place, or returns the replacement model, so a checkpointed state dict can be loaded into it
on ``--resume``. Register your own with ``register_step``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchslim.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from torchslim.zoo._entry import ZooEntry


@dataclass
class StepContext:
    """What a step may use besides the model: the data, the original model, where to run."""

    entry: ZooEntry  # calibration batches, example inputs, training data, the metric
    original: nn.Module  # the model before the first stage (the teacher of distillation)
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None


@dataclass
class StepResult:
    """What one stage did: ``summary`` for the manifest, ``record`` to restore its structure,
    and ``model`` when the step replaced the model (a deployed runtime)."""

    summary: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    model: Any = None


@dataclass(frozen=True)
class Step:
    """A registered step."""

    name: str
    options: type  # a frozen dataclass, validated on construction
    handler: Callable[[Any, Any, StepContext], StepResult]
    doc: str
    final: bool = False  # produces a runtime graph: must be the last stage
    restore: Callable[[Any, Any, dict[str, Any], StepContext], Any] | None = None
    quantizes: bool = False  # leaves fake-quant layers (quantize, qat, mixed_precision)
    needs_quantized: bool = False  # works on fake-quant layers: an earlier stage quantizes
    before_quantize: bool = False  # changes the float model: no earlier stage quantizes
    # writes the artifact's weights file in place of model.safetensors (pack): the last stage
    weights_file: Callable[[Any, Any, Path], Path] | None = None

    def option_rows(self) -> list[tuple[str, str, str]]:
        """(name, type, default) of every option, for ``torchslim recipe steps``."""
        rows = []
        for item in dataclasses.fields(self.options):
            default = item.default
            if default is dataclasses.MISSING and item.default_factory is not dataclasses.MISSING:
                default = item.default_factory()
            shown = "(required)" if default is dataclasses.MISSING else repr(default)
            rows.append((item.name, str(item.type), shown))
        return rows


_STEPS: dict[str, Step] = {}


def register_step(step: Step) -> Step:
    """Add ``step`` to the registry (a name may be registered once)."""
    if not dataclasses.is_dataclass(step.options):
        raise ConfigError(f"step {step.name!r}: options must be a dataclass")
    if step.name in _STEPS and _STEPS[step.name] is not step:
        raise ConfigError(f"step {step.name!r} is registered already")
    _STEPS[step.name] = step
    return step


def _load_builtin_steps() -> None:
    import torchslim.pipeline.steps  # noqa: F401  (registers the built-in steps)


def step_names() -> list[str]:
    _load_builtin_steps()
    return sorted(_STEPS)


def get_step(name: str) -> Step:
    _load_builtin_steps()
    return _STEPS[name]
