"""The packed file: ``MAGIC``, a SHA-256 of everything after it, the zlib-compressed JSON header
(every tensor's layout, streams and sizes), then the byte blocks in order. No pickle."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import torch

from torchslim._io import atomic_path
from torchslim.errors import ModelLoadError
from torchslim.pack.layout import decode_tensor, encode_tensor
from torchslim.pack.streams import CODERS

MAGIC = b"TSLMPACK"
FORMAT_VERSION = 1
_DIGEST = 32


def encode_state(
    state: dict[str, torch.Tensor], coders: tuple[str, ...] = CODERS
) -> tuple[bytes, list[dict[str, Any]]]:
    """The packed file's bytes and one record per tensor (``name``, ``layout``, ``bytes``...);
    a tensor that is an earlier one (tied or shared weights) is stored once, as an alias."""
    records: list[dict[str, Any]] = []
    blocks: list[bytes] = []
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            records.append({"name": name, "alias_of": seen[key], "bytes": 0, "blocks": []})
            continue
        seen[key] = name
        record, tensor_blocks = encode_tensor(tensor, coders)
        record["name"] = name
        record["blocks"] = [len(b) for b in tensor_blocks]
        records.append(record)
        blocks.extend(tensor_blocks)
    header = zlib.compress(json.dumps({"version": FORMAT_VERSION, "tensors": records}).encode(), 9)
    body = struct.pack("<I", len(header)) + header + b"".join(blocks)
    return MAGIC + hashlib.sha256(body).digest() + body, records


def write_packed(
    path: str | Path, state: dict[str, torch.Tensor], coders: tuple[str, ...] = CODERS
) -> list[dict[str, Any]]:
    """Write ``state`` packed to ``path`` atomically; the per-tensor records."""
    data, records = encode_state(state, coders)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return records


def read_packed(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict a packed file holds, bit for bit.

    Raises:
        ModelLoadError: not a packed file, a checksum that does not match (a corrupt or
            truncated file), or a newer format version.
    """
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ModelLoadError(f"{path} is not a torchslim packed file (no {MAGIC!r} header)")
    digest, body = data[len(MAGIC) : len(MAGIC) + _DIGEST], data[len(MAGIC) + _DIGEST :]
    if hashlib.sha256(body).digest() != digest:
        raise ModelLoadError(
            f"{path}: checksum mismatch, the packed file is corrupt or truncated; write it again "
            "(torchslim compress with a pack stage)"
        )
    try:
        return _decode(body)
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError, zlib.error) as error:
        raise ModelLoadError(f"{path}: malformed packed file ({error})") from error


def _decode(body: bytes) -> dict[str, torch.Tensor]:
    (length,) = struct.unpack("<I", body[:4])
    header = json.loads(zlib.decompress(body[4 : 4 + length]))
    if header.get("version", 0) > FORMAT_VERSION:
        raise ModelLoadError(
            f"packed format version {header.get('version')}; this torchslim reads up to "
            f"{FORMAT_VERSION}: upgrade torchslim"
        )
    offset = 4 + length
    state: dict[str, torch.Tensor] = {}
    for record in header["tensors"]:
        if "alias_of" in record:
            state[record["name"]] = state[record["alias_of"]]
            continue
        blocks = []
        for size in record["blocks"]:
            blocks.append(body[offset : offset + size])
            offset += size
        state[record["name"]] = decode_tensor(record, blocks)
    return state
