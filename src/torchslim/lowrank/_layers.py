"""What factorization needs to know of each layer: its spectrum, its positions, a sample input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim._targets import matches
from torchslim.lowrank import primitives
from torchslim.lowrank.config import FactorizeConfig
from torchslim.lowrank.modules import fits_tucker2


@dataclass
class LayerFacts:
    """One candidate layer: spectra (one per factorized mode), positions per example batch
    (input side, output side: MACs = positions x weights), a sample input for timing."""

    name: str
    module: nn.Module
    spectra: list[torch.Tensor] = field(default_factory=list)
    positions: tuple[int, int] = (1, 1)
    sample: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    def max_ranks(self) -> list[int]:
        return [len(s) for s in self.spectra]

    def ranks_for_energy(self, energy: float) -> list[int]:
        return [primitives.rank_for_energy(s, energy) for s in self.spectra]

    def cost(self, ranks: list[int] | None, unit: str) -> int:
        """Parameters or MACs (per example batch) of the layer dense (None) or factorized."""
        weight = self.module.weight
        assert isinstance(weight, torch.Tensor)
        pos_in, pos_out = self.positions if unit == "macs" else (1, 1)
        if ranks is None:
            return weight.numel() * pos_out
        if isinstance(self.module, nn.Linear):
            return ranks[0] * (self.module.in_features + self.module.out_features) * pos_out
        c_out, c_in, kh, kw = weight.shape
        if len(ranks) == 1:  # CP: 1x1 in, kh x 1 and 1 x kw depthwise, 1x1 out
            (r,) = ranks
            return pos_in * r * c_in + pos_out * r * (kh + kw + c_out)
        r_out, r_in = ranks
        return pos_in * r_in * c_in + pos_out * (r_out * r_in * kh * kw + c_out * r_out)


def candidates(model: nn.Module, config: FactorizeConfig) -> dict[str, nn.Module]:
    """The layers ``config`` factorizes, by name."""

    def fits(module: nn.Module) -> bool:
        if config.method in ("tucker2", "cp"):
            return fits_tucker2(module)
        return isinstance(module, nn.Linear)

    return {
        name: module
        for name, module in model.named_modules()
        if fits(module)
        and (not config.targets or matches(name, tuple(config.targets)))
        and not matches(name, tuple(config.ignore))
    }


def observe(
    model: nn.Module, layers: dict[str, LayerFacts], batches: Sequence[Sequence[Any]], gram: bool
) -> None:
    """Run ``batches`` through ``model``: the first batch gives positions and sample inputs,
    every batch adds to the input Gram matrix X Xᵀ of each layer when ``gram``."""

    def hook(facts: LayerFacts) -> Any:
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach()
            if facts.sample is None:
                facts.sample = x.clone()
                facts.positions = _positions(module, x, output)
            if gram:
                rows = x.reshape(-1, x.shape[-1]).double()  # (N, in)
                update = (rows.T @ rows).cpu()  # (in, in): factorized on the CPU
                facts.gram = update if facts.gram is None else facts.gram + update

        return record

    handles = [f.module.register_forward_hook(hook(f)) for f in layers.values()]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(*batch)
    finally:
        for handle in handles:
            handle.remove()


def _positions(module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        tokens = x.numel() // module.in_features
        return tokens, tokens
    return x.shape[0] * x.shape[-2] * x.shape[-1], output.shape[0] * output.shape[
        -2
    ] * output.shape[-1]


def fill_spectra(facts: LayerFacts, method: str) -> None:
    """The singular values that choose ranks: of W (svd), of W L (whitened), of both channel
    unfoldings (tucker2), of the output-channel unfolding (cp)."""
    raw = facts.module.weight
    assert isinstance(raw, torch.Tensor)
    weight = raw.detach().float().cpu()
    if method == "tucker2":
        facts.spectra = list(primitives.channel_spectra(weight))
    elif method == "cp":
        facts.spectra = [primitives.channel_spectra(weight)[0]]
    elif method == "whitened":
        assert facts.gram is not None
        chol = torch.linalg.cholesky(_damped(facts.gram))  # (in, in)
        facts.spectra = [primitives.spectrum((weight.double() @ chol).float())]
    else:
        facts.spectra = [primitives.spectrum(weight)]


def _damped(gram: torch.Tensor, damping: float = 1e-4) -> torch.Tensor:
    scale = damping * gram.diagonal().mean().clamp_min(1e-12)
    return gram + scale * torch.eye(len(gram), dtype=gram.dtype)
