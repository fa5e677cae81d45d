"""Steps that make an earlier ``quantize`` stage's fake-quant layers more accurate.

``gptq`` sets weight codes column by column against the layer's Hessian (arXiv 2210.17323),
``awq`` scales LLaMA-style groups by their activations before rounding (arXiv 2306.00978),
``adaround`` learns each weight's rounding direction (arXiv 2004.10568), ``bias_correction``
adds the mean output error of each layer to its bias (arXiv 1906.04721, section 4.2). Each
needs an earlier stage that quantizes (checked when the recipe is read) and the entry's
calibration batches; options are the library config's fields plus ``calibration_batches``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError, did_you_mean
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step
from torchslim.pipeline.steps._options import check_calibration_batches, library_config
from torchslim.pipeline.steps.train import unchanged_structure
from torchslim.quantize.adaround import AdaRoundConfig
from torchslim.quantize.awq import AWQConfig
from torchslim.quantize.gptq import GPTQConfig

BIAS_LAYERS = ("all", "depthwise")


def median_ratio(report: dict[str, dict[str, float]], key: str, reference: str) -> float | None:
    """The median over layers of ``key / reference`` (e.g. GPTQ's error over nearest's)."""
    ratios = sorted(v[key] / max(v[reference], 1e-30) for v in report.values() if reference in v)
    return round(ratios[len(ratios) // 2], 4) if ratios else None


def _require_quantized(model: nn.Module, step: str, layers: dict[str, Any], what: str) -> None:
    """Refuse before any work when the model has no layer the step can change."""
    if not layers:
        raise ConfigError(
            f"{step} found no {what} in the model: put a quantize stage with such a weight "
            "format (e.g. weight: int4-g64, or scheme: w8a8) before it"
        )


@dataclass(frozen=True)
class GPTQOptions(GPTQConfig):
    """GPTQ on the fake-quant Linears of an earlier quantize stage: ``damp``, ``block_size``,
    ``mode`` (auto|sequential|one-pass), ``act_order``, ``attention_aware``,
    ``calibration_batches``."""

    calibration_batches: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_calibration_batches(self.calibration_batches)


def run_gptq(model: nn.Module, options: GPTQOptions, context: StepContext) -> StepResult:
    from torchslim.quantize.gptq import gptq_, gptq_layers

    _require_quantized(model, "gptq", gptq_layers(model), "fake-quant Linear with an int weight")
    batches = context.entry.calibration_batches(options.calibration_batches)
    report = gptq_(model, batches, library_config(options, GPTQConfig))
    return StepResult({"layers_gptq": len(report),
                       "loss_ratio_vs_rtn_median": median_ratio(report, "loss_gptq",
                                                                "loss_nearest")})  # fmt: skip


@dataclass(frozen=True)
class AWQOptions(AWQConfig):
    """AWQ scales of LLaMA-style decoder blocks: ``grid_points``, ``search_tokens``, ``seed``,
    ``scale_o_proj``, ``clip``, ``clip_tokens``, ``calibration_batches``."""

    calibration_batches: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_calibration_batches(self.calibration_batches)


def run_awq(model: nn.Module, options: AWQOptions, context: StepContext) -> StepResult:
    from torchslim.quantize.awq import awq_
    from torchslim.quantize.gptq import gptq_layers

    _require_quantized(model, "awq", gptq_layers(model), "fake-quant Linear with an int weight")
    batches = context.entry.calibration_batches(options.calibration_batches)
    report = awq_(model, batches, library_config(options, AWQConfig))
    return StepResult({"groups_awq": len(report),
                       "loss_ratio_vs_rtn_median": median_ratio(report, "loss_awq",
                                                                "loss_nearest")})  # fmt: skip


@dataclass(frozen=True)
class AdaRoundOptions(AdaRoundConfig):
    """AdaRound of every int-weight fake-quant layer: ``iterations`` (Adam steps per layer),
    ``batch_size``, ``lr``, ``reg_weight``, ``warmup``, ``beta_start``, ``beta_end``,
    ``max_samples``, ``seed``, ``calibration_batches``."""

    calibration_batches: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        check_calibration_batches(self.calibration_batches)


def run_adaround(model: nn.Module, options: AdaRoundOptions, context: StepContext) -> StepResult:
    from torchslim.quantize.adaround import adaround_
    from torchslim.quantize.modules import quant_modules

    layers = {n: m for n, m in quant_modules(model).items() if m.weight_quantizer.fmt.kind == "int"}
    _require_quantized(model, "adaround", layers, "fake-quant layer with an int weight")
    batches = context.entry.calibration_batches(options.calibration_batches)
    report = adaround_(model, batches, library_config(options, AdaRoundConfig))
    changed = [v["changed_fraction"] for v in report.values()]
    return StepResult({
        "layers_adaround": len(report),
        "mse_ratio_vs_nearest_median": median_ratio(report, "mse_adaround", "mse_nearest"),
        "changed_fraction_mean": round(sum(changed) / len(changed), 4) if changed else 0.0,
    })  # fmt: skip


@dataclass(frozen=True)
class BiasCorrectionOptions:
    """Empirical bias correction: ``guarded`` keeps a layer's correction only where the model's
    output gets closer to fp32; ``layers`` all | depthwise (the depthwise convs only);
    ``calibration_batches``."""

    guarded: bool = True
    layers: str = "all"
    calibration_batches: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.guarded, bool):
            raise ConfigError(f"guarded must be true or false, got {self.guarded!r}")
        if self.layers not in BIAS_LAYERS:
            hint = did_you_mean(str(self.layers), BIAS_LAYERS)
            raise ConfigError(f"layers {self.layers!r}; allowed: {', '.join(BIAS_LAYERS)}.{hint}")
        check_calibration_batches(self.calibration_batches)


def run_bias_correction(
    model: nn.Module, options: BiasCorrectionOptions, context: StepContext
) -> StepResult:
    from torchslim.quantize import bias_correction as bc
    from torchslim.quantize.modules import quant_modules

    layers = quant_modules(model)
    names = bc.depthwise_layers(model) if options.layers == "depthwise" else list(layers)
    what = "depthwise conv" if options.layers == "depthwise" else "layer"
    _require_quantized(model, "bias_correction", dict.fromkeys(names), f"fake-quant {what}")
    biasless = [name for name in names if layers[name].bias is None]
    batches = context.entry.calibration_batches(options.calibration_batches)
    if options.guarded:
        corrections = bc.correct_bias_guarded_(model, batches, names)
    elif options.layers == "depthwise":
        corrections = bc.correct_bias_one_pass_(model, batches, names)
    else:
        corrections = bc.correct_bias_(model, batches)
    added = [name for name in biasless if layers[name].bias is not None]
    summary = {"layers_considered": len(corrections),
               "layers_corrected": sum(1 for v in corrections.values() if v > 0),
               "largest_correction": max(corrections.values(), default=0.0)}  # fmt: skip
    return StepResult(summary, {"biases_added": added})


def restore_biases(
    model: nn.Module, options: BiasCorrectionOptions, record: dict[str, Any], context: StepContext
) -> None:
    """Give the layers that had no bias before the correction a (zero) bias to load into."""
    for name in record.get("biases_added", []):
        layer = model.get_submodule(name)
        assert isinstance(layer, nn.Conv2d | nn.Linear), f"{name}: not a Conv2d or Linear"
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))


for _step in (
    Step("gptq", GPTQOptions, run_gptq, "GPTQ weight codes (after quantize)",
         restore=unchanged_structure, needs_quantized=True),
    Step("awq", AWQOptions, run_awq, "AWQ activation-aware scales (after quantize)",
         restore=unchanged_structure, needs_quantized=True),
    Step("adaround", AdaRoundOptions, run_adaround, "learned rounding (after quantize)",
         restore=unchanged_structure, needs_quantized=True),
    Step("bias_correction", BiasCorrectionOptions, run_bias_correction,
         "mean output error into the biases (after quantize)", restore=restore_biases,
         needs_quantized=True),
):  # fmt: skip
    register_step(_step)
