"""Depth + width pruning chosen by measured speed: build several plans that meet the same target
with different depth/width trade-offs, time every one on this machine, keep the fastest whose
output damage is acceptable (``depth="measured"``).

The greedy planner (``depth_plan``) steers by the calibrated latency model, and at the zoo's CNN
sizes that model misranks moves (at batch 16 a 16-channel 28x28 block of fashion-resnet20 takes
1.9 ms, a 64-channel 7x7 one of the same MACs 1.1-1.2 ms); its plans at 2x fewer MACs ran
1.6-1.85x faster. Here every residual block is timed alone on its own input and the blocks are
ranked by output damage per second saved. Block sets: none, and the first k of that order for the
``BLOCK_COUNTS`` largest k within the target (dropping blocks is what saves per-op time), the
largest also with its last block swapped for the next. Each set gets one global width step of
the dependency-graph engine to the target, with kept widths rounded to ``config.round_to`` and to
the CPU's oneDNN channel block (``conv_kernels``); the sets dropping the most blocks also get the
step within one stage only. Every candidate is timed in a pair with the original (interleaved,
as a dense-vs-pruned benchmark times them) at each of ``config.latency_batch_sizes``; its score
is the geometric mean of its speed-ups over the original. A candidate is acceptable when its
output damage (relative squared error against the original on calibration batches) is within
``DAMAGE_SLACK`` of the least damage of any candidate.
Block drops after ShortGPT's block influence (arXiv:2403.03853); width groups after DepGraph
(arXiv:2301.12900); choosing by measurement as NetAdapt does (arXiv:1804.03230).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim._output_error import damage, model_outputs
from torchslim.benchmark import BenchmarkConfig, compare
from torchslim.profile import profile
from torchslim.prune._inputs import batched
from torchslim.prune._target import TARGETS, cost, geometric_mean, target_of
from torchslim.prune.blocks import drop_block
from torchslim.prune.config import StructuredPruneConfig
from torchslim.prune.depth_plan import (
    DAMAGE_FLOOR,
    OVERSHOOT,
    DepthWidthPlan,
    Move,
    _roundings,
    droppable_blocks,
)
from torchslim.prune.graph import PruneError
from torchslim.prune.plan import build_plan

Call = tuple[nn.Module, tuple[Any, ...]]  # a module and the positional inputs it is timed on
Timer = Callable[[Sequence[Call]], list[float]]  # seconds of one forward of each call

# acceptable: output damage at most 50 % above the least of any candidate. fashion-resnet20 at 2x
# fewer MACs, 1 epoch of fine-tuning: damage 0.82 -> 91.9 % accuracy, 1.18 -> 91.1 %
DAMAGE_SLACK = 0.5
WARMUP = 3  # untimed forwards of each call before the interleaved rounds
ROUNDS = 25  # timed forwards of each call (the median counts)
BLOCK_COUNTS = 3  # block-drop counts tried (the largest ones meeting the target), besides none


@dataclass(frozen=True)
class Candidate:
    """One plan meeting the target: the blocks it drops, its width rounding, what it measured."""

    dropped: tuple[str, ...]
    round_to: int | None  # None: the block drops alone met the target (no width step)
    cost: float  # the target quantity (MACs, parameters or predicted seconds)
    damage: float
    stage: str | None = None  # the width step pruned inside this module only (None: anywhere)
    seconds: tuple[float, ...] = ()  # measured at each latency batch size
    speedups: tuple[float, ...] = ()  # the original's seconds over these, timed in pairs

    def describe(self, batch_sizes: tuple[int, ...]) -> str:
        widths = "no width step" if self.round_to is None else f"widths round_to {self.round_to}"
        widths += f" in {self.stage}" if self.stage else ""
        speed = ", ".join(
            f"b{b} {s * 1e3:.4g} ms ({x:.2f}x)"
            for b, s, x in zip(batch_sizes, self.seconds, self.speedups, strict=True)
        )
        return f"{len(self.dropped):>2} blocks, {widths}: {speed}, damage {self.damage:.4f}"


@dataclass
class MeasuredPlan(DepthWidthPlan):
    """A ``DepthWidthPlan`` chosen among timed candidates; ``print(plan)`` lists them all."""

    chosen: Candidate | None = None
    timed: list[Candidate] = field(default_factory=list)
    acceptable_damage: float = 0.0

    @property
    def dropped(self) -> list[str]:
        return list(self.chosen.dropped) if self.chosen else []

    @property
    def latency_s(self) -> float:
        """Measured seconds of the chosen candidate (geometric mean over the batch sizes)."""
        return geometric_mean(self.chosen.seconds) if self.chosen else self.start.latency_s

    def __str__(self) -> str:
        start = self.start.batch_latency_s
        original = ", ".join(
            f"b{b} {s * 1e3:.4g} ms" for b, s in zip(self.batch_sizes, start, strict=True)
        )
        lines = [
            f"MeasuredPlan for {type(self.model).__name__} ({self.what} target): MACs "
            f"{self.macs_before:,} -> {self.macs_after:,}, params {self.params_before:,} -> "
            f"{self.params_after:,}; original {original}; {len(self.timed)} candidates timed, "
            f"acceptable damage <= {self.acceptable_damage:.4f}"
        ]
        for candidate in self.timed:
            mark = "->" if candidate is self.chosen else "  "
            lines.append(f"  {mark} {candidate.describe(self.batch_sizes)}")
        if self.chosen is not None:
            lines.append(f"  dropped: {', '.join(self.chosen.dropped) or 'none'}")
        return "\n".join(lines)


@dataclass
class _State:
    """What every candidate is measured against: the original's outputs and target quantity."""

    model: nn.Module
    example_inputs: tuple[Any, ...]
    batches: list[tuple[Any, ...]]
    reference: list[torch.Tensor]
    what: str
    batch_sizes: tuple[int, ...]

    def cost(self, model: nn.Module) -> float:
        return cost(model, self.example_inputs, self.what, self.batch_sizes)

    def damage(self, model: nn.Module) -> float:
        return damage(model, self.batches, self.reference)


def time_calls(calls: Sequence[Call]) -> list[float]:
    """Median seconds of each call, interleaved in a shuffled order per round (a slow spell of a
    shared core hits all alike; ``benchmark.compare``). One thread: the thread's CPU time (time
    descheduled does not count); more threads: wall time."""
    threads = torch.get_num_threads()
    config = BenchmarkConfig(warmup=WARMUP, rounds=ROUNDS, threads=threads, max_seconds=60.0,
                             clock="thread_cpu" if threads == 1 else "wall")  # fmt: skip
    variants = {str(i): functools.partial(m, *x) for i, (m, x) in enumerate(calls)}
    result = compare(variants, "0", config)
    return [statistics.median(result.variants[name].samples_ms) / 1e3 for name in variants]


def build_measured_plan(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    config: StructuredPruneConfig,
    calibration: Sequence[Sequence[Any]] | None = None,
    timer: Timer | None = None,
) -> MeasuredPlan:
    """Candidate depth/width plans for ``config``'s target, timed; the fastest acceptable one.

    ``timer`` times modules on inputs (default: ``time_calls``, looked up when called).
    """
    found = target_of(config)
    if found is None:
        raise PruneError("depth='measured' needs a MACs, params or latency target")
    what, target = found
    timer = timer or time_calls
    work = copy.deepcopy(model).eval()
    batches = [tuple(b) for b in calibration] if calibration else [tuple(example_inputs)]
    state = _State(work, example_inputs, batches, model_outputs(work, batches), what,
                   config.latency_batch_sizes)  # fmt: skip
    blocks = droppable_blocks(work, example_inputs, config.ignore)
    full = state.cost(work)
    order = _rank_blocks(state, blocks, timer)
    built = _candidates(state, order, (1 - target) * full, full, config)
    if not built:
        raise PruneError(
            f"target {target:.0%} fewer {what} is out of reach: no depth/width candidate meets it"
        )
    original, measured = _time_paired(timer, work, [m for _, m in built], state)
    timed = [
        dataclasses.replace(c, seconds=seconds, speedups=speedups)
        for (c, _), (seconds, speedups) in zip(built, measured, strict=True)
    ]
    acceptable = min(c.damage for c in timed) * (1 + DAMAGE_SLACK)
    chosen = max((c for c in timed if c.damage <= acceptable),
                 key=lambda c: geometric_mean(c.speedups))  # fmt: skip
    start = Move("start", "original", full, geometric_mean(original), 0.0, original)
    plan = MeasuredPlan(model, built[timed.index(chosen)][1], what, blocks, start, chosen=chosen,
                        timed=timed, acceptable_damage=acceptable)  # fmt: skip
    plan.batch_sizes = config.latency_batch_sizes
    _count(plan, example_inputs)
    return plan


def _rank_blocks(state: _State, blocks: list[str], timer: Timer) -> list[str]:
    """Blocks by one-shot output damage per measured second saved, cheapest first; a block's
    seconds are its own forward timed on its own input at each batch size (geometric mean)."""
    if not blocks:
        return []
    per_size = []
    for size in state.batch_sizes:
        inputs = _block_inputs(state.model, blocks, batched(state.example_inputs, size))
        per_size.append(timer([(state.model.get_submodule(n), inputs[n]) for n in blocks]))
    price = {}
    for index, name in enumerate(blocks):
        dropped = copy.deepcopy(state.model)
        drop_block(dropped, name)
        seconds = geometric_mean(tuple(times[index] for times in per_size))
        price[name] = max(state.damage(dropped), DAMAGE_FLOOR) / max(seconds, 1e-9)
    return sorted(blocks, key=lambda n: price[n])


def _block_inputs(
    model: nn.Module, blocks: list[str], inputs: tuple[Any, ...]
) -> dict[str, tuple[Any, ...]]:
    """The positional inputs each block receives in one forward of ``model`` on ``inputs``."""
    seen: dict[str, tuple[Any, ...]] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _, args, name=name: seen.setdefault(name, args)
        )
        for name in blocks
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _candidates(
    state: _State, order: list[str], goal: float, full: float, config: StructuredPruneConfig
) -> list[tuple[Candidate, nn.Module]]:
    """Each block set of ``_block_sets`` and, while above ``goal``, one width step to it at each
    rounding; for the sets dropping the most blocks also within one stage only (the blocks'
    parent module: a conv's cost per MAC differs by stage). None passes the goal by more than
    ``OVERSHOOT``."""
    floor = goal - OVERSHOOT * full
    stages = sorted({name.rpartition(".")[0] for name in order if "." in name})
    sets = _block_sets(state, order, floor)
    most = max(len(names) for names, _, _ in sets)
    built: list[tuple[Candidate, nn.Module]] = []
    for names, dropped, remaining in sets:
        if remaining <= goal:
            built.append((Candidate(names, None, remaining, state.damage(dropped)), dropped))
            continue
        where = [None, *stages] if len(names) == most else [None]
        for round_to, stage in itertools.product(_roundings(config.round_to), where):
            step = _width_config(config, state.what, (remaining - goal) / remaining, round_to,
                                 stage)  # fmt: skip
            thinner = _width_step(dropped, state, step)
            left = None if thinner is None else state.cost(thinner)
            if thinner is not None and left is not None and left >= floor:
                candidate = Candidate(names, round_to, left, state.damage(thinner), stage)
                built.append((candidate, thinner))
    return built


def _block_sets(
    state: _State, order: list[str], floor: float
) -> list[tuple[tuple[str, ...], nn.Module, float]]:
    """(blocks dropped, the model without them, its cost): none, and the first k of ``order``
    for the ``BLOCK_COUNTS`` largest k that stay above ``floor`` (more blocks dropped is what
    runs faster at the same cost), the largest also with its last block swapped for the next."""
    models = [copy.deepcopy(state.model)]
    costs = [state.cost(models[0])]
    for name in order:
        if costs[-1] <= floor:
            break
        model = copy.deepcopy(models[-1])
        drop_block(model, name)
        models.append(model)
        costs.append(state.cost(model))
    counts = [k for k, c in enumerate(costs) if c >= floor]
    sets = [(tuple(order[:k]), models[k], costs[k]) for k in sorted({0, *counts[-BLOCK_COUNTS:]})]
    largest = counts[-1]
    if 0 < largest < len(order):
        swapped = (*order[: largest - 1], order[largest])
        model = copy.deepcopy(models[largest - 1])
        drop_block(model, order[largest])
        if state.cost(model) >= floor:
            sets.append((swapped, model, state.cost(model)))
    return sets


def _width_config(
    config: StructuredPruneConfig, what: str, fraction: float, round_to: int, stage: str | None
) -> StructuredPruneConfig:
    """``config`` as one width step removing ``fraction`` of ``what``; with ``stage``, only
    the output channels of modules inside it are pruned."""
    name = next(n for n, w in TARGETS.items() if w == what)
    ignore = config.ignore if stage is None else (*config.ignore,
                                                  f"re:(?!{re.escape(stage)}\\.).*")  # fmt: skip
    changes: dict[str, Any] = {"depth": "off", "round_to": round_to, "ignore": ignore,
                               name: min(max(fraction, 1e-6), 0.999)}  # fmt: skip
    return dataclasses.replace(config, **changes)


def _width_step(model: nn.Module, state: _State, step: StructuredPruneConfig) -> nn.Module | None:
    """A pruned copy of ``model`` by the width config ``step``, or None where the width engine
    cannot meet it."""
    try:
        return build_plan(model, state.example_inputs, step).pruned_copy().eval()
    except PruneError:
        return None


def _time_paired(
    timer: Timer, original: nn.Module, models: list[nn.Module], state: _State
) -> tuple[tuple[float, ...], list[tuple[tuple[float, ...], tuple[float, ...]]]]:
    """Each model timed interleaved with the original alone, as a dense-vs-pruned benchmark
    runs them (with many models in turn none stays in cache, and the ratios differ): the
    original's median seconds, and each model's seconds and speed-up over the original in its
    pair, at every latency batch size."""
    original_s: list[float] = []
    seconds: list[list[float]] = [[] for _ in models]
    speedups: list[list[float]] = [[] for _ in models]
    for size in state.batch_sizes:
        inputs = batched(state.example_inputs, size)
        pairs = [timer([(original, inputs), (model, inputs)]) for model in models]
        original_s.append(statistics.median(pair[0] for pair in pairs))
        for index, (base, own) in enumerate(pairs):
            seconds[index].append(own)
            speedups[index].append(base / max(own, 1e-12))
    rows = [(tuple(s), tuple(x)) for s, x in zip(seconds, speedups, strict=True)]
    return tuple(original_s), rows


def _count(plan: MeasuredPlan, inputs: tuple[Any, ...]) -> None:
    before = profile(plan.model, inputs, measure_memory=False)
    after = profile(plan.pruned, inputs, measure_memory=False)
    plan.macs_before, plan.params_before = before.total.macs, before.params
    plan.macs_after, plan.params_after = after.total.macs, after.params
