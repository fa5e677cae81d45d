"""Input Hessians of Linear layers, H = 2 / n X^T X, accumulated while a model runs: what
GPTQ (arXiv 2210.17323) and SparseGPT (arXiv 2301.00774) solve against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class HessianSum:
    """Running X^T X of one layer's inputs; ``value()`` is H = 2 / n X^T X: (in, in).

    The scale 2 / n does not change GPTQ's result (the dampening is relative to mean diag H)
    but keeps the proxy losses comparable across calibration sizes."""

    def __init__(self, features: int) -> None:
        self.total = torch.zeros(features, features, dtype=torch.float64)
        self.count = 0

    def add(self, x: Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()  # (n, in)
        self.total += (rows.T @ rows).double().cpu()  # float32 matmul per batch, float64 across
        self.count += rows.shape[0]

    def value(self) -> Tensor:
        return (2 * self.total / max(1, self.count)).float()


@contextmanager
def recording_hessians(layers: dict[str, nn.Module]) -> Iterator[dict[str, HessianSum]]:
    """Accumulate each layer's input Hessian while the block runs inside the ``with``."""
    sums = {name: HessianSum(m.in_features) for name, m in layers.items()}  # type: ignore[arg-type]
    handles = [
        module.register_forward_pre_hook(lambda mod, args, name=name: sums[name].add(args[0]))
        for name, module in layers.items()
    ]
    try:
        yield sums
    finally:
        for handle in handles:
            handle.remove()
