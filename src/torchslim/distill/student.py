"""Students: the teacher with layers dropped (DistilBERT-style initialisation), or a checkpoint of
another shape (a pruned model) loaded into the teacher's architecture.

DistilBERT (Sanh et al., arXiv:1910.01108) initialises the student from the teacher by taking
one layer out of two; ``drop_layers`` does that for every *layer stack* of the model: a
``ModuleList``/``Sequential`` of at least two children of the same class (BERT's
``encoder.layer``, the stages ``layer1..3`` of our ResNets). The kept layers keep their weights
and are renumbered, so a ResNet-56 keeping blocks 0, 3, 6 of each stage has exactly the state-dict
names of a ResNet-20.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from torchslim.errors import ConfigError, ModelLoadError


@dataclass(frozen=True)
class DroppedLayers:
    """What ``drop_layers`` did: per stack, how many layers there were and which were kept."""

    stacks: dict[str, tuple[int, list[int]]]

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {name: {"layers": n, "kept": kept} for name, (n, kept) in self.stacks.items()}


def parse_indices(spec: str) -> list[int]:
    """``"1,3,5"`` or ``"1-2,4-5,7-8"`` -> sorted unique indices."""
    indices: set[int] = set()
    try:
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            first, _, last = part.partition("-")
            indices.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ConfigError(
            f"--drop-layers {spec!r}: expected indices like 1,3,5 or 1-2,4-5"
        ) from None
    return sorted(indices)


def layer_stacks(model: nn.Module) -> dict[str, nn.Module]:
    """The model's stacks of repeated layers: containers of >= 2 children of one class."""
    stacks: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        children = list(module.children())
        repeated = len(children) >= 2 and len({type(c) for c in children}) == 1
        if repeated and any(True for _ in children[0].children()):  # blocks, not leaf layers
            stacks[name] = module
    return stacks


def drop_layers(teacher: nn.Module, drop: list[int]) -> tuple[nn.Module, DroppedLayers]:
    """A deep copy of ``teacher`` without layers ``drop`` of each layer stack.

    A layer that changes the shape of its input (a ResNet stage's first, strided block) cannot
    be dropped; a ``config.num_hidden_layers`` (transformers) is updated to the new depth.
    """
    student = copy.deepcopy(teacher).requires_grad_(True)  # trainable even if the teacher is frozen
    stacks = layer_stacks(student)
    if not stacks:
        raise ConfigError(
            f"{type(teacher).__name__} has no stack of repeated layers (a ModuleList/Sequential "
            "of blocks of one class) to drop layers from."
        )
    report = {}
    for name, stack in stacks.items():
        children = list(stack.children())
        bad = [i for i in drop if i >= len(children)]
        if bad:
            raise ConfigError(
                f"--drop-layers {bad}: stack {name!r} has only {len(children)} layers (0-"
                f"{len(children) - 1})."
            )
        kept = [i for i in range(len(children)) if i not in drop]
        if not kept:
            raise ConfigError(f"--drop-layers would drop every layer of {name!r}; keep one.")
        for i in drop:
            if _changes_shape(children[i]):
                raise ConfigError(
                    f"layer {i} of {name!r} changes its input's shape (stride or width), so it "
                    "cannot be dropped; keep it (usually layer 0 of each stage)."
                )
        new = type(stack)(*[children[i] for i in kept]) if isinstance(stack, nn.Sequential) \
            else nn.ModuleList(children[i] for i in kept)  # fmt: skip
        _replace(student, name, new)
        report[name] = (len(children), kept)
    _update_depth_config(student, report)
    return student, DroppedLayers(report)


def _changes_shape(block: nn.Module) -> bool:
    shortcut = getattr(block, "shortcut", None) or getattr(block, "downsample", None)
    return shortcut is not None and not isinstance(shortcut, nn.Identity)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _update_depth_config(model: nn.Module, report: dict[str, tuple[int, list[int]]]) -> None:
    depths = {n: len(kept) for n, kept in report.values()}
    for module in model.modules():
        config = getattr(module, "config", None)
        old = getattr(config, "num_hidden_layers", None)
        if isinstance(old, int) and old in depths:
            config.num_hidden_layers = depths[old]  # type: ignore[union-attr]


SHAPE_ATTRIBUTES = {
    "weight": (("out_channels", 0), ("in_channels", 1), ("out_features", 0), ("in_features", 1),
               ("num_features", 0), ("num_embeddings", 0), ("embedding_dim", 1)),
}  # fmt: skip


def load_reshaped(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``model``, giving parameters and buffers the checkpoint's shapes
    (a channel-pruned checkpoint into its unpruned architecture); returns the reshaped names.

    Conv, Linear, BatchNorm and Embedding modules get their width attributes updated; the
    forward pass is then checked by the caller. Missing or unexpected names are an error.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelLoadError(
            f"student checkpoint does not fit the architecture: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}. Is it a checkpoint of this model?"
        )
    reshaped = []
    for name, tensor in state.items():
        if own[name].shape == tensor.shape:
            continue
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, attribute)
        new = nn.Parameter(tensor.clone(), old.requires_grad) if isinstance(
            old, nn.Parameter) else tensor.clone()  # fmt: skip
        setattr(module, attribute, new)
        if attribute == "weight":
            groups = getattr(module, "groups", 1)
            for field, dim in SHAPE_ATTRIBUTES["weight"]:
                if hasattr(module, field) and dim < tensor.ndim:
                    size = tensor.shape[dim] * (groups if field == "in_channels" else 1)
                    setattr(module, field, size)
        reshaped.append(name)
    model.load_state_dict(state)
    return reshaped
