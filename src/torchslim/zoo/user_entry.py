"""What a user model is fed and how it is measured: ``UserInputs`` and ``UserEntry``.

A user model comes without labels, so its metrics measure fidelity: the outputs of the model
being evaluated against those of the original (``load()``) on the evaluation inputs (see
``fidelity.py``), and perplexity for a causal language model given a text file. Inputs come from
``--data`` (split into disjoint calibration and evaluation parts) or, without it, are seeded
random tensors: ``example_inputs`` and the evaluation batches use seeds of their own,
``calibration_batches`` others, so calibration never sees an eval batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError, InputShapeError, ModelLoadError
from torchslim.zoo._entry import Batch, ZooEntry, checked_forward
from torchslim.zoo._inputs import InputSpec, output_tensors, random_batch
from torchslim.zoo.fidelity import fidelity, perplexity
from torchslim.zoo.user_data import UserData

EVAL_SEED = 0  # seed of example_inputs (the eval inputs); calibration batch i uses 1 + i
EXTRA_EVAL_SEED = 10_000  # further evaluation batches, disjoint from calibration seeds
MODEL_SEED = 0  # a factory without weights is built under this seed: the same model every load
SYNTHETIC_EVAL_SAMPLES = 16  # evaluation samples of a model without --data
MAX_EVAL_BATCH = 32


@dataclass(frozen=True)
class UserInputs:
    """What a user model is fed: input specs, and the real inputs where there are any."""

    specs: tuple[InputSpec, ...]
    saved: tuple[torch.Tensor, ...] | None = None  # a .pt2's own example inputs (eval batch)
    static_batch: int | None = None  # the only batch size the graph accepts
    data: UserData | None = None  # --data, split into calibration and evaluation
    causal_lm: bool = False  # outputs are next-token logits: perplexity on text data
    graph_only: bool = False  # a .pt2 program: aten ops, no nn.Linear/Conv2d layers to transform

    @property
    def has_tokens(self) -> bool:
        return any(not s.dtype.is_floating_point and s.dtype != torch.bool for s in self.specs)

    def with_seq_len(self, seq_len: int, name: str) -> UserInputs:
        """Token inputs ``seq_len`` long (their second dimension)."""
        if not self.has_tokens:
            raise ConfigError(f"--seq-len: {name} takes no token inputs (it is not a text model)")
        if self.data is not None and self.data.kind == "text":
            raise ConfigError(f"--seq-len of {name} is fixed by the windows cut from --data")
        specs = tuple(
            replace(s, shape=(s.shape[0], seq_len, *s.shape[2:])) if len(s.shape) >= 2 else s
            for s in self.specs
        )
        return replace(self, specs=specs, saved=None)

    def synthetic_note(self) -> str | None:
        """A loud note when calibration and evaluation use no real data."""
        if self.data is not None:
            return None
        used = (
            "seeded random inputs for calibration (the .pt2's saved example inputs for evaluation)"
            if self.saved is not None
            else "seeded random inputs for calibration and evaluation"
        )
        return (
            f"no --data given: {used}; quantization scales and fidelity figures may not reflect "
            "your real data"
        )


class UserEntry(ZooEntry):
    """A user model; its metrics are its fidelity to the original model (``load()``)."""

    task = "user-model"

    def __init__(
        self,
        name: str,
        card: str,
        build: Callable[[], nn.Module],
        inputs: UserInputs,
        default_batch_size: int = 1,
    ) -> None:
        self.name, self.card, self._build, self.inputs = name, card, build, inputs
        self.default_batch_size = default_batch_size
        self.calibration_batch_size = inputs.static_batch or 8
        self._reference: list[torch.Tensor] | None = None

    @property
    def has_tokens(self) -> bool:
        return self.inputs.has_tokens

    @property
    def data_note(self) -> str | None:
        return self.inputs.synthetic_note()

    def load(self) -> nn.Module:
        return self._build()

    def example_inputs(self, batch_size: int = 1, seq_len: int | None = None) -> Batch:
        inputs = self.inputs if seq_len is None else self.inputs.with_seq_len(seq_len, self.name)
        self._check_batch(batch_size)
        if inputs.data is not None:
            return inputs.data.eval_batch(batch_size)
        if inputs.saved is not None:
            rows = torch.arange(batch_size) % inputs.saved[0].shape[0]  # the user's own, tiled
            return tuple(tensor[rows].clone() for tensor in inputs.saved)
        return random_batch(inputs.specs, batch_size, EVAL_SEED)

    def calibration_batches(self, n: int, batch_size: int | None = None) -> list[Batch]:
        size = batch_size or self.calibration_batch_size
        self._check_batch(size)
        if self.inputs.data is not None:
            return [self.inputs.data.calibration_batch(size, i) for i in range(n)]
        return [random_batch(self.inputs.specs, size, EVAL_SEED + 1 + i) for i in range(n)]

    def eval_batches(self) -> list[Batch]:
        """The evaluation inputs, in batches the model accepts."""
        data = self.inputs.data
        total = data.eval_samples if data is not None else SYNTHETIC_EVAL_SAMPLES
        size = self.inputs.static_batch or min(total, MAX_EVAL_BATCH)
        count = -(-total // size)
        if data is not None:
            return [data.eval_batch(size, start=i * size) for i in range(count)]
        first = self.example_inputs(size)
        more = [random_batch(self.inputs.specs, size, EXTRA_EVAL_SEED + i) for i in range(1, count)]
        return [first, *more]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Fidelity to the original on the evaluation inputs (and perplexity on text data)."""
        batches = self.eval_batches()
        outputs = [self._first_output(model, batch) for batch in batches]
        if self._reference is None:
            original = self.load()
            self._reference = [self._first_output(original, batch) for batch in batches]
        metrics = fidelity(torch.cat(self._reference), torch.cat(outputs))
        data = self.inputs.data
        if self.inputs.causal_lm and data is not None and data.kind == "text":
            logits, ids = torch.cat(outputs), torch.cat([batch[0] for batch in batches])
            metrics["perplexity"] = perplexity(logits, ids)
        return metrics

    def _first_output(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        tensors = output_tensors(checked_forward(model, batch, self.name))
        if not tensors:
            raise ModelLoadError(f"{self.name} returned no tensor: nothing to measure")
        return tensors[0].detach().float().cpu()

    def metric_names(self) -> tuple[str, ...]:
        names = ("cosine", "top1_agreement", "kl_divergence", "max_abs_error", "output_finite")
        return (*names, "perplexity") if self.inputs.causal_lm else names

    def _check_batch(self, batch_size: int) -> None:
        static = self.inputs.static_batch
        if static is not None and batch_size != static:
            raise InputShapeError(
                f"{self.name} was exported with a static batch size of {static}: its graph "
                f"accepts batch {static} only, not {batch_size}. Use batch size {static}, or "
                "re-export with dynamic_shapes={'x': {0: torch.export.Dim('batch')}} to accept "
                "any batch."
            )


def check_inputs(entry: ZooEntry, model: nn.Module, batch_size: int = 1) -> Any:
    """Run one forward on ``entry.example_inputs(batch_size)`` and return the output.

    Raises:
        InputShapeError: the model rejected the inputs; the message names their shapes and the
            model's own error.
    """
    return checked_forward(model, entry.example_inputs(batch_size), entry.name)
