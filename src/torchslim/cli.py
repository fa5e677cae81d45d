"""The ``torchslim`` command line: parses, calls the Python API, renders with rich."""

from __future__ import annotations

import json
import sys
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
# Piped output (CI logs, files) gets room for the wide per-op tables instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)


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
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        augment=augment,
        amp=amp,
        checkpoint_every_steps=checkpoint_every,
        seed=seed,
    )
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
    """The main job on the default model: evaluate it and profile what it costs."""
    from torchslim.evaluate import evaluate as run_evaluation
    from torchslim.profile.analysis import analyze, op_table, summary_table

    entry = resolve_model(model)
    console.print(f"[bold]{entry.name}[/]: {entry.card}")
    loaded = entry.load()
    console.print(run_evaluation(loaded, entry, batch_size).to_table())
    with console.status("calibrating the latency model on this machine (cached after once)"):
        analysis = analyze(loaded, tuple(entry.example_inputs(batch_size)), entry.name)
    console.print(summary_table([analysis]))
    console.print(op_table(analysis))


@app.command()
def hw(
    refresh: Annotated[
        bool, typer.Option(help="Measure again instead of using the cache.")
    ] = False,
    threads: Annotated[int | None, typer.Option(min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """This machine: CPU, ISA features, measured matmul peaks per dtype, memory bandwidth."""
    from torchslim.profile.hardware import this_machine

    spec = this_machine(refresh=refresh, threads=threads)
    if as_json:
        _print_json(spec.to_dict())
        return
    table = Table("measure", "value", title=f"torchslim hw: {spec.name}")
    features = spec.details.get("cpu_features", {})
    for label, present in (("present", True), ("absent", False)):
        names = [name for name, has in features.items() if has == present]
        table.add_row(f"ISA features {label}", ", ".join(names) or "none")
    for dtype, peak in spec.peak_flops_per_s.items():
        table.add_row(f"matmul peak {dtype}", f"{peak / 1e9:,.1f} GFLOP/s")
    table.add_row("memory bandwidth", f"{spec.mem_bw_bytes_per_s / 1e9:,.1f} GB/s")
    table.add_row("ridge point fp32", f"{spec.ridge_point():.1f} FLOP/B")
    table.add_row("source", spec.source)
    console.print(table)


def _profile_inputs(
    entry: Any, batch_size: int, seq_len: int | None, meta: bool
) -> tuple[Any, ...]:
    make = entry.meta_inputs if meta else entry.example_inputs  # meta: shapes, no data to read
    if seq_len is None:
        return tuple(make(batch_size))
    try:
        return tuple(make(batch_size, seq_len=seq_len))
    except TypeError:
        raise typer.BadParameter(
            f"{entry.name} takes no --seq-len (it is not a text model)"
        ) from None


def _cast(model: Any, inputs: tuple[Any, ...], dtype: str | None) -> tuple[Any, tuple[Any, ...]]:
    import torch

    if dtype is None:
        return model, inputs
    target = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        dtype
    )
    if target is None:
        raise typer.BadParameter(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
    cast = tuple(
        t.to(target) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs
    )
    return model.to(target), cast


@app.command("profile")
def profile_command(
    model: Annotated[str, typer.Argument(help="Zoo name, package.module:factory, HF dir or .pt2.")],
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    seq_len: Annotated[int | None, typer.Option(min=1, help="Text models: tokens.")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16")] = None,
    hardware: Annotated[str | None, typer.Option(help="Spec name or YAML (default: here).")] = None,
    meta: Annotated[
        bool, typer.Option(help="Count on meta tensors: no memory, no timing.")
    ] = False,
    compare: Annotated[str | None, typer.Option(help="A second model, side by side.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a roofline plot (PNG).")] = None,
    threads: Annotated[int | None, typer.Option(min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    weights: Annotated[Path | None, typer.Option(help=".safetensors or .pt state dict.")] = None,
    input_shape: Annotated[str | None, typer.Option(help="For factories: 1,3,32,32.")] = None,
) -> None:
    """MACs, FLOPs, bytes, intensity, peak memory, roofline and latency (predicted vs measured)."""
    from torchslim.evaluate.latency import fixed_threads
    from torchslim.profile.analysis import analyze, module_table, op_table, summary_table
    from torchslim.profile.hardware import load_spec
    from torchslim.profile.roofline import plot_roofline

    spec = load_spec(hardware) if hardware else None
    analyses = []
    for index, spec_name in enumerate([model, compare] if compare else [model]):
        entry = resolve_model(spec_name, weights if index == 0 else None, input_shape)
        inputs = _profile_inputs(entry, batch_size, seq_len, meta)
        loaded = entry.meta_model() if meta else entry.load()
        loaded, inputs = _cast(loaded, inputs, dtype)
        with fixed_threads(threads):
            analyses.append(analyze(loaded, inputs, entry.name, spec, not meta, threads))
    if plot:
        plot_roofline(analyses[0].rows, analyses[0].hardware, plot)
    if as_json:
        payload = [a.to_dict() for a in analyses]
        _print_json(payload[0] if len(payload) == 1 else payload)
        return
    console.print(summary_table(analyses))
    for analysis in analyses:
        console.print(op_table(analysis))
    if not compare:
        console.print(module_table(analyses[0].report))
    if plot:
        console.print(f"roofline plot: {plot}")


def print_outcome(outcome: Any, as_json: bool) -> None:
    """Render a ``CompressionOutcome``: the JSON contract, or a before/after table."""
    if as_json:
        _print_json(outcome.to_dict())
        return
    console.print(outcome.to_table())
    for key in ("execution", "note"):
        if key in outcome.details:
            console.print(f"{key}: {outcome.details[key]}", highlight=False)
    console.print(f"artifact: {outcome.artifact}")


# Technique commands live next to their technique (``<technique>/command.py``) and register here.
# --- technique commands (one line each) ---
app.command("prune")(__import__("torchslim.prune.command", fromlist=["x"]).prune_command)
app.command("distill")(__import__("torchslim.distill.command", fromlist=["x"]).distill_command)
app.command("quantize")(__import__("torchslim.quantize.command", fromlist=["x"]).quantize_command)
# --- end technique commands ---


def main() -> None:
    """Entry point: a TorchslimError becomes one red line and exit code 2, not a traceback."""
    try:
        app()
    except TorchslimError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(2) from None
