"""Compare variants of a computation in one process, interleaved, against a baseline.

Every speed claim of torchslim comes from here. Timing each variant in its own block lets a
change in machine load (another job, thermal throttling, turbo) land on one variant only and
pass for a speed-up; interleaving the variants call by call, in a freshly shuffled order each
round, spreads such drift over all of them, so the ratio of medians stays honest.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import torch

from torchslim._machine import machine_facts
from torchslim.benchmark.config import BenchmarkConfig
from torchslim.benchmark.result import BenchmarkResult, VariantResult
from torchslim.errors import did_you_mean
from torchslim.evaluate.latency import fixed_threads, time_call

Variant = Callable[[], Any]
Check = Callable[[Any, Any], float]


def compare(
    variants: Mapping[str, Variant],
    baseline: str,
    config: BenchmarkConfig | None = None,
    check: Check | None = None,
) -> BenchmarkResult:
    """Time every variant, interleaved, and report medians, spread and speed-ups vs ``baseline``.

    Each variant is a no-argument callable that closes over its model and the same inputs
    (``lambda: model(x)``). All variants get ``config.warmup`` untimed calls, then up to
    ``config.rounds`` rounds of one timed call each, in an order shuffled per round (seeded by
    ``config.seed``) so that no variant always runs first and, where two or more remain, none
    runs twice in a row. A variant whose timed calls exceed ``config.max_seconds`` drops out
    once it has ``min(3, rounds)`` samples. Calls run under ``torch.inference_mode()`` with a
    fixed thread count and the garbage collector paused, and synchronise the GPU when
    ``config.device`` is CUDA.

    Args:
        variants: name -> callable; insertion order is the order of the report.
        baseline: name of the variant the speed-ups are relative to.
        config: options; the defaults of :class:`BenchmarkConfig` when ``None``.
        check: ``check(baseline_output, variant_output) -> float`` applied to the outputs of the
            last untimed call (e.g. :func:`max_abs_diff`); recorded as ``output_diff``.

    Returns:
        The :class:`BenchmarkResult`; ``speedup = baseline median / variant median``.

    Raises:
        ValueError: no variants, or ``baseline`` is not one of them.
    """
    check_baseline(variants, baseline)
    config = config or BenchmarkConfig()
    rng = random.Random(config.seed)
    with fixed_threads(config.threads), torch.inference_mode():
        threads = torch.get_num_threads()
        outputs = _warm_up(variants, config.warmup, rng, keep_outputs=check is not None)
        with gc_paused():
            timer = lambda name: time_call(variants[name], config.torch_device, config.clock)  # noqa: E731
            samples, call_order = timed_rounds(list(variants), timer, config, rng)
        machine = machine_facts()
        diffs = (
            {name: check(outputs[baseline], out) for name, out in outputs.items()} if check else {}
        )
    baseline_median = statistics.median(samples[baseline])
    results = {
        name: VariantResult(
            name=name,
            samples_ms=samples[name],
            speedup=_ratio(baseline_median, statistics.median(samples[name])),
            output_diff=diffs.get(name),
        )
        for name in variants
    }
    return BenchmarkResult(
        baseline=baseline,
        variants=results,
        config=config,
        threads=threads,
        machine=machine,
        timestamp_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        call_order=call_order,
    )


def check_baseline(variants: Mapping[str, Any], baseline: str) -> None:
    """Raise ValueError for no variants, or a baseline that is not one of them (with a hint)."""
    if not variants:
        raise ValueError("compare() needs at least one variant")
    if baseline not in variants:
        raise ValueError(
            f"baseline {baseline!r} is not one of the variants {list(variants)}."
            f"{did_you_mean(baseline, variants)}"
        )


def max_abs_diff(expected: Any, actual: Any) -> float:
    """Largest absolute difference between two outputs (tensors, arrays, or nests of them).

    Tuples/lists are compared element by element and dicts key by key; values are compared in
    float64, so bf16 or ONNX Runtime (numpy) outputs can be checked against an fp32 tensor.

    Raises:
        ValueError: the structures or shapes differ.
    """
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        if set(expected) != set(actual):
            raise ValueError(f"outputs have different keys: {sorted(expected)} vs {sorted(actual)}")
        return max((max_abs_diff(expected[k], actual[k]) for k in expected), default=0.0)
    if _is_nest(expected) and _is_nest(actual):
        if len(expected) != len(actual):
            raise ValueError(f"outputs have different lengths: {len(expected)} vs {len(actual)}")
        return max((max_abs_diff(e, a) for e, a in zip(expected, actual, strict=True)), default=0.0)
    expected_t = torch.as_tensor(expected).detach().to("cpu", torch.float64)
    actual_t = torch.as_tensor(actual).detach().to("cpu", torch.float64)
    if expected_t.shape != actual_t.shape:
        raise ValueError(
            f"outputs have different shapes: {tuple(expected_t.shape)} vs {tuple(actual_t.shape)}"
        )
    return float((expected_t - actual_t).abs().max()) if expected_t.numel() else 0.0


def _is_nest(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _warm_up(
    variants: Mapping[str, Variant], warmup: int, rng: random.Random, keep_outputs: bool
) -> dict[str, Any]:
    """``warmup`` untimed calls per variant, interleaved; the last output of each if asked."""
    outputs: dict[str, Any] = {}
    names = list(variants)
    for _ in range(warmup):
        rng.shuffle(names)
        for name in names:
            outputs[name] = variants[name]()
    if keep_outputs and warmup == 0:
        outputs = {name: variants[name]() for name in names}
    return outputs if keep_outputs else {}


def timed_rounds(
    names: list[str],
    timer: Callable[[str], float],
    config: BenchmarkConfig,
    rng: random.Random,
) -> tuple[dict[str, list[float]], list[str]]:
    """Per-variant samples (ms) and the order of every timed call; ``timer(name)`` times one
    call of that variant (in this process or in its worker)."""
    samples: dict[str, list[float]] = {name: [] for name in names}
    spent_seconds = dict.fromkeys(names, 0.0)
    minimum = min(3, config.rounds)
    call_order: list[str] = []
    active = list(names)
    for _ in range(config.rounds):
        _shuffle_avoiding(active, call_order[-1] if call_order else None, rng)
        for name in active:
            elapsed_ms = timer(name)
            samples[name].append(elapsed_ms)
            spent_seconds[name] += elapsed_ms / 1e3
            call_order.append(name)
        active = [
            name
            for name in active
            if spent_seconds[name] < config.max_seconds or len(samples[name]) < minimum
        ]
        if not active:
            break
    return samples, call_order


def _shuffle_avoiding(names: list[str], previous: str | None, rng: random.Random) -> None:
    """Shuffle ``names`` in place so that, where possible, it does not start with ``previous``."""
    rng.shuffle(names)
    if len(names) > 1 and names[0] == previous:
        swap = rng.randrange(1, len(names))
        names[0], names[swap] = names[swap], names[0]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect once, then keep the cyclic garbage collector out of the timed calls (as timeit)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _ratio(baseline_ms: float, variant_ms: float) -> float:
    """Speed-up; a variant too fast for the clock (0 ms) is infinitely faster."""
    return baseline_ms / variant_ms if variant_ms > 0 else math.inf
