"""Steps that reshape the float model's ranges before it is quantized; its outputs stay the same.

``smoothquant`` moves activation outliers into the weights of LLaMA/BERT-style blocks (arXiv
2211.10438); ``rotate`` spreads them over all channels of a LLaMA-style decoder's residual stream
with a randomized Hadamard rotation (QuaRot/SpinQuant, arXiv 2404.00456); ``equalize`` is
cross-layer equalization of CNN layer pairs (arXiv 1906.04721),
after folding BatchNorm into the convs (``fold_batchnorm``), without which no pair commutes.
Both must come before the stage that quantizes (checked when the recipe is read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step
from torchslim.pipeline.steps._options import check_calibration_batches, library_config
from torchslim.quantize.rotate import RotateConfig
from torchslim.quantize.smoothquant import SmoothQuantConfig


@dataclass(frozen=True)
class SmoothQuantOptions(SmoothQuantConfig):
    """SmoothQuant before W8A8: ``alpha`` (migration strength in [0, 1]), ``ignore`` (layer
    names or ``re:``), ``min_value``, ``down_proj`` (also the MLP's down projection),
    ``calibration_batches``."""

    calibration_batches: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_calibration_batches(self.calibration_batches)


def run_smoothquant(
    model: nn.Module, options: SmoothQuantOptions, context: StepContext
) -> StepResult:
    from torchslim.quantize.smoothquant import INPUT_SCALE, find_smooth_groups, smooth_quant_

    if not find_smooth_groups(model, options.down_proj):
        raise ConfigError(
            f"SmoothQuant needs LLaMA-style decoder blocks (input_layernorm -> q/k/v_proj) or "
            f"BERT-style encoder blocks (LayerNorm -> query/key/value); {context.entry.name} has "
            "none. For a CNN use the equalize step instead."
        )
    batches = context.entry.calibration_batches(options.calibration_batches)
    result = smooth_quant_(model, batches, library_config(options, SmoothQuantConfig))
    groups = [g.group for g in result.groups]
    wrapped = [name for g in groups if g.mode == INPUT_SCALE for name in g.layers]
    summary = {
        "groups_smoothed": len(groups),
        "modes": {mode: sum(g.mode == mode for g in groups) for mode in {g.mode for g in groups}},
        "outlier_ratio_before_max": round(max(g.outlier_ratio_before for g in result.groups), 2),
        "outlier_ratio_after_max": round(max(g.outlier_ratio_after for g in result.groups), 2),
        "fold_check_relative_error": result.fold_check_relative_error,
    }
    return StepResult(summary, {"input_scaled": wrapped})


def restore_smoothing(
    model: nn.Module, options: SmoothQuantOptions, record: dict[str, Any], context: StepContext
) -> None:
    """Put the explicit input scaling (BERT-style groups) back in front of its Linears."""
    from torchslim.quantize.apply import set_submodule
    from torchslim.quantize.smoothquant import InputSmoothing

    for name in record.get("input_scaled", []):
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Linear), f"{name} is a {type(layer).__name__}, not a Linear"
        smoothing = InputSmoothing(torch.ones(layer.in_features))
        set_submodule(model, name, nn.Sequential(smoothing, layer))


@dataclass(frozen=True)
class EqualizeOptions:
    """Cross-layer equalization: ``iterations`` (sweeps over all pairs), ``fold_batchnorm``
    (fold BatchNorm into the preceding convs first: a BN between two layers does not commute
    with the scales, so without folding such pairs are not equalized)."""

    iterations: int = 10
    fold_batchnorm: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            raise ConfigError(f"iterations must be an integer >= 1, got {self.iterations!r}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be an integer >= 1, got {self.iterations}")
        if not isinstance(self.fold_batchnorm, bool):
            raise ConfigError(f"fold_batchnorm must be true or false, got {self.fold_batchnorm!r}")


def run_equalize(model: nn.Module, options: EqualizeOptions, context: StepContext) -> StepResult:
    from torchslim._compress import untouched_on_failure
    from torchslim.quantize.equalize import equalize_
    from torchslim.quantize.fold import fold_batchnorm_

    with untouched_on_failure(model):
        folded = fold_batchnorm_(model) if options.fold_batchnorm else []
        chains = equalize_(model, options.iterations)
        if not chains:
            hint = "" if options.fold_batchnorm else " (set fold_batchnorm: true)"
            raise ConfigError(
                f"equalize found no layer pair of {context.entry.name} to equalize: it needs "
                "conv/linear -> ReLU or pooling -> conv/linear with no BatchNorm between"
                f"{hint} (ReLU6, GELU and residual adds do not commute with the scales)"
            )
    summary = {"batchnorm_folded": len(folded), "pairs_equalized": len(chains),
               "pairs": [f"{c.producer} -> {c.consumer}" for c in chains]}  # fmt: skip
    return StepResult(summary, {"folded_batchnorm": [list(pair) for pair in folded]})


def restore_folding(
    model: nn.Module, options: EqualizeOptions, record: dict[str, Any], context: StepContext
) -> None:
    """Replace the folded BatchNorms by identities and give their convs a bias to load into."""
    from torchslim.quantize.apply import set_submodule

    for conv_name, bn_name in record.get("folded_batchnorm", []):
        set_submodule(model, bn_name, nn.Identity())
        conv = model.get_submodule(conv_name)
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.weight.shape[0]))


@dataclass(frozen=True)
class RotateOptions(RotateConfig):
    """Residual-stream rotation of a LLaMA-style decoder before weight quantization: ``seed``,
    ``heads`` (also rotate each attention head's values)."""


def run_rotate(model: nn.Module, options: RotateOptions, context: StepContext) -> StepResult:
    from torchslim.quantize.rotate import rotate_

    summary = rotate_(model, library_config(options, RotateConfig))
    return StepResult(summary, {"untied_head": summary["untied_head"]})


def restore_rotation(
    model: nn.Module, options: RotateOptions, record: dict[str, Any], context: StepContext
) -> None:
    """The rotated head has its own weight: untie it so the artifact's weights load."""
    from torchslim.quantize.rotate import untie_head

    if record.get("untied_head"):
        untie_head(model)


for _step in (
    Step("rotate", RotateOptions, run_rotate,
         "Hadamard rotation of the residual stream (LLM, before quantize)",
         restore=restore_rotation, before_quantize=True),
    Step("smoothquant", SmoothQuantOptions, run_smoothquant,
         "activation outliers into the weights (LLM/BERT, before quantize)",
         restore=restore_smoothing, before_quantize=True),
    Step("equalize", EqualizeOptions, run_equalize,
         "cross-layer equalization, BatchNorm folded (CNN, before quantize)",
         restore=restore_folding, before_quantize=True),
):  # fmt: skip
    register_step(_step)
