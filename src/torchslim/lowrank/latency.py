"""A latency target for low-rank factorization: every candidate layer's latency, dense and
factorized at a ladder of ranks, at one batch size, either predicted by the profiler's latency
model (``profile.latency_model``, calibrated on this machine) or measured; only ranks estimated
faster than the dense layer (and than every larger rank) are kept as rungs. The factorized
model's latency is estimated as the dense model's minus each layer's saving, and ranks are then
allocated over the rungs: one common energy level (``allocate_by_energy``) or the sensitivity
allocator (``allocate.allocate``), with the layers' latency as the cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.lowrank._layers import LayerFacts
from torchslim.lowrank.allocate import LayerScan, rank_ladder
from torchslim.lowrank.modules import build_factorized
from torchslim.quantize.modules import eval_mode

RUNGS = 12  # ranks estimated per layer, evenly spaced along its ladder (each measured rung costs)
# A measured rung counts as faster only when it beats the dense layer by this share: closer than
# that is within the run-to-run spread of one layer on a shared core (fashion-resnet20, batch 16:
# layers estimated 1-10 % faster added up to a model estimated at 0.95x and measured at 1.06x).
MEASURED_MARGIN = 0.1


def at_batch(inputs: Sequence[Any], batch_size: int) -> tuple[Any, ...]:
    """``inputs`` at ``batch_size``: each tensor's first sample repeated (others unchanged)."""
    return tuple(
        t[:1].expand(batch_size, *t.shape[1:]).contiguous()
        if isinstance(t, torch.Tensor) and t.dim() > 0
        else t
        for t in inputs
    )


class LatencyEstimator:
    """Seconds of one call of a module: predicted (the calibrated latency model of this machine
    and thread count) or measured: the median of ``repeats`` calls after ``warmup``, in the
    calling thread's CPU time when the call runs on a CPU with one intra-op thread (so the time
    other processes take from a shared core is not counted: they preempt a whole model's
    forward far more often than one layer's, and would make the rest of the model look far
    costlier than its layers), else in wall-clock time."""

    def __init__(self, source: str, warmup: int = 3, repeats: int = 20) -> None:
        from torchslim.profile import latency_cache

        self.source, self.warmup, self.repeats = source, warmup, repeats
        self.model = latency_cache.calibrated_model() if source == "predicted" else None
        self.margin = 0.0 if source == "predicted" else MEASURED_MARGIN

    def seconds(self, module: nn.Module, inputs: Sequence[Any]) -> float:
        from torchslim.evaluate.latency import measure_latency, measure_thread_time
        from torchslim.profile import profile

        with eval_mode(module):
            if self.model is not None:
                report = profile(module, inputs, measure_memory=False, count_calls=True)
                return self.model.predict_report(report)
            device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), None)
            if (device is None or device.type == "cpu") and torch.get_num_threads() == 1:
                stats = measure_thread_time(lambda: module(*inputs), self.warmup, self.repeats)
            else:
                stats = measure_latency(
                    lambda: module(*inputs), self.warmup, self.repeats, device=device
                )
            return float(stats.median) / 1e3


@dataclass
class LayerLatency:
    """A layer's dense seconds and its rungs: (ranks, seconds), each faster than dense and than
    every rung with larger ranks, fastest first."""

    dense_s: float
    rungs: list[tuple[list[int], float]]

    def scan(self) -> LayerScan:
        """The rungs as the sensitivity allocator's ladder, latency as the cost."""
        return LayerScan([(list(r), s) for r, s in self.rungs], self.dense_s)


def layer_latency(
    layer: LayerFacts, kind: str, estimator: LatencyEstimator, batch_size: int
) -> LayerLatency:
    """Estimate ``layer`` dense and at up to ``RUNGS`` ranks of its ladder (built from shapes
    alone: the weights do not change the time), at ``batch_size``; a measured rung must beat
    dense by ``MEASURED_MARGIN``."""
    assert layer.sample is not None
    sample = at_batch([layer.sample], batch_size)
    dense = estimator.seconds(layer.module, sample)
    ladder = [ranks for ranks, _ in rank_ladder(layer, "macs")]  # cheapest first
    if len(ladder) > RUNGS:
        ladder = [ladder[round(i * (len(ladder) - 1) / (RUNGS - 1))] for i in range(RUNGS)]
    weight = layer.module.weight
    assert isinstance(weight, torch.Tensor)
    rungs, fastest = [], dense * (1.0 - estimator.margin)
    for ranks in reversed(ladder):  # largest ranks first: keep a rung only if it is faster
        skeleton = build_factorized(layer.module, {"kind": kind, "ranks": ranks})
        seconds = estimator.seconds(skeleton.to(weight.device, weight.dtype), sample)
        if seconds < fastest:
            rungs.append((ranks, seconds))
            fastest = seconds
    return LayerLatency(dense, rungs[::-1])


def check_reachable(
    times: dict[str, LayerLatency], model_s: float, kept: float, where: str
) -> float:
    """The layers' latency budget that keeps the model at ``kept`` of ``model_s``.

    Raises:
        ConfigError: even the fastest rung of every layer leaves the model above it.
    """
    dense = sum(t.dense_s for t in times.values())
    budget = dense - (1.0 - kept) * model_s
    fastest = sum(t.rungs[0][1] if t.rungs else t.dense_s for t in times.values())
    if fastest > budget:
        best = math.floor((dense - fastest) / model_s * 100) / 100  # the most removable
        raise ConfigError(
            f"target latency={1.0 - kept:g} cannot be reached {where}: the fastest factorization "
            f"of every layer removes an estimated {best:.2f} of the dense model's latency (the "
            f"factorizable layers take {dense / model_s:.0%} of it; "
            f"{sum(not t.rungs for t in times.values())} of {len(times)} have no factorization "
            f"faster than dense); lower R to at most {best:.2f}"
        )
    return budget


def estimate_after(
    times: dict[str, LayerLatency],
    ranks: Mapping[str, list[int] | None],
    model_s: float,
    batch_size: int,
) -> tuple[float, dict[str, dict[str, Any]]]:
    """The factorized model's estimated seconds (the dense model's less each layer's saving),
    and per layer its dense and chosen estimate in ms (and why a layer without a faster rung
    stays dense)."""
    estimate = model_s
    figures: dict[str, dict[str, Any]] = {}
    for name, t in times.items():
        chosen = next((s for r, s in t.rungs if r == ranks[name]), None)
        figures[name] = {"latency_ms": {
            "dense": round(t.dense_s * 1e3, 4),
            "factorized": None if chosen is None else round(chosen * 1e3, 4),
        }}  # fmt: skip
        if not t.rungs:
            figures[name]["reason"] = (
                f"no factorization estimated faster than dense at batch {batch_size}"
            )
        estimate -= 0.0 if chosen is None else t.dense_s - chosen
    return estimate, figures


def allocate_by_energy(
    facts: dict[str, LayerFacts], scans: dict[str, LayerScan], budget: float
) -> dict[str, list[int] | None]:
    """One common energy level for every layer, the highest whose summed latency meets
    ``budget``: each layer at its fastest rung keeping at least that energy in every mode, dense
    where no rung does (the summed latency never falls as the level rises: bisection)."""

    def choice(energy: float) -> dict[str, tuple[list[int], float] | None]:
        chosen = {}
        for name, layer in facts.items():
            floor = layer.ranks_for_energy(energy)
            fits = [rung for rung in scans[name].ladder if all(
                r >= f for r, f in zip(rung[0], floor, strict=True))]  # fmt: skip
            chosen[name] = fits[0] if fits else None
        return chosen

    def total(energy: float) -> float:
        return sum(
            scans[name].dense_cost if rung is None else rung[1]
            for name, rung in choice(energy).items()
        )

    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if total(middle) <= budget else (low, middle)
    return {name: None if rung is None else rung[0] for name, rung in choice(low).items()}
