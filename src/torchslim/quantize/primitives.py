"""Quantization math on plain tensors: scales, integer and fp8 round trips, groups, SQNR.

Affine integer quantization as in Jacob et al., arXiv:1712.05877; fp8 e4m3/e5m2 with a scale to
the format's largest finite value as in Micikevicius et al., arXiv:2209.05433.

Conventions:
- Scales are float32, zero points int32, both shaped to broadcast against the tensor they
  quantize: shape () per tensor; per channel, ``x.ndim`` dims with the channel count at the
  channel axis and 1 elsewhere; per group, (C, groups, 1) against :func:`to_groups`'s
  (C, groups, group_size) view; per token, x's shape with 1 in the last dim (x.shape[:-1], 1).
- Zero is always exactly representable: a range is widened to include 0 before scales are chosen.
- An empty range (an all-zero channel) gets scale 1, so no scale is 0 and nothing becomes inf/nan.
- Symmetric int scales follow torchao: scale = max|x| / ((qmax - qmin) / 2), e.g. max|x| / 127.5
  for int8, so the grid reaches max|x| on the negative side and max|x| - scale/2 on the positive.
- Rounding is round-half-to-even (``torch.round``), as in torch's own quantize ops.
- Fake quantization uses the straight-through estimator (Bengio et al., arXiv:1308.3432):
  gradient 1 where the input is inside the representable range, 0 where it is clipped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from torchslim.errors import ConfigError, NonFiniteInputError
from torchslim.quantize.formats import QuantFormat

_RANGED_KINDS = ("int", "fp8")  # kinds whose parameters are (scale, zero_point) from a range


def reduction_dims(ndim: int, axis: int | None) -> tuple[int, ...]:
    """The dims to reduce over to keep one statistic per slice along ``axis`` (None: all)."""
    if axis is None:
        return tuple(range(ndim))
    kept = axis % ndim
    return tuple(d for d in range(ndim) if d != kept)


def to_groups(x: Tensor, group_size: int, axis: int = 0) -> Tensor:
    """View ``x`` as (channels, groups, group_size): each channel's elements, in memory order.

    Raises:
        ConfigError: ``group_size`` does not divide the elements per channel (no padding).
    """
    moved = x.movedim(axis, 0)  # (C, ...)
    channels = moved.shape[0]
    per_channel = moved[0].numel() if channels else 0
    if per_channel % group_size:
        divisors = [d for d in range(per_channel, 0, -1) if per_channel % d == 0][:6]
        raise ConfigError(
            f"group_size={group_size} does not divide the {per_channel} elements per channel "
            f"of a tensor of shape {tuple(x.shape)} (axis {axis}); use a divisor such as "
            f"{divisors} or granularity 'channel'."
        )
    return moved.reshape(channels, per_channel // group_size, group_size)  # (C, G, g)


def from_groups(grouped: Tensor, shape: torch.Size | tuple[int, ...], axis: int = 0) -> Tensor:
    """Inverse of :func:`to_groups`: back to ``shape``."""
    axis = axis % len(shape)
    moved_shape = (shape[axis], *shape[:axis], *shape[axis + 1 :])
    return grouped.reshape(moved_shape).movedim(0, axis)  # shape


def reduce_min_max(x: Tensor, fmt: QuantFormat) -> tuple[Tensor, Tensor]:
    """Min and max of ``x`` at the format's granularity, shaped as the module docstring says."""
    x = x.detach().float()
    if fmt.granularity == "group":
        assert fmt.group_size is not None
        grouped = to_groups(x, fmt.group_size, fmt.channel_axis)  # (C, G, g)
        return grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)  # (C, G, 1) x 2
    if fmt.granularity == "token":  # one row per token: every dim but the last is kept
        return x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)  # (..., 1) x 2
    axis = fmt.channel_axis if fmt.granularity == "channel" else None
    dims = reduction_dims(x.ndim, axis)
    return x.amin(dims, keepdim=axis is not None), x.amax(dims, keepdim=axis is not None)


def dynamic_qparams(x: Tensor, fmt: QuantFormat) -> tuple[Tensor, Tensor]:
    """(scale, zero_point) of an int/fp8 ``fmt`` from ``x``'s own range at run time (dynamic
    quantization): per tensor, or per token (a row of the last dim) for granularity "token".

    Raises:
        NonFiniteInputError: ``x`` holds NaN or Inf (a NaN's row would get a NaN scale).
    """
    low, high = reduce_min_max(x, fmt)  # scale-shaped x 2
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        bad = int((~torch.isfinite(low) | ~torch.isfinite(high)).sum())
        where = f"{bad} of {low.numel()} tokens" if fmt.granularity == "token" else "the tensor"
        raise NonFiniteInputError(
            f"dynamic {fmt.short_name} quantization of a tensor of shape {tuple(x.shape)}: "
            f"{where} hold NaN or Inf, which have no scale; fix the layer or data producing "
            "them (e.g. an overflow in fp16) before quantizing."
        )
    return compute_qparams(low, high, fmt)


def compute_scale_zero_point(
    min_val: Tensor, max_val: Tensor, bits: int, symmetric: bool
) -> tuple[Tensor, Tensor]:
    """Affine int parameters for the range [min_val, max_val] (any broadcastable shapes).

    Returns:
        (scale float32, zero_point int32); zero_point is 0 when ``symmetric``.
    """
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    low = torch.clamp(torch.as_tensor(min_val, dtype=torch.float32), max=0.0)  # (...)
    high = torch.clamp(torch.as_tensor(max_val, dtype=torch.float32), min=0.0)  # (...)
    if symmetric:
        scale = torch.maximum(-low, high) / ((qmax - qmin) / 2)  # (...)
    else:
        scale = (high - low) / (qmax - qmin)  # (...)
    tiny = torch.finfo(torch.float32).tiny
    scale = torch.where(scale > 0, scale.clamp(min=tiny), torch.ones_like(scale))  # (...)
    if symmetric:
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax)  # (...)
    return scale, zero_point.to(torch.int32)


def compute_qparams(min_val: Tensor, max_val: Tensor, fmt: QuantFormat) -> tuple[Tensor, Tensor]:
    """(scale, zero_point) of an "int" or "fp8" format for the range [min_val, max_val].

    fp8 maps max|x| to the format's largest finite value (zero point 0).
    """
    if fmt.kind == "int":
        return compute_scale_zero_point(min_val, max_val, fmt.bits, fmt.symmetric)
    if fmt.kind == "fp8":
        low, high = torch.as_tensor(min_val).float(), torch.as_tensor(max_val).float()
        amax = torch.maximum(low.abs(), high.abs())  # (...)
        scale = amax / torch.finfo(fmt.torch_dtype).max  # (...)
        tiny = torch.finfo(torch.float32).tiny
        scale = torch.where(scale > 0, scale.clamp(min=tiny), torch.ones_like(scale))  # (...)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    raise ConfigError(
        f"kind {fmt.kind!r} has no (scale, zero_point); allowed kinds: {_RANGED_KINDS}."
    )


def _code_dtype(qmin: int, qmax: int) -> torch.dtype:
    if qmin >= -128 and qmax <= 127:
        return torch.int8
    if qmin >= 0 and qmax <= 255:
        return torch.uint8
    return torch.int32


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Integer codes clamp(round(x / scale) + zero_point, qmin, qmax) (int8, uint8 or int32)."""
    q = torch.round(x.float() / scale) + zero_point  # x.shape
    return q.clamp(qmin, qmax).to(_code_dtype(qmin, qmax))  # x.shape


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Float32 values (q - zero_point) * scale."""
    return (q.float() - zero_point) * scale  # q.shape


def float8_quantize(x: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """fp8 codes of x / scale, saturated to the format's finite range (no inf/nan codes)."""
    largest = torch.finfo(dtype).max
    return (x.float() / scale).clamp(-largest, largest).to(dtype)  # x.shape, fp8


def float8_dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """Float32 values of fp8 codes times their scale."""
    return q.float() * scale  # q.shape


def cast_round_trip(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` cast to float16/bfloat16 (saturating, so no inf) and back to x's dtype."""
    largest = torch.finfo(dtype).max
    return x.clamp(-largest, largest).to(dtype).to(x.dtype)  # x.shape


def round_trip(x: Tensor, fmt: QuantFormat, scale: Tensor, zero_point: Tensor) -> Tensor:
    """dequantize(quantize(x)) for an int/fp8 format, or the cast for float; no reshaping."""
    if fmt.kind == "int":
        codes = quantize(x, scale, zero_point, fmt.qmin, fmt.qmax)  # x.shape
        return dequantize(codes, scale, zero_point).to(x.dtype)  # x.shape
    if fmt.kind == "fp8":
        codes = float8_quantize(x, scale, fmt.torch_dtype)  # x.shape, fp8
        return float8_dequantize(codes, scale).to(x.dtype)  # x.shape
    if fmt.kind == "float":
        return cast_round_trip(x, fmt.torch_dtype)  # x.shape
    raise ConfigError(
        f"fake_quantize handles kinds 'int', 'fp8', 'float', not {fmt.kind!r}; "
        "use torchslim.quantize.quantize_dequantize for weight-only kinds."
    )


def representable_range(
    fmt: QuantFormat, scale: Tensor, zero_point: Tensor
) -> tuple[Tensor, Tensor]:
    """The interval whose values are rounded, not clipped (the STE passes gradient there)."""
    if fmt.kind == "int":  # as torch.fake_quantize_*: round(x / scale) + zp within [qmin, qmax]
        low = (fmt.qmin - 0.5 - zero_point) * scale  # scale.shape
        high = (fmt.qmax + 0.5 - zero_point) * scale  # scale.shape
        return low, high
    largest = torch.finfo(fmt.torch_dtype).max
    scale = scale if fmt.kind == "fp8" else torch.ones_like(scale)
    return -largest * scale, largest * scale


def fake_quantize(x: Tensor, fmt: QuantFormat, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Quantize-dequantize ``x`` in float, differentiable by the straight-through estimator.

    Args:
        x: the tensor; for granularity "group" it is viewed through :func:`to_groups`.
        fmt: an "int", "fp8" or "float" format (float ignores scale and zero point).
        scale: float32, broadcastable as the module docstring says.
        zero_point: int32, same shape as ``scale``.

    Returns:
        A tensor of x's shape and dtype; d(out)/d(x) is 1 inside the representable range, 0 out.
    """
    if fmt.granularity == "group":
        assert fmt.group_size is not None
        grouped = to_groups(x, fmt.group_size, fmt.channel_axis)  # (C, G, g)
        out = _fake_quantize_flat(grouped, fmt, scale, zero_point)  # (C, G, g)
        return from_groups(out, x.shape, fmt.channel_axis)  # x.shape
    return _fake_quantize_flat(x, fmt, scale, zero_point)


def _fake_quantize_flat(x: Tensor, fmt: QuantFormat, scale: Tensor, zero_point: Tensor) -> Tensor:
    with torch.no_grad():
        values = round_trip(x, fmt, scale, zero_point)  # x.shape
        low, high = representable_range(fmt, scale, zero_point)
        inside = (x >= low) & (x <= high)  # x.shape, bool
    passthrough = torch.where(inside, x, x.detach())  # x.shape; gradient only where inside
    return passthrough + (values - passthrough).detach()  # x.shape


def sqnr_db(reference: Tensor, approximation: Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum(ref^2) / sum((ref - approx)^2)) in dB.

    +inf when the approximation is exact; -inf when the reference is all zero but not matched.
    """
    reference = reference.detach().double()
    noise = (reference - approximation.detach().double()).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
