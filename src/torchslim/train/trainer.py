"""The one training loop of torchslim: seeded, resumable, AMP where the hardware has it.

Later techniques (QAT, distillation, DDP) plug in through ``loss_fn`` and the model they pass;
the loop itself stays this size.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from torchslim._io import atomic_path, load_tensors, save_tensors, write_json
from torchslim._machine import bf16_in_hardware
from torchslim.errors import ModelLoadError
from torchslim.train.config import TrainConfig

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(smoothing: float) -> LossFn:
    """The default loss: the model's logits against the labels."""

    def loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(inputs), labels, label_smoothing=smoothing)

    return loss


def augment_images(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels and horizontal flips of a (B, C, H, W) batch."""
    b, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2), value=float(x.min()))  # background value, not 0 after norm
    dy = torch.randint(0, 5, (b,), generator=generator)
    dx = torch.randint(0, 5, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b)[:, None, None, None]
    channels = torch.arange(x.shape[1])[None, :, None, None]
    shifted = padded[batch, channels, rows, cols]  # (B, C, H, W)
    flip = torch.rand(b, generator=generator) < 0.5
    shifted[flip] = shifted[flip].flip(-1)
    return shifted


@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


class Trainer:
    """Train ``model`` on in-memory tensors ``(inputs, labels)`` under ``config``.

    Checkpoints go to ``out_dir/checkpoint/`` (model + optimizer + position), each written
    atomically, so a killed run resumes exactly where its last checkpoint was taken.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: tuple[torch.Tensor, torch.Tensor],
        out_dir: str | Path,
        loss_fn: LossFn | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model, self.config, self.device = model.to(device), config, torch.device(device)
        self.inputs, self.labels = train_data
        self.out_dir = Path(out_dir)
        self.loss_fn = loss_fn or cross_entropy_loss(config.label_smoothing)
        self.steps_per_epoch = math.ceil(len(self.inputs) / config.batch_size)
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups: list[dict[str, Any]] = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay},
        ]
        self.optimizer = torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=0.0,
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=config.lr,
            total_steps=config.epochs * self.steps_per_epoch,
            pct_start=0.15,
            div_factor=10.0,
            final_div_factor=100.0,
        )
        self.state = TrainState()
        self.use_bf16 = config.amp == "bf16" or (
            config.amp == "auto" and bf16_in_hardware(self.device)
        )

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def fit(self, resume: bool = False) -> TrainState:
        """Run to the last epoch; with ``resume``, continue from the last checkpoint."""
        torch.manual_seed(self.config.seed)
        if resume:
            self._load_checkpoint()
        cfg = self.config
        total = cfg.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=self.state.global_step, desc="train", unit="step")
        while self.state.epoch < cfg.epochs:
            order = torch.randperm(
                len(self.inputs),
                generator=torch.Generator().manual_seed(cfg.seed + self.state.epoch),
            )
            augment_rng = torch.Generator().manual_seed(cfg.seed * 1000 + self.state.epoch)
            for step in range(self.steps_per_epoch):
                batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x = self.inputs[batch]
                if cfg.augment:  # drawn even for skipped steps so a resume sees the same numbers
                    x = augment_images(x, augment_rng)
                if step < self.state.step_in_epoch:
                    continue
                loss = self._step(x, self.labels[batch])
                self.state.step_in_epoch, self.state.global_step = (
                    step + 1,
                    self.state.global_step + 1,
                )
                bar.update(1)
                bar.set_postfix(epoch=self.state.epoch + 1, loss=f"{loss:.3f}")
                if self.state.global_step % cfg.checkpoint_every_steps == 0:
                    self._save_checkpoint()
            self.state.epoch, self.state.step_in_epoch = self.state.epoch + 1, 0
            self._save_checkpoint()
        bar.close()
        return self.state

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        x, y = x.to(self.device), y.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss = self.loss_fn(self.model, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.state.global_step}; lower --lr "
                "or resume from the last checkpoint."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def _save_checkpoint(self) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(self.checkpoint_dir / "model.safetensors", self.model.state_dict())
        with atomic_path(self.checkpoint_dir / "optimizer.pt") as tmp:
            torch.save(
                {
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                },
                tmp,
            )
        # position last: a checkpoint counts only once model and optimizer are on disk
        write_json(self.checkpoint_dir / "position.json", {**vars(self.state), "time": time.time()})

    def _load_checkpoint(self) -> None:
        position = self.checkpoint_dir / "position.json"
        if not position.is_file():
            raise ModelLoadError(
                f"--resume: no checkpoint in {self.checkpoint_dir}; start without it."
            )
        self.model.load_state_dict(load_tensors(self.checkpoint_dir / "model.safetensors"))
        states = torch.load(self.checkpoint_dir / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(states["optimizer"])
        self.scheduler.load_state_dict(states["scheduler"])
        torch.set_rng_state(states["rng"])  # dropout masks continue as if never interrupted
        saved = json.loads(position.read_text())
        self.state = TrainState(saved["epoch"], saved["step_in_epoch"], saved["global_step"])
