"""Roofline: each op against the ridge point of a hardware spec; measured per-op times.

Per-op times are measured with ``torch.profiler``: the profiler's top-level ATen events are
descended until they match the ops the cost counter saw (composite ops such as ``aten::linear``
are split into ``t`` + ``addmm`` there too), so predicted and measured rows line up by op name.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._torch_profiler import native_output_silenced
from torchslim.profile.costs import op_name, rule_name
from torchslim.profile.hardware import HardwareSpec
from torchslim.profile.report import ProfileReport


@dataclass(frozen=True)
class RooflineRow:
    """One op name's aggregate placed on the roofline."""

    op: str
    calls: int
    flops: int
    bytes: int
    arithmetic_intensity: float
    bound: str  # "compute", "memory" or "none" (moves nothing)
    roofline_s: float  # time if the op ran exactly at the roof
    predicted_s: float | None = None
    measured_s: float | None = None

    @property
    def achieved_flops_per_s(self) -> float | None:
        return self.flops / self.measured_s if self.measured_s else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "achieved_flops_per_s": self.achieved_flops_per_s}


def roofline_rows(
    report: ProfileReport,
    hardware: HardwareSpec,
    predicted: dict[str, float] | None = None,
    measured: dict[str, float] | None = None,
) -> list[RooflineRow]:
    """Per op name: intensity, bound (against the ridge point of the op's dtype), roof time."""
    dtypes: dict[str, str] = {}
    for record in report.records:
        dtypes.setdefault(record.op, record.dtype)
    rows = []
    for name, totals in report.by_op().items():
        peak = hardware.peak(dtypes.get(name, "float32"))
        intensity = totals.arithmetic_intensity
        if totals.bytes == 0 and totals.flops == 0:
            bound = "none"
        else:
            bound = "compute" if intensity >= peak / hardware.mem_bw_bytes_per_s else "memory"
        roof = max(totals.flops / peak, totals.bytes / hardware.mem_bw_bytes_per_s)
        rows.append(
            RooflineRow(
                op=name,
                calls=totals.calls,
                flops=totals.flops,
                bytes=totals.bytes,
                arithmetic_intensity=intensity,
                bound=bound,
                roofline_s=roof,
                predicted_s=(predicted or {}).get(name),
                measured_s=(measured or {}).get(name),
            )
        )
    return rows


@functools.cache
def _decomposes(qualified_name: str) -> bool:
    """True for CompositeImplicitAutograd ops: the cost counter sees their parts, not them."""
    try:
        return bool(
            torch._C._dispatch_has_kernel_for_dispatch_key(
                qualified_name, "CompositeImplicitAutograd"
            )
        )
    except RuntimeError:
        return False


def _matching_events(event: Any) -> list[Any]:
    """The event as the cost counter saw it: composite ops are replaced by their children."""
    if not _decomposes(event.name) or not event.cpu_children:
        return [event]
    found = []
    for child in event.cpu_children:
        if child.name.startswith("aten::"):
            found += _matching_events(child)
    return found


def measure_op_times(model: nn.Module, inputs: Sequence[Any], repeats: int = 5) -> dict[str, float]:
    """Seconds per forward pass spent in each op name, measured with torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs):
        activities.append(ProfilerActivity.CUDA)
    with torch.no_grad():
        model(*inputs)  # warm-up
        with native_output_silenced(), profile(activities=activities) as prof:
            for _ in range(repeats):
                model(*inputs)
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if not event.name.startswith("aten::") or _has_aten_parent(event):
            continue
        for match in _matching_events(event):
            device_us = getattr(match, "device_time_total", 0.0) or 0.0
            micros = max(match.cpu_time_total, device_us)
            totals[rule_name(match.name.removeprefix("aten::"))] += micros / 1e6 / repeats
    return dict(totals)


def _has_aten_parent(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def plot_roofline(rows: list[RooflineRow], hardware: HardwareSpec, path: str | Path) -> Path:
    """Save a log-log roofline plot: a roof per dtype, each op at its intensity and rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    intensities = [r.arithmetic_intensity for r in rows if r.arithmetic_intensity > 0]
    low = min([*intensities, 0.01]) / 2
    high = max([*intensities, 1000.0]) * 2
    xs = [low * (high / low) ** (i / 200) for i in range(201)]
    for dtype, peak in hardware.peak_flops_per_s.items():
        axes.plot(
            xs, [min(peak, x * hardware.mem_bw_bytes_per_s) for x in xs], label=f"roof {dtype}"
        )
    for row in rows:
        if row.arithmetic_intensity <= 0:
            continue
        y = row.achieved_flops_per_s or min(
            hardware.peak("float32"), row.arithmetic_intensity * hardware.mem_bw_bytes_per_s
        )
        axes.scatter([row.arithmetic_intensity], [y], marker="o" if row.measured_s else "x")
        axes.annotate(row.op, (row.arithmetic_intensity, y), fontsize=7)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("arithmetic intensity (FLOPs / byte)")
    axes.set_ylabel("FLOP/s (o: achieved, measured; x: attainable)")
    axes.set_title(f"roofline on {hardware.name}")
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def predicted_by_op(report: ProfileReport, latency_model: Any) -> dict[str, float]:
    """Predicted seconds per op name from a calibrated LatencyModel."""
    totals: dict[str, float] = defaultdict(float)
    for record in report.records:
        totals[record.op] += latency_model.predict_op(record)
    return dict(totals)


__all__ = [
    "RooflineRow",
    "measure_op_times",
    "op_name",
    "plot_roofline",
    "predicted_by_op",
    "roofline_rows",
]
