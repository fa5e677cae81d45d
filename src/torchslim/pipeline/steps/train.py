"""The ``finetune`` and ``distill`` steps: recover accuracy with the shared trainer.

``finetune`` trains on the entry's labelled training split; ``distill`` trains against the
original model (the one before the first stage) as teacher (Hinton et al., arXiv 1503.02531).
Masks of an earlier unstructured prune stay attached, so pruned weights stay zero.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from torchslim.errors import ConfigError
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step
from torchslim.train.config import OPTIMIZERS


def _check_training(epochs: int, lr: float, samples: int | None, batch_size: int) -> None:
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if samples is not None and samples < 1:
        raise ConfigError(f"samples must be >= 1 (or absent for all), got {samples}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


@dataclass(frozen=True)
class FinetuneOptions:
    """``epochs`` over ``samples`` training examples (None: all), one-cycle peak ``lr``;
    ``augment``: random shifts and flips (false for digits, which a flip changes)."""

    epochs: int = 1
    lr: float = 0.02
    samples: int | None = None
    batch_size: int = 128
    augment: bool = True

    def __post_init__(self) -> None:
        _check_training(self.epochs, self.lr, self.samples, self.batch_size)


def run_finetune(model: nn.Module, options: FinetuneOptions, context: StepContext) -> StepResult:
    from torchslim.prune.finetune import FinetuneConfig, finetune_

    config = FinetuneConfig(
        options.epochs, options.samples, options.lr, options.batch_size, context.seed,
        options.augment,
    )  # fmt: skip
    return StepResult(finetune_(context.entry, model, config))


@dataclass(frozen=True)
class DistillOptions:
    """Knowledge distillation from the original model: ``temperature``, ``alpha`` (weight of the
    teacher's soft targets; 1 - alpha on the labels), ``optimizer`` (``sgd``, or ``adamw`` for
    transformers at a small lr), plus the training options of finetune."""

    epochs: int = 1
    lr: float = 0.02
    samples: int | None = None
    batch_size: int = 128
    temperature: float = 4.0
    alpha: float = 0.9
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        _check_training(self.epochs, self.lr, self.samples, self.batch_size)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")


def run_distill(model: nn.Module, options: DistillOptions, context: StepContext) -> StepResult:
    from torchslim.distill.config import DistillConfig
    from torchslim.distill.run import distill
    from torchslim.train import TrainConfig

    config = DistillConfig(temperature=options.temperature, alpha=options.alpha)
    train_config = TrainConfig(
        epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, seed=context.seed,
        augment=True, checkpoint_every_steps=10**9, optimizer=options.optimizer,
    )  # fmt: skip
    run = {"subset": options.samples, "device": context.device, "teacher": context.original}
    with tempfile.TemporaryDirectory(prefix="torchslim-distill-") as scratch:
        result = distill(context.entry, model, config, train_config, Path(scratch), run)
    model.cpu().eval()
    return StepResult(result.details)


def unchanged_structure(model: nn.Module, options: object, record: dict, context: object) -> None:
    """Training changes weights only: a checkpoint's state dict loads into the model as it is."""


register_step(
    Step(
        "finetune",
        FinetuneOptions,
        run_finetune,
        "fine-tune on the training split",
        restore=unchanged_structure,
    )
)
register_step(
    Step(
        "distill",
        DistillOptions,
        run_distill,
        "distill from the original model",
        restore=unchanged_structure,
    )
)
