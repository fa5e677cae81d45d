"""The one training loop of torchslim: seeded, resumable, DDP under torchrun, bf16 where it pays.

QAT, pruning fine-tunes and distillation plug in through ``loss_fn`` (a function, or an
``nn.Module`` whose own trainable parameters, e.g. distillation adapters, are trained along) and
the model they pass; the loop itself stays this size. Under ``torchrun --nproc-per-node N`` the
model is wrapped in ``DistributedDataParallel`` and every rank takes its slice of each global
batch, so the run's numbers do not depend on N (up to float summation order and BatchNorm, whose
statistics are per rank).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from torchslim._io import save_tensors
from torchslim._machine import bf16_in_hardware
from torchslim.errors import TorchslimError
from torchslim.train import _checkpoint
from torchslim.train._batches import (
    Inputs,
    call_model,
    input_count,
    rank_slices,
    take,
    to_device,
)
from torchslim.train._metrics import EarlyStop, MetricsLog
from torchslim.train.config import TrainConfig
from torchslim.train.distributed import DistributedContext, init_distributed

LossFn = Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]
EvalFn = Callable[[nn.Module], dict[str, float]]


class NonFiniteLossError(TorchslimError, FloatingPointError):
    """The loss became NaN or infinite; training stopped before the bad step was applied."""


def cross_entropy_loss(smoothing: float) -> LossFn:
    """The default loss: the model's logits against the labels."""

    def loss(model: nn.Module, inputs: Inputs, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(call_model(model, inputs), labels, label_smoothing=smoothing)

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
    best_metric: float | None = None
    epochs_without_improvement: int = 0
    stopped: str = ""  # why the run ended before its last epoch ("" when it did not)


class Trainer:
    """Train ``model`` on in-memory tensors ``(inputs, labels)`` under ``config``.

    ``inputs`` is a tensor or a tuple of tensors (e.g. token ids and attention mask), indexed
    along the first dimension like ``labels``. ``out_dir`` receives ``checkpoint/`` (model +
    optimizer + RNG + position, swapped in whole, so a killed run resumes exactly where its last
    checkpoint was taken), ``metrics.jsonl`` and, with an eval function, ``best.safetensors``.
    Only rank 0 writes; all ranks wait at a barrier around each checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: tuple[Inputs, torch.Tensor],
        out_dir: str | Path,
        loss_fn: LossFn | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.dist: DistributedContext = init_distributed(device)
        self.device = self.dist.device
        self.model, self.config = model.to(self.device), config
        self.inputs, self.labels = train_data
        self.out_dir = Path(out_dir)
        self.loss_fn = loss_fn or cross_entropy_loss(config.label_smoothing)
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(self.device)
        self.loss_parameters = _own_trainable_parameters(self.loss_fn, model)
        self.dist.broadcast_parameters(list(self.loss_parameters.values()))
        self.forward_model: nn.Module = model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(model, device_ids=device_ids)
        self.steps_per_epoch = math.ceil(input_count(self.inputs) / config.batch_size)
        self.optimizer = _optimizer(model, list(self.loss_parameters.values()), config)
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
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", self.dist.is_main)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def fit(self, resume: bool = False, eval_fn: EvalFn | None = None) -> TrainState:
        """Run to the last epoch (or an early stop); with ``resume``, continue from the last
        checkpoint. ``eval_fn(model) -> {metric: value}`` runs on rank 0 after every epoch."""
        torch.manual_seed(self.config.seed)
        if resume:
            self._load_checkpoint()
        self.metrics.start(self.state.global_step if resume else None)
        total = self.config.epochs * self.steps_per_epoch
        bar = tqdm(
            total=total,
            initial=self.state.global_step,
            desc="train",
            unit="step",
            disable=not self.dist.is_main,
        )
        while self.state.epoch < self.config.epochs and not self.state.stopped:
            started, losses = time.perf_counter(), self._run_epoch(bar)
            self.state.epoch, self.state.step_in_epoch = self.state.epoch + 1, 0
            record: dict[str, Any] = {"kind": "epoch", "epoch": self.state.epoch}
            record["global_step"] = self.state.global_step
            record["train_loss"] = sum(losses) / len(losses) if losses else None
            if eval_fn is not None:
                record["eval"] = self._evaluate(eval_fn)
            record["seconds"] = round(time.perf_counter() - started, 2)
            self.metrics.write(record)
            self._save_checkpoint()
        bar.close()
        return self.state

    def _run_epoch(self, bar: Any) -> list[float]:
        cfg, losses = self.config, []
        order = torch.randperm(
            input_count(self.inputs),
            generator=torch.Generator().manual_seed(cfg.seed + self.state.epoch),
        )
        augment_rng = torch.Generator().manual_seed(cfg.seed * 1000 + self.state.epoch)
        for step in range(self.steps_per_epoch):
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = take(self.inputs, batch)
            if cfg.augment and isinstance(x, torch.Tensor) and x.ndim == 4:
                x = augment_images(x, augment_rng)  # drawn even for skipped steps: same numbers
            if step < self.state.step_in_epoch:
                continue
            loss = self._step(x, self.labels[batch])
            losses.append(loss)
            self.state.step_in_epoch = step + 1
            self.state.global_step += 1
            bar.update(1)
            bar.set_postfix(epoch=self.state.epoch + 1, loss=f"{loss:.3f}")
            if self.state.global_step % cfg.log_every_steps == 0:
                lr = self.optimizer.param_groups[0]["lr"]
                self.metrics.write(
                    {"kind": "step", "epoch": self.state.epoch, "global_step":
                     self.state.global_step, "loss": loss, "lr": lr}
                )  # fmt: skip
            if self.state.global_step % cfg.checkpoint_every_steps == 0:
                self._save_checkpoint()
        return losses

    def _step(self, x: Inputs, y: torch.Tensor) -> float:
        """One optimizer step on a global batch: micro-batches, this rank's slice of each."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        pieces = rank_slices(len(y), self.config.grad_accum_steps, self.dist)
        total = 0.0
        for i, (local, weight) in enumerate(pieces):
            last = i == len(pieces) - 1
            no_sync = getattr(self.forward_model, "no_sync", None)
            sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
            with sync:
                xb, yb = to_device(take(x, local), self.device), y[local].to(self.device)
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.use_bf16):
                    loss = self.loss_fn(self.forward_model, xb, yb) * weight
                contribution = float(self.dist.mean(loss.detach().float()))
                if not math.isfinite(contribution):
                    raise self._non_finite(contribution)
                loss.backward()
            total += contribution
        self.dist.average_gradients(list(self.loss_parameters.values()))
        if self.config.max_grad_norm > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return total

    def _non_finite(self, value: float) -> NonFiniteLossError:
        kept = (
            f"the last good checkpoint stays in {self.checkpoint_dir}; resume from it with "
            "resume=True (--resume)"
            if _checkpoint.exists(self.checkpoint_dir)
            else "no checkpoint was written yet"
        )
        terms = getattr(self.loss_fn, "last_losses", None)  # a Distiller names its terms
        named = f" (terms on rank {self.dist.rank}: {terms})" if terms else ""
        return NonFiniteLossError(
            f"loss became {value} at step {self.state.global_step + 1} (epoch "
            f"{self.state.epoch + 1}){named}; the step was not applied and {kept}. Lower the "
            "learning rate (--lr), clip gradients (max_grad_norm) or check the inputs for NaN."
        )

    def _evaluate(self, eval_fn: EvalFn) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.dist.is_main:
            self.model.eval()
            results = {k: float(v) for k, v in eval_fn(self.model).items()}
            self.model.train()
        results = self.dist.broadcast(results)  # type: ignore[assignment]
        key = self.config.eval_metric or next(iter(results), "")
        if key not in results:
            raise TorchslimError(
                f"TrainConfig.eval_metric={key!r} is not among the eval results {sorted(results)}."
            )
        tracker = EarlyStop(self.config.patience, self.config.eval_mode, self.state.best_metric,
                            self.state.epochs_without_improvement)  # fmt: skip
        if tracker.update(results[key]) and self.dist.is_main:
            save_tensors(self.out_dir / "best.safetensors", self.model.state_dict())
        self.state.best_metric = tracker.best
        self.state.epochs_without_improvement = tracker.epochs_without_improvement
        if tracker.should_stop and self.state.epoch < self.config.epochs:
            self.state.stopped = (
                f"early stop after epoch {self.state.epoch}: {key} did not improve for "
                f"{tracker.patience} epoch(s); best {tracker.best}"
            )
        return results

    def _save_checkpoint(self) -> None:
        self.dist.barrier()  # every rank has finished the step being saved
        if self.dist.is_main:
            rng = {"rng": torch.get_rng_state()}
            if self.device.type == "cuda":
                rng["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            states = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                **rng,
            }
            position = {**vars(self.state), "time": time.time()}
            loss_state = {k: v.detach() for k, v in self.loss_parameters.items()}
            checkpoint = _checkpoint.Checkpoint(self.model.state_dict(), states, position,
                                                loss_state)  # fmt: skip
            _checkpoint.save(self.checkpoint_dir, checkpoint)
        self.dist.barrier()  # nobody runs ahead of a checkpoint that is not on disk yet

    def _load_checkpoint(self) -> None:
        saved = _checkpoint.load(self.checkpoint_dir)
        self.model.load_state_dict(saved.model)
        if self.loss_parameters:
            with torch.no_grad():
                for name, parameter in self.loss_parameters.items():
                    parameter.copy_((saved.loss or {})[name])
        self.optimizer.load_state_dict(saved.states["optimizer"])
        self.scheduler.load_state_dict(saved.states["scheduler"])
        torch.set_rng_state(saved.states["rng"])  # dropout masks continue as if never stopped
        if "cuda_rng" in saved.states and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved.states["cuda_rng"], self.device)
        fields = {k: saved.position[k] for k in vars(TrainState()) if k in saved.position}
        self.state = TrainState(**fields)


def _own_trainable_parameters(loss_fn: object, model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters of a loss module that are not the model's (adapters, heads)."""
    if not isinstance(loss_fn, nn.Module):
        return {}
    model_ids = {id(p) for p in model.parameters()}
    return {
        name: p
        for name, p in loss_fn.named_parameters()
        if p.requires_grad and id(p) not in model_ids
    }


def _optimizer(
    model: nn.Module, extra: list[nn.Parameter], config: TrainConfig
) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; weight decay on matrices and kernels, not on norms and biases."""
    params = list(model.parameters()) + extra
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1]},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), weight_decay=0.0)
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=0.0)
