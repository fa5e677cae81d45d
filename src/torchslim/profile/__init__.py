"""Profiling: exact MACs/FLOPs, bytes moved, peak memory, roofline and latency prediction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchslim.errors import InputShapeError
from torchslim.evaluate.memory import peak_activation_bytes
from torchslim.profile.calls import CallCounter
from torchslim.profile.costs import OpCost, cost_of, tensor_bytes
from torchslim.profile.counter import CostCounter, OpRecord
from torchslim.profile.report import CostTotals, ProfileReport
from torchslim.zoo._entry import INPUT_HINT, describe_input


def profile(
    model: nn.Module,
    example_inputs: Sequence[Any],
    name: str | None = None,
    measure_memory: bool = True,
    count_calls: bool = False,
) -> ProfileReport:
    """Count every ATen op of one forward pass of ``model`` on ``example_inputs``.

    Runs on whatever device the model and inputs are on, including ``meta`` (no memory, no
    compute: a model too big for this machine can be profiled). The measured peak activation
    memory needs real tensors and is skipped on meta. ``count_calls`` runs one more plain forward
    to count its Python and C function calls (for the latency model; not on meta).
    """
    inputs = tuple(example_inputs)
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    counter = CostCounter(model)
    counter.storages.track_existing(tensors)  # the inputs exist before the model runs
    try:
        with torch.no_grad(), counter:  # not inference_mode: composite ops must decompose
            model(*inputs)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as error:
        raise _input_error(model, counter.failed_in(), inputs, error) from None
    finally:
        counter.remove_hooks()
    unique = {id(p): p for p in [*model.parameters(), *model.buffers()]}
    on_meta = any(t.device.type == "meta" for t in [*tensors, *unique.values()])
    measured = None
    if measure_memory and not on_meta:
        measured = peak_activation_bytes(lambda: model(*inputs), [*tensors, *unique.values()])
    python_calls = None
    if count_calls and not on_meta:
        with torch.no_grad(), CallCounter() as counted:
            model(*inputs)
        python_calls = counted.calls
    params = {id(p): p for p in model.parameters()}
    return ProfileReport(
        model=name or type(model).__name__,
        records=counter.records,
        params=sum(p.numel() for p in params.values()),
        param_bytes=sum(tensor_bytes(p) for p in unique.values()),
        predicted_peak_activation_bytes=counter.storages.peak_bytes,
        input_shapes=[tuple(t.shape) for t in tensors],
        measured_peak_activation_bytes=measured,
        module_calls=dict(counter.module_calls),
        python_calls=python_calls,
    )


def _expects(module: nn.Module) -> str:
    """What a first layer takes, in words (empty when the module type says nothing simple)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        dims = ", ".join(["H", "W", "D"][: len(module.kernel_size)])
        return f"expects (N, {module.in_channels}, {dims}) floating point"
    if isinstance(module, nn.Linear):
        return f"expects (..., {module.in_features}) floating point"
    if isinstance(module, nn.Embedding):
        return f"expects integer token ids in [0, {module.num_embeddings})"
    return ""


def _input_error(
    model: nn.Module, path: str, given: tuple[Any, ...], error: Exception
) -> InputShapeError:
    """One sentence: the inputs given, where the model rejected them, what that layer expects."""
    module = model.get_submodule(path) if path else model
    expected = _expects(module)
    what = type(module).__name__ + (f", which {expected}" if expected else "")
    where = f"in {path!r} ({what})" if path else f"({what})"
    reason = (str(error).strip().splitlines() or [""])[0][:300]
    shapes = ", ".join(describe_input(item) for item in given)
    return InputShapeError(
        f"{type(model).__name__} rejected inputs of shape {shapes} {where}: "
        f"{type(error).__name__}: {reason}. If the model expects another shape or dtype, "
        f"{INPUT_HINT}."
    )


__all__ = ["CostCounter", "CostTotals", "OpCost", "OpRecord", "ProfileReport", "cost_of", "profile"]
