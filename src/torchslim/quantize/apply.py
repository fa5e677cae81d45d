"""``quantize_``: swap a model's Linear/Conv2d layers for fake-quant layers, in place.

The registry style of torchao (``quantize_(model, config)``), with llm-compressor's targeting
(exact names or ``"re:<regex>"``, an ignore list, strict validation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError, TorchslimError
from torchslim.quantize.calibrate import Calibrated, calibrate_activations, check_batches
from torchslim.quantize.config import QuantConfig, matches
from torchslim.quantize.modules import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    is_quantizable,
    quant_modules,
    to_quant,
)


@dataclass(frozen=True)
class LayerDecision:
    """What ``quantize_`` did to one layer."""

    name: str
    module_type: str
    weight_format: str
    weight_observer: str | None
    activation_format: str | None
    observer: str | None
    weight_sqnr_db: float
    activation_sqnr_db: float | None
    params: int

    def to_dict(self) -> dict[str, Any]:
        def finite(value: float | None) -> float | str | None:
            if value is None or math.isfinite(value):
                return None if value is None else round(value, 2)
            return str(value)

        return {
            "name": self.name, "type": self.module_type, "weight_format": self.weight_format,
            "weight_observer": self.weight_observer,
            "activation_format": self.activation_format, "observer": self.observer,
            "weight_sqnr_db": finite(self.weight_sqnr_db),
            "activation_sqnr_db": finite(self.activation_sqnr_db), "params": self.params,
        }  # fmt: skip


@dataclass(frozen=True)
class QuantizeResult:
    """The layers ``quantize_`` quantized (in model order), what it left in float, its time."""

    config: QuantConfig
    layers: tuple[LayerDecision, ...]
    left_in_float: tuple[str, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "left_in_float": list(self.left_in_float),
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        lines = [f"{len(self.layers)} layers quantized in {self.seconds:.1f} s"]
        for layer in self.layers:
            act = f", input {layer.activation_format} ({layer.observer}, "
            act += f"{layer.activation_sqnr_db:.1f} dB)" if layer.activation_sqnr_db else ")"
            lines.append(
                f"  {layer.name}: {layer.weight_format} ({layer.weight_observer or '-'}, "
                f"{layer.weight_sqnr_db:.1f} dB)" + (act if layer.activation_format else "")
            )
        return "\n".join(lines)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every float Linear/Conv2d of ``model`` by name.

    Raises:
        TorchslimError: the model already holds fake-quant layers.
    """
    if quant_modules(model):
        raise TorchslimError(
            f"the model is already quantized ({len(quant_modules(model))} fake-quant layers); "
            "quantize a fresh float copy."
        )
    skip = {  # attention's out_proj: MultiheadAttention reads its weight directly
        f"{name}.out_proj" if name else "out_proj"
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
    }
    return {n: m for n, m in model.named_modules() if is_quantizable(m) and n not in skip}


def select_layers(model: nn.Module, config: QuantConfig) -> dict[str, nn.Module]:
    """The layers ``config`` quantizes; every pattern must match at least one layer.

    Raises:
        ConfigError: a targets/ignore/overrides pattern that matches no Linear/Conv2d.
    """
    layers = quantizable_layers(model)
    patterns = {
        "targets": config.targets,
        "ignore": config.ignore,
        "overrides": tuple(p for p, _ in config.overrides),
        "activation_overrides": tuple(p for p, _ in config.activation_overrides),
    }
    for field_name, group in patterns.items():
        for pattern in group:
            if not any(matches(name, pattern) for name in layers):
                sample = ", ".join(list(layers)[:8]) + (" ..." if len(layers) > 8 else "")
                raise ConfigError(
                    f"QuantConfig.{field_name} pattern {pattern!r} matches no Linear/Conv2d "
                    f"layer of the model; its layers are: {sample}."
                )
    chosen = {
        name: module
        for name, module in layers.items()
        if (not config.targets or any(matches(name, p) for p in config.targets))
        and not any(matches(name, p) for p in config.ignore)
    }
    if not chosen:
        raise ConfigError("QuantConfig selects no layer: targets minus ignore is empty.")
    return chosen


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def swap_layer(model: nn.Module, name: str, module: nn.Module, config: QuantConfig) -> nn.Module:
    """Replace layer ``name`` by its fake-quant version under ``config``."""
    weight_fmt, activation_fmt = config.weight_format(name), config.activation_format(name)
    try:
        quantized = to_quant(module, weight_fmt, activation_fmt, config.dynamic, config.observer)
    except ConfigError as error:
        raise ConfigError(f"layer {name!r} ({type(module).__name__}): {error}") from error
    set_submodule(model, name, quantized)
    return quantized


def quantize_(
    model: nn.Module, config: QuantConfig, calibration: Iterable[Any] | None = None
) -> QuantizeResult:
    """Quantize ``model`` in place: its Linear/Conv2d layers become fake-quant layers.

    Args:
        model: a float model (left exactly as it was if anything fails).
        config: formats, targets and calibration options.
        calibration: batches of forward inputs (tensors or tuples), e.g.
            ``entry.calibration_batches(16)``; needed for static activation quantization.

    Returns:
        Per-layer decisions (formats, observer, SQNR of weights and inputs) and the time taken.

    Raises:
        ConfigError: a pattern matching nothing, a format that does not fit a layer.
        CalibrationError: missing, empty or non-finite calibration data (names the batch).
    """
    start = time.perf_counter()
    with untouched_on_failure(model):
        layers = select_layers(model, config)
        if calibration is not None:  # bad data fails before any layer is swapped
            calibration = check_batches(calibration)
        swapped = {name: swap_layer(model, name, m, config) for name, m in layers.items()}
        inputs = {
            name: module.input_quantizer
            for name, module in swapped.items()
            if isinstance(module.input_quantizer, ActivationQuantizer)
        }
        static = any(not q.dynamic and q.fmt.kind != "float" for q in inputs.values())
        batches = check_batches(calibration) if static else []
        calibrated = calibrate_activations(model, inputs, batches, config.observer)
    decisions = tuple(_decision(n, m, calibrated.get(n)) for n, m in swapped.items())
    left = tuple(n for n in quantizable_layers_after(model) if n not in swapped)
    return QuantizeResult(config, decisions, left, time.perf_counter() - start)


def quantizable_layers_after(model: nn.Module) -> list[str]:
    """Names of Linear/Conv2d layers still in float."""
    return [n for n, m in model.named_modules() if is_quantizable(m)]


def _decision(name: str, module: nn.Module, calibrated: Calibrated | None) -> LayerDecision:
    assert isinstance(module, (QuantLinear, QuantConv2d))
    quantizer = module.input_quantizer
    observer = None if quantizer is None else quantizer.observer_name or quantizer.fmt.kind
    return LayerDecision(
        name=name,
        module_type=type(module).__name__.removeprefix("Quant"),
        weight_format=module.weight_quantizer.fmt.short_name,
        weight_observer=module.weight_quantizer.observer_name or None,
        activation_format=None if quantizer is None else quantizer.fmt.short_name,
        observer=observer,
        weight_sqnr_db=module.weight_sqnr_db(),
        activation_sqnr_db=None if calibrated is None else calibrated.sqnr_db,
        params=module.weight.numel(),
    )
