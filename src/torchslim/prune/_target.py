"""The one place that decides what a structured-pruning target counts: MACs, parameters or
predicted latency, and how to count it on a model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.profile import profile
from torchslim.prune.config import StructuredPruneConfig

if TYPE_CHECKING:
    from torchslim.profile.latency_model import LatencyModel
    from torchslim.profile.report import ProfileReport

TARGETS = {
    "target_macs_ratio": "MACs",
    "target_params_ratio": "parameters",
    "target_latency_ratio": "predicted latency",
}


def target_of(config: StructuredPruneConfig) -> tuple[str, float] | None:
    """(what is counted, fraction to remove), or None for ``uniform_ratio``."""
    for name, what in TARGETS.items():
        value = getattr(config, name)
        if value is not None:
            return what, float(value)
    return None


def cost(model: nn.Module, example_inputs: tuple[Any, ...], what: str) -> float:
    """``what`` of one forward of ``model`` (also on ``meta``): MACs from the profiler, the
    parameter count, or seconds predicted by the profiler's calibrated latency model."""
    counted = what == TARGETS["target_latency_ratio"]
    report = profile(model, example_inputs, measure_memory=False, count_calls=counted)
    return report_cost(report, what)


def report_cost(report: ProfileReport, what: str, latency: LatencyModel | None = None) -> float:
    """``what`` of a profiled forward; ``latency``: the latency model to predict with (default:
    this machine's calibrated one at the current thread count)."""
    if what == "MACs":
        return float(report.total.macs)
    if what == "parameters":
        return float(report.params)
    return predicted_seconds(report, latency)


def predicted_seconds(report: ProfileReport, latency: LatencyModel | None = None) -> float:
    """Seconds of the profiled forward predicted by ``latency`` (default: the calibrated one)."""
    if latency is None:
        from torchslim.profile.latency_model import calibrated_model

        latency = calibrated_model()
    return latency.predict_report(report)
