"""Residual blocks that can be removed whole: ``y = x + f(x)`` with ``y`` of ``x``'s shape.

At the sizes of small CNNs a forward's time is mostly per-op cost, so thinner layers save little
and fewer layers save a lot. A residual block is dropped by replacing it with ``nn.Identity``:
its branch ``f`` is gone, the skip connection stays (deep residual nets behave like ensembles of
shorter paths and survive losing single blocks; Veit et al., arXiv:1605.06431). Candidates are
the blocks of the model's layer stacks whose fx graph adds the block input to a branch and whose
output has the input's shape (not a stage's first, strided or widening block). The reload record
of a dropped block is ``{"replaced_by": "identity"}`` (see ``artifact.resize_to_record``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}
DROPPED = {"replaced_by": "identity"}  # the shape-record entry of a dropped block


def residual_blocks(model: nn.Module, example_inputs: tuple[Any, ...]) -> list[str]:
    """Names of the blocks of ``model``'s layer stacks that are shape-preserving residuals, in
    forward order."""
    from torchslim.distill.student import layer_stacks

    names = [
        f"{stack_name}.{child_name}"
        for stack_name, stack in layer_stacks(model).items()
        for child_name, _ in stack.named_children()
    ]
    modules = dict(model.named_modules())
    keeps_shape = _shape_preserving(model, example_inputs, [modules[n] for n in names])
    return [n for n in names if keeps_shape.get(id(modules[n])) and _adds_its_input(modules[n])]


def _shape_preserving(
    model: nn.Module, example_inputs: tuple[Any, ...], blocks: Sequence[nn.Module]
) -> dict[int, bool]:
    """Per block (by id): whether every call took one tensor and returned one of its shape."""
    seen: dict[int, bool] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        same = (
            len(args) == 1
            and isinstance(args[0], torch.Tensor)
            and isinstance(output, torch.Tensor)
            and output.shape == args[0].shape
        )
        seen[id(module)] = seen.get(id(module), True) and same

    handles = [block.register_forward_hook(hook) for block in blocks]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _adds_its_input(block: nn.Module) -> bool:
    """Whether ``block``'s traced forward adds its input (directly, or through an
    ``nn.Identity`` shortcut) to something: the residual connection."""
    try:
        graph = fx.symbolic_trace(block).graph
    except Exception:  # any untraceable block is simply not a candidate
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    submodules = dict(block.named_modules())
    skip = {inputs[0]}
    for node in graph.nodes:
        identity = isinstance(submodules.get(str(node.target)), nn.Identity)
        if node.op == "call_module" and identity and node.args and node.args[0] in skip:
            skip.add(node)
    adds = [n for n in graph.nodes if n.op in ("call_function", "call_method")
            and n.target in ADDS]  # fmt: skip
    return any(arg in skip for node in adds for arg in node.args[:2])


def drop_block(model: nn.Module, name: str) -> None:
    """Replace block ``name`` of ``model`` with ``nn.Identity`` (in place)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())


def dropped_blocks(record: dict[str, Any]) -> list[str]:
    """The blocks a shape record says were dropped."""
    return [name for name, entry in record.items() if entry == DROPPED]
