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
Latency is predicted at each of ``config.latency_batch_sizes`` and combined by geometric mean:
batch 1 and batch 16 run different conv kernels (``profile.conv_kernels``), and a width that is
fast at one can be no faster than the dense width at the other. Each width step is offered twice:
kept widths rounded to ``config.round_to``, and to the oneDNN channel block of this CPU (16 on
AVX-512), which only the blocked kernels turn into time saved.
Block drops follow ShortGPT-style block influence (arXiv:2403.03853) for residual CNNs; the width
moves are DepGraph groups (arXiv:2301.12900).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchslim._output_error import damage, model_outputs
from torchslim._targets import matches
from torchslim.profile import profile
from torchslim.profile.conv_kernels import channel_block
from torchslim.prune._target import (
    TARGETS,
    geometric_mean,
    predicted_per_batch,
    report_cost,
    target_of,
)
from torchslim.prune.blocks import drop_block, residual_blocks
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.graph import PruneError
from torchslim.prune.plan import build_plan

if TYPE_CHECKING:
    from torchslim.profile.report import ProfileReport

LatencyFunction = Callable[["ProfileReport"], float]  # seconds of a profiled forward

OVERSHOOT = 0.02  # a block drop may pass the target by this share of the original cost
GROUP_CANDIDATES = 3  # per step, groups measured for a one-block width cut (``_block_steps``)
DAMAGE_FLOOR = 1e-6  # added damage below this counts as this (a free move is not infinite)


@dataclass(frozen=True)
class Move:
    """One planned step and the figures of the model after it."""

    kind: str  # "block" or "widths"
    detail: str  # the block's name, or what the width step removed
    cost: float  # the target quantity after the step
    latency_s: float  # predicted seconds of one forward: geometric mean over the batch sizes
    damage: float  # relative squared output error vs the original on calibration batches
    batch_latency_s: tuple[float, ...] = ()  # predicted seconds at each latency batch size


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
    batch_sizes: tuple[int, ...] = (1,)

    @property
    def dropped(self) -> list[str]:
        return [m.detail for m in self.moves if m.kind == "block"]

    def __str__(self) -> str:
        lines = [
            f"DepthWidthPlan for {type(self.model).__name__} ({self.what} target): MACs "
            f"{self.macs_before:,} -> {self.macs_after:,}, params {self.params_before:,} -> "
            f"{self.params_after:,}, predicted {self._ms(self.start)} -> "
            f"{self._ms(self.moves[-1] if self.moves else self.start)}; blocks dropped "
            f"{len(self.dropped)} of {len(self.candidates)} residual candidates"
        ]
        for index, move in enumerate(self.moves):
            lines.append(
                f"  {index + 1:>2}. {move.kind:<6} {move.detail}: {self.what} {move.cost:,.4g}, "
                f"predicted {self._ms(move)}, output damage {move.damage:.4f}"
            )
        return "\n".join(lines)

    def _ms(self, move: Move) -> str:
        """Predicted ms at each batch size, e.g. "b1 1.85 ms, b16 20.1 ms"."""
        pairs = zip(self.batch_sizes, move.batch_latency_s, strict=False)
        return ", ".join(f"b{b} {s * 1e3:.4g} ms" for b, s in pairs)

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
    latency: LatencyFunction
    batch_sizes: tuple[int, ...]

    def seconds(self, model: nn.Module) -> tuple[float, ...]:
        inputs, sizes = self.example_inputs, self.batch_sizes
        return predicted_per_batch(model, inputs, sizes, self.latency, count_calls=False)

    def measure(self, kind: str, detail: str, model: nn.Module) -> Move:
        per_batch = self.seconds(model)
        seconds = geometric_mean(per_batch)
        if self.what == TARGETS["target_latency_ratio"]:
            cost = seconds
        else:
            cost = report_cost(profile(model, self.example_inputs, measure_memory=False), self.what)
        hurt = damage(model, self.batches, self.reference)
        return Move(kind, detail, cost, seconds, hurt, per_batch)


def build_depth_plan(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    config: StructuredPruneConfig,
    calibration: Sequence[Sequence[Any]] | None = None,
    latency: LatencyFunction | None = None,
) -> DepthWidthPlan:
    """Plan block drops and width steps on a copy of ``model`` to meet ``config``'s target.

    ``latency`` predicts the seconds of a profiled forward (default: this machine's calibrated
    latency model); it is asked at each of ``config.latency_batch_sizes``.
    """
    if latency is None:
        from torchslim.profile.latency_cache import calibrated_model

        latency = calibrated_model().predict_report
    found = target_of(config)
    if found is None:
        raise PruneError("depth='auto' needs a MACs, params or latency target")
    what, target = found
    work = copy.deepcopy(model).eval()
    batches = [tuple(b) for b in calibration] if calibration else [tuple(example_inputs)]
    search = _Search(work, example_inputs, batches, model_outputs(work, batches), what, latency,
                     config.latency_batch_sizes)  # fmt: skip
    candidates = droppable_blocks(work, example_inputs, config.ignore)
    start = search.measure("start", "original", work)
    plan = DepthWidthPlan(model, work, what, candidates, start)
    plan.batch_sizes = config.latency_batch_sizes
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


def droppable_blocks(
    model: nn.Module, example_inputs: tuple[Any, ...], ignore: tuple[str, ...]
) -> list[str]:
    """The residual blocks of ``model`` none of whose modules ``ignore`` names."""
    return [
        name
        for name in residual_blocks(model, example_inputs)
        if not any(matches(n, ignore) for n, _ in model.get_submodule(name).named_modules(
            prefix=name))
    ]  # fmt: skip


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
    for round_to in _roundings(config.round_to):
        thinner = _width_step(search, current.cost, amount, dataclasses.replace(config,
                              round_to=round_to))  # fmt: skip
        if thinner is None:
            continue
        if round_to != config.round_to and thinner[0].cost < goal - OVERSHOOT * full:
            continue  # coarse widths overshooting the target: the fine step stays on offer
        removed = f"{current.cost - thinner[0].cost:,.4g} {search.what}, round_to {round_to}"
        options.append((dataclasses.replace(thinner[0], detail=removed), thinner[1]))
    for cut, cut_model in _block_steps(search, config):
        if current.cost > cut.cost >= goal - OVERSHOOT * full:
            options.append((cut, cut_model))
    if not options:
        raise PruneError(
            f"target {1 - goal / full:.0%} fewer {search.what} is out of reach: no residual "
            f"block left to drop and no width step possible at {current.cost:,.4g}"
        )
    return max(options, key=lambda option: _value(current, option[0]))


def _block_steps(search: _Search, config: StructuredPruneConfig) -> list[tuple[Move, nn.Module]]:
    """One channel group each thinned by one oneDNN block (to the next lower multiple of the
    block and ``round_to``): a width a batched conv runs faster at, where a global step may
    leave every group just past a block. Only the ``GROUP_CANDIDATES`` groups losing the least
    importance are measured."""
    step = math.lcm(config.round_to, channel_block())
    whole = dataclasses.replace(config, depth="off", uniform_ratio=0.0, target_macs_ratio=None,
                                target_params_ratio=None, target_latency_ratio=None)  # fmt: skip
    try:
        plan = build_plan(search.model, search.example_inputs, whole)
    except PruneError:
        return []
    ranked = []
    for group in plan.groups:
        keep = (group.size - 1) // step * step
        if group.frozen_reason is None and keep > 0:
            order = torch.argsort(group.scores, descending=True)
            lost = float(group.scores[order[keep:]].sum() / group.scores.sum().clamp_min(1e-12))
            ranked.append((lost, group.root, group, torch.sort(order[:keep]).values))
    steps = []
    for _, _, group, kept in sorted(ranked, key=lambda r: r[:2])[:GROUP_CANDIDATES]:
        group.keep = kept
        thinner = plan.pruned_copy().eval()
        group.keep = None
        detail = f"group {group.root} {group.size} -> {len(kept)} channels"
        steps.append((search.measure("widths", detail, thinner), thinner))
    return steps


def _roundings(round_to: int) -> list[int]:
    """The width roundings a step is offered at: the configured one, and the multiple of it
    that fills the CPU's oneDNN channel block (what batched convs run at; ``conv_kernels``)."""
    blocked = math.lcm(round_to, channel_block())
    return [round_to] if blocked == round_to else [round_to, blocked]


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
    full = geometric_mean(search.seconds(search.model))
    price = {}
    for name in candidates:
        with _without(search.model, name):
            hurt = damage(search.model, search.batches, search.reference)
            seconds = full - geometric_mean(search.seconds(search.model))
        price[name] = max(hurt, DAMAGE_FLOOR) / max(seconds, 1e-9)
    return sorted(candidates, key=lambda n: price[n])


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
