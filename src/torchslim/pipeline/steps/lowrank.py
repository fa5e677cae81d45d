"""The ``factorize`` step: low-rank factorization of Linear (SVD, whitened SVD) or Conv2d
(Tucker-2) layers, with slower factorizations left whole (arXiv 1404.0736, 2403.07378,
1511.06530)."""

from __future__ import annotations

from typing import Any

from torch import nn

from torchslim.lowrank.config import FactorizeConfig
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step


def run_factorize(model: nn.Module, options: FactorizeConfig, context: StepContext) -> StepResult:
    from torchslim.lowrank import factorize_

    calibration = None
    if options.method == "whitened" or options.allocation == "sensitivity":
        calibration = context.entry.calibration_batches(options.calibration_batches)
    inputs = tuple(context.entry.example_inputs(1))
    result = factorize_(model, options, calibration, inputs)
    return StepResult(result.summary(), {"factorized": result.record()})


def restore_factorize(
    model: nn.Module, options: FactorizeConfig, record: dict[str, Any], context: StepContext
) -> None:
    from torchslim.lowrank import build_factorized

    for name, decision in record.get("factorized", {}).items():
        model.set_submodule(name, build_factorized(model.get_submodule(name), decision))


register_step(
    Step(
        "factorize",
        FactorizeConfig,
        run_factorize,
        "low-rank factorization: SVD / whitened SVD (Linear), Tucker-2 (Conv2d)",
        restore=restore_factorize,
        before_quantize=True,
    )
)
