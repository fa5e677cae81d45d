"""The ``mixed_precision`` step: a weight format per layer under a size budget.

Each layer is quantized alone to each of ``formats`` and its output SQNR measured on calibration
data (``analyze_sensitivity``); a greedy search narrows the layers that cost the least output
noise per byte saved until the packed weights plus the float rest fit the budget
(``plan_for_budget``); the plan is then applied as one ``quantize_`` with per-layer formats.
The budget is ``size_budget_bytes``, or ``size_budget_ratio`` of the model's float32 size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step
from torchslim.pipeline.steps._options import check_calibration_batches


@dataclass(frozen=True)
class MixedPrecisionOptions:
    """``formats``: candidate weight formats (e.g. int8, int4); ``size_budget_ratio`` (of the
    float32 size, in (0, 1]) or ``size_budget_bytes``, exactly one; ``activation`` format (None:
    weight-only), ``observer``, ``ignore`` (names, ``re:``), ``calibration_batches``."""

    formats: tuple[str, ...] = ("int8", "int4")
    size_budget_ratio: float | None = None
    size_budget_bytes: int | None = None
    activation: str | None = None
    observer: str = "minmax"
    ignore: tuple[str, ...] = ()
    calibration_batches: int = 4

    def __post_init__(self) -> None:
        check_calibration_batches(self.calibration_batches)
        if len(self.formats) < 2:
            raise ConfigError(
                f"formats {list(self.formats)}: give at least two weight formats to choose "
                "between (e.g. [int8, int4])"
            )
        if (self.size_budget_ratio is None) == (self.size_budget_bytes is None):
            raise ConfigError("give exactly one of size_budget_ratio and size_budget_bytes")
        ratio, size = self.size_budget_ratio, self.size_budget_bytes
        if ratio is not None and (isinstance(ratio, bool) or not 0 < ratio <= 1):
            raise ConfigError(f"size_budget_ratio must be in (0, 1], got {ratio!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(f"size_budget_bytes must be an integer >= 1, got {size!r}")
        for name in self.formats:
            self.base(name)

    def base(self, weight: str | None = None) -> Any:
        """The ``QuantConfig`` every trial and the plan share (its weight format is replaced)."""
        from torchslim.quantize.config import QuantConfig

        return QuantConfig(
            weight=weight or self.formats[0], activation=self.activation, observer=self.observer,
            ignore=tuple(self.ignore), escalate=False,
        )  # fmt: skip


def budget_bytes(model: nn.Module, options: MixedPrecisionOptions) -> int:
    """The budget in bytes: given, or the ratio of the model's float32 parameter bytes."""
    if options.size_budget_bytes is not None:
        return options.size_budget_bytes
    assert options.size_budget_ratio is not None
    return int(options.size_budget_ratio * 4 * sum(p.numel() for p in model.parameters()))


def run_mixed_precision(
    model: nn.Module, options: MixedPrecisionOptions, context: StepContext
) -> StepResult:
    from torchslim.prune.unstructured import fold_masks_
    from torchslim.quantize import quantize_
    from torchslim.quantize.mixed_precision import plan_for_budget
    from torchslim.quantize.sensitivity import analyze_sensitivity

    budget = budget_bytes(model, options)
    batches = context.entry.calibration_batches(options.calibration_batches)
    folded = fold_masks_(model)  # pruned zeros become plain weights, as in the quantize step
    report = analyze_sensitivity(model, options.formats, batches, base=options.base())
    plan = plan_for_budget(report, budget)  # ConfigError when even the narrowest is too big
    result = quantize_(model, plan.to_config(options.base()), calibration=batches)
    summary = {
        "size_budget_bytes": budget,
        "planned_size_bytes": plan.size_bytes,
        "predicted_noise": plan.predicted_noise,
        "layers_per_format": dict(Counter(plan.formats.values())),
        "formats": plan.formats,
        "quantize": result.to_dict(),
        "masks_folded": folded,
    }
    return StepResult(summary)


register_step(
    Step(
        "mixed_precision",
        MixedPrecisionOptions,
        run_mixed_precision,
        "a weight format per layer under a size budget",
        quantizes=True,
    )
)
