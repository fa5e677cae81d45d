"""Per-layer sensitivity: quantize one layer at a time to each candidate format and measure the
model's output SQNR against fp32 (and, given a metric, the metric drop); the inputs of mixed
precision (``mixed_precision.py``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.quantize.apply import quantize_, select_layers
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.config import QuantConfig
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import eval_mode, qparam_shape
from torchslim.quantize.primitives import sqnr_db

Metric = Callable[[nn.Module], float]


def weight_bytes(weight_shape: Sequence[int], fmt: QuantFormat) -> int:
    """Bytes of one weight stored packed in ``fmt``: codes plus float32 scales."""
    numel = math.prod(weight_shape)
    scales = math.prod(qparam_shape(fmt, tuple(weight_shape))) if fmt.kind in ("int", "fp8") else 0
    if fmt.kind in ("binary", "ternary", "pow2") and fmt.granularity != "tensor":
        scales = weight_shape[fmt.channel_axis]
        if fmt.group_size:
            scales = numel // fmt.group_size
    extra = 4 * 2**fmt.bits if fmt.kind == "codebook" else 0
    return math.ceil(numel * fmt.bits / 8) + 4 * max(1, scales) + extra


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer quantized alone to one format."""

    name: str
    weight_format: str
    params: int
    size_bytes: int
    output_sqnr_db: float
    metric: float | None
    metric_drop: float | None

    @property
    def noise(self) -> float:
        """Relative output noise power 10^(-SQNR/10): roughly additive over layers."""
        return 10 ** (-self.output_sqnr_db / 10) if math.isfinite(self.output_sqnr_db) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "weight_format": self.weight_format, "params": self.params,
            "size_bytes": self.size_bytes, "output_sqnr_db": round(self.output_sqnr_db, 2),
            "metric": self.metric, "metric_drop": self.metric_drop,
        }  # fmt: skip


@dataclass(frozen=True)
class SensitivityReport:
    """Every (layer, format) measurement, the fp32 metric, and the other parameters' bytes."""

    formats: tuple[str, ...]
    entries: tuple[LayerSensitivity, ...]
    baseline_metric: float | None
    other_bytes: int  # float32 bytes of everything not in a quantized layer's weight

    def for_layer(self, name: str) -> list[LayerSensitivity]:
        return [e for e in self.entries if e.name == name]

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(e.name for e in self.entries))

    def to_dict(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats), "baseline_metric": self.baseline_metric,
            "other_bytes": self.other_bytes, "entries": [e.to_dict() for e in self.entries],
        }  # fmt: skip


def _weight(layer: nn.Module) -> Tensor:
    weight = layer.weight
    assert isinstance(weight, Tensor)
    return weight


def _outputs(model: nn.Module, batches: list[tuple[Any, ...]]) -> Tensor:
    with torch.no_grad(), eval_mode(model):
        return torch.cat([model(*batch).reshape(-1) for batch in batches])


def analyze_sensitivity(
    model: nn.Module,
    formats: Sequence[str],
    calibration: Iterable[Any],
    metric: Metric | None = None,
    base: QuantConfig | None = None,
) -> SensitivityReport:
    """Quantize each selected layer alone to each of ``formats`` and measure the damage.

    Args:
        model: the float model (not modified; each trial runs on a copy).
        formats: weight formats to try, e.g. ("int8", "int4", "int2").
        calibration: batches of inputs: output SQNR is measured on them (and activations
            calibrated on them when ``base`` has an activation format).
        metric: optional ``model -> float`` (higher is better), e.g. accuracy on a subset.
        base: targets/ignore/activation settings (its weight format is replaced per trial).

    Returns:
        A report with one entry per (layer, format).
    """
    if not formats:
        raise ConfigError("analyze_sensitivity needs at least one format, e.g. ('int8', 'int4').")
    base = base or QuantConfig()
    batches = check_batches(calibration)
    layers = select_layers(model, base)
    reference = _outputs(model, batches)
    baseline = None if metric is None else metric(model)
    entries = []
    for name, layer in layers.items():
        for fmt_name in formats:
            trial = copy.deepcopy(model)
            config = QuantConfig(
                weight=fmt_name, activation=base.activation, dynamic=base.dynamic,
                observer=base.observer, targets=(name,), escalate=False,
            )  # fmt: skip
            quantize_(trial, config, batches)
            value = None if metric is None else metric(trial)
            entries.append(LayerSensitivity(
                name, QuantFormat.parse(fmt_name).short_name, _weight(layer).numel(),
                weight_bytes(_weight(layer).shape, QuantFormat.parse(fmt_name)),
                sqnr_db(reference, _outputs(trial, batches)), value,
                None if value is None or baseline is None else baseline - value,
            ))  # fmt: skip
    quantized = sum(_weight(layer).numel() for layer in layers.values())
    other = 4 * (sum(p.numel() for p in model.parameters()) - quantized)
    return SensitivityReport(tuple(formats), tuple(entries), baseline, other)
