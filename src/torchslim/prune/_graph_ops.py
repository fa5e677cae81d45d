"""How each traced op moves, joins, cuts or couples the tracked feature dimension (``graph.py``).

One handler per op family, in the spirit of fvcore's per-op tables. An op not listed here
freezes the features flowing into it, with its name as the reason, so the plan says which op
could not be followed instead of producing a model that fails later.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from torchslim.prune.graph import DependencyGraph, Layout, Member, Segment, Tracked

PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softmax, nn.Mish, nn.ELU,
)  # fmt: skip
PASSTHROUGH_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.hardswish,
    F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    F.softmax, torch.softmax, F.leaky_relu, F.mish, F.elu, torch.exp, torch.abs, F.hardsigmoid,
}  # fmt: skip
PASSTHROUGH_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to", "softmax",
    "exp", "abs", "type_as",
}  # fmt: skip
ELEMENTWISE = {
    operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul,
    torch.add, torch.mul, torch.sub, torch.div, "add", "mul", "sub", "div", "add_", "mul_",
}  # fmt: skip
RESHAPES = {torch.reshape, torch.flatten, "view", "reshape", "flatten"}
PERMUTES = {torch.transpose, torch.permute, "transpose", "permute"}
REDUCTIONS = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
SPLITS = {torch.split, torch.chunk, "split", "chunk", torch.unbind, "unbind"}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
UNDERSTOOD = (nn.Conv2d, nn.Linear, nn.Embedding, *NORMS, *PASSTHROUGH_MODULES, nn.Flatten)


# ---- helpers ------------------------------------------------------------------------------------


def shape_of(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def width(layout: Layout) -> int:
    return sum(s.length * s.expand for s in layout)


def fresh(graph: DependencyGraph, node: fx.Node, owner: str, dim: int) -> Tracked | None:
    shape = shape_of(node)
    if shape is None or not shape:
        return None
    dim = dim % len(shape)
    layout = (Segment(graph.new_source(shape[dim], owner), shape[dim]),)
    return Tracked(dim, len(shape), layout)


def _tracked(value: Any, values: dict[fx.Node, Any]) -> Tracked | None:
    found = values.get(value) if isinstance(value, fx.Node) else None
    return found if isinstance(found, Tracked) else None


def _freeze_all(graph: DependencyGraph, node: fx.Node, values: dict, reason: str) -> None:
    from torchslim.prune.graph import _flat

    for each in _flat((node.args, node.kwargs), values):
        graph.freeze(each, reason)


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _with_dim(tracked: Tracked, dim: int, ndim: int, layout: Layout | None = None) -> Tracked:
    return Tracked(dim, ndim, tracked.layout if layout is None else layout)


# ---- modules ------------------------------------------------------------------------------------


def module_node(
    graph: DependencyGraph, node: fx.Node, module: nn.Module, values: dict[fx.Node, Any]
) -> Any:
    name = str(node.target)
    x = _tracked(node.args[0], values) if node.args else None
    if isinstance(module, nn.Conv2d):
        return _conv(graph, node, name, module, x)
    if isinstance(module, nn.Linear):
        if x is not None and x.dim == x.ndim - 1 and width(x.layout) == module.in_features:
            graph.members.append(Member(name, "in", x.layout))
        else:
            graph.freeze(x, f"{name} input not traced feature-wise")
        return _producer(graph, node, name, -1)
    if isinstance(module, nn.Embedding):
        return _producer(graph, node, name, -1)
    if isinstance(module, NORMS):
        axis_ok = x is not None and (x.dim == 1 if not isinstance(module, nn.LayerNorm) else (
            x.dim == x.ndim - 1 and len(module.normalized_shape) == 1))  # fmt: skip
        if x is not None and axis_ok:
            affine = getattr(module, "weight", None) is not None
            if affine or not isinstance(module, nn.LayerNorm):
                kind = "ln" if isinstance(module, nn.LayerNorm) else "bn"
                graph.members.append(Member(name, kind, x.layout))
            return x
        graph.freeze(x, f"{name} ({type(module).__name__}) normalizes across the features")
        return None
    if isinstance(module, PASSTHROUGH_MODULES):
        return x
    if isinstance(module, nn.Flatten):
        return _reshape(graph, node, x, constants_ok=True)
    if any(True for _ in module.parameters()):
        graph.unsupported[name] = type(module).__name__
    _freeze_all(graph, node, values, f"unsupported module {name} ({type(module).__name__})")
    out = fresh(graph, node, name, 1)
    graph.freeze(out, f"unsupported module {name} ({type(module).__name__})")
    return out


def _producer(graph: DependencyGraph, node: fx.Node, name: str, dim: int) -> Tracked | None:
    out = fresh(graph, node, name, dim)
    if out is not None:
        graph.members.append(Member(name, "out", out.layout))
    return out


def _conv(
    graph: DependencyGraph, node: fx.Node, name: str, conv: nn.Conv2d, x: Tracked | None
) -> Tracked | None:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if depthwise and x is not None and x.dim == 1:
        graph.members.append(Member(name, "depthwise", x.layout))
        return x
    if conv.groups > 1:
        graph.freeze(x, f"grouped conv {name}")
        out = fresh(graph, node, name, 1)
        graph.freeze(out, f"grouped conv {name}")
        return out
    if x is not None and x.dim == 1 and width(x.layout) == conv.in_channels:
        graph.members.append(Member(name, "in", x.layout))
    else:
        graph.freeze(x, f"{name} input not traced channel-wise")
    return _producer(graph, node, name, 1)


# ---- functions and methods ----------------------------------------------------------------------


def function_node(graph: DependencyGraph, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
    target = node.target
    method = node.op == "call_method"
    first = node.args[0] if node.args else None
    x = _tracked(first, values)
    if "tensor_meta" not in node.meta:
        return None  # sizes, shapes, python numbers: read the features, never change them
    if target is operator.getitem:
        return _getitem(graph, node, values)
    if target in PASSTHROUGH_FUNCTIONS or (method and target in PASSTHROUGH_METHODS):
        return x
    if target in ELEMENTWISE:
        return _elementwise(graph, node, values)
    if target is torch.cat:
        return _cat(graph, node, values)
    if target in RESHAPES:
        constants_ok = target in (torch.flatten, "flatten")
        return _reshape(graph, node, x, constants_ok)
    if target in PERMUTES:
        return _permute(node, x)
    if target in ("unsqueeze", torch.unsqueeze):
        return _unsqueeze(node, x)
    if target in REDUCTIONS:
        return _reduce(node, x)
    if target in SPLITS:
        return _split(graph, node, x)
    if target is F.scaled_dot_product_attention:
        return _sdpa(graph, node, values)
    _freeze_all(graph, node, values, f"op {node.name} ({getattr(target, '__name__', target)}) "
                "not understood feature-wise")  # fmt: skip
    return None


def _getitem(graph: DependencyGraph, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
    source, index = node.args[0], node.args[1]
    value = values.get(source) if isinstance(source, fx.Node) else None
    if isinstance(value, list):
        return value[index] if isinstance(index, int) else None
    if not isinstance(value, Tracked):
        return None
    items = index if isinstance(index, tuple) else (index,)
    dim = value.dim
    for position, item in enumerate(items):
        if item is Ellipsis or item is None or isinstance(item, fx.Node):
            graph.freeze(value, f"indexing {node.name} not followed")
            return None
        if position == value.dim:
            if item != slice(None):
                graph.freeze(value, f"indexing {node.name} selects features")
                return None
        elif isinstance(item, int) and position < value.dim:
            dim -= 1
    shape = shape_of(node)
    return None if shape is None else _with_dim(value, dim, len(shape))


def _elementwise(graph: DependencyGraph, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
    shape = shape_of(node)
    tensors = [a for a in node.args if isinstance(a, fx.Node) and shape_of(a) is not None]
    tracked = [t for t in (_tracked(a, values) for a in tensors) if t is not None]
    if not tracked or shape is None:
        return None
    negative = tracked[0].dim - tracked[0].ndim
    reason = f"misaligned operands of {node.name}"
    if any(t.dim - t.ndim != negative for t in tracked):
        for each in tracked:
            graph.freeze(each, reason)
        return None
    for raw in tensors:
        if _tracked(raw, values) is not None:
            continue
        raw_shape = shape_of(raw) or ()
        axis = len(raw_shape) + negative
        if axis < 0 or raw_shape[axis] == 1:
            continue  # broadcast along the features: nothing to slice
        if raw.op == "get_attr" and raw_shape[axis] == width(tracked[0].layout):
            graph.members.append(Member(str(raw.target), "param", tracked[0].layout, axis))
            continue
        graph.unsupported.setdefault(str(raw.target), "tensor used in a functional op")
        for each in tracked:
            graph.freeze(each, f"op {node.name} ({raw.name} is not traced feature-wise)")
        return None
    for other in tracked[1:]:
        if not _unite(graph, tracked[0].layout, other.layout):
            graph.freeze(tracked[0], reason)
            graph.freeze(other, reason)
    return _with_dim(tracked[0], len(shape) + negative, len(shape))


def _unite(graph: DependencyGraph, a: Layout, b: Layout) -> bool:
    a, b = graph.resolve(a), graph.resolve(b)
    if [(s.length, s.expand) for s in a] != [(s.length, s.expand) for s in b]:
        return False
    for left, right in zip(a, b, strict=True):
        graph.union(left.source, right.source)
    return True


def _cat(graph: DependencyGraph, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
    parts = _arg(node, 0, "tensors", [])
    dim = _arg(node, 1, "dim", 0)
    shape = shape_of(node)
    tracked = [_tracked(p, values) for p in parts]
    if shape is None or not isinstance(dim, int):
        _freeze_all(graph, node, values, f"cat {node.name} not followed")
        return None
    dim %= len(shape)
    if all(t is not None and t.dim == dim for t in tracked):
        layout = tuple(s for t in tracked if t is not None for s in t.layout)
        return Tracked(dim, len(shape), layout)
    if all(t is not None and t.dim != dim for t in tracked):  # stacked along another axis
        first = tracked[0]
        assert first is not None
        for other in tracked[1:]:
            assert other is not None
            if other.dim != first.dim or not _unite(graph, first.layout, other.layout):
                _freeze_all(graph, node, values, f"cat {node.name} of misaligned features")
                return None
        return first
    _freeze_all(graph, node, values, f"cat {node.name} mixes traced and untraced features")
    return None


def _reshape(graph: DependencyGraph, node: fx.Node, x: Tracked | None, constants_ok: bool) -> Any:
    """Follow the tracked dim through a view: moved, or merged as the outer part of a flatten."""
    src, out = shape_of(node.all_input_nodes[0]) if node.all_input_nodes else None, shape_of(node)
    if x is None or src is None or out is None:
        return None
    prefix = _product(src[: x.dim])
    found = None
    for j in range(len(out)):  # size-1 dims make several j fit the prefix: take one that merges
        if _product(out[:j]) != prefix:
            continue
        merged, k = src[x.dim], x.dim + 1
        while merged < out[j] and k < len(src):
            merged *= src[k]
            k += 1
        if merged == out[j]:
            found = j, k
            break
    if found is None:
        graph.freeze(x, f"view {node.name} splits or merges the features {src} -> {out}")
        return None
    j, k = found
    if not constants_ok and _constant_size(node, j):
        graph.freeze(x, f"view {node.name} has a constant size where the features go")
        return None
    inner = _product(src[x.dim + 1 : k])
    layout = tuple(Segment(s.source, s.length, s.expand * inner) for s in x.layout)
    return Tracked(j, len(out), layout)


def _constant_size(node: fx.Node, dim: int) -> bool:
    sizes: list[Any] = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    if not sizes:
        given: Any = node.kwargs.get("shape", node.kwargs.get("size", ()))
        sizes = list(given)
    return dim < len(sizes) and isinstance(sizes[dim], int) and bool(sizes[dim] != -1)


def _int(value: Any) -> int:
    return int(value)


def _product(sizes: tuple[int, ...]) -> int:
    total = 1
    for size in sizes:
        total *= size
    return total


def _permute(node: fx.Node, x: Tracked | None) -> Any:
    if x is None:
        return None
    if node.target in (torch.transpose, "transpose"):
        a, b = (_int(d) % x.ndim for d in node.args[1:3])
        dim = b if x.dim == a else a if x.dim == b else x.dim
        return _with_dim(x, dim, x.ndim)
    order = node.args[1:]
    if len(order) == 1 and isinstance(order[0], (tuple, list)):
        order = tuple(order[0])
    order = tuple(_int(d) % x.ndim for d in order)
    return _with_dim(x, order.index(x.dim), x.ndim)


def _unsqueeze(node: fx.Node, x: Tracked | None) -> Any:
    if x is None:
        return None
    at = _int(node.args[1]) % (x.ndim + 1)
    return _with_dim(x, x.dim + 1 if at <= x.dim else x.dim, x.ndim + 1)


def _reduce(node: fx.Node, x: Tracked | None) -> Any:
    dims = _arg(node, 1, "dim")
    keep = bool(_arg(node, 2, "keepdim", False))
    if x is None or dims is None:
        return None
    dims = {int(d) % x.ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    if x.dim in dims:
        return None  # summing over features: fewer features, same shape
    shift = 0 if keep else sum(1 for d in dims if d < x.dim)
    return _with_dim(x, x.dim - shift, x.ndim if keep else x.ndim - len(dims))


def _split(graph: DependencyGraph, node: fx.Node, x: Tracked | None) -> Any:
    metas = node.meta.get("tensor_meta")
    if x is None or not isinstance(metas, (tuple, list)):
        return None
    shapes = [tuple(int(s) for s in m.shape) for m in metas]
    unbind = node.target in (torch.unbind, "unbind")
    dim = int(_arg(node, 1, "dim", 0) if unbind else _arg(node, 2, "dim", 0)) % x.ndim
    if unbind:
        if dim == x.dim:
            graph.freeze(x, f"unbind {node.name} along the features")
            return None
        return [_with_dim(x, x.dim - (dim < x.dim), x.ndim - 1) for _ in shapes]
    if dim != x.dim:
        return [x for _ in shapes]
    sizes = [s[dim] for s in shapes]
    by_count = node.target in (torch.chunk, "chunk") or isinstance(_arg(node, 1, "split"), fx.Node)
    if not by_count or len(set(sizes)) != 1:
        graph.freeze(x, f"split {node.name} has constant sizes that pruning would make stale")
        return None
    pieces = _cut(graph, x.layout, sizes)
    if pieces is None:
        graph.freeze(x, f"split {node.name} cuts coupled features")
        return None
    for piece in pieces[1:]:  # equal pieces stay equal: the same features go from each
        _unite(graph, pieces[0], piece)
    return [Tracked(x.dim, x.ndim, p) for p in pieces]


def _cut(graph: DependencyGraph, layout: Layout, sizes: list[int]) -> list[Layout] | None:
    """``layout`` cut into consecutive pieces of ``sizes`` features (splitting a lone source)."""
    layout = graph.resolve(layout)
    if len(layout) == 1 and len(sizes) > 1:
        segment = layout[0]
        lone = sum(1 for s in range(len(graph.parent)) if graph.root(s) == graph.root(
            segment.source)) == 1  # fmt: skip
        if not lone or any(size % segment.expand for size in sizes):
            return None
        owner = graph.source_owner[segment.source]
        parts = tuple(Segment(graph.new_source(size // segment.expand, owner),
                              size // segment.expand) for size in sizes)  # fmt: skip
        graph.parts[segment.source] = parts
        if segment.source in graph.frozen:
            graph.freeze(parts, graph.frozen[segment.source])
        return [(Segment(p.source, p.length, segment.expand),) for p in parts]
    out, current, filled = [], [], 0
    remaining = list(sizes)
    for segment in layout:
        current.append(segment)
        filled += segment.length * segment.expand
        if filled == remaining[0]:
            out.append(tuple(current))
            current, filled = [], 0
            remaining.pop(0)
        elif filled > remaining[0]:
            return None
    return out if not remaining else None


def _sdpa(graph: DependencyGraph, node: fx.Node, values: dict[fx.Node, Any]) -> Any:
    q, k, v = (_tracked(node.args[i], values) if len(node.args) > i else None for i in range(3))
    last = all(t is not None and t.dim == t.ndim - 1 for t in (q, k, v))
    if last and q is not None and k is not None and _unite(graph, q.layout, k.layout):
        return v  # attention keeps v's features on the last dim
    _freeze_all(graph, node, values, f"attention {node.name} over untraced head features")
    return None
