"""Latency-aware structured pruning: whole residual blocks and channel widths, traded by the
latency each saves per unit of damage, until a MACs / params / latency target is met.

At the sizes of the zoo's CNNs a forward costs mostly per-op overhead, so a plan that only thins
layers halves the MACs for a fraction of the time. This planner works greedily on a copy: at each
step it prices two moves that remove the same amount of the target quantity (MACs, params or
predicted seconds): dropping the next residual block (ranked once by one-shot damage per second
saved), or one width step of the dependency-graph engine (``plan.build_plan``). Each move's
latency is predicted by the profiler's calibrated latency model (``profile.latency_model``) and its
damage is measured: the relative squared error of the model's output against the original's on
calibration batches. The move that saves more predicted seconds per unit of added damage wins.
Block drops follow ShortGPT-style block influence (arXiv:2403.03853) for residual CNNs; the width
moves are DepGraph groups (arXiv:2301.12900).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim._output_error import damage, model_outputs
from torchslim._targets import matches
from torchslim.profile import profile
from torchslim.prune._target import TARGETS, predicted_seconds, report_cost, target_of
from torchslim.prune.blocks import drop_block, residual_blocks
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.graph import PruneError
from torchslim.prune.plan import build_plan

if TYPE_CHECKING:
    from torchslim.profile.latency_model import LatencyModel

OVERSHOOT = 0.02  # a block drop may pass the target by this share of the original cost
DAMAGE_FLOOR = 1e-6  # added damage below this counts as this (a free move is not infinite)


@dataclass(frozen=True)
class Move:
    """One planned step and the figures of the model after it."""

    kind: str  # "block" or "widths"
    detail: str  # the block's name, or what the width step removed
    cost: float  # the target quantity after the step
    latency_s: float  # predicted seconds of one forward after the step
    damage: float  # relative squared output error vs the original on calibration batches


@dataclass
class DepthWidthPlan:
    """What ``apply()`` will do; ``print(plan)`` lists every move before anything changes."""

    model: nn.Module
    pruned: nn.Module  # the planned model (a copy); ``apply()`` puts it in place
    what: str
    candidates: list[str]
    start: Move
    moves: list[Move] = field(default_factory=list)
    macs_before: int = 0
    params_before: int = 0
    macs_after: int = 0
    params_after: int = 0

    @property
    def dropped(self) -> list[str]:
        return [m.detail for m in self.moves if m.kind == "block"]

    def __str__(self) -> str:
        lines = [
            f"DepthWidthPlan for {type(self.model).__name__} ({self.what} target): MACs "
            f"{self.macs_before:,} -> {self.macs_after:,}, params {self.params_before:,} -> "
            f"{self.params_after:,}, predicted {self.start.latency_s * 1e3:.3f} -> "
            f"{self.latency_s * 1e3:.3f} ms; blocks dropped {len(self.dropped)} of "
            f"{len(self.candidates)} residual candidates"
        ]
        for index, move in enumerate(self.moves):
            lines.append(
                f"  {index + 1:>2}. {move.kind:<6} {move.detail}: {self.what} {move.cost:,.4g}, "
                f"predicted {move.latency_s * 1e3:.3f} ms, output damage {move.damage:.4f}"
            )
        return "\n".join(lines)

    @property
    def latency_s(self) -> float:
        return self.moves[-1].latency_s if self.moves else self.start.latency_s

    def apply(self) -> nn.Module:
        """Put the planned model in place of ``model``'s contents (same object)."""
        self.pruned.train(self.model.training)
        self.model.__dict__.clear()
        self.model.__dict__.update(self.pruned.__dict__)
        return self.model


@dataclass
class _Search:
    """The planner's working state: the model so far and how to measure a candidate."""

    model: nn.Module
    example_inputs: tuple[Any, ...]
    batches: list[tuple[Any, ...]]
    reference: list[torch.Tensor]
    what: str
    latency: LatencyModel

    def measure(self, kind: str, detail: str, model: nn.Module) -> Move:
        report = profile(model, self.example_inputs, measure_memory=False)
        cost = report_cost(report, self.what, self.latency)
        seconds = predicted_seconds(report, self.latency)
        return Move(kind, detail, cost, seconds, damage(model, self.batches, self.reference))


def build_depth_plan(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    config: StructuredPruneConfig,
    calibration: Sequence[Sequence[Any]] | None = None,
) -> DepthWidthPlan:
    """Plan block drops and width steps on a copy of ``model`` to meet ``config``'s target."""
    from torchslim.profile.latency_model import calibrated_model

    found = target_of(config)
    if found is None:
        raise PruneError("depth='auto' needs a MACs, params or latency target")
    what, target = found
    work = copy.deepcopy(model).eval()
    batches = [tuple(b) for b in calibration] if calibration else [tuple(example_inputs)]
    search = _Search(work, example_inputs, batches, model_outputs(work, batches), what,
                     calibrated_model())  # fmt: skip
    candidates = [
        name
        for name in residual_blocks(work, example_inputs)
        if not any(matches(n, config.ignore) for n, _ in work.get_submodule(name).named_modules(
            prefix=name))
    ]  # fmt: skip
    start = search.measure("start", "original", work)
    plan = DepthWidthPlan(model, work, what, candidates, start)
    before = profile(model, example_inputs, measure_memory=False)
    plan.macs_before, plan.params_before = before.total.macs, before.params
    goal = (1 - target) * start.cost
    queue = rank_blocks(search, candidates)
    current = start
    while current.cost > goal:
        move, chosen = _next_move(search, current, queue, goal, start.cost, config)
        search.model = chosen
        plan.moves.append(move)
        current = move
        if move.kind == "block":
            queue.remove(move.detail)
    plan.pruned = search.model
    after = profile(search.model, example_inputs, measure_memory=False)
    plan.macs_after, plan.params_after = after.total.macs, after.params
    return plan


def _next_move(
    search: _Search,
    current: Move,
    queue: list[str],
    goal: float,
    full: float,
    config: StructuredPruneConfig,
) -> tuple[Move, nn.Module]:
    """The better of dropping the next block and one width step removing as much."""
    options: list[tuple[Move, nn.Module]] = []
    amount = current.cost - goal
    for name in queue[:1]:
        dropped = copy.deepcopy(search.model)
        drop_block(dropped, name)
        move = search.measure("block", name, dropped)
        if move.cost >= goal - OVERSHOOT * full:
            options.append((move, dropped))
            amount = min(amount, current.cost - move.cost)
    thinner = _width_step(search, current.cost, amount, config)
    if thinner is not None:
        removed = f"{current.cost - thinner[0].cost:,.4g} {search.what}"
        options.append((dataclasses.replace(thinner[0], detail=removed), thinner[1]))
    if not options:
        raise PruneError(
            f"target {1 - goal / full:.0%} fewer {search.what} is out of reach: no residual "
            f"block left to drop and no width step possible at {current.cost:,.4g}"
        )
    return max(options, key=lambda option: _value(current, option[0]))


def _value(current: Move, move: Move) -> float:
    """Predicted seconds saved per unit of added output damage."""
    added = max(move.damage - current.damage, DAMAGE_FLOOR)
    return (current.latency_s - move.latency_s) / added


def _width_step(
    search: _Search, cost: float, amount: float, config: StructuredPruneConfig
) -> tuple[Move, nn.Module] | None:
    """The model with ``amount`` of the target quantity removed by channel pruning, or None
    when the width engine cannot remove it."""
    name = next(n for n, w in TARGETS.items() if w == search.what)
    fraction = min(max(amount / cost, 1e-6), 0.999)
    changes: dict[str, Any] = {"depth": "off", name: fraction}
    step = dataclasses.replace(config, **changes)
    try:
        plan = build_plan(search.model, search.example_inputs, step)
    except PruneError:
        return None
    thinner = plan.pruned_copy().eval()
    move = search.measure("widths", "", thinner)
    return (move, thinner) if move.cost < cost else None


def rank_blocks(search: _Search, candidates: list[str]) -> list[str]:
    """Candidates by one-shot output damage per predicted second saved, cheapest first."""
    report = profile(search.model, search.example_inputs, measure_memory=False)
    latency = search.latency
    price = {}
    for name in candidates:
        inside = [r for r in report.records if _within(name, r.module)]
        calls = sum(c for n, c in report.module_calls.items() if _within(name, n))
        seconds = sum(latency.predict_op(r) for r in inside) + (calls - 1) * latency.module_call_s
        with _without(search.model, name):
            hurt = damage(search.model, search.batches, search.reference)
        price[name] = max(hurt, DAMAGE_FLOOR) / max(seconds, 1e-9)
    return sorted(candidates, key=lambda n: price[n])


def _within(block: str, name: str) -> bool:
    return name == block or name.startswith(block + ".")


@contextmanager
def _without(model: nn.Module, name: str) -> Iterator[None]:
    """``model`` with block ``name`` replaced by an identity for the duration."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    block = parent._modules[child]
    parent._modules[child] = nn.Identity()
    try:
        yield
    finally:
        parent._modules[child] = block
