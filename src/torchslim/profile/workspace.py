"""Memory a kernel holds while it runs, beyond the tensors it returns.

On CPU the convolutions are the kernels that hold much: the native ("slow") path unfolds its
input into im2col columns for the whole batch; oneDNN reorders weights (and, for depthwise
convolutions, inputs) into blocked layouts and writes a blocked output (channels padded to the
vector width) before copying it to the plain one. What oneDNN does depends on the CPU's ISA, so
rather than copying its rules here, each distinct convolution (shapes, strides, groups, dtype,
threads) is run once alone on zeros under the allocator's record, and what it held beyond its
output is its workspace. The model itself is never run for this: meta models get the same answer.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from torchslim.evaluate.memory import cpu_allocator_peak_bytes


def _key(args: tuple[Any, ...], out: torch.Tensor) -> tuple[Any, ...]:
    x, weight, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    return (
        tuple(x.shape),
        tuple(weight.shape),
        bias is not None,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        bool(transposed),
        tuple(output_padding),
        int(groups),
        x.dtype,
        torch.get_num_threads(),
    )


@functools.cache
def _measured_conv_workspace(key: tuple[Any, ...]) -> int:
    x_shape, w_shape, has_bias, stride, padding, dilation, transposed, out_pad, groups = key[:9]
    dtype = key[9]
    x, weight = torch.zeros(x_shape, dtype=dtype), torch.zeros(w_shape, dtype=dtype)
    bias = torch.zeros(w_shape[1] * groups if transposed else w_shape[0], dtype=dtype)

    def run() -> torch.Tensor:
        return torch.ops.aten.convolution.default(
            x, weight, bias if has_bias else None, list(stride), list(padding), list(dilation),
            transposed, list(out_pad), groups,
        )  # fmt: skip

    with torch.inference_mode():
        output_bytes = run().untyped_storage().nbytes()
        return max(0, cpu_allocator_peak_bytes(run) - output_bytes)


def workspace_bytes(func: Any, args: tuple[Any, ...], out: Any) -> int:
    """Bytes ``func`` holds while it runs besides its outputs (0 where none is known)."""
    if func is not torch.ops.aten.convolution.default or not isinstance(out, torch.Tensor):
        return 0
    if args[0].device.type not in ("cpu", "meta"):
        return 0
    try:
        return _measured_conv_workspace(_key(args, out))
    except RuntimeError:  # e.g. another torch.profiler session is already running
        return 0


__all__ = ["workspace_bytes"]
