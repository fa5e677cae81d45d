"""Run a recipe: load → stages in order (each checkpointed) → measure before/after → one artifact.

Each finished stage whose structure can be replayed (pruned shapes, or weights only) is
checkpointed in a hidden folder beside ``out``; ``resume=True`` rebuilds the model from the last
checkpoint and runs the remaining stages, giving the same result. A failing stage leaves the
user's model untouched (the pipeline works on a copy) and writes no artifact.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from torchslim._compress import CompressionOutcome, measure_before_after
from torchslim._io import load_state_dict_strict, load_tensors, save_tensors, write_json
from torchslim._progress import stage as progress
from torchslim.errors import ConfigError
from torchslim.pipeline.artifact import write_pipeline_artifact
from torchslim.pipeline.recipe import Recipe
from torchslim.pipeline.registry import StepContext, get_step
from torchslim.zoo._entry import ZooEntry

CHECKPOINT = "checkpoint.json"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class RunOptions:
    """Where and how the run measures: ``batch_size``/``threads``/``repeats`` of the before/after
    evaluation, ``device``, ``resume`` from the last checkpoint, ``measure_stages`` (metric,
    params and MACs after every stage, recorded in the manifest)."""

    device: str = "cpu"
    threads: int | None = None
    repeats: int = 20
    batch_size: int = 1
    resume: bool = False
    measure_stages: bool = True
    technique: str = "compress"  # the outcome's and the manifest's name of what was done
    seed: int = 0  # of every training stage (data order, augmentation)


def compress(
    entry: ZooEntry, recipe: Recipe, out: str | Path, options: RunOptions | None = None
) -> CompressionOutcome:
    """Run ``recipe`` on ``entry``'s model and write the artifact ``out``.

    Raises:
        ConfigError: ``resume`` with no checkpoint of this recipe and model, or a step that does
            not fit the model (the step's own error).
    """
    options = options or RunOptions()
    out = Path(out)
    scratch = out.resolve().parent / f".{out.resolve().name}.stages"
    original = entry.load()
    context = StepContext(entry, original, options.device, options.seed, options.threads)
    if options.resume:
        model, records = _resume(scratch, recipe, entry, context)
    else:
        shutil.rmtree(scratch, ignore_errors=True)  # our own hidden folder, never --out
        model, records = copy.deepcopy(original), []
    for index in range(len(records), len(recipe.stages)):
        model = _run_stage(model, recipe, index, context, records, options)
        if _checkpointable(recipe, index):
            _save_checkpoint(scratch, recipe, entry, model, records)
    details = {"recipe": recipe.to_dict(), "stages": records}
    settings = {"batch_size": options.batch_size, "threads": options.threads,
                "repeats": options.repeats, "device": options.device}  # fmt: skip
    settings = {k: v for k, v in settings.items() if v is not None}
    outcome = measure_before_after(
        entry, original, model, options.technique, out, {**settings, "details": details}
    )
    outcome = write_result(out, entry, model, recipe, outcome)
    shutil.rmtree(scratch, ignore_errors=True)
    return outcome


def write_result(
    out: Path, entry: ZooEntry, model: Any, recipe: Recipe, outcome: CompressionOutcome
) -> CompressionOutcome:
    """Write the artifact ``out``; with fake-quant layers the packed codes go beside the
    weights and the outcome's size becomes theirs (returned)."""
    with tempfile.TemporaryDirectory(prefix="torchslim-packed-") as tmp:
        own = own_weights_file(model, recipe, Path(tmp))  # a pack stage: replaces safetensors
        packed = own or packed_weights(model, Path(tmp))
        if packed is not None:  # fake-quant layers: the size is that of the packed codes
            size = packed.stat().st_size
            outcome = dataclasses.replace(
                outcome, after=dataclasses.replace(outcome.after, size_bytes=size)
            )
        extra = {packed.name: packed} if packed is not None else None
        write_pipeline_artifact(out, entry, model, recipe, outcome, extra, own is None)
    return outcome


def run_stages(model: Any, recipe: Recipe, context: StepContext, options: RunOptions) -> Any:
    """Run every stage of ``recipe`` on ``model`` (no checkpoints); the model and records."""
    records: list[dict[str, Any]] = []
    for index in range(len(recipe.stages)):
        model = _run_stage(model, recipe, index, context, records, options)
    return model, records


def own_weights_file(model: Any, recipe: Recipe, directory: Path) -> Path | None:
    """The weights file the last stage writes itself (``pack``), or None."""
    if not recipe.stages:
        return None
    stage = recipe.stages[-1]
    writer = get_step(stage.step).weights_file
    return writer(model, stage.options, directory) if writer is not None else None


def packed_weights(model: Any, directory: Path) -> Path | None:
    """``model.quantized.safetensors`` (codes packed, int4 two per byte) when ``model`` has
    fake-quant layers, else None."""
    if not isinstance(model, nn.Module):
        return None
    from torchslim.quantize.modules import quant_modules
    from torchslim.quantize.storage import save_quantized

    if not quant_modules(model):
        return None
    return save_quantized(model, directory / "model.quantized.safetensors")


def _run_stage(
    model: Any,
    recipe: Recipe,
    index: int,
    context: StepContext,
    records: list[dict[str, Any]],
    options: RunOptions,
) -> Any:
    stage = recipe.stages[index]
    step = get_step(stage.step)
    start = time.perf_counter()
    with progress(f"stage {index + 1}/{len(recipe.stages)}: {stage.step}"):
        result = step.handler(model, stage.options, context)
    model = result.model if result.model is not None else model
    record: dict[str, Any] = {
        "index": index,
        "step": stage.step,
        "options": stage.to_dict(),
        "seconds": round(time.perf_counter() - start, 2),
        "summary": result.summary,
        "record": result.record,
        "masked": masked_layers(model) if isinstance(model, nn.Module) else [],
    }
    if options.measure_stages:
        with progress(f"measuring after {stage.step}"):
            record["figures"] = stage_figures(context.entry, model)
    records.append(record)
    return model


def stage_figures(entry: ZooEntry, model: Any) -> dict[str, Any]:
    """The metric, parameters and MACs of the model after a stage."""
    figures: dict[str, Any] = {"metrics": entry.evaluate(model)}
    if isinstance(model, nn.Module) and not hasattr(model, "artifact"):  # not a runtime graph
        from torchslim.profile import profile

        figures["params"] = sum(p.numel() for p in model.parameters())
        inputs = tuple(entry.example_inputs(1))
        figures["macs"] = profile(model, inputs, measure_memory=False).total.macs
    return figures


def masked_layers(model: nn.Module) -> list[str]:
    """Layers whose weight carries a pruning mask (unstructured / N:M)."""
    from torch.nn.utils import parametrize

    return [name for name, m in model.named_modules() if parametrize.is_parametrized(m, "weight")]


def _checkpointable(recipe: Recipe, index: int) -> bool:
    """Whether the model after stage ``index`` can be rebuilt: every stage so far replayable."""
    steps = [get_step(stage.step) for stage in recipe.stages[: index + 1]]
    return index + 1 < len(recipe.stages) and all(s.restore and not s.final for s in steps)


def folded_state(model: nn.Module) -> dict[str, Any]:
    """The state dict with pruning masks folded into plain weights (zeros stay zeros)."""
    from torchslim.prune.unstructured import folded_copy

    return folded_copy(model).state_dict()


def _save_checkpoint(
    scratch: Path, recipe: Recipe, entry: ZooEntry, model: nn.Module, records: list[dict]
) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    save_tensors(scratch / WEIGHTS, folded_state(model))
    write_json(scratch / CHECKPOINT, {"model": entry.name, "recipe": recipe.to_dict(),
                                      "stages": records})  # fmt: skip


def _resume(
    scratch: Path, recipe: Recipe, entry: ZooEntry, context: StepContext
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The model after the last checkpointed stage, and the records of the stages done."""
    file = scratch / CHECKPOINT
    if not file.is_file():
        raise ConfigError(
            f"--resume: no checkpoint in {scratch} (no stage of this run finished); run without "
            "--resume"
        )
    saved = json.loads(file.read_text())
    if saved.get("recipe") != recipe.to_dict() or saved.get("model") != entry.name:
        raise ConfigError(
            f"--resume: the checkpoint in {scratch} is of another recipe or model; run without "
            "--resume to start again"
        )
    records: list[dict[str, Any]] = saved["stages"]
    model = copy.deepcopy(context.original)
    for record, stage in zip(records, recipe.stages, strict=False):
        step = get_step(stage.step)
        assert step.restore is not None  # only replayable stages are checkpointed
        model = step.restore(model, stage.options, record["record"], context) or model
    load_state_dict_strict(model, load_tensors(scratch / WEIGHTS), str(scratch / WEIGHTS))
    reapply_masks(model, records[-1]["masked"] if records else [])
    return model, records


def reapply_masks(model: nn.Module, names: list[str]) -> None:
    """Masks of the zero weights of ``names`` (kept through the fine-tuning that follows)."""
    from torchslim.prune.unstructured import apply_masks_

    modules = dict(model.named_modules())
    apply_masks_(model, {name: modules[name].weight.detach() != 0 for name in names})
