"""GPTQ for Linear layers (Frantar et al., arXiv:2210.17323): quantize a weight column by column
and push each column's rounding error onto the columns not yet quantized, weighted by the
inverse Hessian H = 2 X^T X of the layer's inputs, so the layer's output error stays small.

Deviation from the paper, on purpose: every layer's Hessian comes from one pass of the *float*
model (the paper runs the layers in order with the already-quantized ones in place), so a
135 M-parameter LM needs one forward instead of one per block. The column loop follows the
reference implementation (lazy batch updates of ``block_size`` columns, a Cholesky factor of
H^-1, dampening ``damp`` x mean(diag H)); with per-group formats a group's scale is fixed when
the loop reaches its first column (blocks are whole groups). Afterwards the latent weight sits
on the grid and the layer's quantizer holds the scales GPTQ used, so fake-quant, packing and
``save_quantized`` see exactly GPTQ's codes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError, reject_unknown_keys
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import (
    QuantLinear,
    eval_mode,
    quant_modules,
    quantization_disabled,
    tied_layers,
)
from torchslim.quantize.primitives import compute_qparams, round_trip


@dataclass(frozen=True)
class GPTQConfig:
    """Options of :func:`gptq_`.

    Attributes:
        damp: dampening added to H's diagonal, as a fraction of its mean diagonal, in (0, 1].
        block_size: columns per lazy update (rounded up to whole groups).
    """

    damp: float = 0.01
    block_size: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.damp <= 1:
            raise ConfigError(f"GPTQConfig.damp={self.damp!r}; allowed: (0, 1].")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise ConfigError(f"GPTQConfig.block_size={self.block_size!r}; allowed: an int >= 1.")
        if self.block_size < 1:
            raise ConfigError(f"GPTQConfig.block_size={self.block_size}; allowed: >= 1.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTQConfig:
        reject_unknown_keys(cls, values)
        return cls(**values)


def hessians(
    model: nn.Module, layers: dict[str, QuantLinear], batches: list[tuple[Any, ...]]
) -> dict[str, Tensor]:
    """H = 2 / n X^T X of every layer's float input over the batches: (in, in) each."""
    sums = {name: torch.zeros(m.in_features, m.in_features) for name, m in layers.items()}
    counts = dict.fromkeys(layers, 0)
    handles = []
    for name, module in layers.items():

        def hook(mod: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
            rows = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (n, in)
            sums[name].addmm_(rows.T, rows)
            counts[name] += rows.shape[0]

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad(), quantization_disabled(model), eval_mode(model):
            for batch in batches:
                model(*batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: 2 * sums[name] / max(1, counts[name]) for name in layers}


def _inverse_factor(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1: (in, in)."""
    h = hessian.double().clone()
    h.diagonal().add_(damp * h.diagonal().mean().clamp(min=1e-12))
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True).float()


def _group_qparams(columns: Tensor, fmt: QuantFormat) -> tuple[Tensor, Tensor]:
    """Min-max (scale, zero_point) per row of ``columns`` (out, g): (out, 1) each."""
    return compute_qparams(columns.amin(1, keepdim=True), columns.amax(1, keepdim=True), fmt)


def quantize_columns(
    weight: Tensor, hessian: Tensor, fmt: QuantFormat, qparams: tuple[Tensor, Tensor] | None,
    config: GPTQConfig,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """GPTQ of one (out, in) weight: (quantized weight, scales, zero points).

    ``qparams`` are the per-row (out, 1) or per-tensor parameters for channel/tensor formats;
    None for group formats, whose (out, in / g) parameters are chosen during the loop.
    """
    w = weight.detach().float().clone()  # (out, in)
    columns = w.shape[1]
    dead = hessian.diagonal() == 0  # (in,) inputs never active
    hessian = hessian.clone()
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    h_inv = _inverse_factor(hessian, config.damp)  # (in, in)
    group = fmt.group_size or columns
    block = group * math.ceil(config.block_size / group) if fmt.group_size else config.block_size
    scales, zeros = [], []
    quantized = torch.zeros_like(w)  # (out, in)
    scale, zero = qparams if qparams is not None else (None, None)
    for start in range(0, columns, block):
        end = min(start + block, columns)
        w_block, errors = w[:, start:end].clone(), torch.zeros_like(w[:, start:end])  # (out, B)
        for i in range(end - start):
            if fmt.group_size and (start + i) % group == 0:
                scale, zero = _group_qparams(w_block[:, i : i + group], fmt)  # (out, 1) x 2
                scales.append(scale)
                zeros.append(zero)
            assert scale is not None and zero is not None
            column = w_block[:, i : i + 1]  # (out, 1)
            q = round_trip(column, fmt, scale, zero)  # (out, 1)
            quantized[:, start + i] = q[:, 0]
            error = (column - q) / h_inv[start + i, start + i]  # (out, 1)
            w_block[:, i:] -= error @ h_inv[start + i, start + i : end][None, :]  # (out, B - i)
            errors[:, i] = error[:, 0]
        w[:, end:] -= errors @ h_inv[start:end, end:]  # lazy update of the later columns
    if fmt.group_size:
        return quantized, torch.cat(scales, 1)[..., None], torch.cat(zeros, 1)[..., None]
    assert scale is not None and zero is not None
    return quantized, scale, zero


def _proxy_loss(weight: Tensor, approx: Tensor, hessian: Tensor) -> float:
    """tr((W - Q) H (W - Q)^T) / out: the layer's output MSE on the calibration inputs."""
    delta = weight.detach().float() - approx  # (out, in)
    return float(((delta @ hessian) * delta).sum() / weight.shape[0])


def gptq_(
    model: nn.Module, calibration: Iterable[Any], config: GPTQConfig | None = None
) -> dict[str, dict[str, float]]:
    """GPTQ every fake-quant Linear with an "int" weight format, in place (after ``quantize_``).

    Layers whose weight is tied to another module (an LM head sharing the embedding) are
    skipped: rewriting the shared weight would change the other module too.

    Returns:
        Per layer: the output-error proxy tr(dW H dW^T)/out with round-to-nearest and with GPTQ.

    Raises:
        CalibrationError: empty or non-finite calibration data (the model is left untouched).
    """
    config = config or GPTQConfig()
    with untouched_on_failure(model):
        batches = check_batches(calibration)
        tied = tied_layers(model)
        layers = {
            name: module
            for name, module in quant_modules(model).items()
            if isinstance(module, QuantLinear)
            and module.weight_quantizer.fmt.kind == "int"
            and name not in tied
        }
        report = {}
        for name, hessian in hessians(model, layers, batches).items():
            module = layers[name]
            quantizer = module.weight_quantizer
            fmt = quantizer.fmt
            original, nearest = module.weight.detach().clone(), module.quantized_weight()
            qparams = None if fmt.group_size else quantizer.qparams()
            weight, scale, zero = quantize_columns(original, hessian, fmt, qparams, config)
            with torch.no_grad():
                quantizer.scale.copy_(scale.reshape(-1))
                quantizer.zero_point.copy_(zero.reshape(-1))
                module.weight.copy_(weight)
            quantizer.reset_cache()
            report[name] = {
                "loss_nearest": _proxy_loss(original, nearest, hessian),
                "loss_gptq": _proxy_loss(original, weight, hessian),
            }
    return report
