"""Checking a GGUF file before llama.cpp reads it: llama.cpp answers a bad file with a bare
"failed to load model" (or reads past the end of a cut-off one), so the header is walked here and
every fault is one ``ModelLoadError`` naming the file, what is wrong and how to fix it.

GGUF (little-endian): ``b"GGUF"``, version (u32), tensor count (u64), key/value count (u64), the
key/value pairs, each tensor's name, dimensions, block type and offset, then the tensor data from
the next multiple of ``general.alignment`` (default 32). Nothing in the file is executed: the
header is read with ``struct``, no pickle.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from torchslim.errors import ModelLoadError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # what llama.cpp (and gguf-py) read; version 1 is long gone
DEFAULT_ALIGNMENT = 32
HOW_TO_FIX = (
    "write it again (torchslim compress with a gguf stage, or llama.cpp's convert_hf_to_gguf.py)"
    " or copy the complete file"
)
# GGUF value type -> struct format of a scalar; 8 = string, 9 = array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor lies in a GGUF file and how it is stored."""

    name: str
    dims: tuple[int, ...]  # GGUF order: fastest-varying first
    ggml_type: int
    offset: int  # absolute, in bytes
    elements: int
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a sound GGUF file says."""

    version: int
    tensor_count: int
    parameters: int  # elements of every tensor (what the file's model has as parameters)
    data_end: int  # byte where the last tensor's data ends (<= the file's size)
    architecture: str = ""  # general.architecture
    tensors: tuple[GGUFTensor, ...] = ()


class _Truncated(Exception):
    """A read past the end of the file (turned into ModelLoadError with the file's name)."""


class _Cursor:
    """Little-endian reads from a byte buffer, raising _Truncated past its end."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data, self.offset = data, 0

    def read(self, fmt: str) -> int | float | bool:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise _Truncated(self.offset)
        (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = int(self.read("Q"))
        start = self.offset
        self.skip(length)
        return bytes(self.data[start : self.offset]).decode("utf-8", errors="replace")

    def value(self, kind: int) -> object:
        """The value of GGUF type ``kind``; arrays are skipped (None): only scalars are used."""
        if kind in _SCALARS:
            return self.read(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind} at byte {self.offset - 4}")
        item, count = int(self.read("I")), int(self.read("Q"))
        if item in _SCALARS:  # a tokenizer's scores: 100k floats, stepped over at once
            self.skip(count * struct.calcsize("<" + _SCALARS[item]))
        elif item == _STRING:  # its tokens and merges: only the lengths are read
            for _ in range(count):
                self.skip(int(self.read("Q")))
        else:
            for _ in range(count):
                self.value(item)
        return None

    def skip(self, size: int) -> None:
        if self.offset + size > len(self.data):
            raise _Truncated(self.offset)
        self.offset += size


def check_gguf(path: str | Path) -> GGUFHeader:
    """The header of the GGUF file ``path``, every tensor's data checked to lie in the file.

    Raises:
        ModelLoadError: no such file, not a GGUF file (magic), a version llama.cpp does not
            read, a cut-off header, an unknown block type, or tensor data past the end.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"no GGUF file at {file}: {HOW_TO_FIX}")
    size = file.stat().st_size
    if size < 24:  # magic, version, two counts
        raise ModelLoadError(f"{file} is truncated: {size} bytes, less than a GGUF header (24)")
    with file.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != MAGIC:
            raise ModelLoadError(
                f"{file} is not a GGUF file: it starts with {bytes(data[:4])!r}, a GGUF file with "
                f"{MAGIC!r}; point to the .gguf itself, or {HOW_TO_FIX}"
            )
        try:
            return _walk(file, data, size)
        except _Truncated as cut:
            raise ModelLoadError(
                f"{file} is truncated: its header runs past the end of the file ({size} bytes, "
                f"cut at byte {cut.args[0]}); {HOW_TO_FIX}"
            ) from None
        except ValueError as error:
            raise ModelLoadError(f"{file} is corrupt: {error}; {HOW_TO_FIX}") from None


def _walk(file: Path, data: mmap.mmap, size: int) -> GGUFHeader:
    cursor = _Cursor(data)
    cursor.offset = 4
    version = int(cursor.read("I"))
    if version not in VERSIONS:
        raise ModelLoadError(
            f"{file} is GGUF version {version}; llama.cpp reads versions "
            f"{' and '.join(map(str, VERSIONS))}: convert it with a current llama.cpp "
            "(convert_hf_to_gguf.py) or export it again with torchslim"
        )
    tensor_count, kv_count = int(cursor.read("Q")), int(cursor.read("Q"))
    alignment, architecture = DEFAULT_ALIGNMENT, ""
    for _ in range(kv_count):
        key = cursor.string()
        value = cursor.value(int(cursor.read("I")))
        if key == "general.alignment" and isinstance(value, int):
            alignment = value
        if key == "general.architecture" and isinstance(value, str):
            architecture = value
    infos = [_tensor_info(cursor) for _ in range(tensor_count)]
    start = -(-cursor.offset // alignment) * alignment  # the data section, aligned
    tensors = tuple(GGUFTensor(n, d, k, start + o, e, b) for n, d, k, o, e, b in infos)
    end = max((t.offset + t.nbytes for t in tensors), default=start)
    if end > size:
        raise ModelLoadError(
            f"{file} is truncated: {size} bytes, but its {tensor_count} tensors end at byte "
            f"{end}; {HOW_TO_FIX}"
        )
    parameters = sum(t.elements for t in tensors)
    return GGUFHeader(version, tensor_count, parameters, end, architecture, tensors)


def _tensor_info(cursor: _Cursor) -> tuple[str, tuple[int, ...], int, int, int, int]:
    """(name, dims, block type, offset in the data section, elements, bytes) of the next tensor
    description."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    name = cursor.string()
    dims = [int(cursor.read("Q")) for _ in range(int(cursor.read("I")))]
    kind, offset = int(cursor.read("I")), int(cursor.read("Q"))
    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise ValueError(f"tensor {name!r} has an unknown block type {kind}") from None
    elements = math.prod(dims)
    return name, tuple(dims), kind, offset, elements, elements // block * block_bytes
