"""What ``factorize_`` does: the method, how each layer's rank is chosen, which layers."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError, did_you_mean

METHODS = ("svd", "whitened", "tucker2", "cp")
TARGET_KEYS = ("params", "macs")
ALLOCATIONS = ("uniform", "sensitivity")


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
            inputs, and keep the original where the factorized one is slower.
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

    def target_ratio(self) -> tuple[str, float]:
        """(``params`` | ``macs``, fraction removed) of ``target``."""
        key, _, value = str(self.target).partition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if key not in TARGET_KEYS or not 0.0 < ratio < 1.0:
            raise ConfigError(
                f"target must be params=R or macs=R with R in (0, 1) the fraction removed, "
                f"got {self.target!r}"
            )
        return key, ratio

    @property
    def effective_energy(self) -> float | None:
        """The energy level when the rank is chosen per layer by energy."""
        if self.rank is None and self.target is None:
            return 0.9 if self.energy is None else self.energy
        return None
