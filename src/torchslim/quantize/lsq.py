"""Learned step size quantization (LSQ, Esser et al., arXiv:1902.08153): a fake-quant whose scale
gets a gradient.

out = (clamp(round(x / s + z), qmin, qmax) - z) * s with round's gradient passed straight through
(STE) and the scale's gradient multiplied by g = 1 / sqrt(numel(x) * qmax) (the paper's gradient
scale, per scale element: numel counts the elements that share one scale).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.primitives import from_groups, to_groups


def _scale_gradient(value: Tensor, factor: float) -> Tensor:
    """``value`` in the forward pass; its gradient multiplied by ``factor`` in the backward."""
    return (value - value * factor).detach() + value * factor


def _round_ste(value: Tensor) -> Tensor:
    return (torch.round(value) - value).detach() + value


def lsq_fake_quantize(x: Tensor, fmt: QuantFormat, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Fake-quantize ``x`` to an "int" format with a learnable ``scale`` (any granularity).

    Args:
        x: the tensor (weights or activations).
        fmt: kind "int"; group granularity views ``x`` through ``to_groups``.
        scale: float32, shaped to broadcast against ``x`` (or its (C, G, g) group view); may
            require grad.
        zero_point: same shape; fixed (not learned).

    Returns:
        The fake-quantized tensor of x's shape; differentiable in ``x`` (STE inside the range)
        and in ``scale``.
    """
    if fmt.granularity == "group":
        assert fmt.group_size is not None
        grouped = to_groups(x, fmt.group_size, fmt.channel_axis)  # (C, G, g)
        out = _lsq_flat(grouped, fmt, scale, zero_point)  # (C, G, g)
        return from_groups(out, x.shape, fmt.channel_axis)  # x.shape
    return _lsq_flat(x, fmt, scale, zero_point)


def _lsq_flat(x: Tensor, fmt: QuantFormat, scale: Tensor, zero_point: Tensor) -> Tensor:
    shared = max(1, x.numel() // max(1, scale.numel()))  # elements per scale
    factor = 1.0 / math.sqrt(shared * max(1, fmt.qmax))
    step = _scale_gradient(scale.clamp(min=torch.finfo(torch.float32).tiny), factor)  # scale.shape
    zero = zero_point.to(x.dtype)  # scale.shape
    levels = torch.clamp(x / step + zero, fmt.qmin, fmt.qmax)  # x.shape
    return (_round_ste(levels) - zero) * step  # x.shape
