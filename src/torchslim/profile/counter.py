"""Counting costs at the ATen level with a TorchDispatchMode (works on real and meta tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from torchslim.evaluate.memory import LiveStorages
from torchslim.profile.costs import OpCost, cost_of, op_class, op_name
from torchslim.profile.op_times import call_spec
from torchslim.profile.workspace import workspace_bytes


@dataclass(frozen=True)
class OpRecord:
    """One ATen call: where it ran, what it was, what it cost (``cost`` None = no rule)."""

    index: int
    op: str
    module: str
    op_class: str
    dtype: str
    input_shapes: tuple[tuple[int, ...], ...]
    cost: OpCost | None
    params: int = 0  # parameters this op is the first (non-view) op of the pass to read
    call: str | None = field(default=None, repr=False, compare=False)  # op_times.call_spec


class CostCounter(TorchDispatchMode):
    """Records every ATen call with its module path, cost and the parameters it reads first;
    counts how often each module's forward ran; predicts the peak activation memory from the
    storages Python keeps alive between ops plus each kernel's workspace (``storages``).

    Module paths are state-dict names ("layer1.0.conv1"); "" is the model itself.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.records: list[OpRecord] = []
        self.storages = LiveStorages()
        self.storages.track_existing([*model.parameters(), *model.buffers()])
        self.module_calls: dict[str, int] = {}
        self._stack: list[str] = [""]
        self._hooks: list[Any] = []
        self._unread_params: dict[int, int] = {}  # storage -> parameters no op has read yet
        weights = [*model.parameters(), *model.buffers()]
        self._weights = {t.untyped_storage()._cdata for t in weights}
        for p in {id(p): p for p in model.parameters()}.values():
            key = p.untyped_storage()._cdata
            self._unread_params[key] = self._unread_params.get(key, 0) + p.numel()
        for name, module in model.named_modules():
            self._hooks.append(module.register_forward_pre_hook(self._enter(name)))
            self._hooks.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.module_calls[name] = self.module_calls.get(name, 0) + 1
            self._stack.append(name)

        return hook

    def _claim_params(self, inputs: list[torch.Tensor], op_class_name: str) -> int:
        """Parameters read for the first time by this op (views such as ``t`` pass them on)."""
        if op_class_name == "view":
            return 0
        return sum(self._unread_params.pop(t.untyped_storage()._cdata, 0) for t in inputs)

    def _leave(self, module: nn.Module, args: Any, out: Any) -> None:
        self._stack.pop()

    def failed_in(self) -> str:
        """The innermost module running when the forward pass raised ("" for the model)."""
        return self._stack[-1]

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            # .item() on a meta tensor has no value: answer 0/False so data-dependent checks
            # (e.g. "is this a packed sequence?") take their plain path; shapes are unaffected.
            return False if args[0].dtype == torch.bool else 0
        out = func(*args, **kwargs)
        index = len(self.records)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        self.storages.sweep()
        self.storages.add_outputs(out, workspace_bytes(func, args, out))
        name = op_name(func)
        shapes = tuple(tuple(t.shape) for t in inputs)
        cls = op_class(name, shapes)
        first = (
            inputs[0]
            if inputs
            else next((t for t in tree_leaves(out) if isinstance(t, torch.Tensor)), None)
        )
        self.records.append(
            OpRecord(
                index=index,
                op=name,
                module=self._stack[-1],
                op_class=cls,
                dtype=str(first.dtype).removeprefix("torch.") if first is not None else "-",
                input_shapes=shapes,
                cost=cost_of(func, args, kwargs, out),
                params=self._claim_params(inputs, cls),
                call=call_spec(func, args, kwargs, self._weights),
            )
        )
        return out
