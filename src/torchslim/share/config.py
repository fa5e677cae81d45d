"""Configs of weight sharing: k-means clustering of weights, and layers sharing one block."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError

INITS = ("first", "mean")


@dataclass(frozen=True)
class ClusterConfig:
    """k-means weight sharing per layer or per group of layers (Deep Compression, arXiv
    1510.00149).

    Args:
        bits: each codebook holds 2^bits centroids (1..8).
        targets: names or ``re:`` patterns of the Linear/Conv layers to cluster; empty = all.
        ignore: names or ``re:`` patterns left as they are.
        iterations: at most this many Lloyd iterations.
        groups: names or ``re:`` patterns, one per group: the clustered layers a pattern
            matches share one codebook (``("re:.*",)``: one for the whole model); a layer in
            no group keeps its own.

    Pruned (zero) weights stay zero and take no codebook entry.
    """

    bits: int = 4
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    iterations: int = 30
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError(f"bits must be an integer in [1, 8], got {self.bits!r}")
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations!r}")
        if isinstance(self.groups, str) or len(set(self.groups)) != len(self.groups):
            raise ConfigError(
                f"groups must be a list of distinct layer names or re: patterns (one per "
                f"group), got {self.groups!r}"
            )


@dataclass(frozen=True)
class ShareLayersConfig:
    """ALBERT-style cross-layer sharing (Lan et al., arXiv 1909.11942): the blocks of one
    ``ModuleList`` fall into ``blocks`` consecutive groups, each group runs one block's weights.

    Args:
        blocks: how many distinct blocks remain (must divide the number of layers).
        container: name of the ModuleList; None = the longest list of same-class blocks.
        init: ``first`` (each group keeps its first layer's weights) or ``mean`` (the average).
    """

    blocks: int = 3
    container: str | None = None
    init: str = "first"

    def __post_init__(self) -> None:
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or self.blocks < 1:
            raise ConfigError(f"blocks must be an integer >= 1, got {self.blocks!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {list(INITS)}, got {self.init!r}")
