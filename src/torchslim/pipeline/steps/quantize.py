"""The ``quantize`` step: fake-quant layers (any format) calibrated on the entry's data.

For real INT8/bf16 execution end the recipe with ``deploy`` instead: it quantizes for its runtime
itself. ``method`` gptq/awq sets weight codes from calibration data (int weights, activations
left in float or quantized at run time, e.g. per token; arXiv 2210.17323, 2306.00978).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.errors import ConfigError, did_you_mean
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step

METHODS = ("rtn", "gptq", "awq", "awq_gptq")


@dataclass(frozen=True)
class QuantizeOptions:
    """``scheme`` (w8a8, w4-weight, ...: see ``torchslim quantize --help``) or ``weight`` /
    ``activation`` formats (``int8-token``: per token at run time); ``dynamic`` (activation
    ranges from each input at run time; default: the scheme's, else static; per-token formats
    are always dynamic); ``observer`` (auto|minmax|...), ``ignore`` (names, ``re:``),
    ``calibration_batches``, ``method`` (rtn|gptq|awq|awq_gptq), ``act_order`` (GPTQ: columns by
    decreasing Hessian diagonal, static groups)."""

    scheme: str | None = None
    weight: str | None = None
    activation: str | None = None
    observer: str = "auto"
    ignore: tuple[str, ...] = ()
    calibration_batches: int = 16
    method: str = "rtn"
    act_order: bool = False
    dynamic: bool | None = None  # last: callers (the qat step) pass the fields above by position

    def __post_init__(self) -> None:
        if self.act_order and "gptq" not in self.method:
            raise ConfigError(f"act_order is a GPTQ option; method {self.method!r} does not use it")
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches must be >= 1, got {self.calibration_batches}")
        if self.method not in METHODS:
            raise ConfigError(
                f"method {self.method!r}; allowed: {', '.join(METHODS)}."
                f"{did_you_mean(self.method, METHODS)}"
            )
        if self.dynamic is not None and not isinstance(self.dynamic, bool):
            raise ConfigError(f"dynamic={self.dynamic!r}; allowed: true, false (or leave it out)")
        config = self.config()
        inputs = config.activation_format("")
        if self.dynamic is False and inputs is not None and inputs.granularity == "token":
            raise ConfigError(
                f"dynamic: false with activation {config.activation!r}: a per-token format takes "
                "each token's scale from the input at run time; drop dynamic or use a per-tensor "
                "format (e.g. int8) for static ranges"
            )
        from torchslim.quantize.config import weight_method_problem

        problem = None if self.method == "rtn" else weight_method_problem(config, self.method)
        if problem is not None:
            raise ConfigError(f"method {self.method}: {problem}")

    def config(self) -> Any:
        from torchslim.quantize.config import QuantConfig
        from torchslim.quantize.schemes import get_scheme

        if self.scheme is not None:
            base = get_scheme(self.scheme).config
            if base is None:
                raise ConfigError(
                    f"scheme {self.scheme!r} is a cast, not a fake-quant format: use the deploy "
                    "step with precision bf16"
                )
        elif self.weight is None:
            raise ConfigError("give scheme (e.g. w8a8) or weight (e.g. int8, int4-g128)")
        else:
            base = QuantConfig(weight=self.weight)
        changes: dict[str, Any] = {"observer": self.observer, "ignore": tuple(self.ignore)}
        if self.observer != "auto":  # escalation is part of "auto": a fixed observer keeps
            changes["escalate"] = False  # the scheme's formats as requested (QuantConfig)
        if self.weight is not None:
            changes["weight"] = self.weight
        if self.activation is not None:
            changes["activation"] = self.activation
        if self.dynamic is not None:
            changes["dynamic"] = self.dynamic
        return dataclasses.replace(base, **changes)


def run_quantize(model: nn.Module, options: QuantizeOptions, context: StepContext) -> StepResult:
    from torchslim.prune.unstructured import fold_masks_
    from torchslim.quantize import quantize_
    from torchslim.quantize.awq import awq_
    from torchslim.quantize.gptq import GPTQConfig, gptq_

    config = options.config()  # gptq/awq with static activations refused by QuantizeOptions
    batches = context.entry.calibration_batches(options.calibration_batches)
    folded = fold_masks_(model)  # pruned zeros are now plain weights; quantization keeps them
    result = quantize_(model, config, calibration=batches)
    summary: dict[str, Any] = {"quantize": result.to_dict(), "method": options.method,
                               "masks_folded": folded}  # fmt: skip
    if options.method.startswith("awq"):
        summary["layers_awq"] = len(awq_(model, batches))
    if options.method.endswith("gptq"):
        config = GPTQConfig(act_order=options.act_order)
        summary["layers_gptq"] = len(gptq_(model, batches, config))
    return StepResult(summary)


register_step(
    Step(
        "quantize",
        QuantizeOptions,
        run_quantize,
        "fake-quant layers, any format",
        quantizes=True,
    )
)
