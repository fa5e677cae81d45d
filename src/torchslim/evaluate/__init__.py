"""Evaluation: a model's metric on its real data, parameters, size as saved, latency, memory."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.evaluate.latency import LatencyStats, measure_latency
from torchslim.evaluate.memory import peak_activation_bytes, tensor_bytes
from torchslim.evaluate.report import EvaluationReport, comparison_table, format_bytes
from torchslim.evaluate.size import parameter_count, saved_size_bytes
from torchslim.zoo import Batch, ZooEntry, get
from torchslim.zoo._entry import checked_forward


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)


def _memory(model: nn.Module, batch: Batch) -> tuple[int, int | None]:
    """(weight bytes, peak activation bytes) of one forward pass.

    A wrapper around an external runtime (ONNX Runtime, OpenVINO) defines ``saved_size_bytes``:
    its weights are its artifact, and its activations live outside torch, where the storage
    tracker cannot see them — reported as unknown (None), never as a made-up small number.
    """
    own_size = getattr(model, "saved_size_bytes", None)
    if callable(own_size):
        return int(own_size()), None
    inputs = [t for t in batch if isinstance(t, torch.Tensor)]
    existing = [*inputs, *model.parameters(), *model.buffers()]
    return tensor_bytes(model), peak_activation_bytes(lambda: model(*batch), existing)


def evaluate(
    model: nn.Module,
    task: ZooEntry | str | torch.Tensor | tuple[torch.Tensor, ...],
    batch_size: int | None = None,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    repeats: int = 20,
) -> EvaluationReport:
    """Measure ``model`` on ``task``: metrics, size, latency, memory.

    ``task`` is a zoo entry (``torchslim.resolve_model(...)`` gives one for any model) or its
    name, or your model's example inputs (a tensor or a tuple of them): then the metrics are the
    fidelity of ``model`` to itself as it is now (cosine 1.0 — evaluate a compressed copy with
    the entry of the original, ``zoo.user.entry_for_model(original, inputs)``, to compare), and
    ``batch_size`` defaults to the inputs' batch.

    Latency is the median/p90 of ``repeats`` forward passes at ``batch_size`` on the entry's
    example inputs after warm-up, with ``threads`` torch threads (default: torch's current count).
    The model is moved to ``device``; the caller's model is otherwise left unchanged.
    """
    if isinstance(task, torch.Tensor | tuple):
        from torchslim.zoo.user import entry_for_model

        entry: ZooEntry = entry_for_model(model, task)
    else:
        entry = get(task) if isinstance(task, str) else task
    # a runtime that fixed its threads when it was built (llama.cpp) runs with those
    own_threads = getattr(model, "threads", None)
    if batch_size is None:  # a user model's own batch (a .pt2 may accept no other); else 1
        batch_size = entry.default_batch_size if entry.task == "user-model" else 1
    device = torch.device(device)
    model = model.to(device).eval()
    batch = _to_device(entry.example_inputs(batch_size), device)
    checked_forward(model, batch, entry.name)
    metrics = entry.evaluate(model)
    latency = measure_latency(
        lambda: model(*batch), repeats=repeats, threads=threads, device=device
    )
    weights, activations = _memory(model, batch)
    return EvaluationReport(
        model=entry.name,
        metrics=metrics,
        params=parameter_count(model),
        size_bytes=saved_size_bytes(model),
        latency=latency,
        # an external runtime's activations are not seen: its peak is not measured (None),
        # never its file size under that name
        peak_memory_bytes=None if activations is None else weights + activations,
        details={
            "batch_size": batch_size,
            "threads": own_threads or threads or torch.get_num_threads(),
            "device": str(device),
            "weights_bytes": weights,
            "peak_memory": "measured"
            if activations is not None
            else "not measured: the activations live inside an external runtime",
            "peak_activation_bytes": activations,  # None: inside an external runtime
            "latency_ms": {"mean": latency.mean, "min": latency.min, "repeats": latency.repeats},
        },
    )


__all__ = [
    "EvaluationReport",
    "LatencyStats",
    "comparison_table",
    "evaluate",
    "format_bytes",
    "measure_latency",
    "parameter_count",
    "peak_activation_bytes",
    "saved_size_bytes",
]
