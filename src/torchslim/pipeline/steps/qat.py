"""The ``qat`` step: quantization-aware training with learned step sizes.

The model is quantized as the ``quantize`` step would (same ``scheme`` / ``weight`` /
``activation`` / ``observer`` / ``ignore``; calibration gives the initial scales), its int scales
become learnable (LSQ, Esser et al., arXiv 1902.08153; ``learn_scales: false`` keeps them fixed
and trains the weights through the straight-through estimator), then it is trained on the
entry's labelled training split with the shared trainer. Needs an entry with a training split.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step
from torchslim.pipeline.steps._options import check_calibration_batches
from torchslim.pipeline.steps.train import _check_training


@dataclass(frozen=True)
class QATOptions:
    """The format as for quantize (``scheme`` or ``weight`` / ``activation``, ``observer``,
    ``ignore``, ``calibration_batches``), ``learn_scales`` (LSQ), and the training: ``epochs``
    over ``samples`` training examples (None: all), one-cycle peak ``lr``, ``batch_size``."""

    scheme: str | None = None
    weight: str | None = None
    activation: str | None = None
    observer: str = "auto"
    ignore: tuple[str, ...] = ()
    calibration_batches: int = 8
    learn_scales: bool = True
    epochs: int = 1
    lr: float = 0.005
    samples: int | None = None
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_calibration_batches(self.calibration_batches)
        _check_training(self.epochs, self.lr, self.samples, self.batch_size)
        if not isinstance(self.learn_scales, bool):
            raise ConfigError(f"learn_scales must be true or false, got {self.learn_scales!r}")
        self.config()

    def config(self) -> Any:
        """The ``QuantConfig``, built exactly as the quantize step builds it."""
        from torchslim.pipeline.steps.quantize import QuantizeOptions

        return QuantizeOptions(
            self.scheme, self.weight, self.activation, self.observer, tuple(self.ignore),
            self.calibration_batches,
        ).config()  # fmt: skip


def run_qat(model: nn.Module, options: QATOptions, context: StepContext) -> StepResult:
    from torchslim.prune.finetune import training_split
    from torchslim.quantize.qat import prepare_qat_, train_qat
    from torchslim.train import TrainConfig

    data = training_split(context.entry, options.samples)  # refuses an entry without one
    batches = context.entry.calibration_batches(options.calibration_batches)
    result = prepare_qat_(model, options.config(), batches, options.learn_scales)
    before = context.entry.evaluate(model)
    # as benchmarks/quantize_accuracy.py's QAT: fp32 math and a light weight decay (the learned
    # scales are parameters too, and a strong decay would shrink them)
    train_config = TrainConfig(
        epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, seed=context.seed,
        weight_decay=5e-5, amp="off", checkpoint_every_steps=10**9,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="torchslim-qat-") as scratch:
        state = train_qat(model, train_config, data, scratch)
    model.cpu().eval()
    summary = {"quantize": result.to_dict(), "metrics_before_training": before,
               "training_samples": len(data[0]), "steps": state.global_step}  # fmt: skip
    return StepResult(summary)


register_step(
    Step(
        "qat",
        QATOptions,
        run_qat,
        "quantization-aware training (LSQ scales) on the training split",
        quantizes=True,
    )
)
