"""Prunable units (attention heads, MLP neurons, inner conv channels) found by module rules.

A ``UnitGroup`` is ``n_units`` units that are removed together from every ``Span`` listed: unit
``u`` occupies features ``[offset + u * width, offset + (u + 1) * width)`` of one axis of one
module ("out" / "in" of a Linear, HF Conv1D or Conv2d; "bn" of a BatchNorm; "depthwise" of a
depthwise conv). After slicing, integer attributes that count units (``num_heads``,
``intermediate_size``, ...) are set to ``kept * per_unit``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from torchslim.prune.graph import PruneError


@dataclass(frozen=True)
class Span:
    """Where unit ``u`` lives on one axis of one module."""

    module: str
    axis: str  # "out" | "in" | "bn" | "depthwise"
    offset: int
    width: int


@dataclass
class UnitGroup:
    """Units pruned together; ``keep`` holds the kept unit indices after the plan is chosen."""

    name: str
    kind: str  # "heads" | "neurons" | "channels"
    n_units: int
    spans: tuple[Span, ...]
    attrs: tuple[tuple[str, str, int], ...] = ()  # (module, attribute, value per kept unit)
    scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (n_units,)
    keep: torch.Tensor | None = None  # sorted kept unit indices; None = all

    @property
    def kept(self) -> int:
        return self.n_units if self.keep is None else len(self.keep)


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's GPT-2 ``Conv1D``: a Linear with a transposed (in, out) weight."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def _weight_axis(module: nn.Module, axis: str) -> int:
    """The weight dimension holding ``axis``'s features."""
    if is_conv1d(module):
        return 1 if axis == "out" else 0
    return 1 if axis == "in" else 0


def feature_scores(module: nn.Module, axis: str, importance: str) -> torch.Tensor | None:
    """Importance of every feature along ``axis`` of ``module`` (None: it adds nothing)."""
    if axis == "bn":
        gamma = getattr(module, "weight", None)
        if importance == "bn_scale" and isinstance(gamma, torch.Tensor):
            return gamma.detach().abs().float()
        return None
    if importance == "bn_scale":
        return None
    parameter = module.weight
    assert isinstance(parameter, torch.Tensor)
    weight = parameter.detach().float()
    if importance == "taylor":
        if parameter.grad is None:
            raise PruneError("importance 'taylor' needs gradients: run loss.backward() first")
        values = (weight * parameter.grad.float()).abs()
    else:
        values = weight.abs() if importance == "l1" else weight.pow(2)
    dim = _weight_axis(module, axis)
    return values.transpose(0, dim).flatten(1).sum(1)  # (features along axis,)


def score_units(group: UnitGroup, modules: dict[str, nn.Module], importance: str) -> None:
    """Sum each unit's feature importance over every span of the group (DepGraph group score)."""
    total = torch.zeros(group.n_units)
    for span in group.spans:
        features = feature_scores(modules[span.module], span.axis, importance)
        if features is None:
            continue
        end = span.offset + group.n_units * span.width
        total += features[span.offset : end].view(group.n_units, span.width).sum(1)
    group.scores = total


def slice_groups(model: nn.Module, groups: Iterable[UnitGroup]) -> None:
    """Physically remove every group's dropped units from ``model`` (in place)."""
    modules = dict(model.named_modules())
    removed: dict[tuple[str, str], set[int]] = {}
    sizes: dict[tuple[str, str], int] = {}
    chosen = [g for g in groups if g.keep is not None]
    for group in chosen:
        assert group.keep is not None
        dropped = sorted(set(range(group.n_units)) - set(group.keep.tolist()))
        for span in group.spans:
            key = (span.module, span.axis)
            sizes[key] = _axis_size(modules[span.module], span.axis)
            features = removed.setdefault(key, set())
            for unit in dropped:
                start = span.offset + unit * span.width
                features.update(range(start, start + span.width))
    with torch.no_grad():
        for (name, axis), features in removed.items():
            keep = torch.tensor([i for i in range(sizes[(name, axis)]) if i not in features])
            slice_axis(modules[name], axis, keep)
    for group in chosen:
        for module_name, attribute, per_unit in group.attrs:
            setattr(modules[module_name], attribute, group.kept * per_unit)


def _axis_size(module: nn.Module, axis: str) -> int:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    if axis in ("bn", "depthwise"):
        return int(weight.shape[0])
    return int(weight.shape[_weight_axis(module, axis)])


def slice_axis(module: nn.Module, axis: str, keep: torch.Tensor) -> None:
    """Keep features ``keep`` of ``module`` along ``axis`` and update its size attributes."""
    if axis == "bn":
        for name in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(module, name, None)
            if tensor is not None:
                tensor.data = tensor.data[keep].clone()
        setattr(module, "num_features", len(keep))  # noqa: B010 (mypy: Module has no such field)
        return
    dim = _weight_axis(module, axis)
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    weight.data = weight.data.index_select(dim, keep).clone()
    bias = getattr(module, "bias", None)
    if axis in ("out", "depthwise") and isinstance(bias, torch.Tensor):
        bias.data = bias.data[keep].clone()
    if is_conv1d(module):
        setattr(module, "nf" if axis == "out" else "nx", len(keep))
    elif isinstance(module, nn.Linear):
        setattr(module, "out_features" if axis == "out" else "in_features", len(keep))
    elif isinstance(module, nn.Conv2d):
        if axis == "depthwise":
            module.in_channels = module.out_channels = module.groups = len(keep)
        else:
            setattr(module, "out_channels" if axis == "out" else "in_channels", len(keep))
    else:
        raise PruneError(f"cannot slice a {type(module).__name__} along {axis!r}")
