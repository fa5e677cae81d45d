"""Activation-aware weight importance: Wanda, |W_ij| * ||X_j||_2 (Sun et al., arXiv:2306.11695).

A weight matters as much as its magnitude times how large its input feature gets on real data;
the input norms come from a few calibration batches, no gradients and no weight update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def input_norms(
    model: nn.Module, modules: dict[str, nn.Module], batches: Sequence[Sequence[Any]]
) -> dict[str, torch.Tensor]:
    """L2 norm of every input feature of each module over ``batches``: name -> (in_features,)."""
    if not batches:
        raise ConfigError("wanda importance needs calibration batches (or example_inputs)")
    with recording_input_norms(modules) as norms, torch.no_grad():
        for batch in batches:
            model(*batch)
    return norms()


@contextmanager
def recording_input_norms(
    modules: dict[str, nn.Module],
) -> Iterator[Callable[[], dict[str, torch.Tensor]]]:
    """Accumulate every input feature's sum of squares of each module while the caller runs it;
    yields a function giving the L2 norms so far: name -> (in_features,)."""
    squares: dict[str, torch.Tensor] = {}

    def hook(name: str, module: nn.Module) -> Any:
        def record(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            if isinstance(module, nn.Conv2d):
                total = x.pow(2).sum(dim=(0, 2, 3))  # (C_in,) from (B, C_in, H, W)
            else:
                total = x.reshape(-1, x.shape[-1]).pow(2).sum(0)  # (in,) from (..., in)
            squares[name] = squares[name] + total if name in squares else total

        return module.register_forward_pre_hook(record)

    handles = [hook(name, module) for name, module in modules.items()]
    try:
        yield lambda: {name: total.sqrt() for name, total in squares.items()}
    finally:
        for handle in handles:
            handle.remove()


def wanda_scores(module: nn.Module, norm: torch.Tensor | None) -> torch.Tensor:
    """|W| scaled by its input feature's norm, in the weight's own layout."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    magnitude = weight.detach().abs().float()
    if norm is None:  # the module never ran on the calibration data
        return magnitude
    if _is_conv1d(module):
        return magnitude * norm[:, None]  # (in, out)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return magnitude
        return magnitude * norm[None, :, None, None]  # (out, in, kh, kw)
    return magnitude * norm[None, :]  # (out, in)
