"""Unstructured and N:M sparsity: importance scores, masks, and masks applied as parametrizations.

Magnitude pruning after Han et al. (arXiv:1506.02626); Taylor importance after Molchanov et al.
(arXiv:1906.10771); movement pruning after Sanh et al. (arXiv:2005.07683); N:M sparsity after
Mishra et al. (arXiv:2104.08378); activation-aware "wanda" scores in ``activations.py``;
"sparsegpt" masks and weight updates in ``sparsegpt.py``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchslim._heap import release_free_heap
from torchslim._targets import weighted_modules
from torchslim.errors import ConfigError
from torchslim.prune.activations import input_norms, wanda_scores
from torchslim.prune.config import NMPruneConfig, UnstructuredPruneConfig
from torchslim.prune.sparsegpt import sparsegpt_masks

Batches = Sequence[Sequence[Any]]


class WeightMask(nn.Module):
    """Parametrization ``weight -> weight * mask``. The mask is held packed, 8 entries a byte: as
    bool it adds a quarter of the fp32 weights (101 MiB on SmolLM2-135M, the largest part of a
    pruned LLM's memory above the model). ``state_dict`` holds it as the bool ``mask``."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.shape = tuple(mask.shape)
        self.register_buffer("packed", _pack_bits(mask))
        self.register_state_dict_post_hook(_mask_as_bool)
        self.register_load_state_dict_pre_hook(_mask_packed)

    @property
    def mask(self) -> torch.Tensor:
        """The mask as bool, shaped like the weight (unpacked on every read)."""
        return _unpack_bits(self.packed, self.shape, torch.bool)  # type: ignore[arg-type]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _unpack_bits(self.packed, self.shape, weight.dtype)  # type: ignore[arg-type]


@functools.cache
def _bit_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Bit j of byte i as ``dtype``: (256, 8). Unpacking is one gather from it."""
    bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
    return bits.to(dtype=dtype, device=device)


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as bytes, 8 entries each, first entry in the lowest bit: (ceil(n / 8),)."""
    flat = mask.reshape(-1).to(torch.bool)
    padding = (-flat.numel()) % 8
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    values = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
    bits = flat.view(-1, 8).to(torch.uint8) * values  # (n / 8, 8)
    return bits.sum(1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The entries of ``packed`` as ``dtype`` (0/1, or bool), shaped ``shape``."""
    count = math.prod(shape)
    table = _bit_table(dtype, packed.device)  # (256, 8)
    return table.index_select(0, packed.int()).reshape(-1)[:count].view(shape)


def _mask_as_bool(module: WeightMask, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    del state[prefix + "packed"]
    state[prefix + "mask"] = module.mask


def _mask_packed(module: WeightMask, state: dict[str, Any], prefix: str, *args: Any) -> None:
    if prefix + "mask" in state:
        mask = state.pop(prefix + "mask")
        module.shape = tuple(mask.shape)
        state[prefix + "packed"] = _pack_bits(mask)


def weight_importance(module: nn.Module, method: str) -> torch.Tensor:
    """Score of every weight of ``module``: higher is more important.

    "taylor" and "movement" read ``weight.grad``, which should hold gradients accumulated over a
    few calibration batches (call ``loss.backward()`` repeatedly without zeroing them).
    """
    # magnitude of the *effective* (already masked) weight: pruned weights stay pruned when a
    # gradual schedule prunes again after fine-tuning
    effective = module.weight
    assert isinstance(effective, torch.Tensor)
    weight = effective.detach()
    if method == "l1":
        return weight.abs()
    if method == "l2":
        return weight.pow(2)
    grad = _raw_weight(module).grad
    if grad is None:
        raise ConfigError(
            f"method {method!r} needs gradients: run loss.backward() on calibration batches first"
        )
    if method == "taylor":
        return (weight * grad).abs()
    if method == "movement":
        return -(weight * grad)  # weights moving away from zero score high
    raise ConfigError(f"unknown importance method {method!r}")


def _raw_weight(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        original = module.parametrizations.weight.original  # type: ignore[union-attr]
        assert isinstance(original, torch.Tensor)
        return original
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def magnitude_masks(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing exactly ``round(sparsity * n)`` weights (per layer or in all)."""
    if scope == "layer":
        return {name: _keep_top(score, sparsity) for name, score in scores.items()}
    flat = torch.cat([score.flatten().float() for score in scores.values()])  # (N,)
    keep_flat = _keep_top(flat, sparsity)
    masks, offset = {}, 0
    for name, score in scores.items():
        masks[name] = keep_flat[offset : offset + score.numel()].view_as(score)
        offset += score.numel()
    return masks


def _keep_top(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_prune = round(sparsity * score.numel())
    keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
    if n_prune > 0:  # topk by index: exact count even when scores tie
        keep[torch.topk(score.flatten().float(), n_prune, largest=False).indices] = False
    return keep.view_as(score)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest of every ``m`` consecutive weights along the input dimension.

    Conv weights (C_out, C_in, kh, kw) are grouped along C_in at each kernel position, as sparse
    tensor cores do for the implicit GEMM. The input dimension must be a multiple of ``m``.
    """
    moved = score.movedim(1, -1) if score.dim() > 2 else score  # (..., C_in)
    if moved.shape[-1] % m != 0:
        raise ConfigError(f"N:M needs the input dimension ({moved.shape[-1]}) divisible by m={m}")
    groups = moved.reshape(-1, m)  # (G, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    keep = keep.reshape(moved.shape)
    return keep.movedim(-1, 1) if score.dim() > 2 else keep


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach each mask as a ``WeightMask`` parametrization (kept through fine-tuning)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        parametrize.register_parametrization(module, "weight", WeightMask(mask))


def fold_masks_(model: nn.Module) -> int:
    """Write the masked weights back as plain parameters and remove the parametrizations.

    Returns:
        How many modules were folded.
    """
    folded = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded += 1
    return folded


def folded_copy(model: nn.Module) -> nn.Module:
    """A deep copy with the masked weights as plain parameters; ``model`` keeps its masks.

    ``fold_masks_`` on a deep copy would not do: the copy shares its modules' parametrized
    classes with the original, and removing a parametrization deletes the class's property.
    """
    folded = copy.deepcopy(model)
    for module in folded.modules():
        if parametrize.is_parametrized(module, "weight"):
            weight = module.weight.detach().clone()  # type: ignore[operator]
            del module._modules["parametrizations"]
            module.__class__ = module.__class__.__bases__[0]  # the layer's own class
            nn.Module.register_parameter(module, "weight", nn.Parameter(weight))
    return folded


def _scores(
    model: nn.Module, modules: dict[str, nn.Module], method: str, calibration: Batches | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, score) per module, made one at a time: a caller that needs one layer's scores at
    a time holds one float copy of a weight, not of all of them."""
    norms = input_norms(model, modules, calibration or []) if method == "wanda" else {}
    for name, module in modules.items():
        if method == "wanda":
            yield name, wanda_scores(module, norms.get(name))
        else:
            yield name, weight_importance(module, method)
        release_free_heap()  # the score's temporaries


def _needed(calibration: Batches | None) -> Batches:
    if not calibration:
        raise ConfigError("sparsegpt needs calibration batches (or example_inputs)")
    return calibration


def unstructured_prune_(
    model: nn.Module, config: UnstructuredPruneConfig, calibration: Batches | None = None
) -> dict[str, float]:
    """Mask ``model``'s Linear/Conv weights to ``config.sparsity``; returns sparsity per layer.

    ``calibration`` (batches of model inputs) is read by the "wanda" method only.
    """
    modules = weighted_modules(model, config.ignore)
    if not modules:
        raise ConfigError("no Linear/Conv module left to prune after `ignore`")
    if config.method == "sparsegpt":
        masks = sparsegpt_masks(model, modules, _needed(calibration), config.sparsity)
    else:
        scores = _scores(model, modules, config.method, calibration)
        if config.scope == "layer":
            masks = {name: _keep_top(score, config.sparsity) for name, score in scores}
        else:
            masks = magnitude_masks(dict(scores), config.sparsity, config.scope)
    apply_masks_(model, masks)
    return {name: 1.0 - mask.float().mean().item() for name, mask in masks.items()}


def nm_prune_(
    model: nn.Module, config: NMPruneConfig, calibration: Batches | None = None
) -> dict[str, float]:
    """Apply ``n:m`` masks to every Linear/Conv whose input dimension is divisible by ``m``.

    Layers that do not fit (e.g. a first conv with 1 input channel) are left dense and absent
    from the returned {name: sparsity} dict. ``calibration`` is read by method "wanda" only.
    """
    masks = {}
    modules = weighted_modules(model, config.ignore)
    if config.method == "sparsegpt":
        pattern = (config.m - config.n, config.m)  # pruned of every m
        masks = sparsegpt_masks(model, modules, _needed(calibration), 0.0, pattern)
        apply_masks_(model, masks)
        return {name: 1.0 - mask.float().mean().item() for name, mask in masks.items()}
    for name, weight in _scores(model, modules, config.method, calibration):
        module = modules[name]
        transposed = type(module).__name__ == "Conv1D"  # HF Conv1D weight: (in, out)
        score = weight.t() if transposed else weight  # (out, in, ...)
        if score.shape[1] % config.m == 0:
            mask = nm_mask(score, config.n, config.m)
            masks[name] = mask.t() if transposed else mask
    apply_masks_(model, masks)
    return {name: 1.0 - mask.float().mean().item() for name, mask in masks.items()}
