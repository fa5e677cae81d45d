"""The layers a factorization leaves: two Linears, or three convolutions, built from shapes alone
(so an artifact's structure can be rebuilt before its weights are loaded)."""

from __future__ import annotations

from typing import Any

from torch import nn


class LowRankLinear(nn.Sequential):
    """``Linear(in, out)`` as ``Linear(in, rank, bias=False)`` then ``Linear(rank, out)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__(
            nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=bias)
        )


class Tucker2Conv(nn.Sequential):
    """A kh×kw ``Conv2d`` as 1×1 (c_in → r_in), kh×kw (r_in → r_out, the original stride and
    padding), 1×1 (r_out → c_out, the original bias)."""

    def __init__(self, conv: nn.Conv2d, rank_out: int, rank_in: int) -> None:
        shape: dict[str, Any] = {
            "kernel_size": conv.kernel_size, "stride": conv.stride,
            "padding": conv.padding, "dilation": conv.dilation,
        }  # fmt: skip
        core = nn.Conv2d(rank_in, rank_out, bias=False, **shape)
        super().__init__(
            nn.Conv2d(conv.in_channels, rank_in, 1, bias=False),
            core,
            nn.Conv2d(rank_out, conv.out_channels, 1, bias=conv.bias is not None),
        )


class CPConv(nn.Sequential):
    """A kh×kw ``Conv2d`` as 1×1 (c_in → r), depthwise kh×1 and 1×kw (the original stride,
    padding and dilation split by axis), 1×1 (r → c_out, the original bias)."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        assert not isinstance(conv.padding, str), "fits_tucker2 admits numeric padding only"
        ph, pw = conv.padding
        super().__init__(
            nn.Conv2d(conv.in_channels, rank, 1, bias=False),
            nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=rank, bias=False),
            nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), (1, dw), groups=rank, bias=False),
            nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None),
        )


def fits_tucker2(module: nn.Module) -> bool:
    """A plain (ungrouped, zero-padded) Conv2d with a kernel larger than 1×1."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and module.kernel_size != (1, 1)
        and not isinstance(module.padding, str)
    )


def build_factorized(module: nn.Module, decision: dict) -> nn.Module:
    """The empty factorized layer for ``module`` from a decision record."""
    if decision["kind"] == "cp":
        assert isinstance(module, nn.Conv2d)
        return CPConv(module, decision["ranks"][0])
    if decision["kind"] == "tucker2":
        assert isinstance(module, nn.Conv2d)
        rank_out, rank_in = decision["ranks"]
        return Tucker2Conv(module, rank_out, rank_in)
    assert isinstance(module, nn.Linear)
    bias = module.bias is not None
    return LowRankLinear(module.in_features, module.out_features, decision["ranks"][0], bias)
