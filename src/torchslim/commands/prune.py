"""``torchslim prune``: prune a model, optionally fine-tune, measure before/after, write it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from torchslim._cli_options import (
    DataOption,
    DeviceOption,
    InputDtypeOption,
    InputShapeOption,
    ModelArgument,
    SeqLenOption,
    ThreadsOption,
    VocabSizeOption,
    WeightsOption,
    model_options,
)


def prune_command(
    model: ModelArgument,
    out: Annotated[Path, typer.Option(help="Artifact directory (model.safetensors + manifest).")],
    method: Annotated[
        str, typer.Option(help="l1 | l2 | bn | taylor | magnitude | nm | wanda | sparsegpt")
    ] = "l2",
    target: Annotated[
        str,
        typer.Option(
            help="macs=0.5 | flops=0.5 | params=0.5 | latency=0.5 | ratio=0.3 | sparsity=0.9 | 2:4"
        ),
    ] = "macs=0.5",
    depth: Annotated[
        str,
        typer.Option(
            help="off | auto: also drop whole residual blocks where they save more predicted "
            "latency per output damage than thinner layers | measured: time several "
            "depth/width plans on this machine, keep the fastest (structured targets)."
        ),
    ] = "off",
    drop_layers: Annotated[
        str | None,
        typer.Option(
            help="Transformers: layers removed from every layer stack before the widths are "
            "pruned, e.g. 1,3 or 2-4 (structured targets)."
        ),
    ] = None,
    round_to: Annotated[
        str | None,
        typer.Option(
            help="Kept channel counts are multiples of this, or 'block': of this CPU's conv "
            "channel block (16 with AVX-512) (structured targets)."
        ),
    ] = None,
    latency_batch_sizes: Annotated[
        str | None,
        typer.Option(
            help="Batch sizes latency is scored at, e.g. 1,16 (the default) "
            "(--depth auto|measured or --target latency=R)."
        ),
    ] = None,
    ignore: Annotated[
        list[str] | None, typer.Option(help="Module name or re:<regex> to leave whole.")
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(help="Unstructured: global (one threshold; default) | layer."),
    ] = None,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="0 = no fine-tuning.")] = 0,
    finetune_samples: Annotated[
        int | None, typer.Option(min=1, help="Training images used (default: all).")
    ] = None,
    finetune_lr: Annotated[float, typer.Option(min=0.0)] = 0.02,
    threads: ThreadsOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size of the latency.")] = 1,
    repeats: Annotated[int, typer.Option(min=3, help="Timed forward passes per side.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: DeviceOption = "cpu",
    weights: WeightsOption = None,
    input_shape: InputShapeOption = None,
    input_dtype: InputDtypeOption = None,
    vocab_size: VocabSizeOption = None,
    seq_len: SeqLenOption = None,
    data: DataOption = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a torchslim artifact already at --out.")
    ] = False,
) -> None:
    """Prune MODEL (structured channels/heads/neurons, unstructured or N:M) and prove the result.

    Example: torchslim prune fashion-resnet20 --method l2 --target macs=0.5 --out r20-pruned
    Faster at the same MACs: ... --target macs=0.5 --depth measured (drops residual blocks too)
    """
    from torchslim._devices import check_device
    from torchslim._outdir import check_out
    from torchslim.commands._render import console, note_synthetic_data, print_outcome
    from torchslim.errors import ConfigError
    from torchslim.pipeline.recipe import Recipe, Stage
    from torchslim.pipeline.runner import RunOptions, compress
    from torchslim.pipeline.steps.prune import PruneOptions
    from torchslim.pipeline.steps.train import FinetuneOptions
    from torchslim.zoo.options import require_layers, resolve_model

    check_out(out, overwrite)  # before any work: never a user's folder, never after minutes
    check_device(device)
    from torchslim.distill.student import parse_indices

    dropped = tuple(parse_indices(drop_layers)) if drop_layers is not None else ()
    if drop_layers is not None and not dropped:
        raise ConfigError(f"--drop-layers {drop_layers!r} names no layer: give e.g. 1,3")
    sizes = None if latency_batch_sizes is None else _batch_sizes(latency_batch_sizes)
    rounding = (
        int(round_to) if round_to is not None and round_to.lstrip("-").isdigit() else round_to
    )
    pruning = PruneOptions(method, target, tuple(ignore or ()), scope, depth, dropped, rounding,
                           sizes)  # fmt: skip
    stages = [Stage("prune", pruning)]
    if finetune_epochs:
        tuning = FinetuneOptions(epochs=finetune_epochs, lr=finetune_lr, samples=finetune_samples)
        stages.append(Stage("finetune", tuning))
    elif finetune_samples is not None:
        raise ConfigError("--finetune-samples needs --finetune-epochs N (N >= 1)")
    options_ = model_options(weights, input_shape, input_dtype, vocab_size, seq_len, data)
    entry = resolve_model(model, options_)
    require_layers(entry, "prune")
    note_synthetic_data(entry)
    technique = (
        f"prune {method} {target}"
        + (f" depth {depth}" if depth != "off" else "")
        + (f" + {finetune_epochs} epoch(s)" if finetune_epochs else "")
    )
    run = RunOptions(
        device, threads, repeats, batch_size, measure_stages=False, technique=technique
    )
    outcome = compress(entry, Recipe(tuple(stages)), out, run)
    details = {**outcome.details["stages"][0]["summary"], **outcome.details}
    if finetune_epochs:
        details["finetune"] = outcome.details["stages"][1]["summary"]
    outcome = dataclasses.replace(outcome, details=details)
    print_outcome(outcome, as_json)
    if not as_json:
        macs_before, macs_after = details["macs_before"], details["macs_after"]
        console.print(
            f"MACs {macs_before:,} -> {macs_after:,} ({macs_after / max(macs_before, 1):.3f}x)"
            + (f"; {details['macs_note']}" if details["macs_note"] else "")
        )
        if details["sparsity"] is not None:
            console.print(f"sparsity reached: {details['sparsity']:.1%} of the pruned weights")
        if details["plan"]:
            console.print(details["plan"], highlight=False)


def _batch_sizes(text: str) -> tuple[int, ...]:
    """``--latency-batch-sizes 1,16`` as (1, 16); anything else is one clear error."""
    from torchslim.errors import ConfigError

    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--latency-batch-sizes must be batch sizes separated by commas, e.g. 1,16; got "
            f"{text!r}"
        ) from None
    return sizes
