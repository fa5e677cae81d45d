"""What a comparison measured: per-variant statistics, speed-ups, machine facts; JSON, a table."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from torchslim._io import write_json
from torchslim.benchmark.config import BenchmarkConfig
from torchslim.evaluate.latency import LatencyStats, summarize

RESULTS_DIRECTORY = "benchmarks/results"


@dataclass(frozen=True)
class Spread:
    """How scattered the samples are, in milliseconds: quartiles, IQR, stdev and MAD."""

    q1: float
    q3: float
    iqr: float
    stdev: float
    mad: float  # median absolute deviation from the median

    @classmethod
    def of(cls, samples_ms: list[float]) -> Spread:
        """The spread of ``samples_ms`` (one sample has zero spread)."""
        if len(samples_ms) < 2:
            only = samples_ms[0]
            return cls(q1=only, q3=only, iqr=0.0, stdev=0.0, mad=0.0)
        q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
        median = statistics.median(samples_ms)
        mad = statistics.median(abs(sample - median) for sample in samples_ms)
        return cls(q1=q1, q3=q3, iqr=q3 - q1, stdev=statistics.stdev(samples_ms), mad=mad)


@dataclass(frozen=True)
class VariantResult:
    """One variant's timed samples and what follows from them.

    Attributes:
        name: the variant's name.
        samples_ms: every timed call, in the order it ran.
        speedup: baseline median / this median (> 1 means faster than the baseline).
        output_diff: the ``check`` value against the baseline's output (``None`` if unchecked).
    """

    name: str
    samples_ms: list[float]
    speedup: float
    output_diff: float | None = None

    @property
    def stats(self) -> LatencyStats:
        """Median, p90, mean, min, max and sample count."""
        return summarize(self.samples_ms)

    @property
    def spread(self) -> Spread:
        """Quartiles, IQR, stdev and MAD."""
        return Spread.of(self.samples_ms)

    def to_dict(self) -> dict[str, Any]:
        stats, spread = self.stats, self.spread
        return {
            "median_ms": stats.median,
            "p90_ms": stats.p90,
            "mean_ms": stats.mean,
            "min_ms": stats.min,
            "max_ms": stats.max,
            "q1_ms": spread.q1,
            "q3_ms": spread.q3,
            "iqr_ms": spread.iqr,
            "stdev_ms": spread.stdev,
            "mad_ms": spread.mad,
            "samples": stats.repeats,
            "speedup_vs_baseline": self.speedup,
            "output_diff_vs_baseline": self.output_diff,
            "samples_ms": [round(sample, 6) for sample in self.samples_ms],
        }


@dataclass(frozen=True)
class BenchmarkResult:
    """Every variant of one comparison, measured in one process.

    Attributes:
        baseline: name of the variant the speed-ups are relative to.
        variants: results in the order the variants were given.
        config: the options used.
        threads: torch's thread count during the measurement.
        machine: :func:`torchslim._machine.machine_facts` taken during the measurement.
        timestamp_utc: ISO-8601 time the measurement ended.
        call_order: names of the timed calls in the order they ran (shows the interleaving).
        skipped: variants that were not run, with the reason (filled by callers).
    """

    baseline: str
    variants: dict[str, VariantResult]
    config: BenchmarkConfig
    threads: int
    machine: dict[str, Any]
    timestamp_utc: str
    call_order: list[str]
    skipped: dict[str, str] = field(default_factory=dict)

    def speedup(self, name: str) -> float:
        """Baseline median / median of variant ``name``."""
        return self.variants[name].speedup

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: config, machine facts, timestamp, per-variant figures, skips, call order."""
        return {
            "timestamp_utc": self.timestamp_utc,
            "baseline": self.baseline,
            "config": self.config.to_dict(),
            "threads": self.threads,
            "machine": self.machine,
            "variants": {name: result.to_dict() for name, result in self.variants.items()},
            "skipped": dict(self.skipped),
            "call_order": list(self.call_order),
        }

    def to_table(self, title: str | None = None) -> Table:
        """A rich table, one row per variant; the skipped ones and their reasons in the caption."""
        notes = [f"* baseline; speed-up = {self.baseline} median / row median"]
        notes += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        table = Table(title=title, caption="\n".join(notes))
        table.add_column("variant (ms)", no_wrap=True)
        for header in ("median", "p90", "IQR", "min", "max", "n", "speed-up", "max|diff|"):
            table.add_column(header, justify="right", no_wrap=True)
        for name, result in self.variants.items():
            stats, spread = result.stats, result.spread
            table.add_row(
                name + (" *" if name == self.baseline else ""),
                *(f"{value:.3f}" for value in (stats.median, stats.p90, spread.iqr)),
                *(f"{value:.3f}" for value in (stats.min, stats.max)),
                str(stats.repeats),
                f"{result.speedup:.2f}x",
                "-" if result.output_diff is None else f"{result.output_diff:.1e}",
            )
        return table

    def write(self, name: str, directory: str | Path = RESULTS_DIRECTORY) -> Path:
        """Write :meth:`to_dict` atomically to ``<directory>/<name>.json``; return the path."""
        return write_result_json(name, self.to_dict(), directory)


def write_result_json(
    name: str, payload: dict[str, Any], directory: str | Path = RESULTS_DIRECTORY
) -> Path:
    """Write ``payload`` atomically to ``<directory>/<name>.json``; return the path.

    Raises:
        ValueError: ``name`` is not a plain file name (letters, digits, ``. _ -``).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(
            f"benchmark result name must be a plain file name (letters, digits, '.', '_', '-'), "
            f"got {name!r}"
        )
    path = Path(directory) / f"{name}.json"
    write_json(path, payload)
    return path
