"""Peak memory of a forward pass: what the CPU allocator (or the CUDA caching allocator) held.

Measured from the allocator itself, so kernel workspaces (e.g. the im2col columns of a native
convolution) count as well as the tensors ops return. ``LiveStorages`` follows tensor storages
as Python frees them; the profiler's cost counter uses it to predict the same peak on meta.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._pytree import tree_leaves

from torchslim._torch_profiler import native_output_silenced


class LiveStorages:
    """Bytes of the storages ops created that are still referenced; the peak seen.

    Storages that existed before (inputs, weights) are never counted. A storage is freed when its
    last tensor dies, which is seen at the next op (``sweep``): Python's references, not the last
    use, decide how long an activation lives.
    """

    def __init__(self) -> None:
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.known: set[int] = set()
        self.live_bytes = 0
        self.peak_bytes = 0

    def track_existing(self, tensors: list[torch.Tensor]) -> None:
        """Mark storages that already exist (inputs, weights) so they are never counted."""
        for t in tensors:
            self.known.add(t.untyped_storage()._cdata)

    def sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.live_bytes -= self.live.pop(key)[1]

    def add_outputs(self, out: Any, workspace_bytes: int = 0) -> None:
        """Count an op's new output storages; ``workspace_bytes`` are held during the op only."""
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.live or key in self.known:
                continue  # a view, an in-place result, or an input
            size = storage.nbytes()
            self.live[key] = (StorageWeakRef(storage), size)
            self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes + workspace_bytes)


def cpu_allocator_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes the CPU allocator held beyond what it held before ``fn`` (every allocation
    and free while ``fn`` runs, from the profiler's memory events, in time order)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: one-off caches (e.g. packed weights) are not activations
    with native_output_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True):
        pass  # the profiler's own first-start allocations happen here, not in the measured run
    with (
        native_output_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    changes: list[tuple[int, int]] = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            changes.append((node.start_time_ns, node.extra_fields.alloc_size))
        pending.extend(node.children)
    live = peak = 0
    for _, size in sorted(changes):
        live += size
        peak = max(peak, live)
    return peak


def peak_activation_bytes(fn: Callable[[], Any], existing: list[torch.Tensor]) -> int:
    """Peak bytes allocated while ``fn`` runs beyond ``existing`` tensors (inputs, weights).

    On CPU the allocator's own record (workspaces included); on CUDA the caching allocator's peak.
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
    with torch.inference_mode():
        return cpu_allocator_peak_bytes(fn)


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, at their real dtypes."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class PeakRSS:
    """Peak resident set size of this process inside a ``with`` block, in bytes (Linux).

    The kernel's high-water mark (VmHWM) is reset on entry (``/proc/self/clear_refs``), so the
    peak is the block's, not the process's lifetime's; ``start_bytes`` is the RSS on entry.
    Where the reset is not allowed the peak is the lifetime peak (``reset`` False).
    """

    def __init__(self) -> None:
        self.start_bytes = 0
        self.peak_bytes = 0
        self.reset = False

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise OSError(f"/proc/self/status has no {field}")

    def __enter__(self) -> PeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # reset the peak RSS counter
            self.reset = True
        except OSError:
            self.reset = False
        self.start_bytes = 1024 * self._status_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_bytes = 1024 * self._status_kib("VmHWM")
