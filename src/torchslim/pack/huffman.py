"""Canonical Huffman coding of small-alphabet symbol streams (codes, index gaps), vectorised.

Code lengths are limited to ``MAX_BITS`` (rare symbols' counts are raised until the tree fits),
so decoding is one table look-up per symbol. Deep Compression's last stage (arXiv 1510.00149).
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_BITS = 16


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length of every symbol (0 for absent ones), at most ``MAX_BITS``."""
    counts = counts.astype(np.int64)
    floor = 0
    while True:
        lengths = _lengths(np.where(counts > 0, np.maximum(counts, floor), 0))
        if lengths.max(initial=0) <= MAX_BITS:
            return lengths
        floor = max(1, floor * 2, int(counts.sum()) >> MAX_BITS)


def _lengths(counts: np.ndarray) -> np.ndarray:
    present = [int(s) for s in np.flatnonzero(counts)]
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    heap = [(int(counts[s]), i, [s]) for i, s in enumerate(present)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        weight_a, _, members_a = heapq.heappop(heap)
        weight_b, _, members_b = heapq.heappop(heap)
        for symbol in members_a + members_b:
            lengths[symbol] += 1
        heapq.heappush(heap, (weight_a + weight_b, tie, members_a + members_b))
        tie += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol (shorter codes first, then by symbol)."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol], previous = code, int(lengths[symbol])
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """The bit stream of ``symbols`` (MSB first, zero-padded to a byte)."""
    codes = canonical_codes(lengths)
    sym_lengths = lengths[symbols]  # (n,)
    sym_codes = codes[symbols]  # (n,)
    starts = np.cumsum(sym_lengths) - sym_lengths  # (n,)
    bits = np.zeros(int(sym_lengths.sum()), dtype=np.uint8)
    for j in range(int(lengths.max(initial=0))):
        chosen = sym_lengths > j
        shift = sym_lengths[chosen] - 1 - j
        bits[starts[chosen] + j] = (sym_codes[chosen] >> shift) & 1
    return np.packbits(bits).tobytes()


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """``count`` symbols back from ``encode``'s bit stream."""
    width = int(lengths.max(initial=0))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)
    bits = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    windows = np.zeros(len(bits) - width, dtype=np.int64)  # the next `width` bits at each bit
    for j in range(width):
        windows = (windows << 1) | bits[j : j + len(windows)]
    table_symbol, table_length = _table(lengths, width)
    symbols = np.empty(count, dtype=np.int64)
    position = 0
    window_list, table_s, table_l = windows.tolist(), table_symbol.tolist(), table_length.tolist()
    for i in range(count):
        window = window_list[position]
        symbols[i] = table_s[window]
        position += table_l[window]
    return symbols


def _table(lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbol and code length of every ``width``-bit window (its prefix is the code)."""
    codes = canonical_codes(lengths)
    symbol = np.zeros(1 << width, dtype=np.int64)
    length = np.zeros(1 << width, dtype=np.int64)
    for s in np.flatnonzero(lengths):
        span = width - int(lengths[s])
        start = int(codes[s]) << span
        symbol[start : start + (1 << span)] = s
        length[start : start + (1 << span)] = lengths[s]
    return symbol, length
