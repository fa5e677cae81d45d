"""Calibration of activation quantizers: validate the batches, observe, choose, set the scales.

With ``observer="auto"`` a first pass keeps a bounded random sample of every quantized layer's
input (plus each batch's extremes), every observer that supports the format is scored by SQNR on
that sample (``choose_observer_by_sqnr``), and a second pass runs the winner over the full
batches. A fixed observer needs one pass. Calibration runs the model in float: every layer sees
the activations of the float model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import ActivationQuantizer, eval_mode, quantization_disabled
from torchslim.quantize.observers import (
    CalibrationError,
    Observer,
    choose_observer_by_sqnr,
    make_observer,
)
from torchslim.quantize.primitives import fake_quantize

Batch = tuple[Any, ...]
SAMPLES_PER_BATCH = 32768  # elements kept per batch and layer for choosing an observer
MAX_SAMPLED_BATCHES = 16


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
    """What calibration decided for one layer's input."""

    observer: str
    sqnr_db: float


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
) -> dict[str, Calibrated]:
    """Set the scale of every static quantizer in ``quantizers`` from ``batches``.

    Returns:
        Per layer name: the observer used and the SQNR (dB) of its scale on the sampled inputs.
    """
    static = {n: q for n, q in quantizers.items() if not q.dynamic and q.fmt.kind != "float"}
    if not static:
        return {}
    chosen = {name: observer for name in static}
    samplers: dict[str, _Sampler] = {}
    try:
        if observer == "auto":
            for seed, (name, quantizer) in enumerate(static.items()):
                samplers[name] = quantizer.observer = _Sampler(seed)
            _run(model, batches)
            for name, quantizer in static.items():
                chosen[name] = choose_observer_by_sqnr(samplers[name].samples, quantizer.fmt)
        observers = {n: make_observer(chosen[n], q.fmt) for n, q in static.items()}
        for seed, (name, quantizer) in enumerate(static.items()):
            sampler = _Sampler(seed, then=observers[name])
            samplers.setdefault(name, sampler)
            quantizer.observer = sampler
        _run(model, batches)
    finally:
        for quantizer in static.values():
            quantizer.observer = None
    decided = {}
    for name, quantizer in static.items():
        scale, zero_point = observers[name].compute_qparams()
        quantizer.set_qparams(scale, zero_point)
        quantizer.observer_name = chosen[name]
        sqnr = _sqnr_db(samplers[name].samples, quantizer.fmt, scale, zero_point)
        decided[name] = Calibrated(chosen[name], sqnr)
    return decided
