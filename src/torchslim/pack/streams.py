"""One symbol stream (codes, index gaps, raw bytes) coded by whichever coder is smallest:
canonical Huffman, zstd, or fixed-width bit packing. The sizes of all of them are recorded."""

from __future__ import annotations

from typing import Any

import numpy as np

from torchslim.errors import MissingAssetError, ModelLoadError
from torchslim.pack import huffman

ZSTD_LEVEL = 19
CODERS = ("huffman", "zstd", "fixed")  # "fixed" (bit packing) is always allowed


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def encode_symbols(
    symbols: np.ndarray, alphabet: int, coders: tuple[str, ...] = CODERS
) -> tuple[dict[str, Any], bytes]:
    """(record, bytes) of the smallest coding of ``symbols`` (ints in [0, alphabet)) among
    ``coders`` (zstd only where the zstandard package is installed)."""
    width = max(1, int(alphabet - 1).bit_length())
    candidates = {"fixed": _bitpack(symbols, width)}
    if "huffman" in coders:
        lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
        candidates["huffman"] = lengths.astype(np.uint8).tobytes() + huffman.encode(
            symbols, lengths
        )
    zstd = _zstd()
    if zstd is not None and alphabet <= 256 and "zstd" in coders:
        candidates["zstd"] = zstd.ZstdCompressor(level=ZSTD_LEVEL).compress(
            symbols.astype(np.uint8).tobytes()
        )
    coder = min(candidates, key=lambda name: len(candidates[name]))
    sizes = {name: len(data) for name, data in candidates.items()}
    record = {"coder": coder, "count": len(symbols), "alphabet": alphabet, "sizes": sizes,
              "bytes": sizes[coder]}  # fmt: skip
    return record, candidates[coder]


def decode_symbols(record: dict[str, Any], data: bytes) -> np.ndarray:
    count, alphabet, coder = int(record["count"]), int(record["alphabet"]), record["coder"]
    if coder == "huffman":
        lengths = np.frombuffer(data[:alphabet], dtype=np.uint8).astype(np.int64)
        return huffman.decode(data[alphabet:], lengths, count)
    if coder == "fixed":
        return _bitunpack(data, max(1, int(alphabet - 1).bit_length()), count)
    if coder == "zstd":
        raw = _zstd_module().ZstdDecompressor().decompress(data, max_output_size=count)
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    raise ModelLoadError(f"packed file: unknown stream coder {coder!r}")


def encode_bytes(data: bytes, coders: tuple[str, ...] = CODERS) -> tuple[dict[str, Any], bytes]:
    """Raw bytes (an unshared tensor) stored as they are or zstd-compressed if smaller."""
    sizes = {"none": len(data)}
    best, coder = data, "none"
    zstd = _zstd()
    if zstd is not None and "zstd" in coders:
        packed = zstd.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
        sizes["zstd"] = len(packed)
        if len(packed) < len(data):
            best, coder = packed, "zstd"
    return {"coder": coder, "count": len(data), "sizes": sizes, "bytes": len(best)}, best


def decode_bytes(record: dict[str, Any], data: bytes) -> bytes:
    if record["coder"] == "none":
        return data
    if record["coder"] == "zstd":
        raw: bytes = (
            _zstd_module().ZstdDecompressor().decompress(data, max_output_size=int(record["count"]))
        )
        return raw
    raise ModelLoadError(f"packed file: unknown byte coder {record['coder']!r}")


def _zstd_module() -> Any:
    zstd = _zstd()
    if zstd is None:
        raise MissingAssetError(
            "this packed file holds zstd streams: pip install zstandard (or torchslim[pack])"
        )
    return zstd


def _bitpack(symbols: np.ndarray, width: int) -> bytes:
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)  # MSB first
    bits = ((symbols[:, None].astype(np.int64) >> shifts) & 1).astype(np.uint8)  # (n, width)
    return np.packbits(bits.reshape(-1)).tobytes()


def _bitunpack(data: bytes, width: int, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * width]
    weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
    return (bits.reshape(count, width).astype(np.int64) * weights).sum(axis=1)
