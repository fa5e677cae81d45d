"""``torchslim compress`` (run a recipe) and ``torchslim recipe validate|steps``."""

from __future__ import annotations

import contextlib
import sys
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
from torchslim.commands.search import (
    BudgetOption,
    LowrankOption,
    MaxDropOption,
    ObjectiveOption,
    RayOption,
    SearchFlags,
    SeedOption,
    TargetOption,
    TrialsOption,
    WorkersOption,
)

recipe_app = typer.Typer(help="Recipes: validate one, list the steps.", no_args_is_help=True)


def compress_command(
    model: ModelArgument,
    out: Annotated[Path, typer.Option(help="Artifact directory to write.")],
    recipe: Annotated[
        Path | None,
        typer.Option(help="Recipe YAML, or a built-in name (torchslim recipe list)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the last finished stage of an interrupted run.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a torchslim artifact already at --out.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size of the latency.")] = 1,
    repeats: Annotated[int, typer.Option(min=3, help="Timed forward passes per side.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    weights: WeightsOption = None,
    input_shape: InputShapeOption = None,
    input_dtype: InputDtypeOption = None,
    vocab_size: VocabSizeOption = None,
    seq_len: SeqLenOption = None,
    data: DataOption = None,
    max_drop: MaxDropOption = None,
    objective: ObjectiveOption = None,
    target: TargetOption = None,
    budget: BudgetOption = None,
    workers: WorkersOption = None,
    ray: RayOption = None,
    trials: TrialsOption = None,
    seed: SeedOption = None,
    lowrank: LowrankOption = False,
) -> None:
    """Run a recipe's stages on MODEL, measure before/after, write one artifact; or, with
    --max-drop, search recipes for the fastest (or smallest) model within that metric drop.

    Example: torchslim compress fashion-resnet20 --recipe cnn-prune-distill-int8 --out r20-small

    Example: torchslim compress fashion-resnet20 --max-drop 1.0 --budget 30m --out r20-search
    """
    from torchslim._devices import check_device
    from torchslim._outdir import check_out
    from torchslim.commands._render import note_synthetic_data, print_outcome
    from torchslim.commands.search import check_mode
    from torchslim.pipeline import load_recipe
    from torchslim.pipeline.runner import RunOptions, compress
    from torchslim.zoo.options import require_layers, resolve_model

    flags = SearchFlags(
        max_drop, objective, target, budget, workers, ray, trials, seed, lowrank or None
    )
    check_mode(recipe, flags, {"--batch-size": batch_size != 1})
    if recipe is None:
        _search(
            model,
            out,
            flags,
            (resume, overwrite, as_json, threads, repeats, device),
            model_options(weights, input_shape, input_dtype, vocab_size, seq_len, data),
        )
        return
    check_out(out, overwrite or resume)  # before any work: never a user's folder
    check_device(device)
    steps = load_recipe(recipe)  # the whole recipe is validated before the model loads
    options = model_options(weights, input_shape, input_dtype, vocab_size, seq_len, data)
    entry = resolve_model(model, options)
    require_layers(entry, "compress")
    note_synthetic_data(entry)
    run = RunOptions(device, threads, repeats, batch_size, resume, technique=f"compress {recipe}")
    # Backends (NNCF, ORT) print progress to stdout: with --json stdout carries only the JSON.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        outcome = compress(entry, steps, out, run)
    print_outcome(outcome, as_json)


def _search(model: str, out: Path, flags: SearchFlags, run: tuple, options: object) -> None:
    """Search mode: check --out and the settings before any work, then search."""
    from torchslim._devices import check_device
    from torchslim.commands._render import note_synthetic_data
    from torchslim.commands.search import run_search
    from torchslim.search.directory import check_search_directory, clear_search
    from torchslim.zoo.options import require_layers, resolve_model

    resume, overwrite, as_json, threads, repeats, device = run
    check_search_directory(out, resume, overwrite)
    check_device(device)
    config = flags.config(threads, repeats)
    entry = resolve_model(model, options)  # type: ignore[arg-type]
    require_layers(entry, "compress")
    note_synthetic_data(entry)
    if overwrite and not resume:
        clear_search(out)
    run_search(entry, out, config, (resume, device), as_json)


@recipe_app.command("validate")
def validate_command(recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")]) -> None:
    """Check a recipe completely (steps, options, values, order) without running it.

    Example: torchslim recipe validate recipes/cnn-prune-distill-int8.yaml
    """
    from torchslim.commands._render import console
    from torchslim.pipeline import load_recipe

    loaded = load_recipe(recipe)
    steps = " -> ".join(stage.step for stage in loaded.stages)
    console.print(f"{recipe}: valid, {len(loaded.stages)} stage(s): {steps}", highlight=False)


@recipe_app.command("list")
def list_command() -> None:
    """The built-in recipes, with their stages.

    Example: torchslim recipe list
    """
    from torchslim.commands._render import console
    from torchslim.pipeline import load_recipe
    from torchslim.pipeline.recipe import built_in_recipes

    for name in built_in_recipes():
        recipe = load_recipe(name)
        steps = " -> ".join(stage.step for stage in recipe.stages)
        console.print(f"[bold]{name}[/]: {steps}\n  {recipe.description}", highlight=False)


@recipe_app.command("steps")
def steps_command(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every registered step with its options and defaults.

    Example: torchslim recipe steps
    """
    from rich.table import Table

    from torchslim.commands._render import _print_json, console
    from torchslim.pipeline.registry import get_step, step_names

    steps = [get_step(name) for name in step_names()]
    if as_json:
        _print_json({s.name: {"doc": s.doc, "options": s.option_rows()} for s in steps})
        return
    table = Table("step", "option", "type", "default", title="torchslim recipe steps")
    for step in steps:
        table.add_row(f"[bold]{step.name}[/]", "", "", step.doc)
        for name, kind, default in step.option_rows():
            table.add_row("", name, kind, default)
    console.print(table)
