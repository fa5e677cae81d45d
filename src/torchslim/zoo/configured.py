"""A zoo model with the user's own weights (``--weights``) or sequence length (``--seq-len``).

Same data and metric as the zoo entry, and still an instance of its class (so code that asks
"is this an image classifier?" gets the same answer); ``--seq-len`` sets the token length of the
example and calibration inputs (what latency, profiling and calibration see), not the metric's
protocol. Weights saved by ``torchslim prune`` have pruned shapes; when the file lies in a prune
artifact (its ``manifest.json`` holds ``pruned_shapes``), the architecture is resized to that
record before the weights are loaded. Any other mismatch is one ``ModelLoadError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from torchslim._hf_directory import load_weights
from torchslim._io import load_state_dict_strict
from torchslim.errors import ModelLoadError
from torchslim.zoo._entry import Batch, ZooEntry


def configured(
    base: ZooEntry,
    weights: Path | None = None,
    seq_len: int | None = None,
    loader: Callable[[], nn.Module] | None = None,
) -> ZooEntry:
    """A copy of ``base`` (same class) that loads ``weights`` (or calls ``loader``, e.g. an
    artifact's) and feeds ``seq_len`` tokens."""
    if weights is not None and not weights.is_file():
        raise ModelLoadError(f"--weights {weights}: no such file")
    cls: Any = type(f"Configured{type(base).__name__}", (_Configured, type(base)), {})
    entry = cls.__new__(cls)
    entry.__dict__.update(base.__dict__)  # the zoo entry's state, shared read-only
    entry.weights, entry.seq_len, entry.loader = weights, seq_len, loader
    if weights is not None:
        entry.name = f"{base.name} ({weights})"
        entry.card = f"{base.card} Weights from {weights}."
    if seq_len is not None:
        entry.card = f"{entry.card} Inputs of {seq_len} tokens."
    return entry


class _Configured:
    """Mixed in before the zoo class: ``super()`` is that class's own method."""

    name: str
    card: str
    weights: Path | None = None
    seq_len: int | None = None
    loader: Callable[[], nn.Module] | None = None

    def load(self) -> nn.Module:
        if self.loader is not None:
            return self.loader()
        model: nn.Module = super().load()  # type: ignore[misc]
        if self.weights is None:
            return model
        record = _pruned_shapes(self.weights)
        if record is not None:
            from torchslim.prune.artifact import resize_to_record

            resize_to_record(model, record)
        load_state_dict_strict(model, load_weights(self.weights), str(self.weights))
        return model.eval()

    def meta_model(self) -> nn.Module:
        if self.weights or self.loader:
            return self.load().to("meta")
        return super().meta_model()  # type: ignore[misc]

    def example_inputs(self, batch_size: int = 1, **kwargs: Any) -> Batch:
        return super().example_inputs(batch_size, **self._with_seq_len(kwargs))  # type: ignore[misc]

    def meta_inputs(self, batch_size: int = 1, **kwargs: Any) -> Batch:
        return super().meta_inputs(batch_size, **self._with_seq_len(kwargs))  # type: ignore[misc]

    def calibration_batches(self, n: int, **kwargs: Any) -> list[Batch]:
        return super().calibration_batches(n, **self._with_seq_len(kwargs))  # type: ignore[misc]

    def _with_seq_len(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs if self.seq_len is None else {"seq_len": self.seq_len, **kwargs}


def _pruned_shapes(weights: Path) -> dict[str, Any] | None:
    """The shape record of the prune artifact ``weights`` lies in, if it lies in one."""
    manifest = weights.parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        record = json.loads(manifest.read_text()).get("pruned_shapes")
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None
