"""The evaluation report: one JSON object shared by every command (the project's contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from torchslim.evaluate.latency import LatencyStats


@dataclass(frozen=True)
class EvaluationReport:
    """What ``torchslim evaluate`` measures for one model.

    ``peak_memory_bytes`` = weights (parameters + buffers) + the peak of activation memory during
    one forward pass at ``batch_size``; both parts are also given separately in ``details``.
    None where it is not measured: a deployed model's activations live inside its runtime
    (ONNX Runtime, OpenVINO), out of the tracker's sight.
    """

    model: str
    metrics: dict[str, float]
    params: int
    size_bytes: int
    latency: LatencyStats
    peak_memory_bytes: int | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The contract: model, metrics, params, size_bytes, latency_ms{median,p90}, peak memory."""
        return {
            "model": self.model,
            "metrics": self.metrics,
            "params": self.params,
            "size_bytes": self.size_bytes,
            "latency_ms": self.latency.to_dict(),
            "peak_memory_bytes": self.peak_memory_bytes,
            "details": self.details,
        }

    def to_table(self, title: str | None = None) -> Table:
        table = Table("measure", "value", title=title or f"torchslim evaluate {self.model}")
        for name, value in self.metrics.items():
            table.add_row(name, f"{value:.4f}")
        table.add_row("params", f"{self.params:,}")
        table.add_row("size on disk", format_bytes(self.size_bytes))
        batch = self.details.get("batch_size", 1)
        table.add_row(f"latency median (batch {batch})", f"{self.latency.median:.3f} ms")
        table.add_row(f"latency p90 (batch {batch})", f"{self.latency.p90:.3f} ms")
        peak = self.peak_memory_bytes
        table.add_row("peak memory", "not measured" if peak is None else format_bytes(peak))
        return table


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def comparison_table(before: EvaluationReport, after: EvaluationReport, title: str) -> Table:
    """Before/after side by side, with the ratio after/before for every number."""
    table = Table("measure", "before", "after", "after / before", title=title)

    def row(name: str, a: float | None, b: float | None, fmt: str = "{:.4f}") -> None:
        ratio = f"{b / a:.3f}" if a and b is not None else "-"
        shown = ["not measured" if v is None else fmt.format(v) for v in (a, b)]
        table.add_row(name, *shown, ratio)

    for name in before.metrics:
        if name in after.metrics:
            row(name, before.metrics[name], after.metrics[name])
    row("params", before.params, after.params, "{:,.0f}")
    row("size (bytes)", before.size_bytes, after.size_bytes, "{:,.0f}")
    row("latency median (ms)", before.latency.median, after.latency.median, "{:.3f}")
    row("peak memory (bytes)", before.peak_memory_bytes, after.peak_memory_bytes, "{:,.0f}")
    return table
