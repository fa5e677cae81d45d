"""``torchslim distill``: train a student from a teacher and report before (teacher) / after
(student) with the shared contract."""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from torch import nn

from torchslim._cli_options import (
    DataOption,
    DeviceOption,
    InputDtypeOption,
    InputShapeOption,
    SeqLenOption,
    VocabSizeOption,
    WeightsOption,
    model_options,
)
from torchslim._io import load_tensors
from torchslim.distill.config import DistillConfig, LayerMatch
from torchslim.distill.data import training_data
from torchslim.distill.distiller import Distiller
from torchslim.distill.student import drop_layers, load_reshaped, parse_indices
from torchslim.errors import ConfigError
from torchslim.train import TrainConfig, Trainer
from torchslim.train._batches import take
from torchslim.zoo import ZooEntry


@dataclass(frozen=True)
class StudentSpec:
    """How to build the student: another model, or the teacher with layers dropped, optionally
    with weights from a (pruned/quantized) checkpoint."""

    model: ZooEntry | None = None  # another model (zoo entry or user model)
    drop: tuple[int, ...] = ()  # layers dropped from a copy of the teacher
    weights: Path | None = None  # checkpoint loaded into the student (shapes adapted)
    from_scratch: bool = False  # re-initialise the student's weights


@dataclass
class DistillResult:
    """The trained student, what was done, and where the run lives."""

    student: nn.Module
    details: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True  # rank 0 (or a single process): the one that reports and writes


def build_student(teacher: nn.Module, spec: StudentSpec) -> tuple[nn.Module, dict[str, Any]]:
    """The student of ``spec`` (a new module; the teacher is not modified)."""
    details: dict[str, Any] = {}
    if spec.model is not None:
        student = spec.model.load()
        details["student_model"] = spec.model.name
    else:
        student, dropped = drop_layers(teacher, list(spec.drop)) if spec.drop else (
            copy.deepcopy(teacher).requires_grad_(True), None)  # fmt: skip
        details["student_from_teacher"] = dropped.to_dict() if dropped else "copy"
    if spec.weights is not None:
        details["reshaped_from_checkpoint"] = load_reshaped(student, load_tensors(spec.weights))
        details["student_weights"] = str(spec.weights)
    if spec.from_scratch:
        _reinitialise(student)
        details["student_init"] = "from scratch"
    return student.train(), details


def _reinitialise(model: nn.Module) -> None:
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and module is not model:
            reset()


def distill(
    entry: ZooEntry,
    student: nn.Module,
    config: DistillConfig,
    train_config: TrainConfig,
    out_dir: Path,
    options: dict[str, Any] | None = None,
) -> DistillResult:
    """Distil ``entry``'s model into ``student`` with the shared trainer (resumable).

    ``options``: ``subset`` (training examples), ``resume``, ``device``, ``eval_each_epoch``,
    ``seq_len`` (text).
    """
    options = options or {}
    teacher = entry.load()
    data, default_output = training_data(
        entry, options.get("subset"), train_config.seed, options.get("seq_len", 32)
    )
    if config.output_loss == "kd" and default_output != "kd":
        config = DistillConfig(**{**config.__dict__, "output_loss": default_output})
    example = take(data[0], torch.arange(min(2, len(data[1]))))
    distiller = Distiller(student, teacher, config, example)
    trainer = Trainer(student, train_config, data, out_dir, distiller, options.get("device", "cpu"))
    start = time.perf_counter()
    eval_fn = entry.evaluate if options.get("eval_each_epoch") else None
    state = trainer.fit(resume=bool(options.get("resume")), eval_fn=eval_fn)
    distiller.remove_hooks()
    student.cpu().eval()
    details = {
        "distill_config": config.to_dict(),
        "train_config": train_config.to_dict(),
        "train_examples": len(data[1]),
        "steps": state.global_step,
        "stopped": state.stopped,
        "train_seconds_this_run": round(time.perf_counter() - start, 1),
        "bf16_autocast": trainer.use_bf16,
        "world_size": trainer.dist.world_size,
    }
    return DistillResult(student, details, trainer.dist.is_main)


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
    batch_size: int = 128,
    lr: Annotated[
        float, typer.Option(help="Peak one-cycle LR; low, since students start from weights.")
    ] = 0.01,
    optimizer: Annotated[str, typer.Option(help="sgd | adamw")] = "sgd",
    temperature: float = 4.0,
    alpha: float = 0.9,
    match: Annotated[
        list[str] | None, typer.Option(help="[KIND:]STUDENT=TEACHER[@WEIGHT], repeatable.")
    ] = None,
    train_subset: Annotated[int | None, typer.Option(help="Train on this many examples.")] = None,
    eval_each_epoch: bool = False,
    seed: int = 0,
    amp: Annotated[str, typer.Option(help="auto | bf16 | off")] = "auto",
    resume: bool = False,
    device: DeviceOption = "cpu",
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
    from torchslim._compress import measure_before_after, write_model_artifact
    from torchslim._devices import check_device
    from torchslim._outdir import check_out, scratch_directory
    from torchslim._progress import stage
    from torchslim.cli import note_synthetic_data, print_outcome
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
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, amp=amp, seed=seed,
        weight_decay=5e-4 if optimizer == "sgd" else 0.01,
    )  # fmt: skip
    options = {"subset": train_subset, "resume": resume, "device": device,
               "eval_each_epoch": eval_each_epoch}  # fmt: skip
    scratch = scratch_directory(out)  # resumable state, beside the artifact until it is written
    with stage("distilling"):
        result = distill(entry, built, config, train_config, scratch, options)
    if not result.is_main:  # under torchrun, rank 0 alone measures and writes the artifact
        return
    details = {**build_details, **result.details}
    outcome = measure_before_after(
        entry, entry.load(), result.student, "distill", out, {"details": details}
    )
    extra = {"metrics.jsonl": scratch / "metrics.jsonl"}
    write_model_artifact(out, result.student, outcome.to_dict(), extra)
    shutil.rmtree(scratch, ignore_errors=True)
    print_outcome(outcome, as_json)
