"""Is this machine quiet enough for a latency prediction? A short probe and the load average.

A latency model calibrated (or used) while other work shares the cores predicts the other work's
interference, not the model: the probe times a few fixed workloads several times; their spread and
the load average say whether timings can be trusted now, and the probe's medians, compared with
the ones recorded at calibration, say whether the machine has drifted since.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from torchslim.evaluate.latency import fixed_threads, time_call

SPREAD_LIMIT = 0.25  # (p90 - min) / median of a probe's repeats above this: timings are noisy
DRIFT_LIMIT = 0.25  # probe medians that moved more than this since calibration: calibrate again
LOAD_MARGIN = 0.5  # runnable tasks beyond the cores the measurement does not use


@dataclass(frozen=True)
class ProbeReading:
    """One probe: median milliseconds per workload, their worst spread, the load average then."""

    reference_ms: dict[str, float]
    spread: float
    load_average: float
    cpus: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProbeReading:
        return cls(
            reference_ms=dict(values["reference_ms"]),
            spread=float(values["spread"]),
            load_average=float(values["load_average"]),
            cpus=int(values["cpus"]),
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


def probe_machine(threads: int, device: str = "cpu", repeats: int = 15) -> ProbeReading:
    """Time the probe workloads ``repeats`` times each (about 0.1 s on a quiet CPU)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    medians, spreads = {}, []
    target = torch.device(device)
    with fixed_threads(threads), torch.inference_mode():
        for name, fn in _workloads(target).items():
            for _ in range(3):
                fn()  # warm-up
            samples = sorted(time_call(fn, target) for _ in range(repeats))
            median = statistics.median(samples)
            p90 = samples[min(len(samples) - 1, round(0.9 * len(samples)) - 1)]
            medians[name] = median
            spreads.append((p90 - samples[0]) / median)
    return ProbeReading(medians, max(spreads), load, os.cpu_count() or 1)


def verdict(reading: ProbeReading, threads: int) -> Trust:
    """Quiet enough to time? Noisy repeats or more runnable tasks than the cores left for us."""
    reasons = []
    if reading.spread > SPREAD_LIMIT:
        reasons.append(f"timing spread {reading.spread:.0%} (limit {SPREAD_LIMIT:.0%})")
    spare = reading.cpus - threads + LOAD_MARGIN
    if reading.load_average > spare:
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


__all__ = ["DRIFT_LIMIT", "ProbeReading", "Trust", "drift", "probe_machine", "verdict"]
