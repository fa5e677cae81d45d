"""How one tensor is stored: ``raw`` bytes, ``codes`` (codebook + one code per element) or
``sparse`` (codebook + relative indices of the non-zero elements + their codes).

A codebook shared by several tensors (a group of clustered layers) is stored once in the file;
their records name it by ``codebook_ref`` and hold no codebook of their own.

Values are compared by their bit patterns, so the round trip is bit-exact (-0.0 and NaN kept).
Sparse indices are the gaps between non-zeros in ``index_bits`` bits; a gap too long for them is
bridged by a filler entry holding code 0 (an explicit zero), as in Deep Compression (arXiv
1510.00149, figure 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torchslim.pack import huffman, streams

MAX_CODEBOOK = 256
MIN_ELEMENTS = 64  # smaller tensors are stored raw: a codebook would not pay for itself
INT_VIEWS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


SharedBook = tuple[int, torch.Tensor]  # (index in the file, sorted bit patterns (k,))


def encode_tensor(
    tensor: torch.Tensor, coders: tuple[str, ...] = streams.CODERS, shared: SharedBook | None = None
) -> tuple[dict[str, Any], list[bytes]]:
    """(record, byte blocks) of the smallest layout of ``tensor``; with ``shared``, layouts
    that index that codebook (whose bytes the file holds once) are candidates too."""
    tensor = tensor.detach().cpu().contiguous()
    record: dict[str, Any] = {"dtype": str(tensor.dtype).removeprefix("torch."),
                              "shape": list(tensor.shape)}  # fmt: skip
    options = [_raw(tensor, coders)]
    if tensor.is_floating_point() and tensor.numel() >= MIN_ELEMENTS:
        bits = tensor.view(INT_VIEWS[tensor.element_size()]).reshape(-1)  # (n,) bit patterns
        values, inverse = torch.unique(bits, return_inverse=True)
        if len(values) <= MAX_CODEBOOK:
            options.append(_codes(values, inverse, coders))
        nonzero = bits != 0
        sparse = bool((~nonzero).any() and nonzero.any())
        if sparse and len(values) <= MAX_CODEBOOK:
            options.append(_sparse(bits, nonzero, coders))
        if shared is not None:
            options.append(_shared_codes(bits, nonzero, coders, shared))
        if shared is not None and sparse:
            options.append(_sparse(bits, nonzero, coders, shared))
    sizes = [sum(len(b) for b in option[1]) for option in options]
    layout, blocks = options[sizes.index(min(sizes))]
    record.update(layout)
    record["layout_sizes"] = {
        _option_name(o[0]): size for o, size in zip(options, sizes, strict=True)
    }
    record["bytes"] = sum(len(b) for b in blocks)
    return record, blocks


def book_codes(book: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """The index of every bit pattern in the sorted codebook ``book`` (all must be in it)."""
    codes = torch.searchsorted(book, bits).clamp_max(len(book) - 1)  # (n,)
    if not torch.equal(book[codes], bits):
        raise ValueError("a tensor of a codebook group holds a value its shared codebook lacks")
    return codes


def _option_name(layout: dict[str, Any]) -> str:
    return layout["layout"] + ("_shared_codebook" if "codebook_ref" in layout else "")


def _raw(tensor: torch.Tensor, coders: tuple[str, ...]) -> tuple[dict[str, Any], list[bytes]]:
    stream, data = streams.encode_bytes(
        tensor.reshape(-1).view(torch.uint8).numpy().tobytes(), coders
    )
    return {"layout": "raw", "streams": [stream]}, [data]


def _codebook_bytes(values: torch.Tensor) -> bytes:
    return values.contiguous().view(torch.uint8).numpy().tobytes()


def _codes(
    values: torch.Tensor, inverse: torch.Tensor, coders: tuple[str, ...]
) -> tuple[dict[str, Any], list[bytes]]:
    book = _codebook_bytes(values)
    symbols = inverse.numpy().astype(np.int64)
    stream, data = streams.encode_symbols(symbols, len(values), coders)
    layout = {"layout": "codes", "codebook": len(values), "streams": [stream]}
    return layout, [book, data]


def _shared_codes(
    bits: torch.Tensor, nonzero: torch.Tensor, coders: tuple[str, ...], shared: SharedBook
) -> tuple[dict[str, Any], list[bytes]]:
    """One code per element into the file's shared codebook (which holds no zero: where the
    tensor has zeros, symbol 0 is a zero and symbol i + 1 is entry i)."""
    ref, book = shared
    zeros = not bool(nonzero.all())
    codes = torch.zeros(bits.shape, dtype=torch.int64)  # (n,)
    codes[nonzero] = book_codes(book, bits[nonzero]) + int(zeros)
    stream, data = streams.encode_symbols(codes.numpy().astype(np.int64), len(book) + zeros, coders)
    layout = {"layout": "codes", "codebook": len(book), "codebook_ref": ref,
              "zero_symbol": zeros, "streams": [stream]}  # fmt: skip
    return layout, [data]


def _sparse(
    bits: torch.Tensor,
    nonzero: torch.Tensor,
    coders: tuple[str, ...],
    shared: SharedBook | None = None,
) -> tuple[dict[str, Any], list[bytes]]:
    if shared is None:
        values, codes = torch.unique(bits[nonzero], return_inverse=True)
    else:
        values, codes = shared[1], book_codes(shared[1], bits[nonzero])
    positions = torch.nonzero(nonzero).reshape(-1).numpy().astype(np.int64)  # (k,)
    skipped = np.diff(positions, prepend=-1) - 1  # zeros before each non-zero
    width = _best_index_bits(skipped)
    gaps, symbols = gap_streams(skipped, codes.numpy().astype(np.int64) + 1, width)
    gap_record, gap_data = streams.encode_symbols(gaps, 1 << width, coders)
    code_record, code_data = streams.encode_symbols(symbols, len(values) + 1, coders)
    layout = {"layout": "sparse", "codebook": len(values), "index_bits": width,
              "streams": [gap_record, code_record]}  # fmt: skip
    if shared is not None:
        layout["codebook_ref"] = shared[0]
        return layout, [gap_data, code_data]
    return layout, [_codebook_bytes(values), gap_data, code_data]


def gap_streams(
    skipped: np.ndarray, codes: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaps of at most 2^width - 1 and their codes, with fillers (code 0) for longer gaps."""
    span = 1 << width  # a filler consumes span - 1 skipped zeros and one explicit zero
    fillers = skipped // span  # (k,)
    ends = np.cumsum(fillers + 1) - 1  # where each real entry lands
    gaps = np.full(int(ends[-1]) + 1, span - 1, dtype=np.int64)
    symbols = np.zeros(int(ends[-1]) + 1, dtype=np.int64)
    gaps[ends] = skipped - fillers * span
    symbols[ends] = codes
    return gaps, symbols


def _best_index_bits(skipped: np.ndarray) -> int:
    """The gap width (1..8 bits) whose Huffman-coded gap and code streams are estimated smallest."""

    def cost(width: int) -> float:
        span = 1 << width
        fillers = skipped // span
        gaps = skipped - fillers * span  # (k,) each at most span - 1
        counts = np.bincount(gaps, minlength=span).astype(np.int64)
        counts[span - 1] += int(fillers.sum())
        lengths = huffman.code_lengths(counts)
        entries = len(skipped) + int(fillers.sum())
        return float((counts * lengths).sum()) + 4.0 * entries  # codes: ~4 bits per entry

    return min(range(1, 9), key=cost)


def decode_tensor(
    record: dict[str, Any], blocks: list[bytes], books: list[bytes] | None = None
) -> torch.Tensor:
    """The tensor ``encode_tensor`` stored, bit for bit (``books``: the file's shared
    codebooks, which a record may index by ``codebook_ref``)."""
    dtype = getattr(torch, record["dtype"])
    shape = tuple(record["shape"])
    if "codebook_ref" in record:
        blocks = [(books or [])[int(record["codebook_ref"])], *blocks]
    if record["layout"] == "raw":
        raw = streams.decode_bytes(record["streams"][0], blocks[0])
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
    int_view = INT_VIEWS[torch.empty(0, dtype=dtype).element_size()]
    values = torch.frombuffer(bytearray(blocks[0]), dtype=torch.uint8).view(int_view)
    count = int(np.prod(shape)) if shape else 1
    if record["layout"] == "codes" and record.get("zero_symbol"):
        coded = torch.from_numpy(streams.decode_symbols(record["streams"][0], blocks[1]))
        bits = torch.zeros(count, dtype=int_view)
        bits[coded > 0] = values[coded[coded > 0] - 1]
    elif record["layout"] == "codes":
        codes = streams.decode_symbols(record["streams"][0], blocks[1])
        bits = values[torch.from_numpy(codes)]
    else:
        gaps = streams.decode_symbols(record["streams"][0], blocks[1])
        symbols = streams.decode_symbols(record["streams"][1], blocks[2])
        positions = np.cumsum(gaps + 1) - 1
        real = symbols > 0
        bits = torch.zeros(count, dtype=int_view)
        bits[torch.from_numpy(positions[real])] = values[torch.from_numpy(symbols[real] - 1)]
    return bits.view(dtype).reshape(shape).clone()
