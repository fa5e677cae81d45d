"""One profile run: counts, roofline, predicted and measured latency, as data and as tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.table import Table
from torch import nn

from torchslim.evaluate.latency import measure_latency
from torchslim.evaluate.report import format_bytes
from torchslim.profile import profile
from torchslim.profile.hardware import HardwareSpec, this_machine
from torchslim.profile.latency_cache import trusted_model
from torchslim.profile.machine_state import Trust
from torchslim.profile.report import ProfileReport
from torchslim.profile.roofline import (
    RooflineRow,
    measure_op_times,
    predicted_by_op,
    roofline_rows,
)


@dataclass
class ProfileAnalysis:
    """A profile report with its roofline and latency figures.

    ``predicted_latency_ms`` comes from the latency model calibrated on this machine's
    micro-benchmarks; for a datasheet spec (another device) it is the roofline time (each op at
    its roof), an optimistic bound. ``measured_latency_ms`` is the median of timed forwards.
    ``trust`` says whether this machine was quiet enough for either figure to mean anything.
    """

    report: ProfileReport
    hardware: HardwareSpec
    rows: list[RooflineRow]
    predicted_latency_ms: float
    prediction_method: str
    measured_latency_ms: float | None = None
    trust: Trust = field(default_factory=lambda: Trust(True))

    @property
    def latency_error(self) -> float | None:
        """(predicted - measured) / measured."""
        if not self.measured_latency_ms:
            return None
        return (self.predicted_latency_ms - self.measured_latency_ms) / self.measured_latency_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report.to_dict(),
            "hardware": self.hardware.to_dict(),
            "roofline": [row.to_dict() for row in self.rows],
            "latency_ms": {
                "predicted": self.predicted_latency_ms,
                "prediction_method": self.prediction_method,
                "measured_median": self.measured_latency_ms,
                "relative_error": self.latency_error,
                "trusted": self.trust.trusted,
                "not_trusted_because": self.trust.reason or None,
            },
        }


def analyze(
    model: nn.Module,
    inputs: Sequence[Any],
    name: str | None = None,
    hardware: HardwareSpec | None = None,
    measure: bool = True,
    threads: int | None = None,
) -> ProfileAnalysis:
    """Profile ``model`` and place it on the roofline of ``hardware`` (default: this machine).

    With ``measure`` (and real tensors) also times the model and each op on this machine.
    """
    report = profile(model, inputs, name=name, measure_memory=measure, count_calls=hardware is None)
    on_meta = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in inputs)
    measure = measure and not on_meta
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    here = hardware is None
    spec = hardware or this_machine(threads=threads)
    measured_ops = measured_ms = None
    trust = Trust(True)
    if here:
        # a profile on meta predicts this machine's CPU: its ops are replayed there
        target = "cpu" if on_meta else str(device)
        latency_model, trust = trusted_model(threads, device=target, replay_ops=True)
        predicted_s = latency_model.predict_report(report)
        per_op = predicted_by_op(report, latency_model)
        method = (
            "each distinct op replayed alone on this machine (falling back to per-op-class "
            "efficiency), plus module-call and Python-call overheads calibrated on small programs"
        )
    else:
        per_op = {}
        method = f"roofline time on {spec.name} (every op at its roof; optimistic)"
    if measure and here:
        measured_ops = measure_op_times(model, inputs)
        measured_ms = measure_latency(lambda: model(*inputs), threads=threads, device=device).median
    rows = roofline_rows(report, spec, per_op or None, measured_ops)
    if not here:
        predicted_s = sum(row.roofline_s for row in rows)
    return ProfileAnalysis(report, spec, rows, predicted_s * 1e3, method, measured_ms, trust)


def _error_cell(analysis: ProfileAnalysis) -> str:
    """The prediction error, or why there is none worth printing."""
    if analysis.latency_error is None:
        return "-"
    if not analysis.trust.trusted:
        return f"machine busy, prediction not trusted ({analysis.trust.reason})"
    return f"{analysis.latency_error:+.1%}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def summary_table(analyses: list[ProfileAnalysis]) -> Table:
    """Totals side by side (one column per model, e.g. before and after compression)."""
    table = Table("measure", *[a.report.model for a in analyses], title="torchslim profile")
    rows: list[tuple[str, list[str]]] = []
    for a in analyses:
        total, report = a.report.total, a.report
        measured_peak = report.measured_peak_activation_bytes
        values = [
            ("params", f"{total.params:,}"),
            ("MACs", f"{total.macs:,}"),
            ("FLOPs (2 x MAC + other)", f"{total.flops:,}"),
            ("bytes moved", format_bytes(total.bytes)),
            ("arithmetic intensity (FLOP/B)", f"{total.arithmetic_intensity:.2f}"),
            ("weights", format_bytes(report.param_bytes)),
            ("peak activations predicted", format_bytes(report.predicted_peak_activation_bytes)),
            (
                "peak activations measured",
                "-" if measured_peak is None else format_bytes(measured_peak),
            ),
            ("latency predicted (ms)", f"{a.predicted_latency_ms:.3f}"),
            (
                "latency measured (ms)",
                "-" if a.measured_latency_ms is None else f"{a.measured_latency_ms:.3f}",
            ),
            ("prediction error", _error_cell(a)),
            ("unsupported ops", ", ".join(report.unsupported_ops) or "none"),
        ]
        for i, (label, value) in enumerate(values):
            if len(rows) <= i:
                rows.append((label, []))
            rows[i][1].append(value)
    for label, cells in rows:
        table.add_row(label, *cells)
    return table


def op_table(analysis: ProfileAnalysis, limit: int = 20) -> Table:
    """Per op: counts, intensity, bound, roofline / predicted / measured time."""
    ridge = analysis.hardware.ridge_point()
    table = Table(
        "op",
        "calls",
        "MACs",
        "FLOPs",
        "bytes",
        "FLOP/B",
        "bound",
        "roof ms",
        "pred ms",
        "meas ms",
        title=f"per op on {analysis.hardware.name} (fp32 ridge point {ridge:.1f} FLOP/B)",
    )
    macs = {name: t.macs for name, t in analysis.report.by_op().items()}
    for row in analysis.rows[:limit]:
        table.add_row(
            row.op,
            str(row.calls),
            f"{macs.get(row.op, 0):,}",
            f"{row.flops:,}",
            format_bytes(row.bytes),
            f"{row.arithmetic_intensity:.1f}",
            row.bound,
            _ms(row.roofline_s),
            _ms(row.predicted_s),
            _ms(row.measured_s),
        )
    return table


def module_table(report: ProfileReport, depth: int = 2) -> Table:
    table = Table(
        "module", "calls", "params", "MACs", "FLOPs", "bytes", title=f"per module (depth {depth})"
    )
    for name, totals in report.by_module(depth).items():
        table.add_row(
            name,
            str(totals.calls),
            f"{totals.params:,}",
            f"{totals.macs:,}",
            f"{totals.flops:,}",
            format_bytes(totals.bytes),
        )
    return table
