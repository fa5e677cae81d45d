"""``torchslim distill``: train a student from a teacher and report before (teacher) / after
(student) with the shared contract. Imports no torch until it runs (fast ``--help``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from torchslim._cli_options import (
    DataOption,
    DeviceOption,
    InputDtypeOption,
    InputShapeOption,
    SeqLenOption,
    ThreadsOption,
    VocabSizeOption,
    WeightsOption,
    model_options,
)


def distill_command(
    teacher: Annotated[str, typer.Option(help="Teacher: zoo name or user model spec.")],
    out: Annotated[
        Path, typer.Option(help="Artifact directory (training state in .OUT.train beside it).")
    ],
    student: Annotated[str | None, typer.Option(help="Another model as the student.")] = None,
    student_from: Annotated[
        str | None, typer.Option(help="Build the student from this model (the teacher).")
    ] = None,
    drop_layers: Annotated[
        str | None, typer.Option(help="Layers dropped from each stack, e.g. 1,3,5 or 1-2,4-5.")
    ] = None,
    student_weights: Annotated[
        Path | None, typer.Option(help="Student checkpoint (.safetensors), e.g. a pruned one.")
    ] = None,
    from_scratch: Annotated[bool, typer.Option(help="Re-initialise the student.")] = False,
    epochs: int = 1,
    train_batch_size: Annotated[int, typer.Option(min=1, help="Training examples per step.")] = 128,
    lr: Annotated[
        float, typer.Option(help="Peak one-cycle LR; low, since students start from weights.")
    ] = 0.01,
    optimizer: Annotated[str, typer.Option(help="sgd | adamw")] = "sgd",
    temperature: float = 4.0,
    alpha: float = 0.9,
    match: Annotated[
        list[str] | None, typer.Option(help="[KIND:]STUDENT=TEACHER[@WEIGHT], repeatable.")
    ] = None,
    train_samples: Annotated[
        int | None, typer.Option(min=1, help="Train on this many examples (default: all).")
    ] = None,
    eval_each_epoch: bool = False,
    seed: int = 0,
    amp: Annotated[str, typer.Option(help="auto | bf16 | off")] = "auto",
    resume: bool = False,
    device: DeviceOption = "cpu",
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size of the latency.")] = 1,
    repeats: Annotated[int, typer.Option(min=3, help="Timed forward passes per side.")] = 20,
    threads: ThreadsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
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
    """Distil TEACHER into a student; print teacher (before) vs student (after).

    The model options (--weights, --input-shape, --data, ...) describe the teacher.

    Example: torchslim distill --teacher fashion-resnet20 --student-from fashion-resnet20
    --drop-layers 1,3 --epochs 1 --out r20-student
    """
    from torchslim._compress import measure_before_after
    from torchslim._devices import check_device
    from torchslim._outdir import check_out, scratch_directory
    from torchslim._progress import stage
    from torchslim.commands._render import note_synthetic_data, print_outcome
    from torchslim.distill.config import DistillConfig, LayerMatch
    from torchslim.distill.run import StudentSpec, build_student, distill
    from torchslim.distill.student import parse_indices
    from torchslim.errors import ConfigError
    from torchslim.pipeline.artifact import write_pipeline_artifact
    from torchslim.train import TrainConfig
    from torchslim.zoo.options import require_layers, resolve_model

    check_out(out, overwrite)  # before any work: never a user's folder, never after minutes
    check_device(device)
    options_ = model_options(weights, input_shape, input_dtype, vocab_size, seq_len, data)
    entry = resolve_model(teacher, options_)
    require_layers(entry, "distill")
    note_synthetic_data(entry)
    if student_from is not None and student_from != teacher:
        raise ConfigError(
            f"--student-from {student_from!r} must be the teacher ({teacher!r}): the student is "
            "built from the model it learns from."
        )
    if student is not None and (student_from or drop_layers):
        raise ConfigError("give either --student or --student-from/--drop-layers, not both.")
    spec = StudentSpec(
        model=resolve_model(student, options_.without_weights()) if student else None,
        drop=tuple(parse_indices(drop_layers)) if drop_layers else (),
        weights=student_weights,
        from_scratch=from_scratch,
    )
    built, build_details = build_student(entry.load(), spec)
    config = DistillConfig(
        temperature=temperature,
        alpha=alpha,
        matches=tuple(LayerMatch.parse(m) for m in match or ()),
    )
    train_config = TrainConfig(
        epochs=epochs, batch_size=train_batch_size, lr=lr, optimizer=optimizer, amp=amp, seed=seed,
        weight_decay=5e-4 if optimizer == "sgd" else 0.01,
    )  # fmt: skip
    options = {"subset": train_samples, "resume": resume, "device": device,
               "eval_each_epoch": eval_each_epoch}  # fmt: skip
    scratch = scratch_directory(out)  # resumable state, beside the artifact until it is written
    with stage("distilling"):
        result = distill(entry, built, config, train_config, scratch, options)
    if not result.is_main:  # under torchrun, rank 0 alone measures and writes the artifact
        return
    recipe = student_recipe(spec)
    stages = [{"step": st.step, "options": st.to_dict(), "record": {}} for st in recipe.stages]
    stages[-1].update(record={"reshaped": spec.weights is not None}, summary=result.details)
    details = {**build_details, **result.details, "stages": stages}
    settings = {"batch_size": batch_size, "repeats": repeats, "device": device,
                "details": details, **({"threads": threads} if threads else {})}  # fmt: skip
    outcome = measure_before_after(entry, entry.load(), result.student, "distill", out, settings)
    source = spec.model if spec.model is not None else entry  # what the student is rebuilt from
    extra = {"metrics.jsonl": scratch / "metrics.jsonl"}
    write_pipeline_artifact(out, source, result.student, recipe, outcome, extra)
    shutil.rmtree(scratch, ignore_errors=True)
    print_outcome(outcome, as_json)


def student_recipe(spec: Any) -> Any:
    """The stages that rebuild the student from its source model (another model, or the teacher):
    layers dropped, if any, then the distillation (the run's options are in its summary)."""
    from torchslim.pipeline.recipe import Recipe, Stage
    from torchslim.pipeline.steps.student import DropLayersOptions
    from torchslim.pipeline.steps.train import DistillOptions

    stages = [Stage("drop_layers", DropLayersOptions(spec.drop))] if spec.drop else []
    return Recipe((*stages, Stage("distill", DistillOptions())))
