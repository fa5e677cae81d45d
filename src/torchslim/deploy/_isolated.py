"""The final timing of deployment candidates: each loaded from its files in its own process.

Candidates first race in the deploying process (cheap, and enough to drop the clearly slow
ones). The few finalists are then re-timed as a user runs them: the artifact loaded in a fresh
process, nothing else in it (:func:`torchslim.benchmark.compare_isolated`). In one shared process
the runtimes' thread pools disturb each other and reorder close candidates on a 2-core machine.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.benchmark import (
    BenchmarkConfig,
    BenchmarkResult,
    Isolation,
    WorkerVariant,
    compare_on_inputs,
    load_inputs,
)
from torchslim.deploy._runtime import Candidate, candidate_threads
from torchslim.deploy.config import DeployConfig

FP32 = "torch-fp32-eager"
# Seconds a worker process takes to start (fresh interpreter, torch and a runtime imported):
# measured 3-4 s on the 2-core machines here; how the budget converts into worker processes.
WORKER_START_S = 4.0


def candidate_call(
    directory: str, backend: str, settings: dict[str, Any], threads: int, inputs: str
) -> Callable[[], torch.Tensor]:
    """Worker factory: the candidate's runtime loaded from ``directory``, on saved inputs."""
    from torchslim.deploy.model import _LOADERS

    runtime, batch = _LOADERS[backend](Path(directory), settings, threads), load_inputs(inputs)
    return lambda: runtime(*batch)


def text_candidate_call(
    candidate: str,
    directory: str,
    names: list[str],
    settings: dict[str, Any],
    threads: int,
    inputs: str,
) -> Callable[[], torch.Tensor]:
    """Worker factory: a text candidate's runner rebuilt from its files, on saved inputs."""
    from torchslim.deploy.text_candidates import load_runner

    runner = load_runner(candidate, Path(directory), names, settings, threads)
    batch = load_inputs(inputs)
    return lambda: runner(*batch)


def stage_files(files: dict[str, bytes] | dict[str, Path], directory: Path) -> str:
    """Copy a candidate's artifact files (name -> bytes or path) into ``directory``."""
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data if isinstance(data, bytes) else data.read_bytes())
    return str(directory)


def finalists(
    accepted: list[Candidate], timings: dict[str, dict[str, float]], count: int
) -> list[Candidate]:
    """The ``count`` fastest accepted candidates of the in-process race, within 1.5x of the best
    (a wider gap is not reordered by thread interference)."""
    ranked = sorted(accepted, key=lambda c: timings[c.name]["median_ms"])
    best = timings[ranked[0].name]["median_ms"]
    return [c for c in ranked[:count] if timings[c.name]["median_ms"] <= 1.5 * best]


@dataclass(frozen=True)
class IsolationPlan:
    """How many finalists are re-timed each in its own process, with how many worker processes
    each, and why (0 finalists: the in-process race decides)."""

    finalists: int
    instances: int
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def isolation_plan(config: DeployConfig, accepted: int, elapsed_s: float) -> IsolationPlan:
    """The isolated re-timing that fits: ``config.finalists`` x ``config.instances`` worker
    processes, fewer where ``config.budget_s`` would be exceeded (each worker costs about
    ``WORKER_START_S`` to start: a fresh interpreter importing torch and its runtime)."""
    if config.timing != "isolated" or accepted < 2:
        return IsolationPlan(0, 0, f"timing={config.timing!r}, {accepted} accepted candidate(s)")
    if config.budget_s is None:
        return IsolationPlan(config.finalists, config.instances, "no budget: as configured")
    workers = int(max(config.budget_s - elapsed_s, 0.0) // WORKER_START_S)
    count = min(config.finalists, workers)
    instances = min(config.instances, workers // count) if count else 0
    why = (
        f"budget {config.budget_s:g} s, {elapsed_s:.1f} s spent before timing, about "
        f"{WORKER_START_S:g} s per worker process"
    )
    if count < 2:
        return IsolationPlan(0, 0, why + ": no room for two finalists, the in-process race decides")
    return IsolationPlan(count, instances, why)


def time_isolated(
    reference: nn.Module,
    candidates: list[Candidate],
    artifacts: dict[str, dict[str, bytes]],
    inputs: tuple[torch.Tensor, ...],
    config: DeployConfig,
    instances: int | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Median/p90 ms and speed-up vs fp32 eager of each candidate in its own process(es)
    (``instances`` per candidate: default ``config.instances``); the candidates whose worker
    failed, with why. fp32 eager runs in this process, interleaved."""
    bench = BenchmarkConfig(
        warmup=config.warmup, rounds=config.rounds, threads=config.threads, max_seconds=5.0
    )
    with tempfile.TemporaryDirectory(prefix="torchslim-isolated-") as tmp:
        variants: dict[str, Any] = {FP32: lambda: reference(*inputs)}
        for candidate in candidates:
            files = artifacts.get(candidate.name)
            if not files:  # no file form (torch PT2E): it can only run in this process
                variants[candidate.name] = lambda c=candidate: c.runtime(*inputs)
                continue
            variants[candidate.name] = WorkerVariant(
                "torchslim.deploy._isolated:candidate_call",
                {
                    "directory": stage_files(files, Path(tmp) / candidate.name),
                    "backend": candidate.backend,
                    "settings": candidate.settings,
                    "threads": candidate_threads(candidate.settings, config.threads),
                },
            )
        isolation = Isolation(instances=instances or config.instances)
        result = compare_on_inputs(variants, inputs, FP32, bench, isolation)
    return race_figures(result), dict(result.skipped)


def race_figures(result: BenchmarkResult) -> dict[str, dict[str, float]]:
    """Median/p90 ms of every variant of one race, with its speed-up over the fp32 eager
    median *of the same race*, recorded beside it (``fp32_eager_median_ms``): a speed-up is
    only ever read against the fp32 timing it was computed from."""
    fp32_ms = statistics.median(result.variants[FP32].samples_ms)
    return {
        name: {
            "median_ms": statistics.median(v.samples_ms),
            "p90_ms": v.stats.p90,
            "speedup_vs_fp32_eager": v.speedup,
            "fp32_eager_median_ms": fp32_ms,
        }
        for name, v in result.variants.items()
    }
