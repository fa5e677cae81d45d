"""Seeded random inputs described by shape and dtype, and the tensors inside a model output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchslim.zoo._entry import Batch


@dataclass(frozen=True)
class InputSpec:
    """One positional input: its shape (batch first; the batch is replaced) and how to draw it.

    Floating inputs are normal(mean, std); integer inputs (token ids) uniform in [low, high).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    low: int = 0
    high: int = 2
    mean: float = 0.0
    std: float = 1.0

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A tensor of shape ``(batch_size, *shape[1:])``."""
        shape = (batch_size, *self.shape[1:])
        if self.dtype.is_floating_point:
            sample = torch.randn(shape, generator=generator) * self.std + self.mean
            return sample.to(self.dtype)
        if self.dtype == torch.bool:
            return torch.randint(0, 2, shape, generator=generator).bool()
        return torch.randint(self.low, self.high, shape, generator=generator, dtype=self.dtype)


def random_batch(specs: Sequence[InputSpec], batch_size: int, seed: int) -> Batch:
    """One batch drawn from ``specs``; the same ``seed`` gives the same tensors."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(spec.sample(batch_size, generator) for spec in specs)


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (a tensor, or nested tuples/lists/dicts/ModelOutputs)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, list | tuple):
        return [tensor for item in output for tensor in output_tensors(item)]
    return []
