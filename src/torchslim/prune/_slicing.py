"""Physically slicing Conv/Linear/Embedding/norm modules and raw parameters to kept features."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from torchslim.prune.graph import DependencyGraph, Layout, Member


def keep_indices(
    graph: DependencyGraph, layout: Layout, keep: Mapping[int, torch.Tensor | None]
) -> torch.Tensor | None:
    """Kept feature indices of a tensor with ``layout`` (None when nothing is removed)."""
    pieces, offset, changed = [], 0, False
    for segment in layout:
        channels = keep.get(graph.root(segment.source))
        if channels is None:
            channels = torch.arange(segment.length)
        else:
            changed = True
        spans = channels[:, None] * segment.expand + torch.arange(segment.expand)  # (k, expand)
        pieces.append(offset + spans.flatten())
        offset += segment.length * segment.expand
    return torch.cat(pieces) if changed else None


def member_owner(member: Member) -> str:
    """The module whose weights ``member`` slices (a raw parameter's parent module)."""
    return member.name.rpartition(".")[0] if member.kind == "param" else member.name


def slice_member(
    model: nn.Module, member: Member, index: torch.Tensor | None, done: set[tuple[int, int]]
) -> None:
    """Keep ``index`` features of ``member`` in ``model`` (in place). ``done`` holds the
    (parameter id, dim) pairs already sliced, so a tied weight is sliced once."""
    if index is None:
        return
    if member.kind == "param":
        owner, _, attribute = member.name.rpartition(".")
        parent = model.get_submodule(owner) if owner else model
        _slice(getattr(parent, attribute), member.axis, index, done)
        return
    module = model.get_submodule(member.name)
    weight_dim = {"out": 0, "depthwise": 0, "in": 1, "bn": 0, "ln": 0}[member.kind]
    if isinstance(module, nn.Embedding):
        weight_dim = 1
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(module, name, None)
        if not isinstance(tensor, torch.Tensor):
            continue
        if name == "weight":
            _slice(tensor, weight_dim, index, done)
        elif weight_dim == 0:
            _slice(tensor, 0, index, done)
    _resize_attributes(module, member.kind, len(index))


def _slice(tensor: torch.Tensor, dim: int, index: torch.Tensor, done: set[tuple[int, int]]) -> None:
    if (id(tensor), dim) in done:
        return
    done.add((id(tensor), dim))
    with torch.no_grad():
        tensor.data = tensor.data.index_select(dim, index.to(tensor.device)).clone()


def _resize_attributes(module: nn.Module, kind: str, size: int) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = size
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (size,)
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = size
    elif isinstance(module, nn.Linear):
        setattr(module, "out_features" if kind == "out" else "in_features", size)
    elif isinstance(module, nn.Conv2d):
        if kind == "depthwise":
            module.in_channels = module.out_channels = module.groups = size
        else:
            setattr(module, "out_channels" if kind == "out" else "in_channels", size)
