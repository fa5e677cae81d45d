"""A transformers model's fp32 weights read from a GGUF one tensor at a time.

transformers' own GGUF loading dequantizes every tensor into a dict before it fills the model,
so the process holds the checkpoint twice while loading (SmolLM2-135M: 1265 MiB peak for a
513 MiB model). Here the GGUF is memory-mapped and each tensor is dequantized (and, for
LLaMA's q/k, un-permuted by transformers' own tensor processor) only when asked for, so a
model skeleton on ``meta`` can be filled tensor by tensor, or block by block while a
calibration walks it (:mod:`torchslim.quantize.stream`).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from torchslim.errors import ModelLoadError


class TensorSource(Protocol):
    """Where a skeleton's parameters come from: state-dict names and one tensor at a time."""

    def names(self) -> set[str]: ...

    def tensor(self, name: str) -> Tensor: ...


class GGUFWeights:
    """Name -> fp32 tensor of ``model`` (a transformers model, e.g. on ``meta``) from ``path``.

    Names are those of ``model.state_dict()`` with ``prefix`` in front (the name the model has
    inside a wrapper, e.g. ``"model."``). Tied weights absent from the file (an LM head sharing
    the embedding) are absent here too: the caller ties them.
    """

    def __init__(self, path: str | Path, model: Any, prefix: str = "") -> None:
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        self.path = Path(path)
        architecture, infos = _read_header(self.path)
        config = model.config.to_dict()
        self._processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
        mapping = _name_map(model, architecture)  # GGUF name -> HF name
        self._mapping = mapping
        self._tensors = {prefix + mapping[i.name]: i for i in infos if i.name in mapping}

    def names(self) -> set[str]:
        return set(self._tensors)

    def tensor(self, name: str) -> Tensor:
        """The fp32 tensor ``name``, dequantized now (a fresh CPU tensor the caller owns)."""
        import numpy as np
        from gguf import GGMLQuantizationType, dequantize

        if name not in self._tensors:
            raise ModelLoadError(f"{self.path.name} has no tensor for {name!r}")
        stored = self._tensors[name]
        data = stored.data(self.path)
        weights = dequantize(data, GGMLQuantizationType(stored.ggml_type))
        processed = self._processor.process(
            weights=weights, name=stored.name, tensor_key_mapping=self._mapping,
            parsed_parameters={"tensors": {}, "config": {}},
        )  # fmt: skip
        return torch.from_numpy(np.array(processed.weights, dtype=np.float32))  # owned copy


def _name_map(model: Any, architecture: str) -> dict[str, str]:
    """GGUF tensor name -> the model's state-dict name, by gguf-py's name table. (transformers'
    ``get_gguf_hf_weights_map`` does the same but rebuilds a state dict per submodule: ~20 s.)"""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == architecture), None)
    if arch is None:
        raise ModelLoadError(f"GGUF architecture {architecture!r} is unknown to gguf-py")
    table = get_tensor_name_map(arch, model.config.num_hidden_layers)
    mapping = {}
    for hf_name in model.state_dict(keep_vars=True):
        stem, _, suffix = hf_name.rpartition(".")
        parts = stem.split(".")
        for start in range(len(parts)):  # "model.layers.0.mlp.up_proj", then without "model."
            found = table.get_name(".".join(parts[start:]))
            if found is not None:
                mapping[f"{found}.{suffix}"] = hf_name
                break
    return mapping


@dataclass(frozen=True)
class _TensorInfo:
    """Where one tensor lies in a GGUF and how it is stored."""

    name: str
    dims: tuple[int, ...]  # GGUF order: fastest-varying first
    ggml_type: int
    offset: int  # absolute, in bytes

    def data(self, path: Path) -> Any:
        """The stored bytes (quantized types) or values, memory-mapped, in numpy's shape."""
        import numpy as np
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        kind = GGMLQuantizationType(self.ggml_type)
        shape = tuple(reversed(self.dims))
        plain = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
        if kind in plain:
            return np.memmap(path, dtype=plain[kind], mode="r", offset=self.offset, shape=shape)
        block, type_bytes = GGML_QUANT_SIZES[kind]
        byte_shape = (*shape[:-1], shape[-1] // block * type_bytes)
        return np.memmap(path, dtype=np.uint8, mode="r", offset=self.offset, shape=byte_shape)


# GGUF value types (gguf.constants.GGUFValueType) -> struct format of a scalar
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
            10: "Q", 11: "q", 12: "d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


def _read_header(path: Path) -> tuple[str, list[_TensorInfo]]:
    """The architecture and tensor table of a GGUF (v2/v3). Only the header is read; the
    vocabulary's arrays are skipped over, not parsed into objects (GGUFReader builds one numpy
    view per token: seconds and ~100 MiB for a 49 k vocabulary)."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            return _parse_header(path, view)
        finally:
            view.release()  # the map closes only without views on it


def _parse_header(path: Path, view: memoryview) -> tuple[str, list[_TensorInfo]]:
    if bytes(view[:4]) != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (magic {bytes(view[:4])!r})")
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", view, 4)
    if version < 2:
        raise ModelLoadError(f"{path}: GGUF version {version} is not supported (need >= 2)")
    position, values = 24, {}
    for _ in range(kv_count):
        key, position = _string(view, position)
        (kind,), position = struct.unpack_from("<I", view, position), position + 4
        value, position = _value(view, position, kind)
        if key in ("general.architecture", "general.alignment"):
            values[key] = value
    infos = []
    for _ in range(tensor_count):
        name, position = _string(view, position)
        (n_dims,) = struct.unpack_from("<I", view, position)
        dims = struct.unpack_from(f"<{n_dims}Q", view, position + 4)
        ggml_type, offset = struct.unpack_from("<IQ", view, position + 4 + 8 * n_dims)
        position += 4 + 8 * n_dims + 12
        infos.append((name, tuple(dims), ggml_type, offset))
    alignment = int(values.get("general.alignment", 32))
    start = -(-position // alignment) * alignment  # the data section, aligned
    tensors = [_TensorInfo(n, d, t, start + o) for n, d, t, o in infos]
    return str(values.get("general.architecture", "")), tensors


def _string(view: memoryview, position: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", view, position)
    start = position + 8
    return bytes(view[start : start + length]).decode("utf-8", "replace"), start + length


def _value(view: memoryview, position: int, kind: int) -> tuple[Any, int]:
    if kind == _STRING:
        return _string(view, position)
    if kind == _ARRAY:
        item_kind, count = struct.unpack_from("<IQ", view, position)
        position += 12
        if item_kind in _SCALARS:  # skipped in one step
            return None, position + count * struct.calcsize("<" + _SCALARS[item_kind])
        for _ in range(count):
            _, position = _value(view, position, item_kind)
        return None, position
    if kind not in _SCALARS:
        raise ModelLoadError(f"GGUF value type {kind} is unknown (corrupt file?)")
    fmt = "<" + _SCALARS[kind]
    return struct.unpack_from(fmt, view, position)[0], position + struct.calcsize(fmt)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with their parameters on ``meta`` and their buffers (rotary tables) real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def materialize_(
    root: nn.Module, weights: TensorSource, prefix: str = "", module: nn.Module | None = None,
    skip: str | None = None,
) -> int:  # fmt: skip
    """Replace ``module``'s (default: ``root``'s) parameters on ``meta`` by the checkpoint's,
    one tensor at a time; ``prefix`` is ``module``'s name in ``root``; names starting with
    ``skip`` stay on ``meta``. Parameters already real are kept, and so are those the file
    lacks (tied to another: ``tie_`` after). Returns the bytes materialized."""
    module = root if module is None else module
    available = weights.names()
    total = 0
    for name, parameter in list(module.named_parameters()):
        full = prefix + name
        if not parameter.is_meta or full not in available or (skip and full.startswith(skip)):
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        tensor = weights.tensor(full).view(parameter.shape)
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=parameter.requires_grad)
        total += tensor.numel() * tensor.element_size()
    return total


def tie_(model: nn.Module) -> None:
    """Re-tie the shared weights (an LM head and its embedding) of the transformers model in
    ``model`` after its parameters were replaced."""
    for module in model.modules():
        tie = getattr(module, "tie_weights", None)
        if callable(tie):
            tie()
            return
