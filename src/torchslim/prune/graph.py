"""Channel dependency graph: which output channels, BN features and input channels move together.

Traced with ``torch.fx.symbolic_trace`` (plus ``ShapeProp`` for flatten sizes): fx keeps module
names and the graph structure (residual adds, cats) that structured pruning needs, whereas a
dispatch-mode trace sees only ATen ops without module ownership. Approach after DepGraph /
Torch-Pruning (arXiv:2301.12900).

Every Conv/Linear output opens a *source* of C channels. A tensor's channel layout is a list of
segments ``(source, length, expand)``: ``cat`` concatenates layouts, ``flatten`` multiplies
``expand`` by the spatial size, ``add``/``mul`` unite the sources of both operands (union-find).
Sources that reach the model output, touch an op we do not understand, or feed a grouped conv
are frozen; the unknown ops and modules are recorded by name so the plan can report them.
"""

from __future__ import annotations

import operator
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from torchslim.errors import TorchslimError


class PruneError(TorchslimError, ValueError):
    """The model cannot be pruned as asked (untraceable, nothing prunable, ...)."""


@dataclass(frozen=True)
class Segment:
    """``length`` channels of ``source``; each channel spans ``expand`` consecutive features."""

    source: int
    length: int
    expand: int = 1


Layout = tuple[Segment, ...]

PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
PASSTHROUGH_FUNCTIONS = {
    torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.gelu,
    torch.nn.functional.silu, torch.sigmoid, torch.tanh, torch.nn.functional.hardswish,
    torch.nn.functional.dropout, torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.adaptive_max_pool2d,
    operator.getitem,
}  # fmt: skip
PASSTHROUGH_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach"}
ELEMENTWISE = {operator.add, operator.mul, operator.iadd, torch.add, torch.mul, "add", "mul"}
UNDERSTOOD = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, *PASSTHROUGH_MODULES)


@dataclass
class Member:
    """A module whose weights are sliced when a group is pruned.

    ``kind`` is "out" (a Conv/Linear producing the channels), "in" (a Conv/Linear consuming them),
    "bn" (BatchNorm features) or "depthwise" (a depthwise conv: in and out channels at once).
    """

    name: str
    kind: str
    layout: Layout


@dataclass
class DependencyGraph:
    """Sources, their union-find groups, the members slicing them, and what we could not read."""

    source_size: list[int] = field(default_factory=list)
    source_owner: list[str] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)

    def new_source(self, size: int, owner: str) -> int:
        self.source_size.append(size)
        self.source_owner.append(owner)
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def root(self, source: int) -> int:
        while self.parent[source] != source:
            self.parent[source] = self.parent[self.parent[source]]
            source = self.parent[source]
        return source

    def union(self, a: int, b: int) -> None:
        self.parent[self.root(a)] = self.root(b)

    def freeze(self, layout: Layout | None, reason: str) -> None:
        for segment in layout or ():
            self.frozen.setdefault(segment.source, reason)

    def groups(self) -> dict[int, list[int]]:
        """Root source -> every source in its group."""
        out: dict[int, list[int]] = {}
        for source in range(len(self.parent)):
            out.setdefault(self.root(source), []).append(source)
        return out

    def frozen_reason(self, root: int) -> str | None:
        for source, reason in self.frozen.items():
            if self.root(source) == root:
                return reason
        return None


class _Tracer(fx.Tracer):
    """Keeps standard layers and any module with parameters we do not understand as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, UNDERSTOOD):
            return True
        own_params = any(True for _ in m.parameters(recurse=False))
        return own_params or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, example_inputs: tuple[Any, ...]) -> fx.GraphModule:
    """Symbolically trace ``model`` and record every node's output shape."""
    try:
        graph = _Tracer().trace(model)
        module = fx.GraphModule(model, graph)
        ShapeProp(module).propagate(*example_inputs)
    except Exception as error:  # fx raises many types; all mean "cannot trace"
        raise PruneError(
            f"cannot trace {type(model).__name__} with torch.fx for structured pruning at "
            f"{_failing_line(error)} ({type(error).__name__}: {error}); data-dependent control "
            "flow must be removed or the module passed in `ignore`"
        ) from error
    return module


def _failing_line(error: BaseException) -> str:
    """The model's own source line where tracing failed (the first frame outside torch)."""
    torch_dir = Path(torch.__file__).parent
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if torch_dir not in Path(f.filename).parents
    ]
    if not frames:
        return "an unknown op"
    frame = frames[-1]
    code = (frame.line or "").strip()
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}: `{code}`"


def build_graph(model: nn.Module, example_inputs: tuple[Any, ...]) -> DependencyGraph:
    """Trace ``model`` and group its coupled channels."""
    traced = trace(model, example_inputs)
    modules = dict(traced.named_modules())
    graph = DependencyGraph()
    layouts: dict[fx.Node, Layout | None] = {}
    for node in traced.graph.nodes:
        inputs = [layouts.get(a) for a in node.all_input_nodes]
        if node.op == "placeholder":
            layouts[node] = _fresh(graph, node, "model input")
            graph.freeze(layouts[node], "model input")
        elif node.op == "output":
            for layout in inputs:
                graph.freeze(layout, "model output")
        elif node.op == "get_attr":
            layouts[node] = None
        elif node.op == "call_module":
            layouts[node] = _module_node(graph, node, modules[str(node.target)], inputs)
        else:
            layouts[node] = _function_node(graph, node, inputs)
    return graph


def _channels(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else None


def _fresh(graph: DependencyGraph, node: fx.Node, owner: str) -> Layout | None:
    size = _channels(node)
    return None if size is None else (Segment(graph.new_source(size, owner), size),)


def _module_node(
    graph: DependencyGraph, node: fx.Node, module: nn.Module, inputs: list[Layout | None]
) -> Layout | None:
    name = str(node.target)
    layout = inputs[0] if inputs else None
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        depthwise = isinstance(module, nn.Conv2d) and _is_depthwise(module)
        if depthwise and layout is not None:
            graph.members.append(Member(name, "depthwise", layout))
            return layout
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            graph.freeze(layout, f"grouped conv {name}")
            out = _fresh(graph, node, name)
            graph.freeze(out, f"grouped conv {name}")
            return out
        if layout is not None and _layout_width(layout) == _in_features(module):
            graph.members.append(Member(name, "in", layout))
        else:
            graph.freeze(layout, f"{name} input not traced channel-wise")
        out = _fresh(graph, node, name)
        if out is not None:
            graph.members.append(Member(name, "out", out))
        return out
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)) and layout is not None:
        graph.members.append(Member(name, "bn", layout))
        return layout
    if isinstance(module, PASSTHROUGH_MODULES):
        return layout
    if isinstance(module, nn.Flatten):
        return _flatten(node, layout)
    if any(True for _ in module.parameters()):
        graph.unsupported[name] = type(module).__name__
    for each in inputs:
        graph.freeze(each, f"unsupported module {name} ({type(module).__name__})")
    out = _fresh(graph, node, name)
    graph.freeze(out, f"unsupported module {name} ({type(module).__name__})")
    return out


def _function_node(
    graph: DependencyGraph, node: fx.Node, inputs: list[Layout | None]
) -> Layout | None:
    target = node.target
    layout = inputs[0] if inputs else None
    if target in PASSTHROUGH_FUNCTIONS or (
        node.op == "call_method" and target in PASSTHROUGH_METHODS
    ):
        return layout
    if target in ELEMENTWISE:
        tensors = [each for each in inputs if each is not None]
        # a non-scalar tensor without a layout (a raw parameter) would need slicing too
        untracked = [
            raw
            for raw, each in zip(node.all_input_nodes, inputs, strict=True)
            if each is None and _numel(raw) > 1
        ]
        for raw in untracked:
            if raw.op == "get_attr":
                graph.unsupported[str(raw.target)] = "parameter used in a functional op"
        if not untracked and all(_same_channels(each, node) for each in tensors):
            for other in tensors[1:]:
                if not _unite(graph, tensors[0], other):
                    graph.freeze(tensors[0], f"misaligned {node.name}")
                    graph.freeze(other, f"misaligned {node.name}")
            return tensors[0] if tensors else None
    if target is torch.cat and _cat_dim(node) == 1 and all(each is not None for each in inputs):
        return tuple(segment for each in inputs for segment in each or ())
    if target is torch.flatten or (
        node.op == "call_method" and target in ("flatten", "view", "reshape")
    ):
        flat = _flatten(node, layout)
        if flat is not None:
            return flat
    for each in inputs:
        graph.freeze(each, f"op {node.name} ({target}) not understood channel-wise")
    return None


def _same_channels(layout: Layout, node: fx.Node) -> bool:
    return _layout_width(layout) == _channels(node)


def _unite(graph: DependencyGraph, a: Layout, b: Layout) -> bool:
    if [(s.length, s.expand) for s in a] != [(s.length, s.expand) for s in b]:
        return False
    for left, right in zip(a, b, strict=True):
        graph.union(left.source, right.source)
    return True


def _cat_dim(node: fx.Node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return int(dim) if isinstance(dim, int) else -999


def _flatten(node: fx.Node, layout: Layout | None) -> Layout | None:
    """(B, C, H, W) -> (B, C*H*W): every channel now spans H*W features."""
    source_meta = node.all_input_nodes[0].meta.get("tensor_meta") if node.all_input_nodes else None
    meta = node.meta.get("tensor_meta")
    if layout is None or source_meta is None or meta is None or len(meta.shape) != 2:
        return None
    in_shape = tuple(source_meta.shape)
    if len(in_shape) < 2 or in_shape[0] != meta.shape[0]:
        return None
    spatial = 1
    for size in in_shape[2:]:
        spatial *= int(size)
    return tuple(Segment(s.source, s.length, s.expand * spatial) for s in layout)


def _layout_width(layout: Layout) -> int:
    return sum(s.length * s.expand for s in layout)


def _in_features(module: nn.Module) -> int:
    return int(module.in_features if isinstance(module, nn.Linear) else module.in_channels)  # type: ignore[arg-type]


def _is_depthwise(conv: nn.Conv2d) -> bool:
    """One filter per channel: pruning an input channel removes its output channel too."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _numel(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    if shape is None:
        return 1
    count = 1
    for size in shape:
        count *= int(size)
    return count
