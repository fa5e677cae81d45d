"""The ``torchslim`` command line: parses, calls the Python API, renders with rich."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import torchslim
from torchslim.errors import TorchslimError

app = typer.Typer(help="Measure, compress and prove neural networks.", no_args_is_help=True)
zoo_app = typer.Typer(help="The zoo of real models.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
console = Console()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"torchslim {torchslim.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """torchslim: measure what a network costs, compress it, prove the result."""


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2))


@zoo_app.command("list")
def zoo_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the zoo's models, their tasks and metrics."""
    from torchslim import zoo

    rows = [zoo.get(name).to_row() for name in zoo.names()]
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "task", "metrics", title="torchslim zoo")
    for row in rows:
        table.add_row(row["name"], row["task"], row["metrics"])
    console.print(table)


@app.command()
def fetch(force: Annotated[bool, typer.Option(help="Download again.")] = False) -> None:
    """Download the Debian data packages and unpack the files torchslim uses."""
    from torchslim.zoo._assets import fetch_debian_files, home

    written = fetch_debian_files(force=force)
    console.print(f"{len(written)} file(s) written to {home()}" if written else "all data present")


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="Zoo architecture, e.g. fashion-resnet20.")],
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, model, manifest).")],
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    augment: bool = True,
    amp: Annotated[str, typer.Option(help="auto | bf16 | off")] = "auto",
    checkpoint_every: int = 200,
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    device: str = "cpu",
) -> None:
    """Train a zoo architecture (seeded, resumable, checkpointed atomically)."""
    from torchslim.train import TrainConfig
    from torchslim.train.run import train_zoo_model

    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        label_smoothing=label_smoothing, augment=augment, amp=amp,
        checkpoint_every_steps=checkpoint_every, seed=seed,
    )  # fmt: skip
    manifest = train_zoo_model(model, config, out, resume=resume, device=device)
    console.print(f"{model}: {manifest['metrics']} -> {out / 'model.safetensors'}")


def main() -> None:
    """Entry point: a TorchslimError becomes one red line and exit code 2, not a traceback."""
    try:
        app()
    except TorchslimError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(2) from None
