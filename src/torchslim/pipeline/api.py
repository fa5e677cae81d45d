"""``torchslim.compress``: the pipeline from Python, with the same recipe as the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchslim.pipeline.recipe import Recipe, load_recipe, parse_recipe

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchslim._compress import CompressionOutcome
    from torchslim.pipeline.runner import RunOptions
    from torchslim.zoo._entry import ZooEntry


def compress(
    model: str | ZooEntry | nn.Module,
    recipe: Recipe | str | Path,
    out: str | Path,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    calibration: list[Any] | None = None,
    options: RunOptions | None = None,
) -> CompressionOutcome:
    """Run ``recipe`` on ``model`` and write the artifact ``out`` (``torchslim.load(out)``).

    Args:
        model: a zoo name or any MODEL spec, a zoo entry, or a module (then ``example_inputs``
            are its evaluation and calibration inputs, and its metrics are fidelity to itself).
        recipe: a ``Recipe``, a recipe file, or recipe YAML text.
        out: the artifact directory (replaced only if it is a torchslim artifact).
        example_inputs: for a module: a tensor or a tuple of tensors, batch first.
        calibration: for a module: calibration batches (default: random, like the inputs).
        options: devices, threads, timing, resume (``RunOptions``).
    """
    from torch import nn

    from torchslim._outdir import check_out
    from torchslim.pipeline.runner import compress as run
    from torchslim.zoo._entry import ZooEntry
    from torchslim.zoo.options import resolve_model
    from torchslim.zoo.user import entry_for_model

    check_out(Path(out), overwrite=True)
    steps = _recipe(recipe)
    entry: Any
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise ValueError("compress(module, ...) needs example_inputs (batch first)")
        entry = entry_for_model(model, example_inputs, calibration)
    elif calibration is not None or example_inputs is not None:
        raise ValueError("example_inputs and calibration are for a module; an entry has its own")
    elif isinstance(model, ZooEntry):
        entry = model
    else:
        entry = resolve_model(model)
    return run(entry, steps, out, options)


def _recipe(recipe: Recipe | str | Path) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, Path) or (isinstance(recipe, str) and "\n" not in recipe):
        return load_recipe(recipe)
    return parse_recipe(recipe, "<recipe text>")
