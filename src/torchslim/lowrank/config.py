"""What ``factorize_`` does: the method, how each layer's rank is chosen, which layers."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError, did_you_mean

METHODS = ("svd", "whitened", "tucker2", "cp")
TARGET_KEYS = ("params", "macs", "latency")
ALLOCATIONS = ("uniform", "sensitivity")
LATENCY_SOURCES = ("predicted", "measured")


@dataclass(frozen=True)
class FactorizeConfig:
    """Low-rank factorization of Linear (``svd``, data-aware ``whitened``) or Conv2d (``tucker2``,
    ``cp``).

    Args:
        method: ``svd`` (truncated SVD of the weight), ``whitened`` (SVD of the weight whitened by
            the calibration inputs: the layer's output error is minimised, not the weight's),
            ``tucker2`` (kh×kw Conv2d → 1×1, smaller kh×kw, 1×1), ``cp`` (CP / PARAFAC of the
            kernel, Lebedev et al. arXiv 1412.6553: 1×1 → depthwise kh×1 → depthwise 1×kw → 1×1;
            its rank is chosen on the output-channel unfolding's spectrum).
        rank: one explicit rank for every targeted layer (Tucker-2: both channel ranks).
        energy: per layer, the smallest rank keeping this fraction of the squared singular values.
        target: ``params=R`` or ``macs=R``: remove the fraction R of the targeted layers' parameters
            or MACs, with ranks allocated by one common energy level for every layer.
            ``latency=R``: the share of the dense model's latency removed (as for ``params``
            and ``macs``: the factorized model takes at most 1 - R of it), at ``batch_size``;
            only factorizations faster than their dense layer (by ``latency_source``) are
            chosen.
            At most one of ``rank``, ``energy``, ``target``; none means ``energy=0.9``.
        allocation: how a ``target`` is split among layers: ``uniform`` (one common energy
            level) or ``sensitivity`` (each layer factorized alone at ``scan_keep`` of its own
            cost, the relative output error on the calibration batches measured, then rank steps
            taken greedily where they add the least error per unit saved; needs calibration).
        scan_keep: the fractions of each layer's own cost (the target's unit) the sensitivity
            scan tries, each in (0, 1).
        targets: names or ``re:`` patterns of the layers to factorize; empty = every fitting layer.
        ignore: names or ``re:`` patterns left whole.
        calibration_batches: batches whose inputs whiten the ``whitened`` method.
        check_speed: time each factorized layer against the one it replaces on the example
            inputs, and keep the original where the factorized one is slower. A latency target
            makes this decision itself, per candidate rank, at ``batch_size``: it cannot be off.
        batch_size: the batch a latency target is estimated at (default 1); latency targets only.
        latency_source: how a latency target estimates each layer: ``predicted`` by the
            profiler's latency model calibrated on this machine, or ``measured`` by timing the
            dense layer and each candidate factorization (default); latency targets only.
    """

    method: str = "svd"
    rank: int | None = None
    energy: float | None = None
    target: str | None = None
    allocation: str = "uniform"
    scan_keep: tuple[float, ...] = (0.25, 0.5, 0.75)
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    calibration_batches: int = 8
    check_speed: bool = True
    batch_size: int | None = None
    latency_source: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        given = [n for n in ("rank", "energy", "target") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one of rank, energy, target; got {given}")
        if self.rank is not None and (isinstance(self.rank, bool) or self.rank < 1):
            raise ConfigError(f"rank must be an integer >= 1, got {self.rank!r}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"energy must be in (0, 1], got {self.energy!r}")
        if self.target is not None:
            self.target_ratio()
        self._check_allocation()
        self._check_latency_options()
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches must be >= 1, got {self.calibration_batches!r}")

    def _check_allocation(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(
                f"allocation must be one of {list(ALLOCATIONS)}, got {self.allocation!r}."
                f"{did_you_mean(str(self.allocation), ALLOCATIONS)}"
            )
        if self.allocation == "sensitivity" and self.target is None:
            raise ConfigError(
                "allocation=sensitivity splits a target among layers: give target=params=R or "
                "macs=R (rank and energy choose every layer's rank directly)"
            )
        keep = self.scan_keep
        if (
            not isinstance(keep, tuple | list)
            or not keep
            or not all(
                isinstance(k, int | float) and not isinstance(k, bool) and 0.0 < k < 1.0
                for k in keep
            )
        ):
            raise ConfigError(f"scan_keep must be fractions in (0, 1), e.g. [0.25, 0.5, 0.75]; "
                              f"got {keep!r}")  # fmt: skip

    def _check_latency_options(self) -> None:
        latency = self.latency_target
        for name in ("batch_size", "latency_source"):
            if getattr(self, name) is not None and not latency:
                raise ConfigError(
                    f"{name} is used by a latency target only (target=latency=R), got "
                    f"{name}={getattr(self, name)!r} with target={self.target!r}; drop it"
                )
        size = self.batch_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {size!r}")
        source = self.latency_source
        if source is not None and source not in LATENCY_SOURCES:
            raise ConfigError(
                f"latency_source must be one of {list(LATENCY_SOURCES)}, got {source!r}."
                f"{did_you_mean(str(source), LATENCY_SOURCES)}"
            )
        if latency and not self.check_speed:
            raise ConfigError(
                "check_speed=false does not apply to a latency target: it keeps only "
                "factorizations estimated faster than their dense layer; drop check_speed"
            )

    def target_ratio(self) -> tuple[str, float]:
        """(``params`` | ``macs`` | ``latency``, R) of ``target`` as written (see
        ``kept_share`` for what R means)."""
        key, _, value = str(self.target).partition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if key not in TARGET_KEYS or not 0.0 < ratio < 1.0:
            raise ConfigError(
                f"target must be params=R or macs=R (R in (0, 1): the fraction removed) or "
                f"latency=R (R in (0, 1): the share of the dense model's latency removed), "
                f"got {self.target!r}"
            )
        return key, ratio

    def kept_share(self) -> tuple[str, float]:
        """(unit, the most of the dense cost the target keeps): 1 - R, since every target's R
        is the share removed."""
        unit, ratio = self.target_ratio()
        return unit, 1.0 - ratio

    @property
    def latency_target(self) -> bool:
        """True for ``target=latency=R``."""
        return self.target is not None and self.target_ratio()[0] == "latency"

    @property
    def layer_kind(self) -> str:
        """The factorized layer's kind: ``svd`` (both Linear methods), ``tucker2`` or ``cp``."""
        return self.method if self.method in ("tucker2", "cp") else "svd"

    @property
    def latency_batch_size(self) -> int:
        """The batch a latency target is estimated at."""
        return self.batch_size or 1

    @property
    def resolved_latency_source(self) -> str:
        """How a latency target estimates each layer."""
        return self.latency_source or "measured"

    @property
    def effective_energy(self) -> float | None:
        """The energy level when the rank is chosen per layer by energy."""
        if self.rank is None and self.target is None:
            return 0.9 if self.energy is None else self.energy
        return None
