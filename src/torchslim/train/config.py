"""Training configuration: frozen, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torchslim.errors import ConfigError, did_you_mean

AMP_MODES = ("auto", "bf16", "off")
OPTIMIZERS = ("sgd", "adamw")
EVAL_MODES = ("max", "min")


@dataclass(frozen=True)
class TrainConfig:
    """Options of the one training loop.

    Attributes:
        epochs: passes over the training set.
        batch_size: examples per optimizer step.
        lr: peak learning rate of the one-cycle schedule (SGD with Nesterov momentum).
        weight_decay: L2 penalty on conv/linear weights (not on norms and biases).
        label_smoothing: in [0, 1).
        augment: random 2-pixel shifts and horizontal flips of image batches.
        amp: "auto" (bf16 autocast only where the CPU/GPU has bf16 in hardware), "bf16", "off".
        checkpoint_every_steps: write a resumable checkpoint this often (and at each epoch end).
        seed: seeds weights' data order and augmentation; same seed, same run.
        grad_accum_steps: micro-batches per optimizer step; ``batch_size`` stays the examples per
            optimizer step (global, over all ranks), so the run's numbers do not depend on it.
        optimizer: "sgd" (Nesterov momentum 0.9) or "adamw" (betas 0.9/0.999).
        max_grad_norm: clip the global gradient norm to this; 0 turns clipping off.
        log_every_steps: a line of ``metrics.jsonl`` every this many optimizer steps.
        patience: stop after this many evaluated epochs without improvement; 0 never stops early.
        eval_metric: the key of the eval function's result that early stop watches ("" = first).
        eval_mode: "max" (accuracy-like) or "min" (loss-like) for ``eval_metric``.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    amp: str = "auto"
    checkpoint_every_steps: int = 200
    seed: int = 0
    grad_accum_steps: int = 1
    optimizer: str = "sgd"
    max_grad_norm: float = 0.0
    log_every_steps: int = 10
    patience: int = 0
    eval_metric: str = ""
    eval_mode: str = "max"

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "checkpoint_every_steps": self.checkpoint_every_steps >= 1,
            "grad_accum_steps": 1 <= self.grad_accum_steps <= self.batch_size,
            "max_grad_norm": self.max_grad_norm >= 0,
            "log_every_steps": self.log_every_steps >= 1,
            "patience": self.patience >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r} is out of range.")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"TrainConfig.amp={self.amp!r}; allowed: {AMP_MODES}.")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"TrainConfig.optimizer={self.optimizer!r}; allowed: {OPTIMIZERS}.")
        if self.eval_mode not in EVAL_MODES:
            raise ConfigError(f"TrainConfig.eval_mode={self.eval_mode!r}; allowed: {EVAL_MODES}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown TrainConfig key {key!r}.{did_you_mean(key, known)}")
        return cls(**values)
