"""SparseGPT (Frantar & Alistarh, arXiv:2301.00774): prune a Linear weight column by column and
push each pruned weight's error onto the columns not yet visited, weighted by the inverse
Hessian H = 2 X^T X of the layer's inputs, so the layer's output changes as little as possible.

The mask is chosen as the reference code does: for unstructured sparsity per block of
``block_size`` columns, the weights with the smallest w^2 / [H^-1]_jj^2 (the OBS saliency) are
pruned, exactly ``round(sparsity x block)`` of each block; for N:M, the N smallest of every M
consecutive inputs. Sequential like GPTQ: block 0's inputs come from the calibration batches,
each decoder block's layers get their Hessians from the inputs the *already pruned* earlier
blocks (and earlier layer groups of the same block) produce. Models without a decoder block
list take every Hessian from one pass of the dense model. The kept weights are updated, the
mask is attached as a ``WeightMask`` parametrization (as every masked method's is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._heap import release_free_heap
from torchslim._hessians import recording_hessians
from torchslim.quantize._blocks import (
    BlockCall,
    BlockWalkError,
    advance,
    capture_block_inputs,
    find_blocks,
    input_groups,
    run_block_until,
)
from torchslim.quantize.gptq import inverse_hessian_factor

BLOCK_SIZE = 128  # columns per lazy update and per unstructured mask choice (the paper's)
DAMP = 0.01  # dampening, as a fraction of mean(diag H) (the paper's)


def sparsegpt_weight(
    weight: Tensor, hessian: Tensor, sparsity: float, nm: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """SparseGPT of one (out, in) weight: (pruned and updated weight, keep mask), (out, in) each.

    ``nm`` = (n, m) prunes n of every m consecutive inputs (2:4 -> (2, 4)); else ``sparsity``.
    """
    w = weight.detach().float().clone()  # (out, in)
    columns = w.shape[1]
    dead = hessian.diagonal() == 0  # (in,) inputs never active: their weights do not matter
    if dead.any():  # a copy only when there is something to change
        hessian = hessian.clone()
        hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    h_inv = inverse_hessian_factor(hessian, DAMP)  # (in, in) upper Cholesky of H^-1
    block = BLOCK_SIZE if nm is None else BLOCK_SIZE - BLOCK_SIZE % nm[1]
    pruned = torch.zeros_like(w, dtype=torch.bool)  # (out, in)
    for start in range(0, columns, block):
        end = min(start + block, columns)
        w_block, errors = w[:, start:end].clone(), torch.zeros_like(w[:, start:end])  # (out, B)
        diag = h_inv[start:end, start:end].diagonal()  # (B,)
        mask = torch.zeros_like(w_block, dtype=torch.bool)  # (out, B) True = pruned
        if nm is None:
            saliency = (w_block / diag[None, :]) ** 2  # (out, B)
            count = round(sparsity * saliency.numel())
            if count:
                mask.view(-1)[torch.topk(saliency.flatten(), count, largest=False).indices] = True
        for i in range(end - start):
            if nm is not None and i % nm[1] == 0:
                cols = slice(i, i + nm[1])
                saliency = (w_block[:, cols] / diag[None, cols]) ** 2  # (out, m)
                mask.scatter_(
                    1, i + torch.topk(saliency, nm[0], dim=1, largest=False).indices, True
                )
            column = w_block[:, i]  # (out,)
            kept = column.masked_fill(mask[:, i], 0.0)  # (out,)
            error = (column - kept) / h_inv[start + i, start + i]  # (out,)
            w_block[:, i:] -= error[:, None] @ h_inv[start + i, start + i : end][None, :]
            w_block[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = w_block
        w[:, end:] -= errors @ h_inv[start:end, end:]  # lazy update of the later columns
        pruned[:, start:end] = mask
    w[pruned] = 0.0
    return w, ~pruned


def _prune_layer(
    module: nn.Module, hessian: Tensor, sparsity: float, nm: tuple[int, int] | None
) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    new, keep = sparsegpt_weight(weight, hessian.to(weight.device), sparsity, nm)
    with torch.no_grad():
        weight.copy_(new.to(weight.dtype))
    return keep


def sparsegpt_block(
    block: nn.Module, layers: dict[str, nn.Module], calls: list[BlockCall], sparsity: float,
    nm: tuple[int, int] | None,
) -> dict[str, Tensor]:  # fmt: skip
    """SparseGPT one decoder block's ``layers`` (names relative to it) in place, group after
    group in call order, each group's Hessian from the block as pruned so far; their masks."""
    masks: dict[str, Tensor] = {}
    for group in input_groups(block, layers, calls[0]) if layers else []:
        with recording_hessians({group[0]: layers[group[0]]}) as sums:
            for call in calls:  # the group's members share one input: one Hessian
                run_block_until(block, call, stop_at=layers[group[-1]])
        hessian = sums[group[0]].value()
        del sums  # its float64 X^T X, before the layers' own temporaries
        for name in group:
            masks[name] = _prune_layer(layers[name], hessian, sparsity, nm)
        release_free_heap()  # the group's temporaries (Hessian, column loop)
    return masks


def sparsegpt_masks(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Sequence[Sequence[Any]],
    sparsity: float,
    nm: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """SparseGPT every Linear in ``layers`` (name -> module) in place; their keep masks.

    Sequential block by block when the model has a decoder block list, else one pass.
    Layers that need a mask with a width not divisible by m (N:M) are left dense.
    """
    linears = {n: m for n, m in layers.items() if isinstance(m, nn.Linear)}
    if nm is not None:
        linears = {n: m for n, m in linears.items() if m.in_features % nm[1] == 0}
    layers = dict(linears)
    masks: dict[str, Tensor] = {}
    try:
        prefix, blocks = find_blocks(model)
    except BlockWalkError:
        with recording_hessians(layers) as sums, torch.no_grad():
            for batch in batches:
                model(*batch)
        for name, total in sums.items():
            masks[name] = _prune_layer(layers[name], total.value(), sparsity, nm)
        return masks
    calls = capture_block_inputs(model, blocks[0], [tuple(b) for b in batches])
    for index, block in enumerate(blocks):
        start = f"{prefix}.{index}."
        inside = {n[len(start) :]: m for n, m in layers.items() if n.startswith(start)}
        block_masks = sparsegpt_block(block, inside, calls, sparsity, nm)
        masks.update({start + name: mask for name, mask in block_masks.items()})
        if index + 1 < len(blocks):
            calls = advance(block, calls)
    rest = {n: m for n, m in layers.items() if not n.startswith(f"{prefix}.")}
    if rest:  # layers after the blocks (an untied head): from the model as pruned so far
        with recording_hessians(rest) as sums, torch.no_grad():
            for batch in batches:
                model(*batch)
        for name, total in sums.items():
            masks[name] = _prune_layer(rest[name], total.value(), sparsity, nm)
    return masks
