"""The ``prune`` step: structured (channels, heads, neurons), unstructured or N:M pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step


@dataclass(frozen=True)
class PruneOptions:
    """``method``: l1 | l2 | bn | taylor (structured), magnitude | wanda (unstructured), nm;
    ``target``: macs=R | flops=R | params=R | latency=R | ratio=R | sparsity=S | N:M;
    ``ignore``: names or ``re:`` patterns left whole; ``scope``: global | layer (sparsity targets
    only); ``depth``: off | auto (also drop whole residual blocks, chosen by predicted latency
    saved per output damage) | measured (the fastest of several depth/width plans, timed);
    ``drop_layers``: layer indices removed from every layer stack of a
    transformers model before its widths are pruned; ``round_to``: kept widths are multiples of
    it (structured), or ``block``: of this CPU's conv channel block (16 with AVX-512; what its
    fp32 and int8 conv kernels pad widths to); ``latency_batch_sizes``: batch sizes latency is
    scored at (depth auto/measured or a latency target; default 1 and 16)."""

    method: str = "l2"
    target: str = "macs=0.5"
    ignore: tuple[str, ...] = ()
    scope: str | None = None
    depth: str = "off"
    drop_layers: tuple[int, ...] = ()
    round_to: int | str | None = None
    latency_batch_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.config()  # every value checked when the recipe is read

    def config(self) -> Any:
        from torchslim.prune.apply import config_from_words

        sizes = self.latency_batch_sizes
        return config_from_words(
            self.method,
            self.target,
            tuple(self.ignore),
            self.scope,
            depth=self.depth,
            drop_layers=tuple(self.drop_layers),
            round_to=self.round_to,
            latency_batch_sizes=None if sizes is None else tuple(sizes),
        )


def run_prune(model: nn.Module, options: PruneOptions, context: StepContext) -> StepResult:
    from torchslim._hf_directory import config_changes, config_values
    from torchslim.profile import profile
    from torchslim.prune.apply import prune_for_entry_

    config_before = config_values(model)
    result, details = prune_for_entry_(model, context.entry, options.config())
    inputs = tuple(context.entry.example_inputs(1))
    details["macs_after"] = profile(model, inputs, measure_memory=False).total.macs
    # the transformers config's new widths: a rebuilt model writes the same config.json
    config = config_changes(config_before, model)
    return StepResult(details, {"pruned_shapes": result.record, "config": config})


def restore_prune(
    model: nn.Module, options: PruneOptions, record: dict[str, Any], context: StepContext
) -> nn.Module:
    from torchslim._hf_directory import apply_config_changes
    from torchslim.prune.artifact import resize_to_record

    if options.drop_layers:  # the shapes were recorded on the shallower model
        from torchslim.distill.student import drop_layers

        model = drop_layers(model, list(options.drop_layers))[0]
    model = resize_to_record(model, record.get("pruned_shapes", {}))
    apply_config_changes(model, record.get("config", {}))
    return model


register_step(
    Step(
        "prune",
        PruneOptions,
        run_prune,
        "structured, unstructured or N:M pruning",
        restore=restore_prune,
    )
)
