"""Module-aware pruning rules: attention heads, MLP neurons and inner conv channels of HF blocks.

Hugging Face models are not traceable with torch.fx (kwargs wrappers, data-dependent masks), and
an ATen-level trace loses which projection belongs to which head. These rules instead recognise
the blocks by their children's names and types, which every transformers model of a family
shares, and prune only *inside* a block, where the coupling is known exactly:

- attention with ``q_proj/k_proj/v_proj/o_proj`` and ``head_dim`` (Llama, Mistral, Qwen2, ViT...):
  whole KV groups (one KV head and the query heads sharing it) so GQA stays consistent;
- BERT-style ``self.query/key/value`` + ``output.dense``; GPT-2's fused ``c_attn`` + ``c_proj``;
- MLPs: ``gate_proj/up_proj -> down_proj``, ``fc1 -> fc2``, ``c_fc -> c_proj``,
  ``pwconv1 -> pwconv2`` (ConvNeXt), ``intermediate.dense -> output.dense`` (BERT);
- conv chains of ResNet basic/bottleneck layers and MobileNetV2 inverted residuals (the expanded
  channels, through the depthwise conv).

The residual stream (hidden size) is never pruned here; layers with parameters that no rule
covers are reported by name. Head pruning after Michel et al. (arXiv:1905.10650).
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim._targets import matches
from torchslim.prune._units import Span, UnitGroup, is_conv1d

MLP_PAIRS = (("fc1", "fc2"), ("c_fc", "c_proj"), ("pwconv1", "pwconv2"))
CONV_CHAIN_CLASSES = {
    "ResNetBasicLayer": ("layer",),
    "ResNetBottleNeckLayer": ("layer",),
    "MobileNetV2InvertedResidual": ("expand_1x1", "conv_3x3", "reduce_1x1"),
    "MobileNetV2Stem": ("first_conv", "expand_1x1", "conv_3x3", "reduce_1x1"),
}
STANDARD = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.GroupNorm,
)  # fmt: skip


def _child(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _out_size(module: nn.Module) -> int:
    return int(getattr(module, "nf")) if is_conv1d(module) else int(_weight(module).shape[0])  # noqa: B009


def _in_size(module: nn.Module) -> int:
    return int(getattr(module, "nx")) if is_conv1d(module) else int(_weight(module).shape[1])  # noqa: B009


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _int_attrs(
    module: nn.Module, name: str, per_unit: dict[str, int]
) -> tuple[tuple[str, str, int], ...]:
    found = []
    for attribute, value in per_unit.items():
        if isinstance(getattr(module, attribute, None), int):
            found.append((name, attribute, value))
    return tuple(found)


def _gqa_attention(name: str, module: nn.Module) -> UnitGroup | None:
    q, k, v, o = (_child(module, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    head_dim = getattr(module, "head_dim", None)
    if not all(isinstance(m, nn.Linear) for m in (q, k, v, o)) or not isinstance(head_dim, int):
        return None
    assert isinstance(q, nn.Linear) and isinstance(k, nn.Linear)
    heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
    if kv_heads == 0 or heads % kv_heads:
        return None
    g = heads // kv_heads  # query heads per KV head: a unit is one whole KV group
    spans = (
        Span(_join(name, "q_proj"), "out", 0, g * head_dim),
        Span(_join(name, "k_proj"), "out", 0, head_dim),
        Span(_join(name, "v_proj"), "out", 0, head_dim),
        Span(_join(name, "o_proj"), "in", 0, g * head_dim),
    )
    per_unit = {"num_heads": g, "num_attention_heads": g, "num_key_value_heads": 1}
    attrs = _int_attrs(module, name, per_unit)
    return UnitGroup(f"{name} (KV groups of {g} heads)", "heads", kv_heads, spans, attrs)


def _bert_attention(name: str, module: nn.Module) -> UnitGroup | None:
    self_attention, dense = _child(module, "self"), _child(module, "output.dense")
    if self_attention is None or not isinstance(dense, nn.Linear):
        return None
    size = getattr(self_attention, "attention_head_size", None)
    projections = [_child(self_attention, p) for p in ("query", "key", "value")]
    if not isinstance(size, int) or not all(isinstance(p, nn.Linear) for p in projections):
        return None
    heads = _out_size(projections[0]) // size  # type: ignore[arg-type]
    inner = _join(name, "self")
    spans = tuple(Span(_join(inner, p), "out", 0, size) for p in ("query", "key", "value"))
    spans += (Span(_join(name, "output.dense"), "in", 0, size),)
    attrs = _int_attrs(self_attention, inner, {"num_attention_heads": 1, "all_head_size": size})
    return UnitGroup(f"{name} (heads)", "heads", heads, spans, attrs)


def _gpt2_attention(name: str, module: nn.Module) -> UnitGroup | None:
    c_attn, c_proj = _child(module, "c_attn"), _child(module, "c_proj")
    head_dim, split = getattr(module, "head_dim", None), getattr(module, "split_size", None)
    if c_attn is None or c_proj is None or not (is_conv1d(c_attn) and is_conv1d(c_proj)):
        return None
    if not isinstance(head_dim, int) or not isinstance(split, int):
        return None
    if getattr(module, "is_cross_attention", False) or _out_size(c_attn) != 3 * split:
        return None
    heads = split // head_dim
    spans = tuple(Span(_join(name, "c_attn"), "out", i * split, head_dim) for i in range(3))
    spans += (Span(_join(name, "c_proj"), "in", 0, head_dim),)
    attrs = _int_attrs(module, name, {"num_heads": 1, "split_size": head_dim})
    return UnitGroup(f"{name} (heads)", "heads", heads, spans, attrs)


def _mlp(name: str, module: nn.Module) -> UnitGroup | None:
    gate, up, down = (_child(module, p) for p in ("gate_proj", "up_proj", "down_proj"))
    if all(isinstance(m, nn.Linear) for m in (gate, up, down)):
        assert isinstance(up, nn.Linear)
        spans = tuple(Span(_join(name, p), "out", 0, 1) for p in ("gate_proj", "up_proj"))
        spans += (Span(_join(name, "down_proj"), "in", 0, 1),)
        attrs = _int_attrs(module, name, {"intermediate_size": 1})
        return UnitGroup(f"{name} (neurons)", "neurons", up.out_features, spans, attrs)
    pairs = (*MLP_PAIRS, ("intermediate.dense", "output.dense"))
    for first, second in pairs:
        a, b = _child(module, first), _child(module, second)
        linear = (nn.Linear,)
        if a is None or b is None:
            continue
        if not ((isinstance(a, linear) and isinstance(b, linear)) or
                (is_conv1d(a) and is_conv1d(b))):  # fmt: skip
            continue
        if _out_size(a) != _in_size(b) or (first == "c_fc" and hasattr(module, "c_attn")):
            continue
        spans = (Span(_join(name, first), "out", 0, 1), Span(_join(name, second), "in", 0, 1))
        return UnitGroup(f"{name} (neurons)", "neurons", _out_size(a), spans)
    return None


def _conv_layer(module: nn.Module | None) -> tuple[nn.Conv2d, nn.Module | None] | None:
    conv = getattr(module, "convolution", None)
    if not isinstance(conv, nn.Conv2d):
        return None
    norm = getattr(module, "normalization", None)
    return conv, norm if isinstance(norm, nn.modules.batchnorm._BatchNorm) else None


def _conv_chain(name: str, module: nn.Module) -> list[UnitGroup]:
    children = CONV_CHAIN_CLASSES.get(type(module).__name__)
    if children is None:
        return []
    if children == ("layer",):
        sequence = getattr(module, "layer", None)
        paths = [f"layer.{i}" for i in range(len(sequence))] if sequence is not None else []
    else:
        paths = [p for p in children if _conv_layer(_child(module, p)) is not None]
    layers = [(p, _conv_layer(_child(module, p))) for p in paths]
    if any(layer is None for _, layer in layers):
        return []
    groups, i = [], 0
    while i < len(layers) - 1:
        path, found = layers[i]
        assert found is not None
        conv, norm = found
        spans = [Span(_join(name, f"{path}.convolution"), "out", 0, 1)]
        if norm is not None:
            spans.append(Span(_join(name, f"{path}.normalization"), "bn", 0, 1))
        j = i + 1
        while j < len(layers) - 1 and _is_depthwise(layers[j][1][0]):  # type: ignore[index]
            spans.append(Span(_join(name, f"{layers[j][0]}.convolution"), "depthwise", 0, 1))
            if layers[j][1][1] is not None:  # type: ignore[index]
                spans.append(Span(_join(name, f"{layers[j][0]}.normalization"), "bn", 0, 1))
            j += 1
        spans.append(Span(_join(name, f"{layers[j][0]}.convolution"), "in", 0, 1))
        if conv.groups == 1 and not _is_depthwise(layers[j][1][0]):  # type: ignore[index]
            groups.append(
                UnitGroup(f"{name}.{path} (channels)", "channels", conv.out_channels, tuple(spans))
            )
        i = j
    return groups


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def find_unit_groups(model: nn.Module, ignore: tuple[str, ...] = ()) -> list[UnitGroup]:
    """Every rule-recognised prunable unit group of ``model`` (minus ignored modules)."""
    groups: list[UnitGroup] = []
    for name, module in model.named_modules():
        found: list[UnitGroup | None] = [
            _gqa_attention(name, module),
            _bert_attention(name, module),
            _gpt2_attention(name, module),
            _mlp(name, module),
            *_conv_chain(name, module),
        ]
        for group in found:
            if group is None or group.n_units < 2:
                continue
            names = [name, *(span.module for span in group.spans)]
            if not any(matches(each, ignore) for each in names):
                groups.append(group)
    return groups


def not_covered(model: nn.Module, groups: list[UnitGroup]) -> dict[str, str]:
    """Modules with parameters that no group slices, with the reason they stay as they are."""
    covered = {span.module for group in groups for span in group.spans}
    out = {}
    for name, module in model.named_modules():
        if name in covered or not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, STANDARD) or is_conv1d(module) or "Norm" in type(module).__name__:
            out[name] = "residual-stream width (hidden size) is kept"
        else:
            out[name] = f"custom layer {type(module).__name__}: no pruning rule, kept dense"
    return out
