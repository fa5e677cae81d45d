"""``share_layers_``: several layers of a stack run one block's weights (ALBERT, arXiv 1909.11942).

The ModuleList keeps its length (the forward is unchanged); its entries in one group are the
same module object, so the parameters are stored and counted once. Distil afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.share.config import ShareLayersConfig


@dataclass
class ShareLayersResult:
    """Which ModuleList, its groups of layer indices, unique parameters before and after."""

    container: str
    groups: list[list[int]]
    params_before: int
    params_after: int
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"container": self.container, "groups": self.groups,
                "unique_params_before": self.params_before,
                "unique_params_after": self.params_after}  # fmt: skip


def share_layers_(model: nn.Module, config: ShareLayersConfig) -> ShareLayersResult:
    """Make the layers of one ModuleList share ``config.blocks`` blocks, in place.

    Raises:
        ConfigError: no such ModuleList, its blocks differ in class, or ``blocks`` does not
            divide its length (or is not smaller). The model is then untouched.
    """
    name, layers = _container(model, config.container)
    count = len(layers)
    if config.blocks >= count or count % config.blocks:
        raise ConfigError(
            f"share_layers: blocks={config.blocks} must be smaller than and divide the "
            f"{count} layers of {name}; e.g. blocks={count // 2}"
        )
    size = count // config.blocks
    groups = [list(range(start, start + size)) for start in range(0, count, size)]
    before = unique_params(model)
    if config.init == "mean":
        _average_into_first(layers, groups)
    share_groups(layers, groups)
    return ShareLayersResult(name, groups, before, unique_params(model))


def unique_params(model: nn.Module) -> int:
    """Parameters counted once however many layers use them."""
    return sum(p.numel() for p in model.parameters())


def share_groups(layers: nn.ModuleList, groups: list[list[int]]) -> None:
    """Every layer of a group becomes the group's first layer (the same object)."""
    for group in groups:
        for index in group[1:]:
            layers[index] = layers[group[0]]


def find_container(model: nn.Module, name: str) -> nn.ModuleList:
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.ModuleList):
        raise ConfigError(f"share_layers: {name!r} is not a ModuleList of {type(model).__name__}")
    return module


def _container(model: nn.Module, name: str | None) -> tuple[str, nn.ModuleList]:
    if name is not None:
        layers = find_container(model, name)
        if len({type(layer) for layer in layers}) != 1:
            raise ConfigError(f"share_layers: the blocks of {name} are not all of one class")
        return name, layers
    stacks = [
        (len(m), n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(x) for x in m}) == 1
    ]
    if not stacks:
        raise ConfigError("share_layers: the model has no ModuleList of same-class blocks")
    _, found, layers = max(stacks, key=lambda item: item[0])
    return found, layers


def _average_into_first(layers: nn.ModuleList, groups: list[list[int]]) -> None:
    with torch.no_grad():
        for group in groups:
            states = [layers[i].state_dict() for i in group]
            for key, tensor in states[0].items():
                if tensor.is_floating_point():
                    tensor.copy_(torch.stack([s[key] for s in states]).mean(0))
