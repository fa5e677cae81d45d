"""Cost rules per ATen op: MACs, FLOPs and bytes moved, from the shapes and dtypes of one call.

Conventions (the word "ops" is never used alone):
- MACs are the multiply-accumulates of conv, mm/addmm/bmm/baddbmm (and so linear, matmul, einsum,
  which decompose into them), int8/int4 matmuls, and attention (QK^T and AV). Their FLOPs are
  exactly 2 x MAC; bias additions inside those ops are not counted (as torch's FlopCounterMode).
- Other ops add FLOPs but no MACs, one FLOP per basic arithmetic step per element:
  add/sub/mul/div/relu/compare 1; sigmoid/tanh/exp/erf 1 (a transcendental counts as one);
  silu 4 (exp, add, div, mul); gelu 4; batch norm (inference) 4 (sub, mul, mul, add);
  layer norm / rms norm 7 / 4; softmax 5 (max, sub, exp, sum, div); reductions 1 per input;
  pooling 1 per window element; attention's softmax 5 per score.
- Bytes read are the input tensors' bytes at their real dtypes (broadcast dimensions counted
  once, embedding/gather count only the rows read); bytes written are the outputs' bytes.
- Views (reshape, permute, slice, expand, ...) cost nothing; pure data movement (copy, cat,
  pad, dtype casts) moves bytes with zero FLOPs. An op with no rule here is reported as
  unsupported, never silently counted as zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class OpCost:
    """Cost of one op call."""

    macs: int = 0
    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


Rule = Callable[[Sequence[Any], dict[str, Any], Any], OpCost]


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel must touch for ``t``: broadcast (stride-0) dimensions counted once."""
    elements = math.prod(s for s, st in zip(t.shape, t.stride(), strict=True) if st != 0)
    return int(elements * t.element_size())


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _io_bytes(args: Any, out: Any) -> tuple[int, int]:
    read = sum(tensor_bytes(t) for t in _tensors(args))
    written = sum(tensor_bytes(t) for t in _tensors(out))
    return read, written


def _first_out(out: Any) -> torch.Tensor:
    return _tensors(out)[0]


def mac_rule(macs_of: Callable[[Sequence[Any], Any], int]) -> Rule:
    def rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost:
        macs = int(macs_of(args, out))
        read, written = _io_bytes((args, kwargs), out)
        return OpCost(macs, 2 * macs, read, written)

    return rule


def per_element_rule(flops_per_element: float, on_input: bool = False) -> Rule:
    """FLOPs = factor x (output elements, or input elements for reductions)."""

    def rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost:
        counted = _tensors(args)[0] if on_input and _tensors(args) else _first_out(out)
        read, written = _io_bytes((args, kwargs), out)
        return OpCost(0, int(flops_per_element * counted.numel()), read, written)

    return rule


def _view_rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost:
    return OpCost()


def _movement_rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost:
    read, written = _io_bytes((args, kwargs), out)
    return OpCost(0, 0, read, written)


def _creation_rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost:
    return OpCost(0, 0, 0, sum(tensor_bytes(t) for t in _tensors(out)))


def _gather_rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost:
    """embedding / index_select / gather: reads the indices and only the rows it returns."""
    indices = sum(tensor_bytes(t) for t in _tensors(args)[1:])
    written = sum(tensor_bytes(t) for t in _tensors(out))
    return OpCost(0, 0, indices + written, written)


def _mm_macs(args: Sequence[Any], out: Any) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * b.shape[1]  # (M, K) @ (K, N)


def _addmm_macs(args: Sequence[Any], out: Any) -> int:
    return _mm_macs(args[1:], out)


def _bmm_macs(args: Sequence[Any], out: Any) -> int:
    a, b = args[0], args[1]
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]  # (B, M, K) @ (B, K, N)


def _baddbmm_macs(args: Sequence[Any], out: Any) -> int:
    return _bmm_macs(args[1:], out)


def _conv_macs(args: Sequence[Any], out: Any) -> int:
    x, weight = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    kernel = math.prod(weight.shape[2:])
    if transposed:  # weight (C_in, C_out/groups, k...): every input element feeds C_out/g x k
        return x.numel() * weight.shape[1] * kernel
    return _first_out(out).numel() * (weight.shape[1]) * kernel  # weight (C_out, C_in/g, k...)


def _conv_no_transpose_macs(args: Sequence[Any], out: Any) -> int:
    return _first_out(out).numel() * args[1].shape[1] * math.prod(args[1].shape[2:])


def _int_mm_macs(args: Sequence[Any], out: Any) -> int:
    return _mm_macs(args, out)


def _weight_pack_mm_macs(args: Sequence[Any], out: Any) -> int:
    x, result = args[0], _first_out(out)
    return x.numel() // x.shape[-1] * x.shape[-1] * result.shape[-1]  # (M, K) x (K, N)


def _sdpa_rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost:
    q, k, v = args[0], args[1], args[2]  # (B, H, L, E), (B, H, S, E), (B, H, S, Ev)
    batch_heads = math.prod(q.shape[:-2])
    length, source = q.shape[-2], k.shape[-2]
    macs = batch_heads * length * source * (q.shape[-1] + v.shape[-1])
    softmax = 5 * batch_heads * length * source
    read = sum(tensor_bytes(t) for t in (q, k, v))
    mask = kwargs.get("attn_mask") if kwargs else None
    if isinstance(mask, torch.Tensor):
        read += tensor_bytes(mask)
    return OpCost(macs, 2 * macs + softmax, read, tensor_bytes(_first_out(out)))


def _pool_rule(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost:
    kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size", 1)
    window = math.prod(kernel) if isinstance(kernel, list | tuple) else int(kernel) ** 2
    read, written = _io_bytes((args, kwargs), out)
    return OpCost(0, _first_out(out).numel() * window, read, written)


ELEMENTWISE_1 = tuple(
    """
    add sub mul div relu neg abs clamp clamp_min clamp_max maximum minimum eq ne lt le gt ge
    where masked_fill hardtanh leaky_relu sigmoid tanh exp log sqrt rsqrt pow reciprocal erf
    sin cos logical_not logical_and bitwise_and bitwise_or bitwise_not sign floor ceil round
    remainder fmod relu6 threshold addcmul lerp square
    """.split()
)
ELEMENTWISE_4 = ("silu", "gelu", "hardswish", "hardsigmoid", "mish", "elu", "softplus")
REDUCTIONS = tuple(
    """
    sum mean amax amin max min argmax argmin prod norm var std logsumexp any all cumsum
    linalg_vector_norm
    """.split()
)
VIEWS = tuple(
    """
    view _unsafe_view reshape permute transpose t expand squeeze unsqueeze slice select
    as_strided alias detach split split_with_sizes chunk unbind unflatten flatten narrow
    view_as_real view_as_complex _reshape_alias lift_fresh diagonal unfold movedim
    """.split()
)
MOVEMENT = tuple(
    """
    clone copy _to_copy cat stack constant_pad_nd reflection_pad2d replicate_pad2d
    contiguous repeat flip roll triu tril index index_put scatter masked_scatter
    _unsafe_index upsample_nearest2d pixel_shuffle channel_shuffle _pdist_forward
    _softmax_backward_data fill zero dropout native_dropout lift bernoulli
    """.split()
)
CREATION = tuple(
    """
    empty empty_like empty_strided zeros zeros_like ones ones_like full full_like arange
    new_zeros new_ones new_empty new_full scalar_tensor rand randn randint rand_like
    randn_like linspace _local_scalar_dense sym_size sym_stride sym_numel sym_storage_offset
    _assert_tensor_metadata _assert_async is_same_size resize_ eye
    """.split()
)


def build_rules() -> dict[str, Rule]:
    """Map op name -> cost rule (in-place variants such as ``add_`` use the rule of ``add``)."""
    table: dict[str, Rule] = {
        "mm": mac_rule(_mm_macs),
        "addmm": mac_rule(_addmm_macs),
        "bmm": mac_rule(_bmm_macs),
        "baddbmm": mac_rule(_baddbmm_macs),
        "convolution": mac_rule(_conv_macs),
        "_convolution": mac_rule(_conv_macs),
        "mkldnn_convolution": mac_rule(_conv_no_transpose_macs),
        "_int_mm": mac_rule(_int_mm_macs),
        "_weight_int8pack_mm": mac_rule(_weight_pack_mm_macs),
        "_weight_int4pack_mm": mac_rule(_weight_pack_mm_macs),
        "_weight_int4pack_mm_for_cpu": mac_rule(_weight_pack_mm_macs),
        "_scaled_mm": mac_rule(_mm_macs),
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_rule,
        "_scaled_dot_product_flash_attention": _sdpa_rule,
        "_scaled_dot_product_efficient_attention": _sdpa_rule,
        "_scaled_dot_product_cudnn_attention": _sdpa_rule,
        "embedding": _gather_rule,
        "index_select": _gather_rule,
        "gather": _gather_rule,
        "_softmax": per_element_rule(5),
        "_safe_softmax": per_element_rule(5),
        "softmax": per_element_rule(5),
        "_log_softmax": per_element_rule(5),
        "native_layer_norm": per_element_rule(7),
        "layer_norm": per_element_rule(7),
        "_fused_rms_norm": per_element_rule(4),
        "rms_norm": per_element_rule(4),
        "native_batch_norm": per_element_rule(4),
        "_native_batch_norm_legit_no_training": per_element_rule(4),
        "_native_batch_norm_legit": per_element_rule(4),
        "group_norm": per_element_rule(7),
        "native_group_norm": per_element_rule(7),
        "max_pool2d_with_indices": _pool_rule,
        "max_pool2d": _pool_rule,
        "avg_pool2d": _pool_rule,
        "_adaptive_avg_pool2d": per_element_rule(1, on_input=True),
        "adaptive_avg_pool2d": per_element_rule(1, on_input=True),
        "mean": per_element_rule(1, on_input=True),
    }
    for name in ELEMENTWISE_1:
        table.setdefault(name, per_element_rule(1))
    for name in ELEMENTWISE_4:
        table.setdefault(name, per_element_rule(4))
    for name in REDUCTIONS:
        table.setdefault(name, per_element_rule(1, on_input=True))
    for names, rule in (
        (VIEWS, _view_rule),
        (MOVEMENT, _movement_rule),
        (CREATION, _creation_rule),
    ):
        for name in names:
            table.setdefault(name, rule)
    return table


RULES = build_rules()

# Op classes used by the latency model: ops of a class share one measured efficiency.
OP_CLASS = {
    **dict.fromkeys(("mm", "addmm", "bmm", "baddbmm", "_scaled_mm"), "matmul"),
    **dict.fromkeys(("convolution", "_convolution", "mkldnn_convolution"), "conv"),
    **dict.fromkeys(("_int_mm", "_weight_int8pack_mm", "_weight_int4pack_mm"), "int8_matmul"),
    **dict.fromkeys(
        (
            "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_efficient_attention",
        ),
        "attention",
    ),
}


# Bandwidth-bound ops split by how much work they do per byte, for the latency model.
MEMORY_CLASS = {
    **dict.fromkeys(ELEMENTWISE_1 + ELEMENTWISE_4, "elementwise"),
    **dict.fromkeys((*REDUCTIONS, "_adaptive_avg_pool2d", "adaptive_avg_pool2d"), "reduction"),
    **dict.fromkeys(
        (
            "_softmax",
            "_safe_softmax",
            "softmax",
            "_log_softmax",
            "native_layer_norm",
            "layer_norm",
            "rms_norm",
            "_fused_rms_norm",
            "native_batch_norm",
            "_native_batch_norm_legit_no_training",
            "_native_batch_norm_legit",
            "group_norm",
            "native_group_norm",
        ),
        "normalization",
    ),
    **dict.fromkeys(("max_pool2d_with_indices", "max_pool2d", "avg_pool2d"), "pool"),
    **dict.fromkeys(MOVEMENT + CREATION, "copy"),
    **dict.fromkeys(("embedding", "index_select", "gather"), "gather"),
}


def rule_name(name: str) -> str:
    """The rule an ATen op name uses: in-place ``add_`` -> ``add``."""
    if name not in RULES and name.endswith("_") and name[:-1] in RULES:
        return name[:-1]
    return name


def op_name(func: Any) -> str:
    """The rule name of an OpOverload: ``aten.add_.Tensor`` -> ``add``."""
    return rule_name(str(func.overloadpacket.__name__))


def op_class(name: str, input_shapes: Sequence[tuple[int, ...]] = ()) -> str:
    """The op's class for the latency model.

    Compute classes: 'matmul', 'conv', 'conv_depthwise', 'int8_matmul', 'attention'. Bandwidth
    classes: 'elementwise', 'normalization', 'reduction', 'pool', 'copy'; 'view' moves nothing.
    """
    if name in OP_CLASS:
        cls = OP_CLASS[name]
        if cls == "conv" and len(input_shapes) > 1 and len(input_shapes[1]) > 2:
            x, weight = input_shapes[0], input_shapes[1]
            if weight[1] == 1 and x[1] > 1:  # one input channel per group
                return "conv_depthwise"
        return cls
    return MEMORY_CLASS.get(name, "memory") if RULES.get(name) is not _view_rule else "view"


def cost_of(func: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> OpCost | None:
    """The cost of one call of ``func`` (an OpOverload), or None when no rule exists."""
    rule = RULES.get(op_name(func))
    return None if rule is None else rule(args, kwargs, out)
