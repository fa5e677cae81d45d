"""Channel dependency graph: which features of which layers move together when one is removed.

Traced with ``torch.fx.symbolic_trace`` plus ``ShapeProp``: fx keeps module names and the graph
structure (residual adds, cats, splits) that structured pruning needs, and every node's shape.
Approach after DepGraph / Torch-Pruning (arXiv:2301.12900).

Every Conv/Linear/Embedding output opens a *source* of C features. A tensor is *tracked* when
one of its dimensions (``dim``: 1 for convs, the last one for Linear) carries a layout: a list
of segments ``(source, length, expand)``. Ops move that dimension (permute, view, flatten,
reduce), concatenate layouts (cat), cut them (split/chunk), or couple the sources of their
operands (add/mul/sub, cat along another dim, the q/k of SDPA) with union-find. Sources that
reach the model output, feed an op whose sizes would go stale (a view with a constant width),
or touch an op we cannot follow are frozen, with the op's name as the reason.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Tracked:
    """A tensor whose dimension ``dim`` (of ``ndim``) holds the features of ``layout``."""

    dim: int
    ndim: int
    layout: Layout


@dataclass
class Member:
    """Weights sliced when a group is pruned.

    ``kind``: "out" (a Conv/Linear/Embedding producing features), "in" (a Conv/Linear consuming
    them), "bn" (BatchNorm), "ln" (LayerNorm), "depthwise" (in and out channels at once), or
    "param" (a raw parameter such as a layer scale; ``name`` is the parameter, ``axis`` its dim).
    """

    name: str
    kind: str
    layout: Layout
    axis: int = 0


@dataclass
class DependencyGraph:
    """Sources, their union-find groups, the members slicing them, and what we could not read."""

    source_size: list[int] = field(default_factory=list)
    source_owner: list[str] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    parts: dict[int, Layout] = field(default_factory=dict)  # a split source -> its pieces

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

    def freeze(self, tracked: Tracked | Layout | None, reason: str) -> None:
        layout = tracked.layout if isinstance(tracked, Tracked) else tracked
        for segment in layout or ():
            for piece in self.pieces(segment):
                self.frozen.setdefault(piece.source, reason)

    def pieces(self, segment: Segment) -> Layout:
        """``segment`` in terms of the sources it was split into (itself when never split)."""
        if segment.source not in self.parts:
            return (segment,)
        return tuple(
            p
            for part in self.parts[segment.source]
            for p in self.pieces(Segment(part.source, part.length, segment.expand))
        )

    def resolve(self, layout: Layout) -> Layout:
        return tuple(p for segment in layout for p in self.pieces(segment))

    def groups(self) -> dict[int, list[int]]:
        """Root source -> every source in its group (split sources are replaced by pieces)."""
        out: dict[int, list[int]] = {}
        for source in range(len(self.parent)):
            if source not in self.parts:
                out.setdefault(self.root(source), []).append(source)
        return out

    def frozen_reason(self, root: int) -> str | None:
        for source, reason in self.frozen.items():
            if source not in self.parts and self.root(source) == root:
                return reason
        return None


class _Tracer(fx.Tracer):
    """Keeps standard layers and any module with parameters we do not understand as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from torchslim.prune._graph_ops import UNDERSTOOD

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
    """Trace ``model`` and group its coupled features."""
    from torchslim.prune._graph_ops import function_node, module_node

    traced = trace(model, example_inputs)
    modules = dict(traced.named_modules())
    graph = DependencyGraph()
    values: dict[fx.Node, Any] = {}
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            values[node] = None
        elif node.op == "output":
            for value in _flat(node.args, values):
                graph.freeze(value, "model output")
        elif node.op == "call_module":
            values[node] = module_node(graph, node, modules[str(node.target)], values)
        else:
            values[node] = function_node(graph, node, values)
    for member in graph.members:
        member.layout = graph.resolve(member.layout)
    return graph


def _flat(args: Any, values: dict[fx.Node, Any]) -> list[Tracked]:
    """Every tracked tensor among (nested) ``args``."""
    found: list[Tracked] = []

    def visit(value: Any) -> None:
        if isinstance(value, fx.Node):
            value = values.get(value)
        if isinstance(value, Tracked):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for each in value:
                visit(each)
        elif isinstance(value, dict):
            for each in value.values():
                visit(each)

    visit(args)
    return found
