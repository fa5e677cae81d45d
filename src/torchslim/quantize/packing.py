"""Dense bit packing of integer codes into uint8 bytes, so low-bit weights really shrink on disk.

Layout: one little-endian bit stream. Code i occupies bits [i * bits, (i + 1) * bits) of the
stream, and stream bit k is bit (k % 8) of byte k // 8. Every width 1..8 is packed densely —
3-bit codes take 3 bytes per 8 codes, no padding to 4 bits — so n codes take exactly
ceil(n * bits / 8) bytes. For 4 bits this is two codes per byte, the first in the low nibble.
Signed codes are stored in two's complement within their ``bits``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_CODES_PER_WORD = 8  # 8 codes of b bits fill exactly b bytes


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r}; allowed: an integer 1..8.")


def packed_size(numel: int, bits: int) -> int:
    """Bytes that :func:`pack_bits` uses for ``numel`` codes of ``bits`` bits."""
    _check_bits(bits)
    return math.ceil(numel * bits / 8)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes into a flat uint8 tensor of ceil(numel * bits / 8) bytes.

    Args:
        codes: any integer tensor whose values fit ``bits`` either unsigned [0, 2^bits - 1]
            or signed [-2^(bits-1), 2^(bits-1) - 1].
        bits: code width, 1..8.

    Raises:
        ValueError: a value does not fit ``bits``.
    """
    _check_bits(bits)
    if codes.is_floating_point() or codes.is_complex():
        raise ValueError(f"pack_bits needs integer codes, got dtype {codes.dtype}.")
    flat = codes.detach().reshape(-1).to(torch.int64)  # (N,)
    count = flat.numel()
    if count:
        low, high = int(flat.min()), int(flat.max())
        fits_unsigned = low >= 0 and high <= 2**bits - 1
        fits_signed = low >= -(2 ** (bits - 1)) and high <= 2 ** (bits - 1) - 1
        if not (fits_unsigned or fits_signed):
            raise ValueError(
                f"codes in [{low}, {high}] do not fit {bits} bits (unsigned 0..{2**bits - 1} "
                f"or signed {-(2 ** (bits - 1))}..{2 ** (bits - 1) - 1})."
            )
    fields = flat & (2**bits - 1)  # (N,) two's complement within bits
    fields = F.pad(fields, (0, -count % _CODES_PER_WORD)).view(-1, _CODES_PER_WORD)  # (W, 8)
    code_shifts = torch.arange(_CODES_PER_WORD) * bits  # (8,)
    # Disjoint bit fields: the sum is their OR. For bits = 8 the top byte wraps into the sign
    # bit of int64; the byte extraction below masks it back, so the wrap is harmless.
    words = (fields << code_shifts).sum(1)  # (W,)
    byte_shifts = torch.arange(bits) * 8  # (bits,)
    packed = ((words[:, None] >> byte_shifts) & 255).to(torch.uint8)  # (W, bits)
    return packed.reshape(-1)[: packed_size(count, bits)]  # (ceil(N * bits / 8),)


def unpack_bits(
    packed: Tensor, bits: int, shape: torch.Size | tuple[int, ...], signed: bool = False
) -> Tensor:
    """Inverse of :func:`pack_bits`: codes of ``shape``, uint8 (or int8 when ``signed``).

    Raises:
        ValueError: ``packed`` does not hold exactly ceil(numel(shape) * bits / 8) bytes.
    """
    _check_bits(bits)
    count = math.prod(shape)
    expected = packed_size(count, bits)
    if packed.dtype != torch.uint8 or packed.numel() != expected:
        raise ValueError(
            f"unpack_bits expects {expected} uint8 bytes for shape {tuple(shape)} at {bits} "
            f"bits, got {packed.numel()} of dtype {packed.dtype}."
        )
    words_needed = math.ceil(count / _CODES_PER_WORD)
    raw = F.pad(packed.reshape(-1).to(torch.int64), (0, words_needed * bits - expected))
    byte_shifts = torch.arange(bits) * 8  # (bits,)
    words = (raw.view(-1, bits) << byte_shifts).sum(1)  # (W,)
    code_shifts = torch.arange(_CODES_PER_WORD) * bits  # (8,)
    fields = (words[:, None] >> code_shifts) & (2**bits - 1)  # (W, 8)
    values = fields.reshape(-1)[:count]  # (N,)
    if signed:
        values = torch.where(values >= 2 ** (bits - 1), values - 2**bits, values)  # (N,)
    return values.to(torch.int8 if signed else torch.uint8).reshape(shape)  # shape


def pack_int4(codes: Tensor) -> Tensor:
    """Two 4-bit codes per byte, the first in the low nibble (``pack_bits(codes, 4)``)."""
    return pack_bits(codes, 4)


def unpack_int4(
    packed: Tensor, shape: torch.Size | tuple[int, ...], signed: bool = False
) -> Tensor:
    """Inverse of :func:`pack_int4`."""
    return unpack_bits(packed, 4, shape, signed)
