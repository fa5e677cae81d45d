"""Ranks per layer from a sensitivity scan, under one global parameter or MAC target.

The scan factorizes one layer at a time at a few candidate ranks (those keeping, say, 25 / 50 /
75 % of the layer's own cost) and measures the damage: the relative squared error of the
model's outputs on calibration batches (a noise power: roughly additive over layers). Each
layer's damage is then read as a function of its kept cost (piecewise linear through the
scanned points, zero when dense), and a greedy allocator lowers, one rank step at a time, the
layer whose next step adds the least damage per unit of cost saved until the summed cost meets
the target (as the pruning allocator does for channel groups, Li et al., arXiv:1608.08710,
section 3.4; here the steps are single ranks, so the target is met to within one rank step of
one layer). Ranks below the cheapest scanned point are never chosen (their damage is unknown).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim._output_error import damage, model_outputs
from torchslim.errors import ConfigError
from torchslim.lowrank._layers import LayerFacts
from torchslim.quantize.modules import eval_mode

Batches = Sequence[Sequence[Any]]
Build = Callable[[LayerFacts, list[int]], nn.Module]  # a layer's factorization at given ranks


@dataclass
class LayerScan:
    """One layer: its rank ladder (cheapest first, every rung cheaper than dense), the dense
    cost, and the scanned points (kept fraction, ranks, cost, measured damage)."""

    ladder: list[tuple[list[int], float]]
    dense_cost: float
    points: list[dict[str, Any]] = field(default_factory=list)

    def damage(self, cost: float) -> float:
        """Predicted damage at ``cost`` (not below the cheapest scanned point): linear between
        scanned points, 0 when dense, never less than at a costlier scanned point."""
        known = [(float(self.dense_cost), 0.0)] + [(p["cost"], p["damage"]) for p in self.points]
        known.sort(reverse=True)  # costliest first; damage made non-increasing in cost below
        for i in range(1, len(known)):
            known[i] = (known[i][0], max(known[i][1], known[i - 1][1]))
        for (c_high, d_high), (c_low, d_low) in itertools.pairwise(known):
            if cost >= c_low:
                return d_low + (d_high - d_low) * (cost - c_low) / max(c_high - c_low, 1e-9)
        return known[-1][1]


def rank_ladder(layer: LayerFacts, unit: str) -> list[tuple[list[int], float]]:
    """Every distinct rank choice on the layer's energy path that costs less than dense, with
    its cost, cheapest first (one more singular value kept in one mode per rung)."""
    levels: set[float] = set()
    for spectrum in layer.spectra:
        squares = spectrum.double().pow(2)  # (k,)
        levels.update((torch.cumsum(squares, 0) / squares.sum().clamp_min(1e-30)).tolist())
    dense = layer.cost(None, unit)
    ladder: dict[tuple[int, ...], float] = {}
    for level in sorted(levels):
        ranks = layer.ranks_for_energy(min(level, 1.0))
        cost = layer.cost(ranks, unit)
        if cost < dense:
            ladder.setdefault(tuple(ranks), cost)
    return sorted(((list(r), c) for r, c in ladder.items()), key=lambda rung: rung[1])


def cost_scans(facts: dict[str, LayerFacts], unit: str) -> dict[str, LayerScan]:
    """Each layer's ladder with its parameters or MACs as the cost, not yet scanned."""
    return {name: LayerScan(rank_ladder(layer, unit), layer.cost(None, unit))
            for name, layer in facts.items()}  # fmt: skip


def scan_layers(
    model: nn.Module,
    facts: dict[str, LayerFacts],
    build: Build,
    calibration: Batches,
    keep: Sequence[float],
    scans: dict[str, LayerScan],
) -> dict[str, LayerScan]:
    """Factorize each layer alone at the rungs of its ladder in ``scans`` keeping each fraction
    of ``keep`` of its own cost; record the relative output error, and drop the rungs below the
    cheapest scanned one. The model is never modified (a forward hook substitutes the factorized
    layer's output for the layer's own during the trial)."""
    with eval_mode(model), torch.inference_mode():
        reference = model_outputs(model, calibration)
        for name, layer in facts.items():
            scan = scans[name]
            for fraction in sorted(keep, reverse=True):
                rung = _rung_within(scan.ladder, fraction * scan.dense_cost)
                if rung is None or any(p["ranks"] == rung[0] for p in scan.points):
                    continue
                trial = build(layer, rung[0]).eval()
                error = _relative_error(model, layer.module, trial, calibration, reference)
                scan.points.append(
                    {"keep": fraction, "ranks": rung[0], "cost": rung[1], "damage": error}
                )
            # no extrapolation: below the cheapest scanned rung the damage is unknown
            floor = min((p["cost"] for p in scan.points), default=scan.dense_cost)
            scan.ladder = [rung for rung in scan.ladder if rung[1] >= floor]
    return scans


def allocate(scans: dict[str, LayerScan], budget: float) -> dict[str, list[int] | None]:
    """Ranks per layer (None: left dense) whose summed cost is at most ``budget``, lowering
    first the layer whose next rung adds the least predicted damage per unit of cost saved.

    Raises:
        ConfigError: even the cheapest rung of every layer costs more than ``budget``.
    """
    cheapest = sum(s.ladder[0][1] if s.ladder else s.dense_cost for s in scans.values())
    if cheapest > budget:
        dense = sum(s.dense_cost for s in scans.values())
        raise ConfigError(
            f"the target cannot be reached within the scanned ranks (the cheapest scanned ranks "
            f"of every layer keep {cheapest / dense:.2f} of their cost, the target "
            f"{budget / dense:.2f}); lower the target or add a smaller fraction to scan_keep"
        )
    position = {name: len(scan.ladder) for name, scan in scans.items()}  # len = dense
    total = float(sum(scan.dense_cost for scan in scans.values()))
    heap = [step for name in scans if (step := _next_step(scans[name], name, position))]
    heapq.heapify(heap)
    while total > budget:
        _, name, saved = heapq.heappop(heap)
        position[name] -= 1
        total -= saved
        if step := _next_step(scans[name], name, position):
            heapq.heappush(heap, step)
    return {
        name: scans[name].ladder[i][0] if i < len(scans[name].ladder) else None
        for name, i in position.items()
    }


def _next_step(
    scan: LayerScan, name: str, position: dict[str, int]
) -> tuple[float, str, float] | None:
    """(added damage per unit saved, layer, cost saved) of the layer's next rung down."""
    i = position[name]
    if i == 0:
        return None
    now = scan.ladder[i][1] if i < len(scan.ladder) else scan.dense_cost
    nxt = scan.ladder[i - 1][1]
    saved = float(now - nxt)
    return (scan.damage(nxt) - scan.damage(now)) / max(saved, 1e-9), name, saved


def _rung_within(
    ladder: list[tuple[list[int], float]], cost: float
) -> tuple[list[int], float] | None:
    fitting = [rung for rung in ladder if rung[1] <= cost]
    return fitting[-1] if fitting else (ladder[0] if ladder else None)


def _relative_error(
    model: nn.Module,
    layer: nn.Module,
    trial: nn.Module,
    batches: Batches,
    reference: list[torch.Tensor],
) -> float:
    """The output error (``_output_error.damage``) with ``trial`` standing in for ``layer``."""
    handle = layer.register_forward_hook(lambda module, args, output: trial(*args))
    try:
        return damage(model, batches, reference)
    finally:
        handle.remove()
