"""The packed file: ``MAGIC``, a SHA-256 of everything after it, the zlib-compressed JSON header
(every tensor's layout, streams and sizes), then the byte blocks in order. No pickle."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchslim._io import atomic_path
from torchslim.errors import ConfigError, ModelLoadError
from torchslim.pack.layout import INT_VIEWS, MAX_CODEBOOK, decode_tensor, encode_tensor
from torchslim.pack.streams import CODERS

MAGIC = b"TSLMPACK"
FORMAT_VERSION = 2  # 2: shared codebooks; a file without them is written as version 1
_DIGEST = 32


def encode_state(
    state: dict[str, torch.Tensor],
    coders: tuple[str, ...] = CODERS,
    codebook_groups: Sequence[Sequence[str]] = (),
) -> tuple[bytes, list[dict[str, Any]], list[dict[str, Any]]]:
    """The packed file's bytes, one record per tensor (``name``, ``layout``, ``bytes``...) and
    one per shared codebook (``codebook``, ``tensors``, ``entries``, ``bytes``).

    A tensor that is an earlier one (tied or shared weights) is stored once, as an alias.
    ``codebook_groups``: names of tensors sharing one codebook (the clustered layers of a group);
    the file holds it once, before the tensors, and each of them may index it (``codebook_ref``)
    where that is smaller than a codebook of its own. A codebook no tensor indexes is dropped.
    """
    books = shared_codebooks(state, codebook_groups)
    book_of = {name: (i, book) for i, (names, book) in enumerate(books) for name in names}
    records: list[dict[str, Any]] = []
    blocks: list[bytes] = []
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and key in seen:
            records.append({"name": name, "alias_of": seen[key], "bytes": 0, "blocks": []})
            continue
        seen[key] = name
        record, tensor_blocks = encode_tensor(tensor, coders, book_of.get(name))
        record["name"] = name
        record["blocks"] = [len(b) for b in tensor_blocks]
        records.append(record)
        blocks.extend(tensor_blocks)
    used = sorted({int(r["codebook_ref"]) for r in records if "codebook_ref" in r})
    renumber = {old: new for new, old in enumerate(used)}
    for record in records:
        if "codebook_ref" in record:
            record["codebook_ref"] = renumber[int(record["codebook_ref"])]
    book_blocks = [books[i][1].contiguous().view(torch.uint8).numpy().tobytes() for i in used]
    codebooks = [
        {"codebook": renumber[i], "tensors": books[i][0], "entries": len(books[i][1]),
         "bytes": len(data)}
        for i, data in zip(used, book_blocks, strict=True)
    ]  # fmt: skip
    fields: dict[str, Any] = {"version": 2 if codebooks else 1, "tensors": records}
    if codebooks:
        fields["codebooks"] = codebooks
    header = zlib.compress(json.dumps(fields).encode(), 9)
    body = struct.pack("<I", len(header)) + header + b"".join(book_blocks + blocks)
    return MAGIC + hashlib.sha256(body).digest() + body, records, codebooks


def shared_codebooks(
    state: dict[str, torch.Tensor], groups: Sequence[Sequence[str]]
) -> list[tuple[list[str], torch.Tensor]]:
    """(tensor names, sorted distinct non-zero bit patterns) of every group.

    Raises:
        ConfigError: a name not in ``state`` or in two groups, a group mixing dtypes or holding
            non-float tensors, or more than ``MAX_CODEBOOK`` distinct non-zero values.
    """
    books: list[tuple[list[str], torch.Tensor]] = []
    grouped: set[str] = set()
    for names in groups:
        names = list(names)
        missing = [n for n in names if n not in state]
        twice = [n for n in names if n in grouped]
        if missing or twice or not names:
            raise ConfigError(
                f"pack: codebook group {names}: tensors not in the state dict {missing}, "
                f"or in two groups {twice}"
            )
        grouped.update(names)
        tensors = [state[n].detach().cpu().contiguous() for n in names]
        if len({t.dtype for t in tensors}) != 1 or not tensors[0].is_floating_point():
            raise ConfigError(f"pack: codebook group {names} must hold float tensors of one dtype")
        view = INT_VIEWS[tensors[0].element_size()]
        bits = torch.cat([t.view(view).reshape(-1) for t in tensors])  # (n,) bit patterns
        book = torch.unique(bits[bits != 0])  # sorted
        if len(book) > MAX_CODEBOOK:
            raise ConfigError(
                f"pack: codebook group {names} holds {len(book)} distinct values; a shared "
                f"codebook holds at most {MAX_CODEBOOK} (cluster these layers first)"
            )
        books.append((names, book))
    return books


def write_packed(
    path: str | Path,
    state: dict[str, torch.Tensor],
    coders: tuple[str, ...] = CODERS,
    codebook_groups: Sequence[Sequence[str]] = (),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``state`` packed to ``path`` atomically; the records of its tensors and of its
    shared codebooks (see ``encode_state``)."""
    data, records, codebooks = encode_state(state, coders, codebook_groups)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return records, codebooks


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
    books: list[bytes] = []
    for book in header.get("codebooks", []):
        books.append(body[offset : offset + int(book["bytes"])])
        offset += int(book["bytes"])
    state: dict[str, torch.Tensor] = {}
    for record in header["tensors"]:
        if "alias_of" in record:
            state[record["name"]] = state[record["alias_of"]]
            continue
        blocks = []
        for size in record["blocks"]:
            blocks.append(body[offset : offset + size])
            offset += size
        state[record["name"]] = decode_tensor(record, blocks, books)
    return state
