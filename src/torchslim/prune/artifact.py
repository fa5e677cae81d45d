"""Saving and reloading pruned models: a shape record, and Hugging Face config updates.

A pruned model is a plain ``nn.Module`` whose sliced layers have new shapes. To reload it, build
the original architecture, resize the recorded modules (parameter/buffer shapes and the integer
attributes such as ``in_features`` or ``num_attention_heads``), then load the weights. The record
lives in ``manifest.json`` (``torchslim prune`` artifacts) or in the HF ``config.json`` under
``torchslim_pruning``. Where the config alone can describe the pruned model (uniform
``intermediate_size``, ``num_attention_heads`` / ``num_key_value_heads`` / ``head_dim``), the
config is updated too, so plain ``from_pretrained`` works without torchslim.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import ModelLoadError
from torchslim.prune._units import UnitGroup
from torchslim.prune.rules import find_unit_groups

RECORD_KEY = "torchslim_pruning"


def shape_record(model: nn.Module, names: Iterable[str]) -> dict[str, Any]:
    """Shapes of the own parameters/buffers and the integer attributes of modules ``names``."""
    record: dict[str, Any] = {}
    for name in sorted(set(names)):
        module = model.get_submodule(name)
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        tensors = {key: list(value.shape) for key, value in own}
        attrs = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in vars(module).items()
            if _is_size(value) and not key.startswith("_")
        }
        record[name] = {"tensors": tensors, "attrs": attrs}
    return record


def resize_to_record(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Give ``model``'s recorded modules the recorded shapes (values are uninitialized), and
    replace the blocks recorded as dropped (``{"replaced_by": "identity"}``) with identities."""
    from torchslim.prune.blocks import DROPPED, drop_block

    for name, entry in record.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as error:
            raise ModelLoadError(f"pruning record names {name!r}, absent from the model") from error
        if entry == DROPPED:
            drop_block(model, name)
            continue
        for key, shape in entry["tensors"].items():
            old = getattr(module, key)
            fresh = torch.empty(shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(module, key, nn.Parameter(fresh, requires_grad=old.requires_grad))
            else:
                module.register_buffer(key, fresh)
        for key, value in entry["attrs"].items():  # sizes: ints, or tuples such as LayerNorm's
            setattr(module, key, tuple(value) if isinstance(value, list) else value)
    return model


def _is_size(value: Any) -> bool:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(value, float):
        return True  # e.g. an attention scale derived from the head size
    return is_int(value) or (isinstance(value, tuple) and bool(value) and all(map(is_int, value)))


def load_pruned(
    model: nn.Module, record: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> nn.Module:
    """Resize the freshly built ``model`` to ``record`` and load ``state_dict`` (strict)."""
    resize_to_record(model, record)
    model.load_state_dict(state_dict)
    return model


def load_pruned_artifact(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a ``torchslim prune --out DIR`` artifact into ``model``, freshly built as the
    original architecture (e.g. ``zoo.get(name).load()``): resized, then weights loaded."""
    import json

    from torchslim._hf_directory import load_weights

    directory = Path(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    if "pruned_shapes" not in manifest:
        raise ModelLoadError(
            f"{directory}/manifest.json has no pruned_shapes: not a prune artifact"
        )
    state = load_weights(directory / "model.safetensors")
    return load_pruned(model, manifest["pruned_shapes"], state).eval()


def update_hf_configs(model: nn.Module, groups: list[UnitGroup], record: dict[str, Any]) -> None:
    """Update every Hugging Face sub-model's config to its pruned shapes and store the record.

    Only fields that fully describe the new shapes are changed: ``intermediate_size`` (and
    GPT-2's ``n_inner``) when every MLP keeps the same neuron count; ``num_attention_heads``,
    ``num_key_value_heads`` and ``head_dim`` for q/k/v/o attention with ``head_dim``. "Every"
    counts the layers that ``ignore`` kept at full width too: they are found again on the
    pruned model, so a config never claims a width some layer does not have.
    """
    now = find_unit_groups(model)  # after pruning, ignored groups included, n_units = width now
    done: list[str] = []
    for prefix, module in model.named_modules():  # outermost first: inner models share config
        config = getattr(module, "config", None)
        if config is None or not hasattr(module, "save_pretrained"):
            continue
        if any(prefix == d or _within(d, prefix) for d in done):
            continue
        done.append(prefix)
        inside = [g for g in groups if _within(prefix, g.spans[0].module)]
        widths = [g for g in now if _within(prefix, g.spans[0].module)]
        mlp_widths = {g.n_units for g in widths if g.kind == "neurons"}
        kv_widths = {g.n_units for g in widths if "KV groups" in g.name}
        _update_mlp(config, [g for g in inside if g.kind == "neurons"], mlp_widths)
        _update_heads(config, [g for g in inside if "KV groups" in g.name], kv_widths)
        start = len(prefix) + 1 if prefix else 0
        local = {name[start:]: entry for name, entry in record.items() if _within(prefix, name)}
        setattr(config, RECORD_KEY, local)


def _within(prefix: str, name: str) -> bool:
    return not prefix or name.startswith(prefix + ".")


def _update_mlp(config: Any, groups: list[UnitGroup], widths_now: set[int]) -> None:
    kept = {g.kept for g in groups}
    if len(kept) != 1 or any(g.n_units != groups[0].n_units for g in groups):
        return
    if widths_now - kept:  # a layer (ignored, or pruned elsewhere) has another width
        return
    if getattr(config, "intermediate_size", None) == groups[0].n_units:
        config.intermediate_size = kept.pop()
    elif getattr(config, "model_type", "") == "gpt2":
        config.n_inner = kept.pop()


def _update_heads(config: Any, groups: list[UnitGroup], kv_heads_now: set[int]) -> None:
    kept = {g.kept for g in groups}
    if len(kept) != 1 or kv_heads_now - kept:
        return
    q_span, k_span = groups[0].spans[0], groups[0].spans[1]
    head_dim, per_group = k_span.width, q_span.width // k_span.width
    config.head_dim = head_dim
    config.num_attention_heads = kept.pop() * per_group
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = config.num_attention_heads // per_group


def from_pretrained(path: str | Path, **init_kwargs: Any) -> nn.Module:
    """Load a pruned Hugging Face model saved with ``save_pretrained`` (config + safetensors).

    Works whether or not the config can describe the pruned shapes on its own: the model is
    built from the config, resized to the ``torchslim_pruning`` record, then loaded.
    ``init_kwargs`` go to the model class (e.g. ``add_pooling_layer=False``).
    """
    import transformers

    from torchslim.zoo._hf import huggingface_class

    config = transformers.AutoConfig.from_pretrained(Path(path))
    record = getattr(config, RECORD_KEY, None) or {}
    base = huggingface_class(config)

    class Pruned(base):  # type: ignore[misc,valid-type]
        """``base`` resized to the record before transformers loads (and renames) the weights."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            resize_to_record(self, record)

    Pruned.__name__ = Pruned.__qualname__ = base.__name__
    try:
        model = Pruned.from_pretrained(Path(path), config=config, **init_kwargs)
    except (RuntimeError, ValueError, OSError) as error:
        raise ModelLoadError(f"{path}: cannot load the pruned model ({error})") from error
    return model.eval()
