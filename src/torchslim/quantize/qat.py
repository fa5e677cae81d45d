"""Quantization-aware training: fake-quant with the straight-through estimator (Bengio et al.,
arXiv:1308.3432) and learned step sizes (LSQ, Esser et al., arXiv:1902.08153), trained by the
project's one ``Trainer`` (checkpoints, resume, AMP).

``prepare_qat_`` is ``quantize_`` (calibration gives LSQ its initial scales) plus learnable scales
for every "int" weight and static "int" input; binary/ternary/pow2 weights are trained through
the STE of their own quantizers (XNOR-Net style). ``train_qat`` hands the prepared model to the
trainer; with ``resume=True`` it continues from the trainer's last checkpoint in ``out_dir``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.quantize.apply import QuantizeResult, quantize_
from torchslim.quantize.config import QuantConfig
from torchslim.quantize.modules import ActivationQuantizer, WeightQuantizer
from torchslim.train import TrainConfig, Trainer
from torchslim.train.trainer import LossFn, TrainState


def enable_lsq_(model: nn.Module) -> list[str]:
    """Make every int weight scale and static int input scale of ``model`` learnable.

    Returns:
        The names of the quantizers whose scales are now trained.
    """
    learned = []
    for name, module in model.named_modules():
        if (isinstance(module, WeightQuantizer) and module.fmt.kind == "int") or (
            isinstance(module, ActivationQuantizer)
            and module.fmt.kind == "int"
            and not module.dynamic
        ):
            module.enable_lsq()
            learned.append(name)
    return learned


def prepare_qat_(
    model: nn.Module,
    config: QuantConfig,
    calibration: Iterable[Any] | None = None,
    learn_scales: bool = True,
) -> QuantizeResult:
    """``quantize_`` then, with ``learn_scales``, LSQ scales (see module docstring)."""
    result = quantize_(model, config, calibration)
    if learn_scales:
        enable_lsq_(model)
    return result


def train_qat(
    model: nn.Module,
    train_config: TrainConfig,
    train_data: tuple[torch.Tensor, torch.Tensor],
    out_dir: str | Path,
    resume: bool = False,
    loss_fn: LossFn | None = None,
) -> TrainState:
    """Fine-tune a prepared model with the project's ``Trainer`` (checkpoints in ``out_dir``).

    Args:
        model: after ``prepare_qat_`` (prepare it the same way again before resuming).
        train_config: epochs, batch size, learning rate (a fine-tuning lr, e.g. 0.01).
        train_data: (inputs, labels) in memory.
        out_dir: receives ``checkpoint/``; ``resume`` continues from it.
        resume: continue from the last checkpoint.
        loss_fn: the trainer's loss (default cross entropy).

    Returns:
        The trainer's final position; the model is left in eval mode.
    """
    trainer = Trainer(model, train_config, train_data, out_dir, loss_fn=loss_fn)
    state = trainer.fit(resume=resume)
    model.eval()
    return state
