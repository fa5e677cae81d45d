"""Walking a decoder model block by block: find the block list, capture block 0's inputs, run
one block on captured inputs, and record which Linear layers share an input, in call order.

Layer-wise methods (sequential GPTQ, AWQ, SmoothQuant) need the activations of block ``i`` as
the (already transformed) blocks ``0..i-1`` produce them, without running the whole model per
block: the inputs of block 0 are captured once (a forward pre-hook that stops the model there),
and every later block's inputs are the previous block's outputs. The other arguments of a block
call (attention mask, rotary embeddings, position ids) are kept per batch and reused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._heap import release_free_heap
from torchslim.errors import ConfigError

BLOCK_LIST_NAMES = ("layers", "h", "blocks", "layer")  # model.layers, transformer.h, ...


class BlockWalkError(ConfigError):
    """The model has no decoder block list that a block-wise method can walk."""


@dataclass
class BlockCall:
    """One batch's call of a block: the hidden states plus the other positional/keyword args."""

    hidden: Tensor  # (B, T, C)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _StopForward(Exception):
    """Raised by the capture hook so the model stops after block 0's inputs are known."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of repeated decoder blocks: (qualified name, ModuleList).

    The list is a ``ModuleList`` named like ``model.layers`` (LLaMA), ``transformer.h``
    (GPT-2) or ``blocks``, holding >= 1 modules of one class; the longest such list wins.

    Raises:
        BlockWalkError: no such list (a CNN, an unknown architecture).
    """
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if name.rsplit(".", 1)[-1] not in BLOCK_LIST_NAMES:
            continue
        if len({type(block) for block in module}) == 1:
            found.append((name, module))
    if not found:
        raise BlockWalkError(
            f"{type(model).__name__} has no decoder block list (a ModuleList named one of "
            f"{', '.join(BLOCK_LIST_NAMES)} holding blocks of one class, like LLaMA's "
            "model.layers or GPT-2's transformer.h); block-wise methods cannot walk it. Use the "
            "layer-wise path (gptq_(..., GPTQConfig(sequential=False))) or round-to-nearest."
        )
    return max(found, key=lambda item: len(item[1]))


def _drop_caches(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A KV cache object would grow on every replay of the block: replace it by None."""
    cleaned = {}
    for key, value in kwargs.items():
        if "Cache" in type(value).__name__:
            value = None
        if key == "use_cache":
            value = False
        cleaned[key] = value
    return cleaned


def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: Sequence[tuple[Any, ...]]
) -> list[BlockCall]:
    """Run ``model`` on every batch up to ``first_block``; return each batch's call of it."""
    calls: list[BlockCall] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        calls.append(BlockCall(hidden.detach(), tuple(args[1:]), _drop_caches(kwargs)))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(_StopForward):
                    model(*batch)
    finally:
        handle.remove()
    if len(calls) != len(batches):
        raise BlockWalkError(
            f"the model ran {len(batches)} batches but its first block was called "
            f"{len(calls)} times; its forward does not go through the block list."
        )
    return calls


def run_block(block: nn.Module, call: BlockCall) -> Tensor:
    """The block's output hidden states for one captured call: (B, T, C)."""
    with torch.no_grad():
        output = block(call.hidden, *call.args, **call.kwargs)
    return output[0] if isinstance(output, (tuple, list)) else output


def run_block_until(block: nn.Module, call: BlockCall, stop_at: nn.Module) -> None:
    """Run the block on one call until ``stop_at`` is about to run (hooks before it fire)."""

    def stop(module: nn.Module, args: tuple[Any, ...]) -> None:
        raise _StopForward

    handle = stop_at.register_forward_pre_hook(stop)
    try:
        with torch.no_grad(), contextlib.suppress(_StopForward):
            block(call.hidden, *call.args, **call.kwargs)
    finally:
        handle.remove()


def advance(block: nn.Module, calls: list[BlockCall]) -> list[BlockCall]:
    """The calls of the next block: this block's outputs with the same other arguments.

    Only two blocks' activations are alive: the caller drops ``calls`` for the returned ones.
    The heap's free pages (the finished block's temporaries) go back to the OS first."""
    release_free_heap()
    return [BlockCall(run_block(block, call), call.args, call.kwargs) for call in calls]


def input_groups(
    block: nn.Module, layers: Mapping[str, nn.Module], call: BlockCall
) -> list[list[str]]:
    """``layers`` (names relative to ``block``) in the order the block calls them, consecutive
    layers fed the very same tensor grouped (q/k/v, then o, then gate/up, then down in LLaMA).

    Layers the block never calls are left out.
    """
    order: list[str] = []
    feeds: list[Tensor] = []  # kept alive so tensor identity stays meaningful
    handles = []
    for name, module in layers.items():

        def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if name not in order:
                order.append(name)
                feeds.append(args[0])

        handles.append(module.register_forward_pre_hook(hook))
    try:
        run_block(block, call)
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    for index, name in enumerate(order):
        if index and feeds[index] is feeds[index - 1]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups
