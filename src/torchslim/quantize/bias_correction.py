"""Empirical bias correction (Nagel et al., arXiv:1906.04721, section 4.2).

Quantization error is not zero-mean per output channel: E[W~ x~] != E[W x] shifts every channel's
output. Layer by layer in model order, the mean output per channel of the float model minus that
of the quantized model (over the calibration batches) is added to the layer's bias; later layers
are corrected with the earlier corrections in place, so the error that reaches them through the
earlier layers (and their ReLUs) is corrected too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.modules import (
    QuantConv2d,
    QuantLinear,
    eval_mode,
    quant_modules,
    quantization_disabled,
)


def float_output(module: QuantConv2d | QuantLinear, x: Tensor) -> Tensor:
    """The layer's output with float weight and float input."""
    if isinstance(module, QuantConv2d):
        return module._conv_forward(x, module.weight, module.bias)  # (B, C_out, H', W')
    return F.linear(x, module.weight, module.bias)  # (..., out)


def _channel_mean(y: Tensor) -> Tensor:
    if y.ndim == 4:
        return y.mean(dim=(0, 2, 3))  # (C_out,)
    return y.reshape(-1, y.shape[-1]).mean(0)  # (out,)


def mean_outputs(
    model: nn.Module, names: list[str], batches: list[tuple[Any, ...]]
) -> dict[str, Tensor]:
    """Per layer in ``names``: the mean of its output per channel over the batches."""
    sums: dict[str, list[Tensor]] = {name: [] for name in names}
    handles = []
    for name in names:

        def hook(mod: nn.Module, args: Any, output: Tensor, name: str = name) -> None:
            sums[name].append(_channel_mean(output.detach()))

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad(), eval_mode(model):
            for batch in batches:
                model(*batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.stack(values).mean(0) for name, values in sums.items()}


def correct_bias_(model: nn.Module, calibration: Iterable[Any]) -> dict[str, float]:
    """Correct the bias of every fake-quant layer of ``model`` in place (see module docstring).

    Returns:
        Per layer: the largest absolute correction added to its bias.

    Raises:
        CalibrationError: empty or non-finite calibration data (the model is left untouched).
    """
    with untouched_on_failure(model):
        batches = check_batches(calibration)
        layers = quant_modules(model)
        with quantization_disabled(model):
            expected = mean_outputs(model, list(layers), batches)
        corrections = {}
        for name, module in layers.items():
            error = expected[name] - mean_outputs(model, [name], batches)[name]  # (C_out,)
            with torch.no_grad():
                if module.bias is None:
                    module.bias = nn.Parameter(error.clone())
                else:
                    module.bias.add_(error)
            corrections[name] = float(error.abs().max())
    return corrections
