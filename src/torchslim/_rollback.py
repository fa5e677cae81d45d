"""Leave a model exactly as it was when an in-place transform fails, without a second copy of its
weights in memory.

A deep copy of the model doubles its memory for the whole transform (an LLM's calibration then
needs 2x the model before doing anything). Instead the module tree is copied *without* its
tensors (the copy shares every parameter and buffer object with the live model), and the
tensors' bytes go to a temporary file on disk. On failure the live model's attributes and
submodules come back from the tree copy and every saved tensor gets its bytes, shape, dtype and
``requires_grad`` back from the file, read tensor by tensor (one tensor's worth of memory).
Tensors without plain bytes (quantized, sparse, meta) are kept as in-memory clones instead.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import torch
from torch import Tensor, nn


@dataclass
class _Saved:
    """Where one tensor's bytes lie in the file (or its in-memory clone) and what it was."""

    tensor: Tensor
    shape: torch.Size
    dtype: torch.dtype
    requires_grad: bool
    offset: int = -1
    clone: Tensor | None = None


def _state_tensors(model: nn.Module) -> list[Tensor]:
    """Every parameter and buffer of every submodule, each object once."""
    tensors: dict[int, Tensor] = {}
    for module in model.modules():
        for tensor in [*module._parameters.values(), *module._buffers.values()]:
            if tensor is not None:
                tensors.setdefault(id(tensor), tensor)
    return list(tensors.values())


def _plain_bytes(tensor: Tensor) -> bool:
    """Whether the tensor's values can be written and read back as raw bytes."""
    return (
        tensor.layout == torch.strided
        and not tensor.is_quantized
        and not tensor.is_meta
        and type(tensor) in (Tensor, nn.Parameter)
    )


def _byte_view(tensor: Tensor) -> Tensor:
    """The bytes of a contiguous CPU tensor, without a copy: (nbytes,) uint8."""
    return tensor.reshape(-1).view(torch.uint8)


def _write(tensors: list[Tensor], file: BinaryIO) -> list[_Saved]:
    saved = []
    for tensor in tensors:
        record = _Saved(tensor, tensor.shape, tensor.dtype, tensor.requires_grad)
        if _plain_bytes(tensor):
            record.offset = file.tell()
            data = tensor.detach().cpu().contiguous()  # a copy only off CPU or if strided
            file.write(_byte_view(data).numpy().data)
        else:
            record.clone = tensor.detach().clone()
        saved.append(record)
    file.flush()
    return saved


def _restore(saved: list[_Saved], file: BinaryIO) -> None:
    """Every saved tensor back to its saved shape, dtype and values, in place."""
    with torch.no_grad():
        for record in saved:
            tensor = record.tensor
            if tensor.shape != record.shape or tensor.dtype != record.dtype:
                tensor.data = torch.empty(record.shape, dtype=record.dtype, device=tensor.device)
            if record.clone is not None:
                tensor.data = record.clone
            elif tensor.numel():
                buffer = torch.empty(record.shape, dtype=record.dtype)  # CPU, contiguous
                file.seek(record.offset)
                file.readinto(_byte_view(buffer).numpy().data)  # type: ignore[attr-defined]
                tensor.copy_(buffer)
            tensor.requires_grad_(record.requires_grad)


@contextmanager
def untouched_on_failure(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s parameters, buffers, submodules and attributes if the body raises.

    For in-place transforms (``quantize_``, ``prune_``) that may swap modules, reshape weights
    or write into them. Costs the module tree without its tensors in memory and the tensors'
    bytes in a temporary file.
    """
    tensors = _state_tensors(model)
    tree = copy.deepcopy(model, memo={id(t): t for t in tensors})  # shares every tensor
    with tempfile.TemporaryFile(prefix="torchslim-rollback-") as file:  # gone when closed
        saved = _write(tensors, file)
        try:
            yield
        except BaseException:
            _restore(saved, file)
            model.__dict__.clear()
            model.__dict__.update(tree.__dict__)
            raise
