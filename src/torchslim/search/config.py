"""The search's options: the accuracy budget, what to minimise, how long, where to run."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from torchslim.errors import ConfigError, did_you_mean

OBJECTIVES = ("latency", "size")
RECOVERIES = ("auto", "none", "finetune", "distill")
FORMATS = {"latency": ("fp32", "int8"), "size": ("fp32", "int8w", "mixed")}
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class SearchConfig:
    """How ``search`` looks for the fastest (or smallest) model within an accuracy budget.

    Args:
        max_drop: largest allowed fall of the entry's first metric, in its own units (accuracy
            in points of percent: 1.0 = one point; Spearman: 0.02), >= 0.
        objective: "latency" (measured median, batch 1) or "size" (bytes on disk).
        target_ratio: stop when a model within ``max_drop`` reaches this fraction of the
            original's objective (``--target latency=0.7``, the share removed, gives 0.3);
            None: spend the budget.
        budget_seconds: wall-clock budget of the whole search (trials in flight finish).
        max_trials: at most this many trials (with the budget, whichever ends first).
        generation: trials asked together and told together: the unit of parallel work and
            of determinism (the same seed gives the same trials on 1 or N workers).
        seed: of the sampler and of every trial's training.
        workers: trials evaluated at once (>1 starts a local Ray), or 1 (in process).
        ray_address: join this Ray cluster instead (``auto`` or ``host:port``).
        threads: torch threads of each trial (None: the machine's cores / workers).
        recovery: "auto" (searched: none, finetune or distill), or one of them fixed.
        recovery_samples: training examples of a recovery fine-tune or distillation.
        repeats: timed forward passes per trial.
        formats: number formats searched (None: every one of the objective: latency fp32,
            int8; size fp32, int8w, mixed).
        lowrank: also search a low-rank factorization of the pruned model (a share of the
            factorized layers' parameters removed: none, a quarter or a half). Off by default:
            a search without it samples the trials it sampled before this option existed.
    """

    max_drop: float
    objective: str = "latency"
    target_ratio: float | None = None
    budget_seconds: float = 1800.0
    max_trials: int = 1000
    generation: int = 4
    seed: int = 0
    workers: int = 1
    ray_address: str | None = None
    threads: int | None = None
    recovery: str = "auto"
    recovery_samples: int = 5000
    repeats: int = 30
    formats: tuple[str, ...] | None = None
    lowrank: bool = False

    def __post_init__(self) -> None:
        _at_least("max_drop", self.max_drop, 0.0)
        _one_of("objective", self.objective, OBJECTIVES)
        _one_of("recovery", self.recovery, RECOVERIES)
        if self.target_ratio is not None and not 0.0 < self.target_ratio <= 1.0:
            raise ConfigError(f"target ratio must be in (0, 1], got {self.target_ratio}")
        _at_least("budget_seconds", self.budget_seconds, 1.0)
        for name in ("max_trials", "generation", "workers", "recovery_samples"):
            _at_least(name, getattr(self, name), 1)
        _at_least("repeats", self.repeats, 3)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)
        allowed = FORMATS[self.objective]
        for name in self.formats or ():
            _one_of("format", name, allowed)
        if self.formats is not None and not self.formats:
            raise ConfigError(f"formats: give at least one of {', '.join(allowed)}")
        if self.ray_address is not None and self.workers != 1:
            raise ConfigError(
                "give --workers N (a local Ray of N workers) or --ray ADDRESS (an existing "
                "cluster: its workers are its own), not both"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sampler_settings(self) -> dict[str, Any]:
        """What decides the trials: a resumed search must be run with the same values."""
        keys = ("objective", "max_drop", "generation", "seed", "recovery", "recovery_samples")
        settings = {key: getattr(self, key) for key in keys}
        if self.lowrank:  # only when on: a study started before the option still resumes
            settings["lowrank"] = True
        return {**settings, "formats": list(self.formats or FORMATS[self.objective])}


def _at_least(name: str, value: Any, lowest: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < lowest:
        raise ConfigError(f"{name} must be a number >= {lowest}, got {value!r}")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{name} {value!r}; allowed: {', '.join(allowed)}.{did_you_mean(value, allowed)}"
        )


def parse_budget(text: str) -> float:
    """'30m' -> 1800.0; '90s', '1.5h', '600' (seconds) are accepted.

    Raises:
        ConfigError: anything else.
    """
    match = _BUDGET.match(text)
    if match is None:
        raise ConfigError(f"--budget {text!r}: give a duration such as 90s, 30m or 1.5h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_target(text: str, objective: str) -> float:
    """'latency=0.7' -> 0.3: R is the share of the original's objective removed, as in every
    ``--target`` of torchslim; the search stops at a model within the drop that keeps at most
    1 - R of it (the returned fraction). The name must be the objective's.

    Raises:
        ConfigError: another form, another objective's name, or a ratio outside [0, 1).
    """
    name, _, ratio = text.partition("=")
    if name.strip() not in OBJECTIVES or not ratio:
        raise ConfigError(f"--target {text!r}: give OBJECTIVE=RATIO, e.g. latency=0.7")
    if name.strip() != objective:
        raise ConfigError(
            f"--target {text!r} is a {name} target but --objective is {objective}: give "
            f"--target {objective}=RATIO"
        )
    try:
        value = float(ratio)
    except ValueError:
        raise ConfigError(f"--target {text!r}: {ratio!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(
            f"--target {text!r}: the ratio (the share removed) must be in [0, 1), got {value}"
        )
    return 1.0 - value
