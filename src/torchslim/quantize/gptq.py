"""GPTQ for Linear layers (Frantar et al., arXiv:2210.17323): quantize a weight column by column
and push each column's rounding error onto the columns not yet quantized, weighted by the
inverse Hessian H = 2 X^T X of the layer's inputs, so the layer's output error stays small.

Sequential, as the paper and its reference code: block 0's inputs are captured from the
calibration batches; each decoder block's Linear layers get their Hessians from the inputs the
*already quantized* earlier blocks produce, group after group in call order ("true sequential":
q/k/v together, then o, then gate/up, then down, each group seeing the earlier groups of the
same block quantized); then the block's outputs are recomputed with its quantized weights and
feed the next block. Models without a decoder block list (MLPs, CNN heads) take the one-pass
path: every layer's Hessian from one pass of the float model.

Deviation from the paper, on purpose (``attention_aware``): a value projection's error reaches
the block through the attention, so its Hessian is X^T A^T A X per KV head (A: the attention
probabilities, read by ``_attention``'s probe), not X^T X. With attention sinks the plain
Hessian gives the sink token 1/T of the weight while every query reads its value; GPTQ then
pushes the rounding error into that rare input direction (SmolLM2-135M int4-g64, GPTQ on v_proj
only: perplexity 61.5 vs 50.9 for round-to-nearest; the sink token weighted up: 49.6).

The column loop follows the reference implementation (lazy batch updates of ``block_size``
columns, a Cholesky factor of H^-1, dampening ``damp`` x mean(diag H)); with per-group formats a
group's scale is fixed when the loop reaches its first column (blocks are whole groups), by the
layer's observer (min-max, or the MSE clipping search). ``act_order`` quantizes columns by
decreasing H diagonal with group scales fixed up front on the original groups ("static groups"),
so the format stays the same. Afterwards the latent weight sits on the grid and the layer's
quantizer holds the scales GPTQ used, so fake-quant, packing and ``save_quantized`` see exactly
GPTQ's codes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim._heap import release_free_heap
from torchslim._hessians import recording_hessians
from torchslim.errors import ConfigError, reject_unknown_keys
from torchslim.quantize._attention import attention_probe, probes_attention
from torchslim.quantize._blocks import (
    BlockCall,
    BlockWalkError,
    advance,
    capture_block_inputs,
    find_blocks,
    input_groups,
    run_block,
    run_block_until,
)
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import (
    QuantLinear,
    drop_weight_caches,
    eval_mode,
    mse_weight_qparams,
    quant_modules,
    quantization_disabled,
    tied_layers,
)
from torchslim.quantize.primitives import compute_qparams, round_trip

MODES = ("auto", "sequential", "one-pass")
VALUE_NAMES = ("v_proj", "value")  # value projections of attention (LLaMA, BERT-style)


@dataclass(frozen=True)
class GPTQConfig:
    """Options of :func:`gptq_`.

    Attributes:
        damp: dampening added to H's diagonal, as a fraction of its mean diagonal, in (0, 1].
        block_size: columns per lazy update (rounded up to whole groups).
        mode: "sequential" (block by block on the quantized model's activations; needs a
            decoder block list), "one-pass" (every Hessian from the float model), or "auto"
            (sequential where the model has a block list, else one-pass).
        act_order: quantize columns by decreasing Hessian diagonal (desc_act), static groups.
        attention_aware: in sequential mode, value projections (v_proj, value) use the
            Hessian of the attention output, X^T A^T A X per KV head, instead of X^T X.
    """

    damp: float = 0.01
    block_size: int = 128
    mode: str = "auto"
    act_order: bool = False
    attention_aware: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.damp <= 1:
            raise ConfigError(f"GPTQConfig.damp={self.damp!r}; allowed: (0, 1].")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise ConfigError(f"GPTQConfig.block_size={self.block_size!r}; allowed: an int >= 1.")
        if self.block_size < 1:
            raise ConfigError(f"GPTQConfig.block_size={self.block_size}; allowed: >= 1.")
        if self.mode not in MODES:
            raise ConfigError(f"GPTQConfig.mode={self.mode!r}; allowed: {', '.join(MODES)}.")
        for name in ("act_order", "attention_aware"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"GPTQConfig.{name}={getattr(self, name)!r}; allowed: bool.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTQConfig:
        reject_unknown_keys(cls, values)
        return cls(**values)


def hessians(
    model: nn.Module, layers: dict[str, QuantLinear], batches: list[tuple[Any, ...]],
    quantized: bool = False,
) -> dict[str, Tensor]:  # fmt: skip
    """H = 2 / n X^T X of every layer's input over the batches, (in, in) each; the inputs of
    the float model, or of the model as quantized so far when ``quantized``."""
    float_model = quantization_disabled(model) if not quantized else contextlib.nullcontext()
    with recording_hessians(layers) as sums, torch.no_grad(), eval_mode(model), float_model:  # type: ignore[arg-type]
        for batch in batches:
            model(*batch)
    return {name: total.value() for name, total in sums.items()}


CHOLESKY_RETRIES = 4  # each retry dampens 10x more, as AutoGPTQ/llm-compressor do


def inverse_hessian_factor(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1: (in, in). A Hessian that is not
    positive definite after dampening (few calibration tokens, collinear inputs) is retried
    with 10x the dampening, up to ``CHOLESKY_RETRIES`` times."""
    mean_diag = hessian.double().diagonal().mean().clamp(min=1e-12)
    for attempt in range(CHOLESKY_RETRIES + 1):  # each (in, in) float64 freed once used: at
        h = hessian.to(torch.float64, copy=True)  # in=1536 they are 18 MiB each
        h.diagonal().add_(min(damp * 10**attempt, 1e6) * mean_diag)
        factor, info = torch.linalg.cholesky_ex(h)
        del h
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            del factor
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if int(info) == 0:
                return upper.float()
    largest = damp * 10**CHOLESKY_RETRIES
    raise ConfigError(
        f"GPTQ: the layer's Hessian is not positive definite even with damp={largest:g} (the "
        "calibration inputs are degenerate); use more or more varied calibration batches."
    )


def _slice_qparams(columns: Tensor, fmt: QuantFormat, mse: bool) -> tuple[Tensor, Tensor]:
    """(scale, zero_point) per row of ``columns`` (out, g), (out, 1) each: min-max, or the
    clipping with the least squared round-trip error when ``mse``."""
    if mse:
        per_row = dataclasses.replace(fmt, granularity="channel", group_size=None, channel_axis=0)
        return mse_weight_qparams(columns, per_row)
    return compute_qparams(columns.amin(1, keepdim=True), columns.amax(1, keepdim=True), fmt)


@dataclass(frozen=True)
class _Grid:
    """How a weight is rounded: the format, fixed qparams (channel/tensor formats, or every
    group's up front with act_order) and whether group scales use the MSE search."""

    fmt: QuantFormat
    qparams: tuple[Tensor, Tensor] | None
    mse: bool = False


def quantize_columns(
    weight: Tensor, hessian: Tensor, grid: _Grid, config: GPTQConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ of one (out, in) weight: (quantized weight, scales, zero points).

    Channel/tensor formats use ``grid.qparams`` (per-row (out, 1) or per-tensor). Group formats
    choose each group's (out, 1) parameters when the loop reaches it; returned as (out, G, 1).
    """
    w = weight.detach().float().clone()  # (out, in)
    columns = w.shape[1]
    dead = hessian.diagonal() == 0  # (in,) inputs never active
    if dead.any():  # a copy only when there is something to change
        hessian = hessian.clone()
        hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    group = grid.fmt.group_size or columns
    order = torch.arange(columns)
    if config.act_order:
        order = torch.argsort(hessian.diagonal(), descending=True)  # (in,)
        grid = _static_groups(w, grid)
        w, hessian = w[:, order], hessian[order][:, order]
    h_inv = inverse_hessian_factor(hessian, config.damp)  # (in, in)
    dynamic_groups = bool(grid.fmt.group_size) and grid.qparams is None
    block = group * math.ceil(config.block_size / group) if dynamic_groups else config.block_size
    scales, zeros = [], []
    quantized = torch.zeros_like(w)  # (out, in), permuted like w
    for start in range(0, columns, block):
        end = min(start + block, columns)
        w_block, errors = w[:, start:end].clone(), torch.zeros_like(w[:, start:end])  # (out, B)
        for i in range(end - start):
            if dynamic_groups and (start + i) % group == 0:
                scale, zero = _slice_qparams(w_block[:, i : i + group], grid.fmt, grid.mse)
                scales.append(scale)
                zeros.append(zero)
            else:
                scale, zero = _column_qparams(grid, int(order[start + i]), scales, zeros)
            column = w_block[:, i : i + 1]  # (out, 1)
            q = round_trip(column, grid.fmt, scale, zero)  # (out, 1)
            quantized[:, start + i] = q[:, 0]
            error = (column - q) / h_inv[start + i, start + i]  # (out, 1)
            w_block[:, i:] -= error @ h_inv[start + i, start + i : end][None, :]  # (out, B - i)
            errors[:, i] = error[:, 0]
        w[:, end:] -= errors @ h_inv[start:end, end:]  # lazy update of the later columns
    quantized = quantized[:, torch.argsort(order)]  # (out, in) back in the original order
    if dynamic_groups:
        return quantized, torch.cat(scales, 1)[..., None], torch.cat(zeros, 1)[..., None]
    assert grid.qparams is not None
    return quantized, grid.qparams[0], grid.qparams[1]


def _static_groups(weight: Tensor, grid: _Grid) -> _Grid:
    """For act_order with groups: every group's parameters from the original weight, (out, G, 1)."""
    if not grid.fmt.group_size or grid.qparams is not None:
        return grid
    g = grid.fmt.group_size
    params = [
        _slice_qparams(weight[:, s : s + g], grid.fmt, grid.mse)
        for s in range(0, weight.shape[1], g)
    ]
    scale = torch.stack([p[0] for p in params], 1)  # (out, G, 1)
    zero = torch.stack([p[1] for p in params], 1)  # (out, G, 1)
    return dataclasses.replace(grid, qparams=(scale, zero))


def _column_qparams(
    grid: _Grid, original_column: int, scales: list[Tensor], zeros: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """The (scale, zero_point) that round one column: its group's, or the layer's."""
    if grid.qparams is None:  # dynamic groups: the current group's
        return scales[-1], zeros[-1]
    scale, zero = grid.qparams
    if grid.fmt.group_size and scale.ndim == 3:  # static groups: (out, G, 1) -> (out, 1)
        index = original_column // grid.fmt.group_size
        return scale[:, index], zero[:, index]
    return scale, zero


def _proxy_loss(weight: Tensor, approx: Tensor, hessian: Tensor) -> float:
    """tr((W - Q) H (W - Q)^T) / out: the layer's output MSE on the calibration inputs; with
    one Hessian per head (heads, in, in), each head's rows use their own."""
    delta = weight.detach().float() - approx  # (out, in)
    heads = hessian.reshape(-1, *hessian.shape[-2:])  # (heads, in, in)
    rows = delta.reshape(heads.shape[0], -1, delta.shape[1])  # (heads, out / heads, in)
    return float(((rows @ heads) * rows).sum() / weight.shape[0])


def _gptq_weight(
    weight: Tensor, hessian: Tensor, grid: _Grid, config: GPTQConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`quantize_columns`, per head's rows when ``hessian`` is (heads, in, in)."""
    if hessian.ndim == 2:
        return quantize_columns(weight, hessian, grid, config)
    heads = hessian.shape[0]
    rows = weight.shape[0] // heads
    per_row = grid.qparams is not None and grid.qparams[0].ndim > 0
    parts = []
    for head in range(heads):
        part = slice(head * rows, (head + 1) * rows)
        qparams = (grid.qparams[0][part], grid.qparams[1][part]) if per_row else grid.qparams  # type: ignore[index]
        sliced = dataclasses.replace(grid, qparams=qparams)
        parts.append(quantize_columns(weight[part], hessian[head], sliced, config))
    if grid.qparams is not None and not per_row:  # one scale per tensor: unchanged
        return torch.cat([p[0] for p in parts]), parts[0][1], parts[0][2]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _grid_of(module: QuantLinear) -> _Grid:
    quantizer = module.weight_quantizer
    fmt = quantizer.fmt
    qparams = None if fmt.group_size else quantizer.qparams()
    return _Grid(fmt, qparams, mse=quantizer.observer_name == "mse")


def _quantize_layer(module: QuantLinear, hessian: Tensor, config: GPTQConfig) -> dict[str, float]:
    """GPTQ one layer in place: latent weight onto the grid, its quantizer holds GPTQ's scales."""
    quantizer = module.weight_quantizer
    original = module.weight.detach().clone()
    enabled, quantizer.enabled = quantizer.enabled, True
    nearest = module.quantized_weight().detach().clone()
    quantizer.enabled = enabled
    weight, scale, zero = _gptq_weight(original, hessian, _grid_of(module), config)
    with torch.no_grad():
        quantizer.scale.copy_(scale.reshape(-1))
        quantizer.zero_point.copy_(zero.reshape(-1))
        module.weight.copy_(weight)
    quantizer.reset_cache()
    return {
        "loss_nearest": _proxy_loss(original, nearest, hessian),
        "loss_gptq": _proxy_loss(original, weight, hessian),
    }


def gptq_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The layers GPTQ rewrites: fake-quant Linears with an "int" weight, not tied."""
    tied = tied_layers(model)
    return {
        name: module
        for name, module in quant_modules(model).items()
        if isinstance(module, QuantLinear)
        and module.weight_quantizer.fmt.kind == "int"
        and name not in tied
    }


@contextmanager
def _weights_float(layers: Iterable[QuantLinear]) -> Iterator[None]:
    """Bypass these layers' weight quantizers (layers of the block not yet quantized)."""
    layers = list(layers)
    previous = [m.weight_quantizer.enabled for m in layers]
    for module in layers:
        module.weight_quantizer.enabled = False
    try:
        yield
    finally:
        for module, enabled in zip(layers, previous, strict=True):
            module.weight_quantizer.enabled = enabled


def _gptq_block(
    block: nn.Module, layers: dict[str, QuantLinear], calls: list[BlockCall], config: GPTQConfig
) -> dict[str, dict[str, float]]:
    """GPTQ one block's layers (names relative to the block), group after group in call order;
    each group's Hessians come from a block pass with the earlier groups already quantized."""
    report: dict[str, dict[str, float]] = {}
    pending = dict(layers)
    for group in input_groups(block, layers, calls[0]):
        first, last = pending[group[0]], pending[group[-1]]
        with _weights_float(pending.values()), recording_hessians({group[0]: first}) as sums:
            for call in calls:  # the group's members share one input: one Hessian
                run_block_until(block, call, stop_at=last)
        hessian = sums[group[0]].value()
        del sums  # its float64 X^T X (18 MiB at in=1536), before the layer's own temporaries
        for name in group:
            layer_hessian = hessian
            if config.attention_aware and name.rsplit(".", 1)[-1] in VALUE_NAMES:
                with _weights_float(pending.values()):
                    layer_hessian = _value_hessians(block, name, calls, hessian)
            report[name] = _quantize_layer(pending.pop(name), layer_hessian, config)
        release_free_heap()  # the group's temporaries (Hessians, column loop)
    return report


def _value_hessians(block: nn.Module, name: str, calls: list[BlockCall], plain: Tensor) -> Tensor:
    """Per KV head h, H_h = 2/n X^T (sum over h's query heads of A^T A) X: (Hk, in, in), the
    Hessian of the attention output's error w.r.t. v's rows of head h (see ``_attention``).
    ``plain`` (X^T X) is returned when the parent is not an attention module we can probe."""
    value = block.get_submodule(name)
    attention = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
    if not probes_attention(attention):
        return plain
    inputs: list[Tensor] = []
    total: list[Tensor] = []  # one running sum (Hk, in, in): a list of one per call held 4 x 8 MiB

    def on_probs(probs: Tensor, values: Tensor) -> None:
        x = inputs.pop().float()  # (B, S, in)
        b, heads, t, s = probs.shape
        kv_heads = values.shape[1]
        per_kv = probs.reshape(b, kv_heads, heads // kv_heads, t, s)  # (B, Hk, g, T, S)
        mixing = torch.einsum("bhgts,bhgtu->bhsu", per_kv, per_kv)  # (B, Hk, S, S) = A^T A
        mixed = mixing @ x[:, None]  # (B, Hk, S, in)
        part = torch.einsum("bsi,bhsj->hij", x, mixed).double()  # (Hk, in, in)
        if total:  # the same sum as stacking the parts and summing dim 0 (checked bit-exact)
            total[0] += part
        else:
            total.append(part)

    hook = value.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach()))
    stop = getattr(attention, "o_proj", None)
    try:
        with attention_probe(attention, on_probs):
            for call in calls:
                if stop is not None:
                    run_block_until(block, call, stop_at=stop)
                else:
                    run_block(block, call)
    finally:
        hook.remove()
    if not total or value.out_features % total[0].shape[0]:  # type: ignore[operator]
        return plain
    tokens = sum(call.hidden.shape[0] * call.hidden.shape[1] for call in calls)
    return (2 * total[0] / tokens).float()


def _sequential(
    model: nn.Module, layers: dict[str, QuantLinear], batches: list[tuple[Any, ...]],
    config: GPTQConfig,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Block by block on the quantized model's activations; then any layer outside the blocks
    (after them, e.g. an untied LM head) from one pass of the model as quantized so far."""
    prefix, blocks = find_blocks(model)
    report: dict[str, dict[str, float]] = {}
    with eval_mode(model):
        calls = capture_block_inputs(model, blocks[0], batches)
        for index, block in enumerate(blocks):
            start = f"{prefix}.{index}."
            inside = {n[len(start) :]: m for n, m in layers.items() if n.startswith(start)}
            block_report = _gptq_block(block, inside, calls, config)
            report.update({start + name: loss for name, loss in block_report.items()})
            if index + 1 < len(blocks):
                calls = advance(block, calls)
            drop_weight_caches(block)  # its fake-quant weights are not needed again
    rest = {name: m for name, m in layers.items() if not name.startswith(f"{prefix}.")}
    if rest:  # a full pass (logits of the whole vocabulary included) only when a layer needs it
        for name, hessian in hessians(model, rest, batches, quantized=True).items():
            report[name] = _quantize_layer(rest[name], hessian, config)
        drop_weight_caches(model)  # that pass cached every layer's fake-quant weight
    return report


def gptq_(
    model: nn.Module, calibration: Iterable[Any], config: GPTQConfig | None = None
) -> dict[str, dict[str, float]]:
    """GPTQ every fake-quant Linear with an "int" weight format, in place (after ``quantize_``).

    Layers whose weight is tied to another module (an LM head sharing the embedding) are
    skipped: rewriting the shared weight would change the other module too.

    Returns:
        Per layer: the output-error proxy tr(dW H dW^T)/out with round-to-nearest and with GPTQ
        (on that layer's calibration inputs).

    Raises:
        CalibrationError: empty or non-finite calibration data (the model is left untouched).
        BlockWalkError: mode "sequential" on a model without a decoder block list.
    """
    config = config or GPTQConfig()
    with untouched_on_failure(model):
        batches = check_batches(calibration)
        layers = gptq_layers(model)
        mode = config.mode
        if mode == "auto":
            try:
                find_blocks(model)
                mode = "sequential"
            except BlockWalkError:
                mode = "one-pass"
        if mode == "sequential":
            return _sequential(model, layers, batches, config)
        report = {}
        for name, hessian in hessians(model, layers, batches).items():
            report[name] = _quantize_layer(layers[name], hessian, config)
    return report
