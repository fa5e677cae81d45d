"""``quantize_``: swap a model's Linear/Conv2d layers for fake-quant layers, in place.

The registry style of torchao (``quantize_(model, config)``), with llm-compressor's targeting
(exact names or ``"re:<regex>"``, an ignore list, strict validation).

With ``observer="auto"`` each input's observer is chosen by the layer's output SQNR
(``calibrate``). With ``escalate=True`` as well, no layer is left collapsed: a layer whose
per-tensor int weights lose some output channel (its weights' SQNR below the floor: typically a
BatchNorm-folded depthwise conv whose small channels round to zero) or damage the layer's output
below the floor on calibration data gets per-channel weights, an input that every observer
collapses stays in float; each change is recorded in the layer's ``LayerDecision``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim._heap import release_free_heap
from torchslim.errors import ConfigError, TorchslimError
from torchslim.quantize.calibrate import (
    MAX_SCORING_BATCHES,
    Batch,
    Calibrated,
    NoiseMeter,
    calibrate_activations,
    check_batches,
    layer_output,
    quantized_weight,
    visit_layer_inputs,
    without_bias,
)
from torchslim.quantize.config import QuantConfig, matches
from torchslim.quantize.modules import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
    is_quantizable,
    quant_modules,
    to_quant,
)


def _finite(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return None if value is None else round(value, 2)
    return str(value)


@dataclass(frozen=True)
class LayerDecision:
    """What ``quantize_`` did to one layer.

    Attributes:
        escalation: with ``observer="auto"``, why and how the requested weight format was
            changed (e.g. per-tensor -> per-channel for a collapsing layer); None when kept.
        output_sqnr_db: with "auto" and calibration: SQNR (dB) of the layer's output (quantized
            weight and input) against the float layer on the calibration inputs.
        observer_scores: with "auto": the output SQNR (dB) of every input-observer candidate.
    """

    name: str
    module_type: str
    weight_format: str
    weight_observer: str | None
    activation_format: str | None
    observer: str | None
    weight_sqnr_db: float
    activation_sqnr_db: float | None
    params: int
    escalation: str | None = None
    output_sqnr_db: float | None = None
    observer_scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.module_type, "weight_format": self.weight_format,
            "weight_observer": self.weight_observer,
            "activation_format": self.activation_format, "observer": self.observer,
            "weight_sqnr_db": _finite(self.weight_sqnr_db),
            "activation_sqnr_db": _finite(self.activation_sqnr_db), "params": self.params,
            "escalation": self.escalation, "output_sqnr_db": _finite(self.output_sqnr_db),
            "observer_scores": {k: _finite(v) for k, v in self.observer_scores.items()},
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
            act = f", input {layer.activation_format} ({layer.observer}"
            act += f", {layer.activation_sqnr_db:.1f} dB)" if layer.activation_sqnr_db else ")"
            lines.append(
                f"  {layer.name}: {layer.weight_format} ({layer.weight_observer or '-'}, "
                f"{layer.weight_sqnr_db:.1f} dB)"
                + (act if layer.activation_format else "")
                + (f"  [escalated: {layer.escalation}]" if layer.escalation else "")
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
        swapped = {}
        for name, module in layers.items():
            swapped[name] = swap_layer(model, name, module, config)
            release_free_heap()  # the layer's temporaries: RSS would grow by them layer by layer
        inputs = {
            name: module.input_quantizer
            for name, module in swapped.items()
            if isinstance(module.input_quantizer, ActivationQuantizer)
        }
        static = any(not q.dynamic and q.fmt.kind != "float" for q in inputs.values())
        batches = check_batches(calibration) if static or calibration is not None else []
        escalations: dict[str, str] = {}
        if config.escalate:
            escalations = escalate_collapsed_(model, swapped, batches, config)
        calibrated = calibrate_activations(model, inputs, batches, config.observer, swapped)
        if config.escalate:
            for name, text in float_collapsed_inputs_(swapped, calibrated, config).items():
                escalations[name] = "; ".join(filter(None, (escalations.get(name), text)))
    decisions = tuple(
        _decision(n, m, calibrated.get(n), escalations.get(n)) for n, m in swapped.items()
    )
    left = tuple(n for n in quantizable_layers_after(model) if n not in swapped)
    return QuantizeResult(config, decisions, left, time.perf_counter() - start)


def quantizable_layers_after(model: nn.Module) -> list[str]:
    """Names of Linear/Conv2d layers still in float."""
    return [n for n, m in model.named_modules() if is_quantizable(m)]


def channel_sqnr_db(weight: Tensor, quantized: Tensor) -> Tensor:
    """SQNR (dB) of each output channel (dim 0) of a quantized weight; all-zero channels (dead in
    float too) are left out: (C_live,)."""
    reference = weight.detach().double().reshape(weight.shape[0], -1)  # (C, K)
    noise = (reference - quantized.detach().double().reshape_as(reference)).pow(2).sum(1)  # (C,)
    signal = reference.pow(2).sum(1)  # (C,)
    sqnr = 10 * torch.log10(signal / noise.clamp(min=1e-300))  # (C,)
    return torch.where(noise == 0, math.inf, sqnr)[signal > 0]  # (C_live,)


def worst_channel_sqnr_db(module: nn.Module) -> float:
    """The lowest per-output-channel SQNR (dB) of the layer's quantized weight (inf if none)."""
    assert isinstance(module, (QuantConv2d, QuantLinear))
    sqnr = channel_sqnr_db(module.weight, quantized_weight(module))  # (C_live,)
    return float(sqnr.min()) if sqnr.numel() else math.inf


def weight_output_sqnr_db(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Sequence[Batch]
) -> dict[str, float]:
    """Per layer: SQNR (dB) of its output with the quantized weight against the float weight,
    both on the float model's inputs (first ``MAX_SCORING_BATCHES`` batches; bias left out)."""
    meter = NoiseMeter()
    weights = {name: quantized_weight(module) for name, module in layers.items()}

    def visit(name: str, module: nn.Module, x: Tensor) -> None:
        reference = layer_output(module, x)
        noise = reference - layer_output(module, x, weights[name])
        meter.add(name, without_bias(module, reference), noise)

    visit_layer_inputs(model, layers, batches[:MAX_SCORING_BATCHES], visit)
    return {name: meter.sqnr_db(name) for name in layers}


def escalate_collapsed_(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Sequence[Batch],
    config: QuantConfig,
) -> dict[str, str]:
    """Give per-channel weights to every per-tensor int layer that collapses (see the module
    docstring); returns per escalated layer what was measured and what changed."""
    per_tensor = {
        name: module
        for name, module in layers.items()
        if isinstance(module, (QuantConv2d, QuantLinear))
        and module.weight_quantizer.fmt.kind == "int"
        and module.weight_quantizer.fmt.granularity == "tensor"
    }
    if not per_tensor:
        return {}
    outputs = weight_output_sqnr_db(model, per_tensor, batches) if batches else {}
    escalations: dict[str, str] = {}
    worst_before: dict[str, float] = {}
    for name, module in per_tensor.items():
        assert isinstance(module, (QuantConv2d, QuantLinear))
        fmt = module.weight_quantizer.fmt
        floor = config.collapse_floor_db(fmt)
        worst = worst_channel_sqnr_db(module)
        if worst >= floor and outputs.get(name, math.inf) >= floor:
            continue
        channel_fmt = dataclasses.replace(fmt, granularity="channel", channel_axis=0)
        module.weight_quantizer = WeightQuantizer(channel_fmt, module.weight.detach(), "auto")
        escalations[name] = f"{fmt.short_name} -> {channel_fmt.short_name}"
        worst_before[name] = worst
    escalated = {name: per_tensor[name] for name in escalations}
    after = weight_output_sqnr_db(model, escalated, batches) if batches and escalated else {}
    for name, change in escalations.items():
        module = per_tensor[name]
        assert isinstance(module, (QuantConv2d, QuantLinear))
        floor = config.collapse_floor_db(module.weight_quantizer.fmt)
        worst = worst_channel_sqnr_db(module)
        measured = f"worst output channel {worst_before[name]:.1f} -> {worst:.1f} dB"
        if name in outputs:
            measured += f", layer output {outputs[name]:.1f} -> {after[name]:.1f} dB"
        escalations[name] = f"{change}: {measured} (floor {floor:.1f} dB)"
    return escalations


def float_collapsed_inputs_(
    layers: Mapping[str, nn.Module], calibrated: Mapping[str, Calibrated], config: QuantConfig
) -> dict[str, str]:
    """Leave in float the input of every layer that even the best observer collapses (output
    SQNR below the floor) while its quantized weights alone do not: the per-layer fallback of
    accuracy-aware PTQ tools. Returns per such layer what was measured."""
    fallbacks = {}
    for name, decided in calibrated.items():
        module = layers[name]
        assert isinstance(module, (QuantConv2d, QuantLinear))
        quantizer = module.input_quantizer
        if quantizer is None or decided.output_sqnr_db is None:
            continue
        floor = config.collapse_floor_db(quantizer.fmt)
        weight_only = decided.weight_only_sqnr_db
        if decided.output_sqnr_db >= floor or weight_only is None or weight_only < floor:
            continue
        module.input_quantizer = None
        fallbacks[name] = (
            f"input {quantizer.fmt.short_name} -> float: best observer {decided.observer} "
            f"gives layer output {decided.output_sqnr_db:.1f} dB < floor {floor:.1f} dB "
            f"(float input: {weight_only:.1f} dB)"
        )
    return fallbacks


def _decision(
    name: str, module: nn.Module, calibrated: Calibrated | None, escalation: str | None = None
) -> LayerDecision:
    assert isinstance(module, (QuantLinear, QuantConv2d))
    quantizer = module.input_quantizer
    observer = None if quantizer is None else quantizer.observer_name or quantizer.fmt.kind
    output_sqnr = None if calibrated is None else calibrated.output_sqnr_db
    if calibrated is not None and quantizer is None:  # input left in float by the fallback
        output_sqnr = calibrated.weight_only_sqnr_db
    return LayerDecision(
        name=name,
        module_type=type(module).__name__.removeprefix("Quant"),
        weight_format=module.weight_quantizer.fmt.short_name,
        weight_observer=module.weight_quantizer.observer_name or None,
        activation_format=None if quantizer is None else quantizer.fmt.short_name,
        observer=observer,
        weight_sqnr_db=module.weight_sqnr_db(),
        activation_sqnr_db=None if calibrated is None or quantizer is None else calibrated.sqnr_db,
        params=module.weight.numel(),
        escalation=escalation,
        output_sqnr_db=output_sqnr,
        observer_scores={} if calibrated is None else dict(calibrated.scores),
    )
