"""The measured time of each distinct ATen call, replayed alone on this machine: a lookup table.

The class fits in ``latency_model`` interpolate an op's time from generic shapes, and miss where
a kernel's speed depends on more than its size (a stride-2 depthwise conv, a max-pool after a
ReLU, a 2048-row matmul). Here each distinct call a profile saw (op, argument shapes, strides,
dtypes and scalar arguments: ``call_spec``) is replayed alone with random tensors of the same
layout and timed, once per machine and thread count. The model itself is never timed. The
model's parameters are cycled through copies that overflow the L2 cache (each layer of a model
reads its weights once per forward), and recent outputs are kept alive (a model writes new
activations). The table is the latency model's "per-op table" method (FBNet's latency lookup
table, with measured rather than tabulated shapes); the Python between the ops is added by
``LatencyModel`` from its fitted module-call and Python-call rates.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from torchslim._io import write_json
from torchslim.evaluate.latency import fixed_threads, time_call

ROTATE_BYTES = 16 * 2**20  # weights cycled through copies until they overflow a core's L2 cache
KEEP_OUTPUTS = 4  # outputs of recent calls kept alive, as a model keeps its activations
GROUP_SECONDS = 5e-4  # each timed sample groups calls to last about this long
SAMPLES = 7
TABLE_VERSION = 3
MAX_REPLAY_BYTES = 2**30  # a call with a larger tensor is left to the class fit


class _Unsupported(Exception):
    """An argument this table cannot describe (the op falls back to the class fit)."""


def _encode(value: Any, params: set[int]) -> Any:
    if isinstance(value, torch.Tensor):
        param = value.untyped_storage()._cdata in params
        dtype = str(value.dtype).removeprefix("torch.")
        layout = [list(value.shape), list(value.stride()), dtype, param]
        zeros = _rectified_zero_share(value, param)
        return {"t": layout if zeros is None else [*layout, "relu", zeros]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, params) for v in value]
    if isinstance(value, dict):
        return {"kw": {k: _encode(v, params) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": True}
    if isinstance(value, (torch.memory_format, torch.layout)):
        return {"enum": str(value).removeprefix("torch.")}
    raise _Unsupported(type(value).__name__)


def _rectified_zero_share(tensor: torch.Tensor, param: bool) -> float | None:
    """For activations with no negative value (after a ReLU), the share of zeros (to 0.05);
    None otherwise. Some kernels' speed depends on the data: a max-pool over fashion-cnn's
    rectified activations at batch 16 (60 % and 85 % zeros) took 0.69x and 0.58x of its time over
    rectified normal noise, and a spatially smooth field with the same share of zeros came
    within 12 %."""
    if param or not tensor.is_floating_point() or not tensor.numel():
        return None
    if tensor.device.type == "meta" or bool(tensor.min() < 0):
        return None
    return round(float((tensor == 0).float().mean()) * 20) / 20


def call_spec(func: Any, args: Any, kwargs: dict[str, Any], params: set[int]) -> str | None:
    """A canonical description of one ATen call, without its data (None: not replayable).
    ``params`` holds the storages of the model's parameters: those tensors are replayed cold."""
    try:
        body = {"op": str(func), "args": _encode(args, params), "kwargs": _encode(kwargs, params)}
    except _Unsupported:
        return None
    return json.dumps(body, sort_keys=True)


def _resolve(name: str) -> Any:
    namespace, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), op), overload)


def _tensor(
    shape: list[int],
    stride: list[int],
    dtype: torch.dtype,
    device: Any,
    zero_share: float | None = None,
) -> torch.Tensor:
    """Random data (zeros for integers and booleans: valid indices; rectified activations with
    their recorded share of zeros, see ``_rectified``) laid out as recorded."""
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) if all(shape) else 0
    if extent * torch.empty((), dtype=dtype).element_size() > MAX_REPLAY_BYTES:
        raise _Unsupported(f"a {dtype} tensor of {extent} elements")
    base = torch.empty(max(extent, 1), dtype=dtype, device=device)
    if dtype.is_floating_point or dtype.is_complex:
        base.normal_()
    else:
        base.zero_()
    view = base.as_strided(shape, stride)
    if zero_share is not None and base.is_floating_point():
        try:
            view.copy_(_rectified(shape, zero_share, dtype, device))
        except RuntimeError:  # overlapping strides (an expanded view): plain rectified noise
            base.clamp_(min=0)
    return view


def _rectified(shape: list[int], zero_share: float, dtype: torch.dtype, device: Any) -> Any:
    """Activations after a ReLU: noise smoothed over the two innermost (spatial) dimensions, as
    a conv's outputs are correlated between neighbouring pixels, shifted so that ``zero_share``
    of the values fall at or below zero, then rectified."""
    field = torch.randn(shape, device=device)
    if field.dim() == 4 and min(field.shape[-2:]) >= 3:
        field = torch.nn.functional.avg_pool2d(field, 5, 1, 2, count_include_pad=False)
    flat = field.flatten()
    sample = flat[torch.randint(flat.numel(), (min(flat.numel(), 2**20),), device=device)]
    threshold = torch.quantile(sample, zero_share) if zero_share > 0 else sample.min() - 1
    return (field - threshold).clamp_(min=0).to(dtype)


def _decode(value: Any, device: Any, params: list[Callable[[], torch.Tensor]]) -> Any:
    """Arguments rebuilt from a spec; a parameter is a slot the caller fills per call."""
    if isinstance(value, list):
        return [_decode(v, device, params) for v in value]
    if not isinstance(value, dict):
        return value
    if "kw" in value:
        return {k: _decode(v, device, params) for k, v in value["kw"].items()}
    if "t" in value:
        shape, stride, dtype_name, param, *rectified = value["t"]
        dtype = getattr(torch, dtype_name)
        if not param:
            zero_share = float(rectified[1]) if rectified else None
            return _tensor(shape, stride, dtype, device, zero_share)
        size = max(1, torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        copies = [
            _tensor(shape, stride, dtype, device) for _ in range(1 + min(31, ROTATE_BYTES // size))
        ]
        params.append(functools.partial(next, itertools.cycle(copies)))
        return _Slot(len(params) - 1)
    if "dtype" in value:
        return getattr(torch, value["dtype"])
    if "device" in value:
        return torch.device(device)
    return getattr(torch, value["enum"])


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index


def _fill(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, _Slot):
        return tensors[value.index]
    if isinstance(value, list):
        return [_fill(v, tensors) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, tensors) for k, v in value.items()}
    return value


def replay(spec: str, device: Any = "cpu") -> Callable[[], Any]:
    """A call of the op ``spec`` describes, on fresh random tensors of its layout."""
    body = json.loads(spec)
    func = _resolve(body["op"])
    params: list[Callable[[], torch.Tensor]] = []
    args = _decode(body["args"], device, params)
    kwargs = _decode(body["kwargs"], device, params)
    recent: collections.deque[Any] = collections.deque(maxlen=KEEP_OUTPUTS)
    if not params:
        return lambda: recent.append(func(*args, **kwargs))

    def call() -> None:
        tensors = [next_param() for next_param in params]
        recent.append(func(*_fill(args, tensors), **_fill(kwargs, tensors)))

    return call


def time_replay(spec: str, threads: int, device: Any = "cpu") -> float:
    """Median seconds of one call of ``spec`` (calls grouped to last about GROUP_SECONDS)."""
    device = torch.device(device)
    with fixed_threads(threads), torch.inference_mode():
        call = replay(spec, device)
        for _ in range(2):
            call()
        once = time_call(call, device) / 1e3
        group = max(1, min(1000, int(GROUP_SECONDS / max(once, 1e-7))))

        def grouped() -> None:
            for _ in range(group):
                call()

        samples = [time_call(grouped, device) / 1e3 / group for _ in range(SAMPLES)]
    return statistics.median(samples)


class OpTimes:
    """Seconds per distinct call on this machine and thread count, timed on first use and kept
    in ``path`` (JSON, written atomically) when given. A call that cannot be replayed (an
    argument it cannot describe, or an error when run on random data) is answered None."""

    def __init__(self, threads: int, device: str = "cpu", path: Path | None = None) -> None:
        self.threads, self.device, self.path = threads, device, path
        self.seconds: dict[str, float | None] = {}
        if path is not None and path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("version") == TABLE_VERSION:
                self.seconds = dict(stored["seconds"])
        self._unsaved = 0

    def __call__(self, spec: str | None) -> float | None:
        if spec is None:
            return None
        if spec not in self.seconds:
            try:
                self.seconds[spec] = time_replay(spec, self.threads, self.device)
            except (_Unsupported, RuntimeError, ValueError, TypeError, IndexError, AttributeError):
                self.seconds[spec] = None
            self._unsaved += 1
        return self.seconds[spec]

    def measure(self, specs: Iterable[str | None]) -> None:
        """Time every call not yet in the table (in order of first appearance)."""
        for spec in dict.fromkeys(specs):
            self(spec)

    def save(self) -> None:
        if self.path is not None and self._unsaved:
            payload = {"version": TABLE_VERSION, "threads": self.threads, "seconds": self.seconds}
            write_json(self.path, payload)
            self._unsaved = 0
