"""Is this machine quiet enough for a latency prediction? A short probe and the load average.

A latency model calibrated (or used) while other work shares the cores predicts the other work's
interference, not the model: the probe times a few fixed workloads several times; their spread and
the CPU time other processes used meanwhile say whether timings can be trusted now, and the
probe's medians, compared with the ones recorded at calibration, say whether the machine has
drifted since.

Each timed sample is a group of calls lasting about two milliseconds, and the spread is the
interquartile range (one hiccup of the VM is not load): one 0.1 ms call on two threads
varies by half its time on an idle machine (waking the OpenMP pool), which says nothing about
load. Other processes' CPU use is read from ``/proc`` (all CPUs' busy time less this process's
own) rather than from the load average, which counts this process's own threads and lags by a
minute: a benchmark that has just measured on both cores would otherwise call itself busy.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from torchslim.evaluate.latency import fixed_threads, time_call

SPREAD_LIMIT = 0.25  # interquartile range / median of a probe's repeats above this: noisy
SAMPLE_SECONDS = 2e-3  # each probe sample groups calls to last about this long
DRIFT_LIMIT = 0.25  # probe medians that moved more than this since calibration: calibrate again
LOAD_MARGIN = 0.5  # runnable tasks beyond the cores the measurement does not use


@dataclass(frozen=True)
class ProbeReading:
    """One probe: median milliseconds per workload, their worst spread, the load average then,
    and how many CPUs' worth of time other processes used while it ran (None where unknown)."""

    reference_ms: dict[str, float]
    spread: float
    load_average: float
    cpus: int
    others_cpus: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProbeReading:
        return cls(
            reference_ms=dict(values["reference_ms"]),
            spread=float(values["spread"]),
            load_average=float(values["load_average"]),
            cpus=int(values["cpus"]),
            others_cpus=None if values.get("others_cpus") is None else float(values["others_cpus"]),
        )


@dataclass(frozen=True)
class Trust:
    """Whether a latency figure can be trusted on this machine now, and if not, why."""

    trusted: bool
    reason: str = ""

    def and_(self, other: Trust) -> Trust:
        if self.trusted and other.trusted:
            return Trust(True)
        reasons = [t.reason for t in (self, other) if not t.trusted]
        return Trust(False, "; ".join(dict.fromkeys(reasons)))  # each reason once


def _workloads(device: torch.device) -> dict[str, Callable[[], Any]]:
    """A compute-bound matmul and a chain of tiny ops (framework overhead), the two ends of a
    network's ops."""
    a = torch.randn(256, 256, device=device)
    tiny = torch.ones(4, device=device)

    def chain() -> None:
        for _ in range(100):
            torch.add(tiny, tiny)

    return {"matmul_256": lambda: a @ a, "tiny_op_chain_100": chain}


def _busy_seconds() -> float | None:
    """Seconds all CPUs have spent busy since boot (``/proc/stat``; steal counts as busy: the
    hypervisor gave the time to someone else), or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OthersCpu:
    """CPUs' worth of time used by other processes between ``start`` and ``stop``."""

    def start(self) -> None:
        self._busy, self._own, self._wall = _busy_seconds(), time.process_time(), time.monotonic()

    def stop(self) -> float | None:
        busy = _busy_seconds()
        wall = time.monotonic() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return None
        others = (busy - self._busy) - (time.process_time() - self._own)
        return max(others, 0.0) / wall


def _grouped(fn: Callable[[], Any], device: torch.device) -> tuple[Callable[[], Any], int]:
    """``fn`` repeated enough times per sample to last about SAMPLE_SECONDS, and that count."""
    once = min(time_call(fn, device) for _ in range(3)) / 1e3
    calls = max(1, round(SAMPLE_SECONDS / max(once, 1e-7)))

    def group() -> None:
        for _ in range(calls):
            fn()

    return group, calls


def probe_machine(threads: int, device: str = "cpu", repeats: int = 15) -> ProbeReading:
    """Time the probe workloads ``repeats`` times each (about 0.1 s on a quiet CPU)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    medians, spreads = {}, []
    target = torch.device(device)
    others = OthersCpu()
    with fixed_threads(threads), torch.inference_mode():
        others.start()
        for name, fn in _workloads(target).items():
            group, calls = _grouped(fn, target)
            samples = sorted(time_call(group, target) / calls for _ in range(repeats))
            median = statistics.median(samples)
            q1, _, q3 = statistics.quantiles(samples, n=4)
            medians[name] = median
            spreads.append((q3 - q1) / median)
        others_cpus = others.stop()
    return ProbeReading(medians, max(spreads), load, os.cpu_count() or 1, others_cpus)


def verdict(reading: ProbeReading, threads: int) -> Trust:
    """Quiet enough to time? Noisy repeats, or other processes using more of the CPUs than the
    measurement leaves them (measured where possible, else the load average)."""
    reasons = []
    if reading.spread > SPREAD_LIMIT:
        reasons.append(f"timing spread {reading.spread:.0%} (limit {SPREAD_LIMIT:.0%})")
    spare = reading.cpus - threads + LOAD_MARGIN
    if reading.others_cpus is not None:
        if reading.others_cpus > spare:
            reasons.append(
                f"other processes used {reading.others_cpus:.2f} of {reading.cpus} CPUs "
                f"with {threads} thread(s) measuring"
            )
    elif reading.load_average > spare:
        reasons.append(
            f"load average {reading.load_average:.2f} on {reading.cpus} CPUs "
            f"with {threads} thread(s) measuring"
        )
    return Trust(not reasons, ", ".join(reasons))


def drift(then: ProbeReading, now: ProbeReading) -> float:
    """Largest relative change of a probe workload's median between two readings."""
    shared = set(then.reference_ms) & set(now.reference_ms)
    if not shared:
        return float("inf")
    return max(abs(now.reference_ms[k] / then.reference_ms[k] - 1.0) for k in shared)


__all__ = ["DRIFT_LIMIT", "OthersCpu", "ProbeReading", "Trust", "drift", "probe_machine", "verdict"]
