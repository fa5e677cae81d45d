"""Peak memory of a forward pass, measured by tracking every tensor storage the ops allocate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class StorageTracker(TorchDispatchMode):
    """Counts the bytes of live storages created by ATen ops; records the peak.

    Inputs and parameters exist before the mode starts and are not counted: the peak is the
    activation (and output) memory of the call. A storage is freed when its last tensor dies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.known: set[int] = set()
        self.live_bytes = 0
        self.peak_bytes = 0

    def track_existing(self, tensors: list[torch.Tensor]) -> None:
        """Mark storages that already exist (inputs, weights) so they are never counted."""
        for t in tensors:
            self.known.add(t.untyped_storage()._cdata)

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.live_bytes -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.live or key in self.known:
                continue
            size = storage.nbytes()
            self.live[key] = (StorageWeakRef(storage), size)
            self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return out


def peak_activation_bytes(fn: Callable[[], Any], existing: list[torch.Tensor]) -> int:
    """Peak bytes of tensors allocated while ``fn`` runs (``existing`` tensors excluded).

    On CUDA the caching allocator's own peak is used instead, which also sees workspace memory.
    """
    cuda = [t for t in existing if t.is_cuda]
    if cuda:
        device = cuda[0].device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    tracker = StorageTracker()
    tracker.track_existing(existing)
    with torch.inference_mode(), tracker:
        fn()
    return tracker.peak_bytes


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, at their real dtypes."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())
