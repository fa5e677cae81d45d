"""AdaRound: learn whether each weight rounds up or down (Nagel et al., arXiv:2004.10568).

Layer by layer in model order: with the earlier layers already rounded, the layer's inputs from
the quantized model (passed through its own input quantizer) and its float outputs from the
float model are collected on the calibration batches; a soft rounding variable V per weight,
h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1), is optimised with Adam to minimise
||W x - W~(V) x~||^2 + lambda * sum(1 - |2 h(V) - 1|^beta), beta annealed from 20 to 2 after a
warm-up without the regulariser (the paper's "asymmetric" reconstruction). Then each weight is
rounded by h(V) >= 0.5 and the layer's latent weight is set to the grid point, so the fake-quant
layer reproduces those codes exactly. Works for "int" weight formats at any granularity.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError, reject_unknown_keys
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.modules import (
    QuantConv2d,
    QuantLinear,
    eval_mode,
    quant_modules,
    quantization_disabled,
    tied_layers,
)
from torchslim.quantize.primitives import from_groups, to_groups

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundConfig:
    """Options of :func:`adaround_`.

    Attributes:
        iterations: Adam steps per layer (the paper uses 10 000; a few hundred already beat
            nearest rounding on small CNNs).
        batch_size: calibration samples per step.
        lr: Adam learning rate of the rounding variables.
        reg_weight: lambda, weight of the rounding regulariser.
        warmup: fraction of the iterations without the regulariser, in [0, 1).
        beta_start: beta of the regulariser when it starts (annealed linearly to ``beta_end``).
        beta_end: beta at the last iteration.
        max_samples: calibration samples kept per layer (memory bound).
        seed: seeds the sampling of steps.
    """

    iterations: int = 500
    batch_size: int = 32
    lr: float = 1e-2
    reg_weight: float = 0.01
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    max_samples: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "iterations": isinstance(self.iterations, int) and self.iterations >= 1,
            "batch_size": isinstance(self.batch_size, int) and self.batch_size >= 1,
            "lr": self.lr > 0, "reg_weight": self.reg_weight >= 0, "warmup": 0 <= self.warmup < 1,
            "beta_start": self.beta_start > 0, "beta_end": 0 < self.beta_end <= self.beta_start,
            "max_samples": isinstance(self.max_samples, int) and self.max_samples >= 1,
        }  # fmt: skip
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"AdaRoundConfig.{name}={getattr(self, name)!r} is out of range.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdaRoundConfig:
        reject_unknown_keys(cls, values)
        return cls(**values)


def _collect(
    model: nn.Module, name: str, batches: list[tuple[Any, ...]], limit: int, float_side: bool
) -> Tensor:
    """The inputs (quantized model) or float outputs (float model) of layer ``name``."""
    module = model.get_submodule(name)
    kept: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        kept.append((output if float_side else args[0]).detach().clone())

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad(), eval_mode(model):
            for batch in batches:
                if sum(len(k) for k in kept) >= limit:
                    break
                model(*batch)
    finally:
        handle.remove()
    return torch.cat(kept)[:limit]


class _SoftRounding:
    """W~(V) for an int weight: scale * (clamp(floor(W / s) + h(V) + zp, qmin, qmax) - zp)."""

    def __init__(self, module: QuantConv2d | QuantLinear) -> None:
        quantizer = module.weight_quantizer
        self.fmt, self.shape = quantizer.fmt, module.weight.shape
        self.scale, zero_point = quantizer.qparams()
        self.zero_point = zero_point.float()
        weight = module.weight.detach()
        if self.fmt.group_size:
            weight = to_groups(weight, self.fmt.group_size, self.fmt.channel_axis)  # (C, G, g)
        ratio = weight / self.scale  # weight's (group) shape
        self.floor = torch.floor(ratio)
        rest = (ratio - self.floor).clamp(1e-4, 1 - 1e-4)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))  # h(V) = rest

    def h(self) -> Tensor:
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def weight(self, hard: bool = False) -> Tensor:
        up = (self.h() >= 0.5).float() if hard else self.h()
        codes = (self.floor + up + self.zero_point).clamp(self.fmt.qmin, self.fmt.qmax)
        values = (codes - self.zero_point) * self.scale
        if self.fmt.group_size:
            return from_groups(values, self.shape, self.fmt.channel_axis)
        return values


def _layer_output(module: QuantConv2d | QuantLinear, x: Tensor, weight: Tensor) -> Tensor:
    if isinstance(module, QuantConv2d):
        return module._conv_forward(x, weight, module.bias)
    return F.linear(x, weight, module.bias)


def _optimise(
    module: QuantConv2d | QuantLinear, inputs: Tensor, targets: Tensor, config: AdaRoundConfig
) -> dict[str, float]:
    rounding = _SoftRounding(module)
    with torch.no_grad():
        quantized_inputs = (
            inputs if module.input_quantizer is None else module.input_quantizer(inputs)
        )
    optimizer = torch.optim.Adam([rounding.v], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    warmup = int(config.warmup * config.iterations)
    for step in range(config.iterations):
        pick = torch.randint(
            len(inputs), (min(config.batch_size, len(inputs)),), generator=generator
        )
        out = _layer_output(module, quantized_inputs[pick], rounding.weight())
        loss = (out - targets[pick]).pow(2).sum(1).mean()  # sum over channels, mean over the rest
        if step >= warmup:
            progress = (step - warmup) / max(1, config.iterations - warmup)
            beta = config.beta_end + 0.5 * (config.beta_start - config.beta_end) * (
                1 + math.cos(progress * math.pi)
            )
            loss = loss + config.reg_weight * (1 - (2 * rounding.h() - 1).abs().pow(beta)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nearest = module.quantized_weight()
        before = float((_layer_output(module, quantized_inputs, nearest) - targets).pow(2).mean())
        chosen = rounding.weight(hard=True)
        after = float((_layer_output(module, quantized_inputs, chosen) - targets).pow(2).mean())
        flipped = float((chosen != nearest).float().mean())
        module.weight.copy_(chosen)  # on the grid: the fake-quant layer now yields these codes
    return {"mse_nearest": before, "mse_adaround": after, "changed_fraction": flipped}


def adaround_(
    model: nn.Module, calibration: Iterable[Any], config: AdaRoundConfig | None = None
) -> dict[str, dict[str, float]]:
    """AdaRound every fake-quant layer with an "int" weight format, in place.

    Args:
        model: after ``quantize_`` (activation quantizers calibrated if any).
        calibration: batches of forward inputs.
        config: iterations, learning rate, regulariser.

    Layers with learned (LSQ) scales or a weight tied to another module are skipped.

    Returns:
        Per layer: output MSE with nearest rounding and with AdaRound, and the share of weights
        whose grid point changed.

    Raises:
        CalibrationError: empty or non-finite calibration data (the model is left untouched).
    """
    config = config or AdaRoundConfig()
    with untouched_on_failure(model):
        batches = check_batches(calibration)
        float_model = copy.deepcopy(model)
        report = {}
        tied = tied_layers(model)
        for name, module in quant_modules(model).items():
            quantizer = module.weight_quantizer
            if quantizer.fmt.kind != "int" or quantizer.learn_scale or name in tied:
                continue
            with quantization_disabled(float_model):
                targets = _collect(float_model, name, batches, config.max_samples, True)
            inputs = _collect(model, name, batches, config.max_samples, False)
            with torch.enable_grad():
                report[name] = _optimise(module, inputs, targets, config)
    return report
