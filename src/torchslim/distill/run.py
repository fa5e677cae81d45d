"""Distillation runs: build a student, train it against a teacher with the shared trainer.

The ``torchslim distill`` command (``torchslim.commands.distill``) calls these.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._hf_directory import load_weights
from torchslim.distill.config import DistillConfig
from torchslim.distill.data import training_data
from torchslim.distill.distiller import Distiller
from torchslim.distill.student import drop_layers, load_reshaped
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
        details["reshaped_from_checkpoint"] = load_reshaped(student, load_weights(spec.weights))
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
    ``seq_len`` (text), ``teacher`` (default: ``entry.load()``).
    """
    options = options or {}
    teacher = options.get("teacher") or entry.load()
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
