"""The ``torchslim`` command line: parses, calls the Python API, renders with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import torchslim
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
from torchslim._progress import stage
from torchslim.commands._render import _print_json, console, note_synthetic_data
from torchslim.commands.compress import compress_command, recipe_app
from torchslim.commands.distill import distill_command
from torchslim.commands.factorize import factorize_command
from torchslim.commands.generate import generate_command
from torchslim.commands.prune import prune_command
from torchslim.commands.quantize import quantize_command
from torchslim.commands.search import report_command
from torchslim.errors import TorchslimError

app = typer.Typer(help="Measure, compress and prove neural networks.", no_args_is_help=True)
zoo_app = typer.Typer(help="The zoo of real models.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


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


@zoo_app.command("list")
def zoo_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the zoo's models, their tasks and metrics.

    Example: torchslim zoo list --json
    """
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
    """Download the Debian data packages and unpack the files torchslim uses.

    Example: torchslim fetch
    """
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
    overwrite: Annotated[
        bool, typer.Option(help="Train afresh over a finished run at --out.")
    ] = False,
) -> None:
    """Train a zoo architecture (seeded, resumable, checkpointed atomically).

    Example: torchslim train fashion-cnn --epochs 2 --out runs/fashion-cnn
    """
    from torchslim._devices import check_device
    from torchslim._outdir import check_run_directory
    from torchslim.train import TrainConfig
    from torchslim.train.run import train_zoo_model

    check_run_directory(out, resume, overwrite)
    check_device(device)

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
DEMO_RECIPE = "cnn-prune-distill-int8"


def resolve_model(spec: str, options: Any = None) -> Any:
    """MODEL with its options checked (``torchslim.zoo.options.resolve_model``)."""
    from torchslim.zoo.options import resolve_model as resolve

    return resolve(spec, options)


@app.command()
def evaluate(
    model: ModelArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Default: the model's own (1, or a .pt2's static).")
    ] = None,
    threads: ThreadsOption = None,
    repeats: Annotated[int, typer.Option(min=3)] = 20,
    device: DeviceOption = "cpu",
    weights: WeightsOption = None,
    input_shape: InputShapeOption = None,
    input_dtype: InputDtypeOption = None,
    vocab_size: VocabSizeOption = None,
    seq_len: SeqLenOption = None,
    data: DataOption = None,
) -> None:
    """Metric(s), parameters, size on disk, latency (median, p90) and peak memory of a model.

    Example: torchslim evaluate mnist-cnn --json
    """
    from torchslim._devices import check_device
    from torchslim.evaluate import evaluate as run_evaluation
    from torchslim.zoo.options import load_for_run

    check_device(device)
    options = model_options(weights, input_shape, input_dtype, vocab_size, seq_len, data)
    entry = resolve_model(model, options)
    note_synthetic_data(entry)
    with stage(f"loading {entry.name}"):
        loaded = load_for_run(entry, threads, device)
    with stage("measuring metrics, latency and memory"):
        report = run_evaluation(loaded, entry, batch_size, threads, device, repeats)
    if as_json:
        _print_json(report.to_dict())
    else:
        console.print(report.to_table())


@app.command()
def demo(
    model: Annotated[str, typer.Argument(help="Zoo model to run the main job on.")] = DEFAULT_MODEL,
    recipe: Annotated[
        str, typer.Option(help="Built-in recipe name or YAML that compresses the model.")
    ] = DEMO_RECIPE,
    out: Annotated[
        Path | None, typer.Option(help="Keep the compressed artifact here (default: discarded).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a torchslim artifact already at --out.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """The main job on the default model: what it costs, then the built-in CNN recipe prunes,
    distills and deploys it as INT8, and the before/after table proves the result.

    Example: torchslim demo --out r20-small
    """
    import tempfile

    from torchslim._outdir import check_out
    from torchslim.commands._render import print_demo_outcome
    from torchslim.pipeline import load_recipe
    from torchslim.pipeline.runner import RunOptions, compress
    from torchslim.profile.analysis import analyze, summary_table

    if out is not None:
        check_out(out, overwrite)  # before any work: never a user's folder
    steps = load_recipe(recipe)
    entry = resolve_model(model)
    console.print(f"[bold]{entry.name}[/]: {entry.card}")
    loaded = entry.load()
    with stage("profiling (the latency model is calibrated once per machine, then cached)"):
        analysis = analyze(loaded, tuple(entry.example_inputs(batch_size)), entry.name)
    console.print(summary_table([analysis]))
    console.print(f"[bold]compressing[/] with recipe {recipe}: " + " -> ".join(
        stage_.step for stage_ in steps.stages), highlight=False)  # fmt: skip
    run = RunOptions(batch_size=batch_size, technique=f"compress {recipe}")
    with tempfile.TemporaryDirectory(prefix="torchslim-demo-") as scratch:
        target = out if out is not None else Path(scratch) / "artifact"
        outcome = compress(entry, steps, target, run)
        print_demo_outcome(outcome, analysis.report.total.macs, kept=out is not None)


@app.command()
def hw(
    refresh: Annotated[
        bool, typer.Option(help="Measure again instead of using the cache.")
    ] = False,
    threads: Annotated[int | None, typer.Option(min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """This machine: CPU, ISA features, measured matmul peaks per dtype, memory bandwidth.

    Example: torchslim hw --json
    """
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
    model: ModelArgument,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    seq_len: SeqLenOption = None,
    dtype: Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16")] = None,
    hardware: Annotated[str | None, typer.Option(help="Spec name or YAML (default: here).")] = None,
    meta: Annotated[
        bool, typer.Option(help="Count on meta tensors: no memory, no timing.")
    ] = False,
    compare: Annotated[str | None, typer.Option(help="A second model, side by side.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a roofline plot (PNG).")] = None,
    threads: ThreadsOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    weights: WeightsOption = None,
    input_shape: InputShapeOption = None,
    input_dtype: InputDtypeOption = None,
    vocab_size: VocabSizeOption = None,
    data: DataOption = None,
) -> None:
    """MACs, FLOPs, bytes, intensity, peak memory, roofline and latency (predicted vs measured).

    Example: torchslim profile fashion-resnet20 --batch-size 16
    """
    from torchslim.evaluate.latency import fixed_threads
    from torchslim.profile.analysis import analyze, module_table, op_table, summary_table
    from torchslim.profile.hardware import load_spec
    from torchslim.profile.roofline import plot_roofline

    spec = load_spec(hardware) if hardware else None
    options = model_options(weights, input_shape, input_dtype, vocab_size, seq_len, data)
    analyses = []
    for index, spec_name in enumerate([model, compare] if compare else [model]):
        # --weights belong to MODEL; the shape, dtype, length and data apply to both
        entry = resolve_model(spec_name, options if index == 0 else options.without_weights())
        make = entry.meta_inputs if meta else entry.example_inputs  # meta: shapes, no data read
        inputs = tuple(make(batch_size))
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


# Technique commands live in torchslim.commands (light modules: torch is imported when they run).
app.command("prune")(prune_command)
app.command("compress")(compress_command)
app.command("report")(report_command)
app.add_typer(recipe_app, name="recipe")
app.command("distill")(distill_command)
app.command("quantize")(quantize_command)
app.command("factorize")(factorize_command)
app.command("generate")(generate_command)


def main() -> None:
    """Entry point: a TorchslimError becomes one red line and exit code 2, not a traceback."""
    from torchslim._progress import enabled

    try:
        with enabled():
            app()
    except TorchslimError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(2) from None
    except SystemExit as stop:  # typer turns Ctrl-C into exit code 130, silently
        if stop.code == 130:
            Console(stderr=True).print(
                "interrupted; no half-written output was left behind", highlight=False
            )
        raise
