"""Weight quantizers off the uniform grid: binary, ternary, powers of two, k-means codebooks.

Each returns integer codes plus what is needed to decode them, and has a matching decoder.
``axis`` keeps one scale per slice along that axis (per output channel for axis 0); None keeps
one per tensor. Codes are int8 (uint8 indices for codebooks), ready for ``pack_bits``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchslim.quantize.primitives import reduction_dims


def _mean_abs(x: Tensor, axis: int | None) -> Tensor:
    dims = reduction_dims(x.ndim, axis)
    return x.abs().mean(dims, keepdim=axis is not None)  # kept dims 1, or ()


def binary_quantize(weight: Tensor, axis: int | None = 0) -> tuple[Tensor, Tensor]:
    """Binary weights: sign(w) in {-1, +1} times a scale mean|w| (XNOR-Net, arXiv:1603.05279).

    mean|w| is the scale that minimises ||w - scale * sign(w)||^2. Zero weights get sign +1.

    Returns:
        (codes int8 in {-1, +1} of weight's shape, scale float32).
    """
    w = weight.detach().float()
    codes = torch.where(w >= 0, 1, -1).to(torch.int8)  # w.shape
    return codes, _mean_abs(w, axis)


def ternary_quantize(weight: Tensor, axis: int | None = 0) -> tuple[Tensor, Tensor]:
    """Ternary weights {-1, 0, +1} x scale (Ternary Weight Networks, arXiv:1605.04711).

    Threshold delta = 0.7 * mean|w| (the paper's approximation of the optimum for gaussian and
    uniform weights); the scale is the mean |w| of the weights above the threshold (0 if none).

    Returns:
        (codes int8 in {-1, 0, +1} of weight's shape, scale float32).
    """
    w = weight.detach().float()
    dims = reduction_dims(w.ndim, axis)
    keep = axis is not None
    delta = 0.7 * _mean_abs(w, axis)  # kept dims
    above = w.abs() > delta  # w.shape, bool
    kept_sum = (w.abs() * above).sum(dims, keepdim=keep)  # kept dims
    kept_count = above.sum(dims, keepdim=keep)  # kept dims
    scale = kept_sum / kept_count.clamp(min=1)  # kept dims
    codes = (torch.sign(w) * above).to(torch.int8)  # w.shape
    return codes, scale


def binary_dequantize(codes: Tensor, scale: Tensor) -> Tensor:
    """Float32 values codes * scale of :func:`binary_quantize` codes."""
    return codes.float() * scale  # codes.shape


def ternary_dequantize(codes: Tensor, scale: Tensor) -> Tensor:
    """Float32 values codes * scale of :func:`ternary_quantize` codes."""
    return codes.float() * scale  # codes.shape


def pow2_quantize(weight: Tensor, bits: int, axis: int | None = 0) -> tuple[Tensor, Tensor]:
    """Logarithmic quantization to signed powers of two (Miyashita et al., arXiv:1603.01025).

    A code is sign x level: code 0 is zero, code +-k (k = 1 .. 2^(bits-1) - 1) decodes to
    +-2^(max_exponent - k + 1). So one bit is the sign and bits - 1 bits the exponent offset;
    the largest exponent per slice is floor(log2(4/3 max|w|)) as in INQ (arXiv:1702.03044).
    Magnitudes round to the nearest power of two in linear terms (2^e covers [0.75, 1.5) x
    2^e); below half the smallest power they become zero. Decoded values are exact powers of
    two (no float scale), so multiplication becomes a shift.

    Returns:
        (codes int8 of weight's shape, max_exponent int32 with the kept dims).
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"pow2_quantize bits={bits}; allowed: 2..8.")
    w = weight.detach().float()
    dims = reduction_dims(w.ndim, axis)
    levels = 2 ** (bits - 1) - 1  # exponents available per slice
    amax = w.abs().amax(dims, keepdim=axis is not None)  # kept dims
    tiny = torch.finfo(torch.float32).tiny
    max_exponent = torch.floor(torch.log2((amax * 4 / 3).clamp(min=tiny)))  # kept dims
    exponent = torch.floor(torch.log2((w.abs() * 4 / 3).clamp(min=tiny)))  # w.shape
    exponent = torch.minimum(exponent, max_exponent)  # w.shape
    min_exponent = max_exponent - levels + 1  # kept dims
    is_zero = w.abs() < torch.exp2(min_exponent - 1)  # w.shape, bool; nearer 0 than 2^min
    exponent = torch.maximum(exponent, min_exponent)  # w.shape
    level = (max_exponent - exponent + 1) * ~is_zero  # w.shape, 0 = zero
    codes = (torch.where(w < 0, -level, level)).to(torch.int8)  # w.shape
    return codes, max_exponent.to(torch.int32)


def pow2_dequantize(codes: Tensor, max_exponent: Tensor) -> Tensor:
    """Float32 values sign(code) * 2^(max_exponent - |code| + 1), 0 for code 0."""
    magnitude = torch.exp2(max_exponent.float() - codes.abs().float() + 1)  # codes.shape
    return torch.sign(codes.float()) * magnitude  # codes.shape


def kmeans_quantize(
    weight: Tensor,
    bits: int,
    seed: int = 0,
    max_iterations: int = 30,
    sample_size: int = 65536,
) -> tuple[Tensor, Tensor]:
    """A 2^bits-entry codebook per tensor by 1-D Lloyd k-means (Deep Compression, arXiv:1510.00149).

    Centroids start evenly spaced between min and max (the paper's best initialisation, and
    deterministic). Lloyd iterations run on at most ``sample_size`` values drawn with ``seed``,
    so the fit is reproducible and bounded in time; every value is then assigned to its
    nearest centroid. An empty cluster keeps its previous centroid.

    Returns:
        (codebook float32 (2^bits,) sorted ascending, indices uint8 of weight's shape).
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"kmeans_quantize bits={bits}; allowed: 1..8.")
    values = weight.detach().float().reshape(-1)  # (N,)
    if values.numel() == 0:
        raise ValueError("kmeans_quantize needs a non-empty tensor.")
    sample = values
    if values.numel() > sample_size:
        generator = torch.Generator().manual_seed(seed)
        picked = torch.randperm(values.numel(), generator=generator)[:sample_size]  # (S,)
        sample = values[picked]  # (S,)
    clusters = 2**bits
    codebook = torch.linspace(values.min().item(), values.max().item(), clusters)  # (K,)
    spread = float(values.max() - values.min())
    for _ in range(max_iterations):
        assignment = _nearest(sample, codebook)  # (S,)
        sums = torch.bincount(assignment, weights=sample, minlength=clusters)  # (K,)
        counts = torch.bincount(assignment, minlength=clusters)  # (K,)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)  # (K,)
        updated = updated.float().sort().values  # (K,)
        moved = (updated - codebook).abs().max().item()
        codebook = updated
        if moved <= 1e-6 * spread:
            break
    indices = _nearest(values, codebook).to(torch.uint8).reshape(weight.shape)  # weight.shape
    return codebook, indices


def _nearest(values: Tensor, sorted_codebook: Tensor) -> Tensor:
    """Index of the nearest centroid, by the midpoints between sorted centroids."""
    midpoints = (sorted_codebook[1:] + sorted_codebook[:-1]) / 2  # (K-1,)
    return torch.searchsorted(midpoints, values)  # values.shape, int64


def kmeans_dequantize(codebook: Tensor, indices: Tensor) -> Tensor:
    """Float32 values codebook[indices]."""
    return codebook[indices.long()]  # indices.shape
