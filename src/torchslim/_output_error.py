"""How far a changed model's outputs are from the original's on calibration batches: the
relative squared error, a noise power that adds up roughly over independently changed layers.
The depth/width pruning planner and the low-rank sensitivity scan both minimise it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.zoo._inputs import output_tensors


def model_outputs(model: nn.Module, batches: Sequence[Sequence[Any]]) -> list[torch.Tensor]:
    """Every output tensor of ``model`` on each batch, as float32, without autograd.

    Raises:
        ConfigError: the model's output holds no tensor to compare.
    """
    found: list[torch.Tensor] = []
    with torch.no_grad():
        for batch in batches:
            output = model(*batch)
            tensors = output_tensors(output)
            if not tensors:
                raise ConfigError(
                    f"the model's output ({type(output).__name__}) holds no tensor to compare"
                )
            found.extend(t.float() for t in tensors)
    return found


def relative_error(outputs: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    """‖y' − y‖² / ‖y‖² summed over every output tensor."""
    error = sum(float((o - r).pow(2).sum()) for o, r in zip(outputs, reference, strict=True))
    norm = sum(float(r.pow(2).sum()) for r in reference)
    return error / max(norm, 1e-30)


def damage(
    model: nn.Module, batches: Sequence[Sequence[Any]], reference: Sequence[torch.Tensor]
) -> float:
    """Relative squared error of ``model``'s outputs on ``batches`` against ``reference``."""
    return relative_error(model_outputs(model, batches), reference)
