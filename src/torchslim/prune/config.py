"""Frozen, validated configs for unstructured, N:M and structured (channel) pruning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from torchslim.errors import ConfigError, reject_unknown_keys

C = TypeVar("C")

UNSTRUCTURED_METHODS = ("l1", "l2", "taylor", "movement", "wanda", "sparsegpt")
NM_METHODS = ("l1", "wanda", "sparsegpt")
SCOPES = ("global", "layer")
STRUCTURED_IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")
DEPTHS = ("off", "auto", "measured")


def _check_ratio(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def _check_ignore(ignore: tuple[str, ...]) -> None:
    if not isinstance(ignore, tuple) or not all(isinstance(n, str) for n in ignore):
        raise ConfigError(
            f"ignore must be a tuple of module names (or 're:<regex>'), got {ignore!r}"
        )


def _check_batch_sizes(sizes: tuple[int, ...]) -> None:
    if (
        not isinstance(sizes, tuple)
        or not sizes
        or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes)
        or len(set(sizes)) != len(sizes)
    ):
        raise ConfigError(
            "latency_batch_sizes must be a non-empty tuple of distinct batch sizes >= 1, e.g. "
            f"(1, 16), got {sizes!r}"
        )


class _DictMixin:
    """``to_dict`` / ``from_dict`` round trip; unknown keys are errors with a hint."""

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        reject_unknown_keys(cls, values)
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)


@dataclass(frozen=True)
class UnstructuredPruneConfig(_DictMixin):
    """Zero out individual weights by importance.

    Args:
        sparsity: fraction of prunable weights set to zero, in [0, 1).
        method: importance score: "l1"/"l2" (|w|, magnitude; arXiv:1506.02626), "taylor"
            (|w * grad| accumulated; arXiv:1906.10771), "movement" (-w * grad accumulated;
            arXiv:2005.07683) or "wanda" (|w| * input-feature norm on calibration data;
            arXiv:2306.11695) or "sparsegpt" (OBS saliency and weight update from the inverse
            input Hessian on calibration data, layer by layer; arXiv:2301.00774; scope "layer").
        scope: "global" (one threshold over all layers) or "layer" (same sparsity per layer).
        ignore: module names (exact or "re:<regex>") left dense.
    """

    sparsity: float
    method: str = "l1"
    scope: str = "global"
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_ratio("sparsity", self.sparsity)
        _check_choice("method", self.method, UNSTRUCTURED_METHODS)
        _check_choice("scope", self.scope, SCOPES)
        if self.method == "sparsegpt" and self.scope != "layer":
            raise ConfigError(
                "method 'sparsegpt' prunes each layer to the same sparsity: use scope='layer', "
                f"got scope={self.scope!r}"
            )
        _check_ignore(self.ignore)


@dataclass(frozen=True)
class NMPruneConfig(_DictMixin):
    """Keep the ``n`` largest of every ``m`` consecutive input weights (2:4 = arXiv:2104.08378).

    Args:
        n: weights kept per group, 1 <= n < m.
        m: group size along the input dimension, >= 2.
        ignore: module names (exact or "re:<regex>") left dense.
        method: "l1" (|w|), "wanda" (|w| * input-feature norm on calibration data) or
            "sparsegpt" (OBS saliency + weight update, arXiv:2301.00774).
    """

    n: int = 2
    m: int = 4
    ignore: tuple[str, ...] = ()
    method: str = "l1"

    def __post_init__(self) -> None:
        if not isinstance(self.m, int) or self.m < 2:
            raise ConfigError(f"m must be an integer >= 2, got {self.m!r}")
        if not isinstance(self.n, int) or not 1 <= self.n < self.m:
            raise ConfigError(f"n must be an integer in [1, m={self.m}), got {self.n!r}")
        _check_ignore(self.ignore)
        _check_choice("method", self.method, NM_METHODS)


@dataclass(frozen=True)
class StructuredPruneConfig(_DictMixin):
    """Remove whole channels, heads or neurons (coupled groups) to meet a target.

    Dependency-graph channel pruning after Torch-Pruning / DepGraph (arXiv:2301.12900).

    Args:
        target_macs_ratio: fraction of MACs to *remove*, in [0, 1); 0.5 halves the MACs.
        target_params_ratio: fraction of parameters to remove, in [0, 1).
        target_latency_ratio: fraction of the latency predicted by the profiler's calibrated
            latency model (this machine, this thread count) to remove, in [0, 1).
        uniform_ratio: fraction of every group's units (channels, heads, neurons) to remove, in
            [0, 1), instead of a MACs/params/latency target. Give exactly one of the four.
        importance: channel-group score: "l1", "l2", "bn_scale" (|gamma|; arXiv:1708.06519)
            or "taylor" (|w * grad|; arXiv:1906.10771, needs gradients in ``.grad``).
        ignore: module names (exact or "re:<regex>") whose output channels are kept.
        round_to: kept channel counts are multiples of this (>= 1).
        drop_layers: indices of whole layers removed from every layer stack of a transformers
            model before its widths are pruned (the target counts from the original model).
        depth: "off" (widths only) or "auto": also remove whole residual blocks (``y = x +
            f(x)``, same shape) of the model's layer stacks, choosing block drops and width
            steps by predicted latency saved per unit of output damage on calibration batches
            (see ``prune.depth_plan``). Needs a MACs, params or latency target. "measured":
            the same moves, chosen by timing: plans dropping 0, 1, 2, ... blocks with one width
            step each meet the target, every one is timed on this machine and the fastest with
            acceptable output damage is kept (see ``prune.measured_plan``).
        latency_batch_sizes: the batch sizes latency is scored at (depth="auto" and latency
            targets: predicted; depth="measured": timed): the geometric mean over them of the
            seconds, so each batch size weighs the same (batch 1 runs other conv kernels than
            batch 16).
    """

    target_macs_ratio: float | None = None
    target_params_ratio: float | None = None
    uniform_ratio: float | None = None
    target_latency_ratio: float | None = None
    importance: str = "l2"
    ignore: tuple[str, ...] = ()
    round_to: int = 1
    drop_layers: tuple[int, ...] = ()
    depth: str = "off"
    latency_batch_sizes: tuple[int, ...] = (1, 16)

    def __post_init__(self) -> None:
        _check_batch_sizes(self.latency_batch_sizes)
        if not isinstance(self.drop_layers, tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.drop_layers
        ):
            raise ConfigError(
                f"drop_layers must be a tuple of layer indices >= 0, got {self.drop_layers!r}"
            )
        targets = {
            "target_macs_ratio": self.target_macs_ratio,
            "target_params_ratio": self.target_params_ratio,
            "uniform_ratio": self.uniform_ratio,
            "target_latency_ratio": self.target_latency_ratio,
        }
        given = {name: value for name, value in targets.items() if value is not None}
        if len(given) != 1:
            raise ConfigError(
                "give exactly one of target_macs_ratio, target_params_ratio, "
                "target_latency_ratio or uniform_ratio, "
                f"got {targets}"
            )
        for name, value in given.items():
            _check_ratio(name, value)
        _check_choice("importance", self.importance, STRUCTURED_IMPORTANCES)
        _check_ignore(self.ignore)
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        _check_choice("depth", self.depth, DEPTHS)
        if self.plans_depth and self.uniform_ratio is not None:
            raise ConfigError(
                f"depth={self.depth!r} trades block drops against width steps to meet a target: "
                "give target_macs_ratio, target_params_ratio or target_latency_ratio, not "
                "uniform_ratio"
            )
        if self.plans_depth and self.drop_layers:
            raise ConfigError(
                f"depth={self.depth!r} chooses the blocks to drop itself; "
                f"drop_layers={self.drop_layers!r} names them by hand: give one or the other"
            )

    @property
    def plans_depth(self) -> bool:
        """Whether residual blocks are dropped by a planner ("auto" or "measured")."""
        return self.depth != "off"
