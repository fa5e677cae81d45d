"""``torchslim prune``: prune a model, optionally fine-tune, measure before/after, write it."""

from __future__ import annotations

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
        str, typer.Option(help="l1 | l2 | bn | taylor | magnitude | nm | wanda")
    ] = "l2",
    target: Annotated[
        str, typer.Option(help="macs=0.5 | flops=0.5 | params=0.5 | ratio=0.3 | sparsity=0.9 | 2:4")
    ] = "macs=0.5",
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
    repeats: Annotated[int, typer.Option(min=3)] = 20,
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
    """
    from torchslim._compress import measure_before_after, write_model_artifact
    from torchslim._devices import check_device
    from torchslim._outdir import check_out
    from torchslim._progress import stage
    from torchslim.commands._render import console, note_synthetic_data, print_outcome
    from torchslim.prune.apply import config_from_words, prune_zoo_model
    from torchslim.prune.finetune import FinetuneConfig
    from torchslim.zoo.options import require_layers, resolve_model

    check_out(out, overwrite)  # before any work: never a user's folder, never after minutes
    check_device(device)
    config = config_from_words(method, target, tuple(ignore or ()), scope)
    options_ = model_options(weights, input_shape, input_dtype, vocab_size, seq_len, data)
    entry = resolve_model(model, options_)
    require_layers(entry, "prune")
    note_synthetic_data(entry)
    finetune = (
        FinetuneConfig(epochs=finetune_epochs, samples=finetune_samples, lr=finetune_lr)
        if finetune_epochs
        else None
    )
    with stage("pruning" + (" and fine-tuning" if finetune else "")):
        before, after, result, details = prune_zoo_model(entry, config, finetune)
    technique = f"prune {method} {target}" + (f" + {finetune_epochs} epoch(s)" if finetune else "")
    options = {"threads": threads, "repeats": repeats, "device": device, "details": details}
    options = {k: v for k, v in options.items() if v is not None}
    outcome = measure_before_after(entry, before, after, technique, out, options)
    manifest = {
        "model": entry.name,
        "technique": technique,
        "pruned_shapes": result.record,
        "outcome": outcome.to_dict(),
    }
    write_model_artifact(out, after, manifest)
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
