"""Batches of in-memory data: inputs that are a tensor or a tuple of tensors, and how a global
batch splits into micro-batches and per-rank slices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import torch

if TYPE_CHECKING:
    from torchslim.train.distributed import DistributedContext

Inputs = Union[torch.Tensor, tuple[torch.Tensor, ...]]  # noqa: UP007 (a runtime alias on 3.10)


def input_count(inputs: Inputs) -> int:
    """Examples in ``inputs`` (the first dimension)."""
    return len(inputs[0]) if isinstance(inputs, tuple) else len(inputs)


def take(inputs: Inputs, index: torch.Tensor) -> Inputs:
    """The examples ``index`` of a tensor or of every tensor of a tuple."""
    if isinstance(inputs, tuple):
        return tuple(t[index] for t in inputs)
    return inputs[index]


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, tuple):
        return tuple(t.to(device) for t in inputs)
    return inputs.to(device)


def call_model(model: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
    """``model(*inputs)`` for a tuple, ``model(inputs)`` for a tensor."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def rank_slices(
    batch_size: int, micro_batches: int, dist: DistributedContext
) -> list[tuple[torch.Tensor, float]]:
    """This rank's (indices into the batch, loss weight) for each micro-batch of a global batch.

    The weight ``local * world / global`` makes the mean over ranks (what DDP's gradient
    all-reduce computes) of the summed micro-batch losses equal the mean loss of the whole
    global batch, for any split. A rank whose slice is empty (a last batch smaller than the
    world) runs one example at weight 0, so every rank still joins the all-reduce.
    """
    slices = []
    for piece in torch.arange(batch_size).tensor_split(micro_batches):
        if len(piece) == 0:
            continue
        local = piece.tensor_split(dist.world_size)[dist.rank]
        weight = len(local) * dist.world_size / batch_size
        slices.append((local, weight) if len(local) else (piece[:1], 0.0))
    return slices
