"""``cluster_``: k-means weight sharing, in place, with centroids that stay trainable.

Each clustered layer's weight becomes ``codebook[codes] * keep`` (a parametrization): the
trainer's gradient of every centroid is the sum of the gradients of its weights, as in Deep
Compression's centroid fine-tuning (arXiv 1510.00149, section 3.3). Fold it (the artifact does)
to get plain weights with at most 2^bits distinct non-zero values per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError
from torchslim.prune._targets import matches, weighted_modules
from torchslim.share.config import ClusterConfig
from torchslim.share.primitives import kmeans_1d


class ClusteredWeight(nn.Module):
    """Parametrization ``weight -> codebook[codes] * keep``: a trainable codebook (k,), the
    codes and the keep-mask of the weight's shape as buffers."""

    def __init__(self, codebook: torch.Tensor, codes: torch.Tensor, keep: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("keep", keep.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        codes: torch.Tensor = self.codes  # type: ignore[assignment]
        keep: torch.Tensor = self.keep  # type: ignore[assignment]
        # where, not a product: a pruned weight is +0.0, never -0.0 (packs as a plain zero)
        return torch.where(keep, self.codebook[codes.long()], torch.zeros_like(self.codebook[0]))


@dataclass
class ClusterResult:
    """Per clustered layer: ``weights``, ``nonzero``, ``centroids`` (codebook size)."""

    bits: int
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"bits": self.bits, "layers_clustered": len(self.layers), "layers": self.layers}


def cluster_(model: nn.Module, config: ClusterConfig) -> ClusterResult:
    """Cluster the weights of ``model``'s Linear/Conv layers in place.

    Raises:
        ConfigError: no layer matches, or a layer has fewer non-zero weights than the codebook
            has entries (lower ``bits`` or ignore the layer). The model is then untouched.
    """
    modules = {
        name: module
        for name, module in weighted_modules(model, tuple(config.ignore)).items()
        if not config.targets or matches(name, tuple(config.targets))
    }
    if not modules:
        raise ConfigError("cluster: no Linear/Conv layer matches targets/ignore")
    entries = 2**config.bits
    for name, module in modules.items():
        nonzero = int((_weight(module) != 0).sum())
        if nonzero < entries:
            raise ConfigError(
                f"cluster: a codebook of {entries} entries (bits={config.bits}) for layer {name}, "
                f"which has {nonzero} non-zero weights; lower bits or ignore {name}"
            )
    result = ClusterResult(config.bits)
    with untouched_on_failure(model):
        for name, module in modules.items():
            result.layers[name] = _cluster_layer(module, entries, config.iterations)
    return result


def _cluster_layer(module: nn.Module, entries: int, iterations: int) -> dict[str, Any]:
    if parametrize.is_parametrized(module, "weight"):  # a pruning mask: fold it, zeros stay
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    weight = _weight(module)
    keep = weight != 0
    codebook, nonzero_codes = kmeans_1d(weight[keep], entries, iterations)
    codes = torch.zeros(weight.shape, dtype=torch.int64, device=weight.device)
    codes[keep] = nonzero_codes.to(weight.device)
    parametrization = ClusteredWeight(codebook.to(weight.device), codes, keep)
    parametrize.register_parametrization(module, "weight", parametrization, unsafe=True)
    return {"weights": weight.numel(), "nonzero": int(keep.sum()), "centroids": entries}


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()
