"""Profiling: exact MACs/FLOPs, bytes moved, peak memory, roofline and latency prediction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from torchslim.evaluate.memory import peak_activation_bytes
from torchslim.profile.costs import OpCost, cost_of, tensor_bytes
from torchslim.profile.counter import CostCounter, OpRecord
from torchslim.profile.report import CostTotals, ProfileReport


def profile(
    model: nn.Module,
    example_inputs: Sequence[Any],
    name: str | None = None,
    measure_memory: bool = True,
) -> ProfileReport:
    """Count every ATen op of one forward pass of ``model`` on ``example_inputs``.

    Runs on whatever device the model and inputs are on, including ``meta`` (no memory, no
    compute: a model too big for this machine can be profiled). The measured peak activation
    memory needs real tensors and is skipped on meta.
    """
    inputs = tuple(example_inputs)
    counter = CostCounter(model)
    try:
        with torch.no_grad(), counter:  # not inference_mode: composite ops must decompose
            out = model(*inputs)
    finally:
        counter.remove_hooks()
    outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    unique = {id(p): p for p in [*model.parameters(), *model.buffers()]}
    on_meta = any(t.device.type == "meta" for t in [*tensors, *unique.values()])
    measured = None
    if measure_memory and not on_meta:
        measured = peak_activation_bytes(lambda: model(*inputs), [*tensors, *unique.values()])
    params = {id(p): p for p in model.parameters()}
    return ProfileReport(
        model=name or type(model).__name__,
        records=counter.records,
        params=sum(p.numel() for p in params.values()),
        param_bytes=sum(tensor_bytes(p) for p in unique.values()),
        predicted_peak_activation_bytes=counter.lifetimes.peak_bytes(len(counter.records), outputs),
        input_shapes=[tuple(t.shape) for t in tensors],
        measured_peak_activation_bytes=measured,
        module_calls=dict(counter.module_calls),
    )


__all__ = ["CostCounter", "CostTotals", "OpCost", "OpRecord", "ProfileReport", "cost_of", "profile"]
