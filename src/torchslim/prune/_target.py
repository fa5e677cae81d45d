"""The one place that decides what a structured-pruning target counts: MACs, parameters or
predicted latency, and how to count it on a model."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from torchslim.profile import profile
from torchslim.prune._inputs import batched
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


def cost(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    what: str,
    batch_sizes: tuple[int, ...] | None = None,
) -> float:
    """``what`` of one forward of ``model`` (also on ``meta``): MACs from the profiler, the
    parameter count, or seconds predicted by the profiler's calibrated latency model (the
    geometric mean over ``batch_sizes``; None: at the example inputs' own batch)."""
    if what != TARGETS["target_latency_ratio"]:
        return report_cost(profile(model, example_inputs, measure_memory=False), what)
    return predicted_latency(model, example_inputs, batch_sizes)


def predicted_latency(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    batch_sizes: tuple[int, ...] | None = None,
    latency: Callable[[ProfileReport], float] | None = None,
) -> float:
    """Predicted seconds of one forward: the geometric mean over ``batch_sizes`` (each batch
    size weighs the same however long it takes), or at the example inputs' batch for None."""
    return geometric_mean(predicted_per_batch(model, example_inputs, batch_sizes, latency))


def predicted_per_batch(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    batch_sizes: tuple[int, ...] | None = None,
    latency: Callable[[ProfileReport], float] | None = None,
    count_calls: bool = True,
) -> tuple[float, ...]:
    """Predicted seconds of one forward at each of ``batch_sizes`` (``latency`` predicts a
    profiled forward; default: this machine's calibrated latency model). ``count_calls=False``
    estimates the Python calls from the op count instead of counting them (several times
    faster; what a planner comparing many candidates of one model uses)."""
    predict = latency or predicted_seconds
    inputs = [example_inputs] if batch_sizes is None else [
        batched(example_inputs, size) for size in batch_sizes
    ]  # fmt: skip
    reports = [profile(model, x, measure_memory=False, count_calls=count_calls) for x in inputs]
    return tuple(predict(report) for report in reports)


def geometric_mean(values: tuple[float, ...]) -> float:
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))


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
        from torchslim.profile.latency_cache import calibrated_model

        latency = calibrated_model()
    return latency.predict_report(report)
