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


DEFAULT_MODEL = "fashion-resnet20"


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part)
    except ValueError:
        raise typer.BadParameter(f"--input-shape {text!r}: expected e.g. 1,3,224,224") from None


def resolve_model(spec: str, weights: Path | None = None, input_shape: str | None = None) -> Any:
    """A zoo name, or a user model (`package.module:factory`, HF directory, `.pt2` file)."""
    from torchslim import zoo

    if spec in zoo.names() and weights is None:
        return zoo.get(spec)
    looks_like_user_model = ":" in spec or Path(spec).exists() or spec.endswith(".pt2")
    if not looks_like_user_model:
        return zoo.get(spec)  # raises UnknownModelError with a "did you mean"
    from torchslim.zoo.user import resolve

    return resolve(spec, str(weights) if weights else None, _parse_shape(input_shape))


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Zoo name, package.module:factory, HF dir or .pt2.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads for timing.")] = None,
    repeats: Annotated[int, typer.Option(min=3)] = 20,
    device: str = "cpu",
    weights: Annotated[Path | None, typer.Option(help=".safetensors or .pt state dict.")] = None,
    input_shape: Annotated[str | None, typer.Option(help="For factories: 1,3,32,32.")] = None,
) -> None:
    """Metric(s), parameters, size on disk, latency (median, p90) and peak memory of a model."""
    from torchslim.evaluate import evaluate as run_evaluation

    entry = resolve_model(model, weights, input_shape)
    report = run_evaluation(entry.load(), entry, batch_size, threads, device, repeats)
    if as_json:
        _print_json(report.to_dict())
    else:
        console.print(report.to_table())


@app.command()
def demo(
    model: Annotated[str, typer.Argument(help="Zoo model to run the main job on.")] = DEFAULT_MODEL,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """The main job on the default model: evaluate it and show what it costs."""
    from torch.utils.flop_counter import FlopCounterMode

    from torchslim.evaluate import evaluate as run_evaluation

    entry = resolve_model(model)
    console.print(f"[bold]{entry.name}[/]: {entry.card}")
    loaded = entry.load()
    report = run_evaluation(loaded, entry, batch_size)
    console.print(report.to_table())
    counter = FlopCounterMode(display=False)
    with counter:
        loaded(*entry.example_inputs(batch_size))
    table = Table("op", "MACs", "FLOPs (2 x MAC)", title=f"cost per forward (batch {batch_size})")
    for op, flops in sorted(counter.get_flop_counts()["Global"].items(), key=lambda kv: -kv[1]):
        table.add_row(str(op), f"{flops // 2:,}", f"{flops:,}")
    total = counter.get_total_flops()
    table.add_row("total", f"{total // 2:,}", f"{total:,}")
    console.print(table)


def main() -> None:
    """Entry point: a TorchslimError becomes one red line and exit code 2, not a traceback."""
    try:
        app()
    except TorchslimError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(2) from None
