"""Which feature indices a config-width prune keeps in every weight dimension (``config_widths``).

A *class* is every dimension one config width shrinks from ``old`` to ``new`` features; all of
them keep the same indices. A class whose sizes are a whole multiple ``r`` of an earlier class of
the same width repeats that class's indices ``r`` times (fused q|k|v, 4-way patch merging, a 4x
MLP); a class split into attention heads keeps the same count in every head.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from torchslim.prune.graph import PruneError

Knob = tuple[tuple[str, int | None], ...]  # config fields that shrink together
Dim = tuple[str, int]
Class = tuple[Knob, int, int]  # (knob, old size, new size)


def choose_indices(
    state: dict[str, torch.Tensor],
    new_shapes: dict[str, tuple[int, ...]],
    owners: dict[Dim, Knob],
    heads: int,
    headed: set[Knob],
    importance: str,
) -> dict[Dim, torch.Tensor]:
    """Kept indices of every dimension that shrinks (sorted, on CPU)."""
    classes: dict[Class, list[Dim]] = {}
    for name, tensor in state.items():
        for axis in range(tensor.dim()):
            old, new = int(tensor.shape[axis]), int(new_shapes[name][axis])
            if old == new:
                continue
            key = owners.get((name, axis))
            if key is None:
                raise PruneError(f"{name} axis {axis} shrinks but no config width owns it")
            classes.setdefault((key, old, new), []).append((name, axis))
    chosen: dict[Class, torch.Tensor] = {}
    for cls in sorted(classes, key=lambda c: (str(c[0]), c[1])):
        key, old, new = cls
        base = _repeated_base(cls, chosen)
        if base is not None:
            repeats = old // base[1]
            pieces = [chosen[base] + r * base[1] for r in range(repeats)]
            chosen[cls] = torch.cat(pieces)
            continue
        scores = _scores(state, classes[cls], old, importance)
        chunks = heads if key in headed and old % heads == 0 and new % heads == 0 else 1
        chosen[cls] = _top_per_chunk(scores, new, chunks)
    return {dim: chosen[cls] for cls, dims in classes.items() for dim in dims}


def _repeated_base(cls: Class, chosen: dict[Class, torch.Tensor]) -> Class | None:
    key, old, new = cls
    bases = [
        c
        for c in chosen
        if c[0] == key and c[1] < old and old % c[1] == 0 and new * c[1] == c[2] * old
    ]
    return max(bases, key=lambda c: c[1]) if bases else None


def _scores(
    state: dict[str, torch.Tensor], dims: list[Dim], size: int, importance: str
) -> torch.Tensor:
    total = torch.zeros(size)
    for name, axis in dims:
        tensor = state[name]
        if not tensor.is_floating_point():
            continue
        values = tensor.detach().float().cpu()
        values = values.abs() if importance == "l1" else values.pow(2)
        per_feature = values.transpose(0, axis).reshape(size, -1).sum(1)  # (size,)
        total += per_feature / per_feature.mean().clamp_min(1e-12)
    return total


def _top_per_chunk(scores: torch.Tensor, keep: int, chunks: int) -> torch.Tensor:
    """The ``keep`` best indices, the same number from each of ``chunks`` equal chunks."""
    size = scores.numel() // chunks
    per_chunk = keep // chunks
    picks = [
        torch.topk(scores[c * size : (c + 1) * size], per_chunk).indices + c * size
        for c in range(chunks)
    ]
    return torch.sort(torch.cat(picks)).values


def heads_lcm(config: Any, fields: tuple[str, ...]) -> int:
    """Least common multiple of every attention-head count the config names (1 if none)."""
    counts: list[Any] = []
    for name in fields:
        value = getattr(config, name, None)
        counts += list(value) if isinstance(value, (list, tuple)) else [value]
    return math.lcm(*[c for c in counts if isinstance(c, int) and c > 0] or [1])
