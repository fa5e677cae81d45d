"""What a zoo entry is: a model, its inputs, its calibration data, its eval data and its metric."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from torchslim.errors import InputShapeError, TorchslimError

Batch = tuple[Any, ...]  # positional arguments of one forward call


class ZooEntry(ABC):
    """A named real model with its real evaluation.

    Subclasses implement ``build`` (the architecture), ``load`` (with real weights),
    ``example_inputs``, ``calibration_batches`` and ``evaluate``.
    """

    name: str = ""
    task: str = ""
    card: str = ""  # one paragraph: what the model is, what its metric means, where data comes from
    default_batch_size: int = 1

    @abstractmethod
    def load(self) -> nn.Module:
        """The model with its real weights, in eval mode, on CPU."""

    @abstractmethod
    def example_inputs(self, batch_size: int = 1) -> Batch:
        """One batch of representative inputs (real data where there is any)."""

    @abstractmethod
    def calibration_batches(self, n: int) -> list[Batch]:
        """``n`` batches for calibration, drawn from data disjoint from the eval data."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The entry's metrics on its eval data."""

    def meta_model(self) -> nn.Module:
        """The architecture on the ``meta`` device (shapes only, no memory), for profiling.

        Entries whose weights are slow to load override this to build from their config.
        """
        return self.load().to("meta")

    def meta_inputs(self, batch_size: int = 1, **options: Any) -> Batch:
        """``example_inputs``' shapes and dtypes on ``meta``, for counting without any data.

        Entries whose example inputs are slow to make (tokenising a novel) override this.
        """
        batch = self.example_inputs(batch_size, **options)
        return tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in batch)

    def metric_names(self) -> tuple[str, ...]:
        """Names of the metrics ``evaluate`` returns (for listings)."""
        return ()

    def to_row(self) -> dict[str, str]:
        return {"name": self.name, "task": self.task, "metrics": ", ".join(self.metric_names())}


def forward(model: nn.Module, batch: Batch) -> Any:
    """Call ``model`` on one batch, with no autograd."""
    with torch.inference_mode():
        return model(*batch)


INPUT_HINT = "pass the shape the model expects with --input-shape, batch first (e.g. 1,3,224,224)"


def checked_forward(model: nn.Module, batch: Batch, name: str) -> Any:
    """``forward``, but a model that rejects the inputs raises one InputShapeError naming the
    input shapes and dtypes and the model's own error."""
    try:
        return forward(model, batch)
    except TorchslimError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as error:
        shapes = ", ".join(describe_input(item) for item in batch)
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise InputShapeError(
            f"{name} rejected inputs of shape {shapes}: {type(error).__name__}: {reason}. "
            f"If the model expects another shape, {INPUT_HINT}."
        ) from error


def describe_input(item: Any) -> str:
    """ "(1, 3, 32, 32) float32" for a tensor, the type name for anything else."""
    if isinstance(item, torch.Tensor):
        return f"{tuple(item.shape)} {str(item.dtype).removeprefix('torch.')}"
    return type(item).__name__
