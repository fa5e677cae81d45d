"""Which layer feeds which: a torch.fx trace of the model, for folding and equalization."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from torchslim.errors import TorchslimError
from torchslim.quantize.modules import QuantConv2d, QuantLinear

# Ops that commute with a positive per-channel scale: f(s * x) = s * f(x) for s > 0.
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
                        nn.Dropout, nn.Flatten)  # fmt: skip
_HOMOGENEOUS_FUNCTIONS = {F.relu, torch.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                          torch.flatten, F.dropout}  # fmt: skip
_HOMOGENEOUS_METHODS = {"relu", "flatten"}
_FLATTENS = (nn.Flatten,)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        # every Linear/Conv2d is a leaf, also subclasses with their own forward (static padding)
        leaf = isinstance(m, (nn.Conv2d, nn.Linear, QuantConv2d, QuantLinear))
        return leaf or super().is_leaf_module(m, qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model`` (modules stay calls by name).

    Raises:
        TorchslimError: the model cannot be traced symbolically (data-dependent control flow).
    """
    try:
        return _Tracer().trace(model)
    except Exception as error:  # fx raises many kinds for untraceable code
        raise TorchslimError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(error).__name__}: "
            f"{str(error)[:200]}); folding/equalization need a traceable model."
        ) from error


def module_of(model: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return model.get_submodule(str(node.target))


def single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def is_homogeneous(model: nn.Module, node: fx.Node) -> bool:
    """True when ``node`` commutes with a positive per-channel scale of its (only) input."""
    module = module_of(model, node)
    if module is not None:
        return isinstance(module, _HOMOGENEOUS_MODULES)
    if node.op == "call_function":
        return node.target in _HOMOGENEOUS_FUNCTIONS and node.target is not operator.add
    return node.op == "call_method" and node.target in _HOMOGENEOUS_METHODS


@dataclass(frozen=True)
class Chain:
    """A producer layer whose output reaches a consumer layer only through scale-commuting ops."""

    producer: str
    consumer: str
    flattened: bool  # a flatten lies between (conv channels -> groups of linear columns)


def layer_chains(model: nn.Module, graph: fx.Graph) -> Iterator[Chain]:
    """Every (Conv2d|Linear) -> homogeneous ops -> (Conv2d with groups 1|Linear) chain."""
    for node in graph.nodes:
        producer = module_of(model, node)
        if not isinstance(producer, (nn.Conv2d, nn.Linear)):
            continue
        current, flattened = single_user(node), False
        while current is not None and is_homogeneous(model, current):
            module = module_of(model, current)
            flat_method = current.op == "call_method" and current.target == "flatten"
            flattened |= isinstance(module, _FLATTENS) or current.target is torch.flatten
            flattened |= flat_method
            current = single_user(current)
        consumer = None if current is None else module_of(model, current)
        if isinstance(consumer, nn.Conv2d) and consumer.groups == 1 and not flattened:
            yield Chain(str(node.target), str(current.target), False)  # type: ignore[union-attr]
        elif isinstance(consumer, nn.Linear):
            yield Chain(str(node.target), str(current.target), flattened)  # type: ignore[union-attr]
