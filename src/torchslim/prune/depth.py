"""Depth pruning: whole layers removed from every layer stack of a transformers model, its
config updated (``num_hidden_layers``) so plain ``from_pretrained`` reloads it. The remaining
target is then met by width pruning. The layers are the ones given (choosing them by block
influence, as ShortGPT does (arXiv:2403.03853), is not done here)."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from torchslim.prune._target import TARGETS, cost, target_of
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.config_widths import holds_hugging_face_model
from torchslim.prune.graph import PruneError


def drop_layers_(
    model: nn.Module, example_inputs: tuple[Any, ...], config: StructuredPruneConfig
) -> StructuredPruneConfig:
    """Drop ``config.drop_layers`` from ``model`` in place; return the config whose target is
    what is still to remove from the smaller model (same share of the original)."""
    from torchslim.distill.student import drop_layers, layer_stacks

    if not holds_hugging_face_model(model):
        raise PruneError(
            "drop_layers is for transformers models (their config records the new depth, so "
            f"from_pretrained reloads them); {type(model).__name__} is not one"
        )
    found = target_of(config)
    before = cost(model, example_inputs, found[0], config.latency_batch_sizes) if found else 0.0
    smaller, _ = drop_layers(model, list(config.drop_layers))
    for stack in layer_stacks(smaller).values():
        for index, block in enumerate(stack.children()):
            for module in block.modules():  # KV caches index layers by position
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = index  # type: ignore[assignment]
    model.__dict__.clear()
    model.__dict__.update(smaller.__dict__)
    changes: dict[str, Any] = {"drop_layers": ()}
    if found is not None:
        what, target = found
        after = cost(model, example_inputs, what, config.latency_batch_sizes)
        name = next(n for n in TARGETS if getattr(config, n) is not None)
        changes[name] = max(0.0, 1 - (1 - target) * before / max(after, 1e-12))
    return dataclasses.replace(config, **changes)
