"""Empirical bias correction (Nagel et al., arXiv:1906.04721, section 4.2).

Quantization error is not zero-mean per output channel: E[W~ x~] != E[W x] shifts every channel's
output. Layer by layer in model order, the mean output per channel of the float model minus that
of the quantized model (over the calibration batches) is added to the layer's bias; later layers
are corrected with the earlier corrections in place, so the error that reaches them through the
earlier layers (and their ReLUs) is corrected too. ``correct_bias_one_pass_`` computes the same
corrections for one (concatenated) batch in two forward passes instead of one pass per layer.

Which layers to correct matters more than how much data: on EfficientNet-Lite0 (BN folded, auto
per-tensor W8A8) correcting every layer made held-out KL vs fp32 worse with more calibration
images (0.028 uncorrected; 0.020-0.025 from 20 images, 0.042 from 100; 0.043 even when the
"calibration" was the 320 held-out crops themselves), while correcting only the depthwise convs
(:func:`depthwise_layers`) helps and keeps helping with more data. The harm is not noise in the
mean: it comes from the corrections of the last, 7x7 stage (block 15's projection alone takes
KL 0.010 -> 0.037), a cascade in which each pre-activation mean shift feeds the next layer an
error its own correction then chases; matching a channel's mean before a ReLU6 lowers that
output's squared error but raised the error of the pooled features after the ReLU6.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
            _add_to_bias(module, error)
            corrections[name] = float(error.abs().max())
    return corrections


def depthwise_layers(model: nn.Module) -> list[str]:
    """Names of the fake-quant depthwise convs (one group per input channel), in model order.

    The layers whose quantization error is most biased (Nagel et al.: a BN-folded depthwise
    conv's few weights per channel round with a non-zero mean), and the ones to pass as
    ``names`` to :func:`correct_bias_one_pass_`: correcting every layer can chase a cascade of
    mean shifts through the ReLU6s and hurt (module docstring); correcting these alone did not.
    """
    return [
        name
        for name, module in quant_modules(model).items()
        if isinstance(module, QuantConv2d) and 1 < module.groups == module.in_channels
    ]


def _add_to_bias(layer: QuantConv2d | QuantLinear, shift: Tensor) -> None:
    """``layer.bias += shift`` in place (a bias-less layer gets ``shift`` as its bias)."""
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(shift.clone())
        else:
            layer.bias.add_(shift)


def _float_means(
    model: nn.Module, calibration: Iterable[Any], names: Iterable[str] | None
) -> tuple[tuple[Any, ...], dict[str, QuantConv2d | QuantLinear], dict[str, Tensor]]:
    """The calibration batches concatenated into one, the fake-quant layers by name, and the
    float model's mean output per channel of ``names`` (default: every such layer), in order."""
    batch = _concatenated(check_batches(calibration))
    layers = quant_modules(model)
    chosen = list(layers) if names is None else list(names)
    with quantization_disabled(model):
        return batch, layers, mean_outputs(model, chosen, [batch])


def _concatenated(batches: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The batches as one: tensor arguments concatenated along dim 0, others from batch 0."""
    columns = zip(*batches, strict=True)  # argument position -> its value in every batch
    return tuple(torch.cat(c) if isinstance(c[0], Tensor) else c[0] for c in columns)


def correct_bias_one_pass_(
    model: nn.Module, calibration: Iterable[Any], names: Iterable[str] | None = None
) -> dict[str, float]:
    """Bias correction of ``names`` (default: every fake-quant layer) in two forward passes.

    The calibration batches are concatenated into one; a float pass takes every layer's mean
    output per channel, then one quantized pass corrects the layers in execution order: a
    forward hook adds the error to the layer's bias and to the output it passes on, so later
    layers see the corrected model, as in :func:`correct_bias_`'s layer-by-layer loop (whose
    result this equals on a single batch). A layer called twice is corrected at its first call.

    Returns:
        Per layer: the largest absolute correction added to its bias.

    Raises:
        CalibrationError: empty or non-finite calibration data (the model is left untouched).
    """
    with untouched_on_failure(model):
        batch, layers, expected = _float_means(model, calibration, names)
        chosen = list(expected)
        corrections: dict[str, float] = {}

        def hook(name: str) -> Callable[[nn.Module, Any, Tensor], Tensor | None]:
            layer = layers[name]

            def correct(module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
                if name in corrections:
                    return None
                error = expected[name] - _channel_mean(output.detach())  # (C_out,)
                _add_to_bias(layer, error)
                corrections[name] = float(error.abs().max())
                return output + (error.view(-1, 1, 1) if output.ndim == 4 else error)

            return correct

        handles = [layers[name].register_forward_hook(hook(name)) for name in chosen]
        try:
            with torch.no_grad(), eval_mode(model):
                model(*batch)
        finally:
            for handle in handles:
                handle.remove()
    return corrections


def _output_error(model: nn.Module, batch: tuple[Any, ...], expected: Tensor) -> float:
    """Mean squared difference of the model's output from ``expected`` (the fp32 output)."""
    with torch.no_grad(), eval_mode(model):
        return float(F.mse_loss(model(*batch).float(), expected))


def correct_bias_guarded_(
    model: nn.Module, calibration: Iterable[Any], names: Iterable[str] | None = None
) -> dict[str, float]:
    """Bias correction that keeps a layer's correction only where the model output improves.

    Layer by layer in model order (earlier kept corrections in place), the per-channel mean
    error is computed as in :func:`correct_bias_`, added to the bias, and kept only if the
    mean squared error of the model's *output* against fp32 on the calibration data drops;
    otherwise the bias is restored. This is what catches the harmful corrections of the
    module docstring without knowing which layers they are: matching a mean before a
    nonlinearity can move the output away from fp32, and the output says so. Costs two forward
    passes per layer over the (concatenated) calibration data.

    Returns:
        Per layer: the largest absolute correction kept (0.0 where it was rejected).

    Raises:
        CalibrationError: empty or non-finite calibration data (the model is left untouched).
    """
    with untouched_on_failure(model):
        batch, layers, expected = _float_means(model, calibration, names)
        with quantization_disabled(model), torch.no_grad(), eval_mode(model):
            target = model(*batch).float()
        error_now = _output_error(model, batch, target)
        kept: dict[str, float] = {}
        for name in expected:
            module = layers[name]
            shift = expected[name] - mean_outputs(model, [name], [batch])[name]  # (C_out,)
            before = None if module.bias is None else module.bias.detach().clone()
            _add_to_bias(module, shift)
            error_after = _output_error(model, batch, target)
            if error_after < error_now:
                error_now, kept[name] = error_after, float(shift.abs().max())
                continue
            module.bias = None if before is None else nn.Parameter(before)  # rejected: undone
            kept[name] = 0.0
    return kept
