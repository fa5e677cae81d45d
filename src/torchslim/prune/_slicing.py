"""Physically slicing Conv/Linear/BatchNorm modules to kept channel indices."""

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


def slice_member(modules: dict[str, nn.Module], member: Member, index: torch.Tensor | None) -> None:
    """Replace ``member``'s module (in ``modules``' model) by a copy keeping ``index`` features."""
    if index is None:
        return
    module = modules[member.name]
    with torch.no_grad():
        if member.kind == "bn" and isinstance(module, nn.modules.batchnorm._BatchNorm):
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(module, name)
                if tensor is not None:
                    tensor.data = tensor.data[index].clone()
            module.num_features = len(index)
        elif isinstance(module, nn.Conv2d):
            _slice_conv(module, member.kind, index)
        elif isinstance(module, nn.Linear):
            dim = 0 if member.kind == "out" else 1
            module.weight.data = module.weight.data.index_select(dim, index).clone()
            if dim == 0 and module.bias is not None:
                module.bias.data = module.bias.data[index].clone()
            if dim == 0:
                module.out_features = len(index)
            else:
                module.in_features = len(index)


def _slice_conv(module: nn.Conv2d, kind: str, index: torch.Tensor) -> None:
    if kind in ("out", "depthwise"):
        module.weight.data = module.weight.data[index].clone()  # (C_out', C_in/g, kh, kw)
        if module.bias is not None:
            module.bias.data = module.bias.data[index].clone()
        module.out_channels = len(index)
    if kind == "depthwise":
        module.in_channels = module.groups = len(index)
    elif kind == "in":
        module.weight.data = module.weight.data[:, index].clone()  # (C_out, C_in', kh, kw)
        module.in_channels = len(index)
