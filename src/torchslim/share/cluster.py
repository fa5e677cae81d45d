"""``cluster_``: k-means weight sharing, in place, with centroids that stay trainable.

Each clustered layer's weight becomes ``codebook[codes] * keep`` (a parametrization): the
trainer's gradient of every centroid is the sum of the gradients of its weights, as in Deep
Compression's centroid fine-tuning (arXiv 1510.00149, section 3.3). The layers of a group hold
the same codebook Parameter, so a shared centroid's gradient sums over all of them. Fold it (the
artifact does) to get plain weights with at most 2^bits distinct non-zero values per codebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchslim._compress import untouched_on_failure
from torchslim._targets import matches, weighted_modules
from torchslim.errors import ConfigError
from torchslim.share.config import ClusterConfig
from torchslim.share.primitives import kmeans_1d


class ClusteredWeight(nn.Module):
    """Parametrization ``weight -> codebook[codes] * keep``: a trainable codebook (k,) (one
    Parameter object for all the layers of a group), the codes and the keep-mask of the
    weight's shape as buffers."""

    def __init__(self, codebook: torch.Tensor, codes: torch.Tensor, keep: torch.Tensor) -> None:
        super().__init__()
        shared = isinstance(codebook, nn.Parameter)
        self.codebook = codebook if shared else nn.Parameter(codebook)
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("keep", keep.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        codes: torch.Tensor = self.codes  # type: ignore[assignment]
        keep: torch.Tensor = self.keep  # type: ignore[assignment]
        # where, not a product: a pruned weight is +0.0, never -0.0 (packs as a plain zero)
        return torch.where(keep, self.codebook[codes.long()], torch.zeros_like(self.codebook[0]))


@dataclass
class ClusterResult:
    """Per clustered layer: ``weights``, ``nonzero``, ``centroids`` (codebook size) and
    ``codebook`` (the group pattern, or the layer's own name); ``groups``: pattern -> layers."""

    bits: int
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"bits": self.bits, "layers_clustered": len(self.layers),
                "codebooks": len({r["codebook"] for r in self.layers.values()}),
                "groups": self.groups, "layers": self.layers}  # fmt: skip


def cluster_(model: nn.Module, config: ClusterConfig) -> ClusterResult:
    """Cluster the weights of ``model``'s Linear/Conv layers in place, one codebook per layer
    or per group of layers (``config.groups``).

    Raises:
        ConfigError: no layer matches; a group matches no clustered layer; a layer falls in two
            groups; or a layer (group) has fewer non-zero weights than the codebook has entries
            (lower ``bits``, or ignore or group the layer). The model is then untouched.
    """
    modules = {
        name: module
        for name, module in weighted_modules(model, tuple(config.ignore)).items()
        if not config.targets or matches(name, tuple(config.targets))
    }
    if not modules:
        raise ConfigError("cluster: no Linear/Conv layer matches targets/ignore")
    plan = codebook_plan(list(modules), config.groups)
    entries = 2**config.bits
    for label, names in plan.items():
        nonzero = sum(int((_weight(modules[n]) != 0).sum()) for n in names)
        if nonzero < entries:
            what = f"layer {label}" if names == [label] else f"group {label!r} ({names})"
            raise ConfigError(
                f"cluster: a codebook of {entries} entries (bits={config.bits}) for {what}, "
                f"which has {nonzero} non-zero weights; lower bits, or ignore or group {label}"
            )
    result = ClusterResult(config.bits, groups={g: plan[g] for g in config.groups})
    with untouched_on_failure(model):
        for label, names in plan.items():
            group = {name: modules[name] for name in names}
            for name, record in _cluster_group(group, entries, config.iterations).items():
                result.layers[name] = record | {"codebook": label}
    return result


def codebook_plan(names: list[str], groups: tuple[str, ...]) -> dict[str, list[str]]:
    """Codebook label -> the layers sharing it: each group pattern, then each ungrouped layer
    under its own name.

    Raises:
        ConfigError: a group matching none of ``names``, or a layer matched by two groups.
    """
    plan: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for pattern in groups:
        members = [name for name in names if matches(name, (pattern,))]
        if not members:
            raise ConfigError(
                f"cluster: group {pattern!r} matches no clustered layer; layers: {names}"
            )
        for name in members:
            if name in owner:
                raise ConfigError(
                    f"cluster: layer {name} is in two groups, {owner[name]!r} and {pattern!r}; "
                    "make the patterns disjoint"
                )
            owner[name] = pattern
        plan[pattern] = members
    plan.update({name: [name] for name in names if name not in owner})
    return plan


def codebook_groups(model: nn.Module) -> list[list[str]]:
    """The weight names (``layer.weight``) of every codebook two or more clustered layers
    share, as ``pack`` needs them to store each such codebook once."""
    users: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for parametrization in module.parametrizations["weight"]:
                if isinstance(parametrization, ClusteredWeight):
                    key = id(parametrization.codebook)
                    users.setdefault(key, []).append(f"{name}.weight" if name else "weight")
    return [names for names in users.values() if len(names) > 1]


def _cluster_group(
    modules: dict[str, nn.Module], entries: int, iterations: int
) -> dict[str, dict[str, Any]]:
    """One k-means over the non-zero weights of all ``modules``; they share its codebook."""
    for module in modules.values():
        if parametrize.is_parametrized(module, "weight"):  # a pruning mask: fold it, zeros stay
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    weights = {name: _weight(module) for name, module in modules.items()}
    keeps = {name: weight != 0 for name, weight in weights.items()}
    values = torch.cat([weights[n][keeps[n]] for n in modules])  # (nonzero of all layers,)
    codebook, all_codes = kmeans_1d(values, entries, iterations)
    shared = nn.Parameter(codebook)
    records: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, module in modules.items():
        weight, keep = weights[name], keeps[name]
        count = int(keep.sum())
        codes = torch.zeros(weight.shape, dtype=torch.int64, device=weight.device)
        codes[keep] = all_codes[offset : offset + count].to(weight.device)
        offset += count
        parametrization = ClusteredWeight(shared, codes, keep)
        parametrize.register_parametrization(module, "weight", parametrization, unsafe=True)
        records[name] = {"weights": weight.numel(), "nonzero": count, "centroids": entries}
    return records


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()
