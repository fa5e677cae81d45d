"""``example_inputs`` as users give them: one tensor, a tuple of positional inputs, or a dict
of keyword inputs, turned into the positional tuple that tracing and profiling call with."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError

EXAMPLE_INPUTS_HELP = (
    "example_inputs must be a tensor, a tuple/list of positional inputs, or a dict of keyword "
    "inputs (e.g. {'input_ids': ids, 'attention_mask': mask})"
)


def positional_inputs(model: nn.Module, example_inputs: Any) -> tuple[Any, ...]:
    """``example_inputs`` as positional arguments of ``model.forward``.

    A tensor is one input (its batch is not split); a dict is bound to ``forward``'s named
    parameters in order, parameters skipped before the last given one taking their defaults.
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Mapping):
        return _bind_keywords(model, dict(example_inputs))
    if isinstance(example_inputs, Sequence) and not isinstance(example_inputs, (str, bytes)):
        return tuple(example_inputs)
    raise ConfigError(f"{EXAMPLE_INPUTS_HELP}; got {type(example_inputs).__name__}")


def _bind_keywords(model: nn.Module, keywords: dict[str, Any]) -> tuple[Any, ...]:
    parameters = [
        p
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    names = [p.name for p in parameters]
    unknown = [key for key in keywords if key not in names]
    if unknown:
        raise ConfigError(
            f"example_inputs keys {unknown} are not named parameters of "
            f"{type(model).__name__}.forward (it takes {names}); {EXAMPLE_INPUTS_HELP}"
        )
    last = max(names.index(key) for key in keywords) if keywords else -1
    values = []
    for parameter in parameters[: last + 1]:
        if parameter.name in keywords:
            values.append(keywords[parameter.name])
        elif parameter.default is not inspect.Parameter.empty:
            values.append(parameter.default)
        else:
            raise ConfigError(
                f"example_inputs gives {sorted(keywords)} but not {parameter.name!r}, which "
                f"{type(model).__name__}.forward requires before them"
            )
    return tuple(values)


def batched(example_inputs: tuple[Any, ...], batch_size: int) -> tuple[Any, ...]:
    """``example_inputs`` with every tensor's batch (dim 0) repeated up to ``batch_size`` rows
    (also on ``meta``): what a forward at that batch size reads, for predicting its latency."""
    out = []
    for value in example_inputs:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] != batch_size:
            rows = value.shape[0]
            repeats = -(-batch_size // max(rows, 1))
            value = value.repeat(repeats, *([1] * (value.dim() - 1)))[:batch_size]
        out.append(value)
    return tuple(out)
