"""What pruning needs from the data: Taylor gradients, and fine-tuning with the shared trainer.

Fine-tuning keeps unstructured / N:M masks (they are parametrizations, so the trainer's updates
land on the dense ``original`` and the mask re-applies on every forward); fold them afterwards
with ``fold_masks_``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import ConfigError
from torchslim.train import TrainConfig, Trainer
from torchslim.zoo import ZooEntry


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning after pruning (image classifiers with a training split).

    Args:
        epochs: passes over the (sub)set; >= 1.
        samples: training images used (the first ``samples`` of a seeded shuffle); None = all.
        lr: peak learning rate of the trainer's one-cycle schedule (lower than from scratch).
        batch_size: images per step.
        seed: the trainer's seed (data order, augmentation).
        augment: random shifts and horizontal flips (off for images a flip changes: digits).
    """

    epochs: int = 1
    samples: int | None = None
    lr: float = 0.02
    batch_size: int = 128
    seed: int = 0
    augment: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 1):
            raise ConfigError(f"samples must be a positive integer or None, got {self.samples!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")


def training_split(
    entry: ZooEntry, samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The entry's training images and labels (a seeded subset of ``samples``)."""
    train_data = getattr(entry, "train_data", None)
    if train_data is None:
        raise ConfigError(
            f"{entry.name} has no training split here: fine-tuning and Taylor importance need "
            "an image classifier of the zoo (fashion-cnn, fashion-resnet20/56, mnist-cnn)"
        )
    inputs, labels = train_data()
    if samples is not None and samples < len(inputs):
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))[:samples]
        inputs, labels = inputs[order], labels[order]
    return inputs, labels


def accumulate_gradients(entry: ZooEntry, model: nn.Module, batches: int = 4) -> None:
    """Fill ``.grad`` with the loss gradient over a few batches (for Taylor importance).

    Image classifiers use cross-entropy on training images; models returning (B, T, V) logits
    on token ids use the next-token loss on the entry's calibration batches.
    """
    model.zero_grad(set_to_none=True)
    if hasattr(entry, "train_data"):
        inputs, labels = training_split(entry, 64 * batches)
        for start in range(0, len(inputs), 64):
            logits = model(inputs[start : start + 64])  # (B, classes)
            F.cross_entropy(logits, labels[start : start + 64]).backward()
        return
    for batch in entry.calibration_batches(batches):
        logits = model(*batch)
        ids = batch[0]
        if not (isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and logits.dim() == 3):
            raise ConfigError(
                f"taylor importance on {entry.name}: no loss known for this task; use l1/l2"
            )
        next_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        next_token.backward()


def finetune_(entry: ZooEntry, model: nn.Module, config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``model`` in place on the entry's training split with the shared trainer."""
    inputs, labels = training_split(entry, config.samples)
    train_config = TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, augment=config.augment,
        checkpoint_every_steps=10**9, seed=config.seed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="torchslim-finetune-") as scratch:
        trainer = Trainer(model, train_config, (inputs, labels), Path(scratch))
        trainer.fit()
    model.cpu().eval()
    return {"epochs": config.epochs, "samples": len(inputs), "lr": config.lr,
            "batch_size": config.batch_size}  # fmt: skip
