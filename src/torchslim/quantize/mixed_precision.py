"""Mixed precision: bits per layer under a size budget, and the size-vs-metric Pareto front.

From a :class:`SensitivityReport`, every layer starts at its widest format; a greedy search
repeatedly moves the layer whose next narrower format costs the least added output noise per
byte saved (noise = 10^(-SQNR/10) of that layer quantized alone, roughly additive over layers),
so sensitive layers keep more bits. Each step of that path is a candidate; measuring the real
metric of the candidates and keeping the non-dominated ones gives the Pareto front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from torchslim._io import atomic_path, write_json
from torchslim.errors import ConfigError
from torchslim.quantize.apply import quantize_
from torchslim.quantize.config import QuantConfig
from torchslim.quantize.sensitivity import LayerSensitivity, Metric, SensitivityReport


@dataclass(frozen=True)
class MixedPrecisionPlan:
    """One format per layer, the packed size and the predicted output noise."""

    formats: dict[str, str]
    size_bytes: int
    predicted_noise: float
    metric: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_config(self, base: QuantConfig | None = None) -> QuantConfig:
        """A QuantConfig quantizing exactly these layers with these formats."""
        base = base or QuantConfig()
        return QuantConfig(
            weight=base.weight, activation=base.activation, dynamic=base.dynamic,
            observer=base.observer, targets=tuple(self.formats),
            overrides=tuple(self.formats.items()), escalate=False,  # the plan, exactly
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "formats": self.formats, "size_bytes": self.size_bytes,
            "predicted_noise": self.predicted_noise, "metric": self.metric,
        }  # fmt: skip


def _options(report: SensitivityReport, layer: str) -> list[LayerSensitivity]:
    return sorted(report.for_layer(layer), key=lambda e: -e.size_bytes)  # widest first


def greedy_path(report: SensitivityReport) -> list[MixedPrecisionPlan]:
    """Plans from all-widest to all-narrowest, one layer narrowed per step."""
    options = {layer: _options(report, layer) for layer in report.layers}
    position = dict.fromkeys(options, 0)

    def plan() -> MixedPrecisionPlan:
        chosen = {layer: options[layer][i] for layer, i in position.items()}
        size = report.other_bytes + sum(e.size_bytes for e in chosen.values())
        noise = sum(e.noise for e in chosen.values())
        return MixedPrecisionPlan({k: e.weight_format for k, e in chosen.items()}, size, noise)

    path = [plan()]
    while True:
        moves = []
        for layer, i in position.items():
            if i + 1 < len(options[layer]):
                now, nxt = options[layer][i], options[layer][i + 1]
                saved = max(1, now.size_bytes - nxt.size_bytes)
                moves.append(((nxt.noise - now.noise) / saved, layer))
        if not moves:
            return path
        position[min(moves)[1]] += 1
        path.append(plan())


def plan_for_budget(report: SensitivityReport, size_budget_bytes: int) -> MixedPrecisionPlan:
    """The least-noise plan on the greedy path whose size fits ``size_budget_bytes``.

    Raises:
        ConfigError: even the narrowest formats exceed the budget.
    """
    fitting = [p for p in greedy_path(report) if p.size_bytes <= size_budget_bytes]
    if not fitting:
        smallest = greedy_path(report)[-1].size_bytes
        raise ConfigError(
            f"size budget {size_budget_bytes} bytes is below the smallest plan "
            f"({smallest} bytes with the narrowest formats); raise it or add narrower formats."
        )
    return fitting[0]


def pareto_front(
    model_factory: Callable[[], nn.Module],
    report: SensitivityReport,
    calibration: Iterable[Any],
    metric: Metric,
    points: int = 8,
) -> tuple[list[MixedPrecisionPlan], list[MixedPrecisionPlan]]:
    """Measure ``metric`` on up to ``points`` plans spread along the greedy path.

    Returns:
        (every measured plan, the Pareto-optimal ones: no other is smaller and better).
    """
    batches = list(calibration)
    path = greedy_path(report)
    step = max(1, (len(path) - 1) // max(1, points - 1))
    chosen = path[::step] + ([path[-1]] if (len(path) - 1) % step else [])
    measured = []
    for plan in chosen:
        model = model_factory()
        quantize_(model, plan.to_config(), batches)
        measured.append(dataclasses.replace(plan, metric=metric(model)))
    front = [
        p for p in measured
        if not any(
            q.size_bytes <= p.size_bytes and (q.metric or 0) > (p.metric or 0) for q in measured
        )
    ]  # fmt: skip
    return measured, sorted(front, key=lambda p: p.size_bytes)


def save_pareto(
    measured: list[MixedPrecisionPlan],
    front: list[MixedPrecisionPlan],
    json_path: str | Path,
    png_path: str | Path | None = None,
    title: str = "mixed precision",
) -> None:
    """Write the measured plans and the front as JSON, and a size-vs-metric plot as PNG."""
    write_json(json_path, {"measured": [p.to_dict() for p in measured],
                           "front": [p.to_dict() for p in front]})  # fmt: skip
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter([p.size_bytes / 1024 for p in measured], [p.metric or 0.0 for p in measured],
                 label="greedy path", color="tab:gray")  # fmt: skip
    axis.plot([p.size_bytes / 1024 for p in front], [p.metric or 0.0 for p in front], "o-",
              color="tab:red", label="Pareto front")  # fmt: skip
    axis.set_xlabel("packed weights + float rest (KiB)")
    axis.set_ylabel("metric")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
