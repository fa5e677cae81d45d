"""``torchslim prune``: prune a model, optionally fine-tune, measure before/after, write it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def prune_command(
    model: Annotated[str, typer.Argument(help="Zoo name, package.module:factory, HF dir or .pt2.")],
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
        str, typer.Option(help="Unstructured: global (one threshold) | layer (same per layer).")
    ] = "global",
    finetune_epochs: Annotated[int, typer.Option(min=0, help="0 = no fine-tuning.")] = 0,
    finetune_samples: Annotated[
        int | None, typer.Option(min=1, help="Training images used (default: all).")
    ] = None,
    finetune_lr: Annotated[float, typer.Option(min=0.0)] = 0.02,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads for timing.")] = None,
    repeats: Annotated[int, typer.Option(min=3)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a torchslim artifact already at --out.")
    ] = False,
) -> None:
    """Prune MODEL (structured channels/heads/neurons, unstructured or N:M) and prove the result."""
    from torchslim._compress import measure_before_after, write_model_artifact
    from torchslim._outdir import check_out
    from torchslim.cli import console, print_outcome, resolve_model
    from torchslim.prune.apply import config_from_words, prune_zoo_model
    from torchslim.prune.finetune import FinetuneConfig

    check_out(out, overwrite)  # before any work: never a user's folder, never after minutes
    entry = resolve_model(model)
    config = config_from_words(method, target, tuple(ignore or ()), scope)
    finetune = (
        FinetuneConfig(epochs=finetune_epochs, samples=finetune_samples, lr=finetune_lr)
        if finetune_epochs
        else None
    )
    before, after, result, details = prune_zoo_model(entry, config, finetune)
    technique = f"prune {method} {target}" + (f" + {finetune_epochs} epoch(s)" if finetune else "")
    options = {"threads": threads, "repeats": repeats, "details": details}
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
        if details["plan"]:
            console.print(details["plan"], highlight=False)
