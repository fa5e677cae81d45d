"""Latency measurement: warm-up, fixed thread count, median and p90 of repeated calls."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from torchslim.errors import ConfigError


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock statistics of repeated calls, in milliseconds."""

    median: float
    p90: float
    mean: float
    min: float
    max: float
    repeats: int
    iqr: float = 0.0  # interquartile range (0 with fewer than 2 samples)

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "p90": self.p90}


def summarize(samples_ms: list[float]) -> LatencyStats:
    """Median, p90 (nearest-rank), mean, min and max of ``samples_ms``."""
    if not samples_ms:
        raise ValueError("no latency samples to summarize")
    ordered = sorted(samples_ms)
    p90 = ordered[min(len(ordered) - 1, max(0, round(0.9 * len(ordered)) - 1))]
    return LatencyStats(
        median=statistics.median(ordered),
        p90=p90,
        mean=statistics.fmean(ordered),
        min=ordered[0],
        max=ordered[-1],
        repeats=len(ordered),
        iqr=_iqr(ordered),
    )


def _iqr(ordered: list[float]) -> float:
    if len(ordered) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(ordered, n=4)
    return q3 - q1


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old count after."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def synchronize(device: torch.device | None) -> None:
    """Wait for a GPU's queued work (nothing to wait for on a CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_function(clock: str) -> Callable[[], float]:
    """Seconds on ``clock``: "wall" (``time.perf_counter``) or "thread_cpu" (``time.thread_time``,
    the calling thread's CPU time: what a shared core does not steal)."""
    clocks = {"wall": time.perf_counter, "thread_cpu": time.thread_time}
    if clock not in clocks:
        raise ConfigError(f"clock={clock!r}; allowed: {', '.join(clocks)}")
    return clocks[clock]


def time_call(
    fn: Callable[[], Any], device: torch.device | None = None, clock: str = "wall"
) -> float:
    """One call of ``fn``, in milliseconds (synchronising a GPU before and after); ``clock``
    "thread_cpu" counts the calling thread's CPU time instead of wall time."""
    now = clock_function(clock)
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return (now() - start) * 1e3


def measure_latency(
    fn: Callable[[], Any],
    warmup: int = 3,
    repeats: int = 20,
    threads: int | None = None,
    device: torch.device | None = None,
    max_seconds: float = 30.0,
) -> LatencyStats:
    """Time ``fn`` after ``warmup`` calls; stops early (>= 3 samples) past ``max_seconds``."""
    with fixed_threads(threads), torch.inference_mode():
        for _ in range(warmup):
            fn()
        samples: list[float] = []
        deadline = time.perf_counter() + max_seconds
        while len(samples) < repeats and (len(samples) < 3 or time.perf_counter() < deadline):
            samples.append(time_call(fn, device))
    return summarize(samples)


def measure_thread_time(fn: Callable[[], Any], warmup: int = 3, repeats: int = 20) -> LatencyStats:
    """CPU time of the calling thread per call of ``fn`` after ``warmup`` calls, in
    milliseconds: the time of a one-thread CPU run without the time other processes took from
    it on a shared core (measured on 2 busy cores: fashion-resnet20 at batch 16, wall median
    54 ms, thread-time median 13.7 ms, its layers' own times summing to 11 ms). Meaningless for
    work on other threads (intra-op threads > 1) or on a GPU."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        samples = [time_call(fn, clock="thread_cpu") for _ in range(repeats)]
    return summarize(samples)
