"""The one metric a search keeps within budget: which, which way is better, in what units."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError

_LOWER_IS_BETTER = ("perplexity", "kl_", "max_abs_diff", "loss")
_FRACTION_IN_POINTS = ("accuracy", "top1", "agreement")  # in [0, 1], budgeted in points of %


@dataclass(frozen=True)
class Metric:
    """``name`` of the entry's metric; ``points`` scales a difference into the budget's units
    (100 for an accuracy in [0, 1]: ``--max-drop 1.0`` is one point); ``higher_is_better``."""

    name: str
    points: float = 1.0
    higher_is_better: bool = True

    def drop(self, before: float, after: float) -> float:
        """How much worse ``after`` is than ``before``, in budget units (negative: better)."""
        difference = before - after if self.higher_is_better else after - before
        return difference * self.points

    def score(self, value: float) -> float:
        """``value`` oriented so that larger is better (what the sampler maximises)."""
        return value if self.higher_is_better else -value


def metric_of(names: tuple[str, ...] | list[str], chosen: str | None = None) -> Metric:
    """The search's metric: ``chosen`` or the entry's first.

    Raises:
        ConfigError: ``chosen`` is not one of ``names``, or the entry has no metric.
    """
    if not names:
        raise ConfigError("this model has no metric to keep within --max-drop")
    name = chosen or names[0]
    if name not in names:
        raise ConfigError(f"metric {name!r} is not one of this model's: {', '.join(names)}")
    lower = any(word in name for word in _LOWER_IS_BETTER)
    points = 100.0 if any(word in name for word in _FRACTION_IN_POINTS) else 1.0
    return Metric(name, points, not lower)
