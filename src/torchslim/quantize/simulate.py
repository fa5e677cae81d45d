"""One call for "what does this format do to this tensor": simulated quantization of any kind."""

from __future__ import annotations

import torch
from torch import Tensor

from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.nonuniform import (
    binary_dequantize,
    binary_quantize,
    kmeans_dequantize,
    kmeans_quantize,
    pow2_dequantize,
    pow2_quantize,
    ternary_dequantize,
    ternary_quantize,
)
from torchslim.quantize.primitives import (
    dynamic_qparams,
    fake_quantize,
    from_groups,
    to_groups,
)


def quantize_dequantize(x: Tensor, fmt: QuantFormat) -> Tensor:
    """``x`` after a round trip through ``fmt``, with parameters taken from ``x`` itself.

    int/fp8 use the min-max range at the format's granularity (per token for "token": a row of
    the last dim; NaN/Inf raise ``NonFiniteInputError``); binary, ternary, pow2 and
    codebook use their own quantizers' rules (mean |w|, TWN threshold, max exponent, k-means).
    The result has x's shape and dtype and is differentiable by the straight-through
    estimator: for int/fp8 every value is inside its own min-max range, so the gradient is 1
    everywhere, and the weight-only kinds pass the gradient through unchanged.
    """
    if fmt.kind in ("int", "fp8"):
        scale, zero_point = dynamic_qparams(x, fmt)  # scale-shaped x 2
        return fake_quantize(x, fmt, scale, zero_point)
    if fmt.kind == "float":
        ones = torch.ones(())  # ()
        return fake_quantize(x, fmt, ones, torch.zeros((), dtype=torch.int32))
    with torch.no_grad():
        values = _weight_only_round_trip(x.detach().float(), fmt).to(x.dtype)  # x.shape
    return x + (values - x).detach()  # x.shape


def _weight_only_round_trip(x: Tensor, fmt: QuantFormat) -> Tensor:
    if fmt.kind == "codebook":  # one codebook per tensor (validated by QuantFormat)
        return kmeans_dequantize(*kmeans_quantize(x, fmt.bits))  # x.shape
    if fmt.granularity == "group":
        assert fmt.group_size is not None
        grouped = to_groups(x, fmt.group_size, fmt.channel_axis)  # (C, G, g)
        rows = grouped.reshape(-1, fmt.group_size)  # (C * G, g)
        values = _sliced_round_trip(rows, fmt, axis=0)  # (C * G, g)
        return from_groups(values.reshape(grouped.shape), x.shape, fmt.channel_axis)  # x.shape
    axis = fmt.channel_axis if fmt.granularity == "channel" else None
    return _sliced_round_trip(x, fmt, axis)


def _sliced_round_trip(x: Tensor, fmt: QuantFormat, axis: int | None) -> Tensor:
    if fmt.kind == "binary":
        return binary_dequantize(*binary_quantize(x, axis))  # x.shape
    if fmt.kind == "ternary":
        return ternary_dequantize(*ternary_quantize(x, axis))  # x.shape
    assert fmt.kind == "pow2", fmt.kind
    return pow2_dequantize(*pow2_quantize(x, fmt.bits, axis))  # x.shape
