"""What ``factorize_`` does: the method, how each layer's rank is chosen, which layers."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError

METHODS = ("svd", "whitened", "tucker2", "cp")
TARGET_KEYS = ("params", "macs")


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
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches must be >= 1, got {self.calibration_batches!r}")

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
