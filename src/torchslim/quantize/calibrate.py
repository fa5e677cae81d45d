"""Calibration of activation quantizers: validate the batches, observe, choose, set the scales.

With ``observer="auto"`` and the layers given, every observer that supports the input's format
(minmax, moving_average, percentile, mse, kl) observes all batches in one float pass; a second
pass over the first ``MAX_SCORING_BATCHES`` batches feeds each layer its float input and scores
every candidate by the SQNR of the layer's *output* (quantized weight, input quantized with the
candidate's scale) against the float layer's output, and the best one is kept. Scoring the
output instead of the input weighs clipping and rounding errors by what the layer does with
them: clipping a few outliers that a 1x1 conv amplifies loses, clipping an irrelevant tail wins.
Without the layers, "auto" falls back to the input's SQNR on a bounded random sample. A fixed
observer needs one pass. Calibration runs the model in float: every layer sees the activations
of the float model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    eval_mode,
    quantization_disabled,
)
from torchslim.quantize.observers import (
    OBSERVERS,
    CalibrationError,
    Observer,
    choose_observer_by_sqnr,
    make_observer,
)
from torchslim.quantize.primitives import fake_quantize

Batch = tuple[Any, ...]
SAMPLES_PER_BATCH = 32768  # elements kept per batch and layer for choosing an observer
MAX_SAMPLED_BATCHES = 16
MAX_SCORING_BATCHES = 2  # batches whose layer outputs score the candidates
LayerVisitor = Callable[[str, nn.Module, Tensor], None]


def check_batches(calibration: Iterable[Any] | None) -> list[Batch]:
    """The calibration batches as tuples of forward arguments, validated.

    A batch is a tensor or a tuple/list of forward arguments (what ``zoo`` entries'
    ``calibration_batches`` return).

    Raises:
        CalibrationError: no batches, an empty tensor, or NaN/Inf values; names the batch.
    """
    if calibration is None:
        raise CalibrationError(
            "static activation quantization needs calibration batches: pass "
            "calibration=entry.calibration_batches(16), or set dynamic=True, or activation=None."
        )
    batches = [tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in calibration]
    if not batches:
        raise CalibrationError("calibration is empty; pass at least one batch of real inputs.")
    for index, batch in enumerate(batches):
        for position, item in enumerate(batch):
            if not isinstance(item, Tensor):
                continue
            if item.numel() == 0:
                raise CalibrationError(
                    f"calibration batch {index} argument {position} is empty "
                    f"(shape {tuple(item.shape)})."
                )
            if item.is_floating_point():
                bad = int((~torch.isfinite(item)).sum())
                if bad:
                    raise CalibrationError(
                        f"calibration batch {index} argument {position} holds {bad} NaN/Inf "
                        f"values of {item.numel()}; clean the data before calibrating."
                    )
    return batches


class _Sampler:
    """Keeps a bounded, seeded random sample of what it observes (and each batch's min/max)."""

    def __init__(self, seed: int, then: Observer | None = None) -> None:
        self.samples: list[Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.then = then

    def observe(self, x: Tensor) -> None:
        if self.then is not None:
            self.then.observe(x)
        if len(self.samples) >= MAX_SAMPLED_BATCHES:
            return
        flat = x.detach().float().reshape(-1)  # (N,)
        if flat.numel() > SAMPLES_PER_BATCH:
            picked = torch.randint(flat.numel(), (SAMPLES_PER_BATCH,), generator=self.generator)
            flat = torch.cat([flat[picked], flat.amin()[None], flat.amax()[None]])  # (S + 2,)
        self.samples.append(flat.clone())


@dataclass(frozen=True)
class Calibrated:
    """What calibration decided for one layer's input.

    Attributes:
        observer: the observer whose scale the input uses.
        sqnr_db: SQNR (dB) of that scale on a sample of the layer's float inputs.
        output_sqnr_db: with "auto": SQNR (dB) of the layer's output (quantized weight and
            input) against the float layer on the scoring batches; None otherwise.
        scores: with "auto": every candidate's output SQNR (dB).
        weight_only_sqnr_db: with "auto": the output SQNR (dB) with the input left in float,
            i.e. what the weights alone cost.
    """

    observer: str
    sqnr_db: float
    output_sqnr_db: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    weight_only_sqnr_db: float | None = None


class _FanOut:
    """Feeds every observed batch to several observers."""

    def __init__(self, observers: Sequence[Observer | _Sampler]) -> None:
        self.observers = observers

    def observe(self, x: Tensor) -> None:
        for observer in self.observers:
            observer.observe(x)


class NoiseMeter:
    """Accumulates sum(signal^2) and sum(noise^2) per key in float64; answers SQNR in dB."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, key: str, signal: Tensor | float, noise: Tensor) -> None:
        """Add a batch's signal (a tensor, or its energy from :func:`energy`) and noise."""
        power = signal if isinstance(signal, float) else energy(signal)
        self.signal[key] = self.signal.get(key, 0.0) + power
        self.noise[key] = self.noise.get(key, 0.0) + energy(noise)

    def sqnr_db(self, key: str) -> float:
        noise, signal = self.noise.get(key, 0.0), self.signal.get(key, 0.0)
        if noise == 0:
            return math.inf
        return -math.inf if signal == 0 else 10 * math.log10(signal / noise)


def energy(x: Tensor) -> float:
    """sum(x^2), accumulated in float64 without a float64 copy of ``x``."""
    flat = x.reshape(-1)
    return float(torch.sum(flat * flat, dtype=torch.float64))


def layer_output(module: nn.Module, x: Tensor, weight: Tensor | None = None) -> Tensor:
    """The layer's float forward on ``x`` with ``weight`` (default: its own float weight) and no
    quantizers; a subclass with its own forward (static "same" padding, ...) runs that forward."""
    assert isinstance(module, (QuantConv2d, QuantLinear))
    weight = module.weight if weight is None else weight
    if module._float_forward is not None:
        return module._subclass_forward(x, weight)
    if isinstance(module, QuantConv2d):
        return module._conv_forward(x, weight, module.bias)  # (B, C_out, H', W')
    return F.linear(x, weight, module.bias)  # (..., out)


def without_bias(module: nn.Module, y: Tensor) -> Tensor:
    """``y`` minus the layer's bias: the part of the output that quantization can damage."""
    bias = getattr(module, "bias", None)
    if bias is None:
        return y
    shape = (-1, 1, 1) if isinstance(module, nn.Conv2d) else (-1,)
    return y - bias.detach().view(shape)


def quantized_weight(module: nn.Module) -> Tensor:
    """The layer's fake-quantized weight, also inside ``quantization_disabled``."""
    assert isinstance(module, (QuantConv2d, QuantLinear))
    quantizer = module.weight_quantizer
    enabled, quantizer.enabled = quantizer.enabled, True
    try:
        with torch.no_grad():
            return quantizer(module.weight).detach()
    finally:
        quantizer.enabled = enabled


def visit_layer_inputs(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Sequence[Batch], visit: LayerVisitor
) -> None:
    """Run ``model`` in float over ``batches``; ``visit(name, layer, x)`` gets each input."""
    handles = []
    for name, module in layers.items():

        def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            with torch.no_grad():
                visit(name, mod, args[0].detach())

        handles.append(module.register_forward_pre_hook(hook))
    try:
        _run(model, batches)
    finally:
        for handle in handles:
            handle.remove()


def _run(model: nn.Module, batches: Sequence[Batch]) -> None:
    with torch.no_grad(), quantization_disabled(model), eval_mode(model):
        for batch in batches:
            model(*batch)


def _sqnr_db(samples: list[Tensor], fmt: QuantFormat, scale: Tensor, zero_point: Tensor) -> float:
    signal = noise = 0.0
    for sample in samples:
        approx = fake_quantize(sample, fmt, scale.view(()), zero_point.view(()))
        signal += float(sample.double().pow(2).sum())
        noise += float((sample.double() - approx.double()).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)


def calibrate_activations(
    model: nn.Module,
    quantizers: dict[str, ActivationQuantizer],
    batches: Sequence[Batch],
    observer: str,
    layers: Mapping[str, nn.Module] | None = None,
) -> dict[str, Calibrated]:
    """Set the scale of every static quantizer in ``quantizers`` from ``batches``.

    Args:
        model: the model holding the quantizers (run in float).
        quantizers: per layer name, its input quantizer.
        batches: calibration batches (forward arguments).
        observer: an observer name, or "auto".
        layers: per layer name, the fake-quant layer; with "auto" the observers are scored by
            the layer's output (see the module docstring), without it by the input's SQNR.

    Returns:
        Per layer name: the observer used and the SQNR (dB) of its scale on the sampled inputs.
    """
    static = {n: q for n, q in quantizers.items() if not q.dynamic and q.fmt.kind != "float"}
    if not static:
        return {}
    if observer == "auto" and layers is not None:
        return _calibrate_by_output(model, static, layers, batches)
    chosen = {name: observer for name in static}
    if observer == "auto":
        samplers = {name: _Sampler(seed) for seed, name in enumerate(static)}
        _observe(model, static, samplers, batches)
        for name, quantizer in static.items():
            chosen[name] = choose_observer_by_sqnr(samplers[name].samples, quantizer.fmt)
    return _calibrate_with(model, static, batches, chosen)


def _observe(
    model: nn.Module,
    static: dict[str, ActivationQuantizer],
    observers: Mapping[str, Any],
    batches: Sequence[Batch],
) -> None:
    """One float pass with each input quantizer observed by ``observers[name]`` (removed after)."""
    try:
        for name, quantizer in static.items():
            quantizer.observer = observers[name]
        _run(model, batches)
    finally:
        for quantizer in static.values():
            quantizer.observer = None


def _calibrate_with(
    model: nn.Module,
    static: dict[str, ActivationQuantizer],
    batches: Sequence[Batch],
    chosen: Mapping[str, str],
) -> dict[str, Calibrated]:
    """One float pass in which each input's ``chosen`` observer sees every batch; sets scales."""
    observers = {n: make_observer(chosen[n], q.fmt) for n, q in static.items()}
    samplers = {n: _Sampler(seed, then=observers[n]) for seed, n in enumerate(static)}
    _observe(model, static, samplers, batches)
    decided = {}
    for name, quantizer in static.items():
        scale, zero_point = observers[name].compute_qparams()
        quantizer.set_qparams(scale, zero_point)
        quantizer.observer_name = chosen[name]
        sqnr = _sqnr_db(samplers[name].samples, quantizer.fmt, scale, zero_point)
        decided[name] = Calibrated(chosen[name], sqnr)
    return decided


def observer_candidates(fmt: QuantFormat) -> list[str]:
    """Every registered observer that supports activation format ``fmt`` (registry order)."""
    return [
        name
        for name, cls in OBSERVERS.items()
        if fmt.kind in cls.kinds and fmt.granularity in cls.granularities
    ]


def _candidate_qparams(
    model: nn.Module, static: dict[str, ActivationQuantizer], batches: Sequence[Batch]
) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
    """One float pass in which every candidate observer of every input observes ``batches``."""
    observers: dict[str, dict[str, Observer]] = {}
    try:
        for name, quantizer in static.items():
            fmt = quantizer.fmt
            observers[name] = {c: make_observer(c, fmt) for c in observer_candidates(fmt)}
            quantizer.observer = _FanOut(list(observers[name].values()))
        _run(model, batches)
    finally:
        for quantizer in static.values():
            quantizer.observer = None
    return {n: {c: o.compute_qparams() for c, o in obs.items()} for n, obs in observers.items()}


def score_inputs(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    qparams: Mapping[str, Mapping[str, tuple[Tensor, Tensor]]],
    formats: Mapping[str, QuantFormat],
    batches: Sequence[Batch],
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per layer and candidate (scale, zero_point) of its input: the SQNR (dB) of the layer's
    output with its quantized weight and that input quantization, against the float layer on
    ``batches`` (bias left out of the signal); and per layer the SQNR with a float input."""
    meters = {name: NoiseMeter() for name in qparams}
    weight_only = NoiseMeter()
    weights = {name: quantized_weight(layers[name]) for name in qparams}

    def visit(name: str, module: nn.Module, x: Tensor) -> None:
        reference = layer_output(module, x)
        signal = energy(without_bias(module, reference))
        weight_only.add(name, signal, reference - layer_output(module, x, weights[name]))
        for candidate, (scale, zero_point) in qparams[name].items():
            quantized = fake_quantize(x, formats[name], scale.view(()), zero_point.view(()))
            noise = reference - layer_output(module, quantized, weights[name])
            meters[name].add(candidate, signal, noise)

    visit_layer_inputs(model, {name: layers[name] for name in qparams}, batches, visit)
    scores = {n: {c: meter.sqnr_db(c) for c in qparams[n]} for n, meter in meters.items()}
    return scores, {name: weight_only.sqnr_db(name) for name in qparams}


def _calibrate_by_output(
    model: nn.Module,
    static: dict[str, ActivationQuantizer],
    layers: Mapping[str, nn.Module],
    batches: Sequence[Batch],
) -> dict[str, Calibrated]:
    """Observer "auto": every candidate observes the scoring batches, the one with the best
    output SQNR of its layer is kept and observes all batches; the installed scale is scored."""
    scoring = batches[:MAX_SCORING_BATCHES]
    formats = {name: quantizer.fmt for name, quantizer in static.items()}
    candidates = _candidate_qparams(model, static, scoring)
    scores, _ = score_inputs(model, layers, candidates, formats, scoring)
    chosen = {n: max(s, key=s.__getitem__) for n, s in scores.items()}  # ties: the earlier
    decided = _calibrate_with(model, static, batches, chosen)
    installed = {n: {chosen[n]: (q.scale.detach(), q.zero_point)} for n, q in static.items()}
    final, weight_only = score_inputs(model, layers, installed, formats, scoring)
    results = {}
    for name, calibrated in decided.items():
        results[name] = dataclasses.replace(
            calibrated,
            output_sqnr_db=final[name][chosen[name]],
            scores=scores[name],
            weight_only_sqnr_db=weight_only[name],
        )
    return results
