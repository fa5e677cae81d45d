"""How a comparison is run: warm-up, rounds, threads, time budget, shuffle seed, device."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from torchslim.errors import ConfigError, reject_unknown_keys

CLOCKS = ("wall", "thread_cpu")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Options of :func:`torchslim.benchmark.compare`, validated on construction.

    Attributes:
        warmup: untimed calls of each variant before the first timed round (>= 0).
        rounds: timed calls of each variant, one per round, at most (>= 1).
        threads: ``torch.set_num_threads`` for the whole comparison; ``None`` keeps the current
            count (the result records the count actually used).
        max_seconds: time budget of each variant's timed calls; a variant past it stops being
            scheduled once it has ``min(3, rounds)`` samples (> 0).
        seed: seeds the shuffle of the call order in each round.
        device: where the variants run; ``"cuda"`` makes each timed call synchronise the GPU.
        clock: ``"wall"`` (``time.perf_counter``) or ``"thread_cpu"`` (``time.thread_time``: the
            CPU seconds of the calling thread, which time spent descheduled by other processes on
            a shared core does not inflate; needs ``threads=1`` on CPU, where the calling thread
            does all the work).
    """

    warmup: int = 3
    rounds: int = 30
    threads: int | None = None
    max_seconds: float = 10.0
    seed: int = 0
    device: str = "cpu"
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ConfigError(f"BenchmarkConfig.clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.clock == "thread_cpu" and (self.threads != 1 or self.device != "cpu"):
            raise ConfigError(
                "BenchmarkConfig.clock='thread_cpu' times the calling thread only: it needs "
                f"threads=1 and device='cpu', got threads={self.threads!r}, "
                f"device={self.device!r}; use clock='wall' otherwise"
            )
        _check_int("warmup", self.warmup, minimum=0)
        _check_int("rounds", self.rounds, minimum=1)
        if self.threads is not None:
            _check_int("threads", self.threads, minimum=1)
        _check_int("seed", self.seed, minimum=None)
        seconds = self.max_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ConfigError(f"BenchmarkConfig.max_seconds must be a number, got {seconds!r}")
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigError(
                f"BenchmarkConfig.max_seconds must be a finite number > 0, got {seconds!r}"
            )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ConfigError(
                f"BenchmarkConfig.device must name a torch device ('cpu', 'cuda', 'cuda:0'), "
                f"got {self.device!r}"
            ) from error

    @property
    def torch_device(self) -> torch.device:
        """``device`` as a :class:`torch.device`."""
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> BenchmarkConfig:
        """Build a config from a dict; an unknown key raises with a "did you mean" hint."""
        reject_unknown_keys(cls, options)
        return cls(**options)


def _check_int(name: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"BenchmarkConfig.{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"BenchmarkConfig.{name} must be an integer >= {minimum}, got {value!r}")
