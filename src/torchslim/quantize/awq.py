"""AWQ, activation-aware weight quantization (Lin et al., arXiv:2306.00978): scale up the input
channels of a Linear group that see large activations, s = mean|x|^alpha, fold 1/s into the
layer that feeds them (a norm's weight, or the rows of the previous Linear), so the float model
computes exactly the same function while the salient weight columns lose less to rounding.

Per decoder block, for each group of Linears sharing an input (LLaMA-style names):

- q/k/v after ``input_layernorm``;
- o after v (only when v's outputs are o's inputs one to one: no grouped-query attention);
- gate/up after ``post_attention_layernorm``;
- down after up (1/s folds into up's rows).

alpha is grid-searched in [0, 1] (alpha = 0 is round-to-nearest) for the least squared error of
the group's outputs on a sample of calibration tokens, with W diag(s) fake-quantized to the
layers' own weight format (min-max ranges). Blocks run in order on the float activations of the
scaled blocks before them. Afterwards the weight quantizers' ranges are recomputed by their own
observers (min-max or the MSE clipping search), so the result is round-to-nearest of the scaled
weights; ``gptq_`` may follow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError, TorchslimError, reject_unknown_keys
from torchslim.quantize._blocks import (
    BlockCall,
    BlockWalkError,
    advance,
    capture_block_inputs,
    find_blocks,
    run_block,
)
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.modules import QuantLinear, eval_mode, quantization_disabled
from torchslim.quantize.primitives import compute_qparams, round_trip
from torchslim.quantize.simulate import quantize_dequantize

# (layer that feeds the group, the group's Linears), names relative to a decoder block
SCALE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("self_attn.v_proj", ("self_attn.o_proj",)),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", ("mlp.down_proj",)),
)


class AWQError(TorchslimError):
    """AWQ cannot fold its scales into this model without changing what it computes."""


@dataclass(frozen=True)
class AWQConfig:
    """Options of :func:`awq_`.

    Attributes:
        grid_points: alphas tried, evenly spaced in [0, 1] (>= 2).
        search_tokens: calibration tokens (rows) per group the search measures errors on
            (a seeded sample; mean|x| uses every token). CPU cost grows linearly with it.
        seed: seed of the token sample.
        scale_o_proj: also scale o_proj by folding into v_proj (when head shapes allow).
        clip: after scaling, search each (row, group) weight range's clipping (ratios 1 down
            to 0.5) for the least output error on ``clip_tokens`` tokens (not q/k, as the
            reference: attention scores are too sensitive).
        clip_tokens: calibration tokens the clipping search measures on.
    """

    grid_points: int = 20
    search_tokens: int = 1024
    seed: int = 0
    scale_o_proj: bool = True
    clip: bool = False
    clip_tokens: int = 512

    def __post_init__(self) -> None:
        checks = (("grid_points", 2), ("search_tokens", 1), ("seed", 0), ("clip_tokens", 1))
        for name, low in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"AWQConfig.{name}={value!r}; allowed: an int >= {low}.")
        for name in ("scale_o_proj", "clip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"AWQConfig.{name}={getattr(self, name)!r}; allowed: bool.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AWQConfig:
        reject_unknown_keys(cls, values)
        return cls(**values)


@dataclass
class _Rule:
    """One scale group of one block: the feeding module and the Linears it feeds."""

    source_name: str
    source: nn.Module
    names: tuple[str, ...]
    layers: tuple[QuantLinear, ...]


def _is_int_linear(module: nn.Module | None) -> bool:
    return isinstance(module, QuantLinear) and module.weight_quantizer.fmt.kind == "int"


def block_rules(block: nn.Module, config: AWQConfig) -> list[_Rule]:
    """The scale groups of one block whose modules exist and whose shapes fold exactly."""
    modules = dict(block.named_modules())
    rules = []
    for source_name, names in SCALE_RULES:
        source = modules.get(source_name)
        layers = [modules.get(name) for name in names]
        if source is None or not all(_is_int_linear(layer) for layer in layers):
            continue
        width = layers[0].in_features  # type: ignore[union-attr]
        if isinstance(source, nn.Linear):
            if source_name.endswith("v_proj") and not config.scale_o_proj:
                continue
            if source.out_features != width:  # grouped-query attention: v heads != o inputs
                continue
        elif getattr(source, "weight", None) is None or source.weight.shape != (width,):
            continue
        rules.append(_Rule(source_name, source, tuple(names), tuple(layers)))  # type: ignore[arg-type]
    return rules


def _group_inputs(
    block: nn.Module, rules: list[_Rule], calls: list[BlockCall], config: AWQConfig
) -> list[tuple[Tensor, Tensor]]:
    """Per rule, the float input of its Linears: (mean |x| per channel (in,), sample (n, in))."""
    rows: list[list[Tensor]] = [[] for _ in rules]
    handles = [
        rule.layers[0].register_forward_pre_hook(
            lambda mod, args, i=i: rows[i].append(args[0].detach().reshape(-1, args[0].shape[-1]))
        )
        for i, rule in enumerate(rules)
    ]
    try:
        with quantization_disabled(block):
            for call in calls:
                run_block(block, call)
    finally:
        for handle in handles:
            handle.remove()
    generator = torch.Generator().manual_seed(config.seed)
    result = []
    for per_rule in rows:
        x = torch.cat(per_rule).float()  # (N, in)
        keep = torch.randperm(x.shape[0], generator=generator)[: config.search_tokens]
        result.append((x.abs().mean(0), x[keep]))  # (in,), (n, in)
    return result


def search_scale(
    x_mean: Tensor, x: Tensor, layers: tuple[QuantLinear, ...], grid_points: int
) -> tuple[Tensor, dict[str, float]]:
    """The per-channel scale s (in,) with the least group-output error, and the search figures.

    Error: sum over the layers of ||(x / s) Q(W diag(s))^T - x W^T||^2 / numel.
    """
    weights = [layer.weight.detach().float() for layer in layers]  # (out_i, in) each
    reference = [x @ w.T for w in weights]  # (n, out_i) each
    numel = sum(r.numel() for r in reference)
    best: tuple[float, float, Tensor] | None = None
    nearest = float("nan")
    for alpha in torch.linspace(0, 1, grid_points).tolist():
        s = x_mean.clamp(min=1e-4).pow(alpha)  # (in,)
        s = s / (s.max() * s.min()).sqrt()  # centred on 1 in log space
        error = 0.0
        for layer, w, y in zip(layers, weights, reference, strict=True):
            q = quantize_dequantize(w * s, layer.weight_quantizer.fmt)  # (out, in)
            error += float(((x / s) @ q.T - y).pow(2).sum())
        error /= numel
        if alpha == 0:
            nearest = error
        if best is None or error < best[1]:
            best = (alpha, error, s)
    assert best is not None
    return best[2], {"alpha": best[0], "loss_nearest": nearest, "loss_awq": best[1]}


def clip_search(layer: QuantLinear, x: Tensor, steps: int = 20) -> tuple[float, float]:
    """Set the layer's per-(row, group) ranges to the clipping of the min-max range (ratios 1
    down to 0.5) with the least ||x_g (Q(w_g) - w_g)^T||^2; (error before, after) per element.

    Channel formats are one group of all inputs; per-tensor formats are left as they are.
    """
    quantizer = layer.weight_quantizer
    fmt = quantizer.fmt
    w = layer.weight.detach().float()  # (out, in)
    group = fmt.group_size or w.shape[1]
    if fmt.granularity == "tensor":
        return math.nan, math.nan
    w_groups = w.reshape(w.shape[0], -1, group)  # (out, G, g)
    x_groups = x.reshape(x.shape[0], -1, group)  # (n, G, g)
    low, high = w_groups.amin(-1, keepdim=True), w_groups.amax(-1, keepdim=True)  # (out, G, 1)
    best: tuple[Tensor, Tensor, Tensor] | None = None
    first = math.nan
    for ratio in torch.linspace(1.0, 0.5, steps).tolist():
        scale, zero = compute_qparams(low * ratio, high * ratio, fmt)  # (out, G, 1) each
        delta = round_trip(w_groups, fmt, scale, zero) - w_groups  # (out, G, g)
        error = torch.einsum("ngk,ogk->ogn", x_groups, delta).pow(2).sum(-1)  # (out, G)
        if best is None:
            best, first = (error, scale, zero), float(error.sum())
            continue
        better = error < best[0]
        best = (
            torch.where(better, error, best[0]),
            torch.where(better[..., None], scale, best[1]),
            torch.where(better[..., None], zero, best[2]),
        )
    assert best is not None
    with torch.no_grad():
        quantizer.scale.copy_(best[1].reshape(-1))
        quantizer.zero_point.copy_(best[2].reshape(-1))
    quantizer.reset_cache()
    return first / x.shape[0] / w.shape[0], float(best[0].sum()) / x.shape[0] / w.shape[0]


def _fold(rule: _Rule, s: Tensor) -> None:
    """Divide the source's output channels by s and multiply the group's input columns by s."""
    with torch.no_grad():
        source = rule.source
        if isinstance(source, nn.Linear):
            source.weight.div_(s[:, None])  # (in, k) rows
            if source.bias is not None:
                source.bias.div_(s)
        else:
            source.weight.div_(s)  # type: ignore[operator]
        for layer in rule.layers:
            layer.weight.mul_(s[None, :])  # (out, in) columns


def _awq_block(
    block: nn.Module, rules: list[_Rule], calls: list[BlockCall], config: AWQConfig
) -> dict[str, dict[str, float]]:
    """Search and fold every rule of one block (in rule order); check the float function."""
    with quantization_disabled(block):
        before = run_block(block, calls[0])  # (B, T, C)
    report = {}
    inputs, scales = _group_inputs(block, rules, calls, config), []
    for rule, (x_mean, x) in zip(rules, inputs, strict=True):
        s, figures = search_scale(x_mean, x, rule.layers, config.grid_points)
        _fold(rule, s)
        scales.append(s)
        report[",".join(rule.names)] = figures
    with quantization_disabled(block):
        after = run_block(block, calls[0])  # (B, T, C)
    scale = before.abs().max().clamp(min=1e-6)
    if not torch.allclose(before, after, atol=1e-3 * float(scale), rtol=1e-3):
        raise AWQError(
            f"folding the AWQ scales changed the float block ({type(block).__name__}): max "
            f"|diff| {float((before - after).abs().max()):.3g}. Its norm or layout does not "
            "fold like LLaMA's (norm(x) * weight); use round-to-nearest or GPTQ."
        )
    for module in block.modules():
        if _is_int_linear(module):
            module.weight_quantizer.reset_range(module.weight.detach())  # type: ignore[union-attr,operator]
    if config.clip:
        for rule, (_, x), s in zip(rules, inputs, scales, strict=True):
            x = x / s  # (n, in): the inputs the scaled layers now see
            for name, layer in zip(rule.names, rule.layers, strict=True):
                if not name.endswith(("q_proj", "k_proj")):
                    error_rtn, error_clip = clip_search(layer, x[: config.clip_tokens])
                    ratio = error_clip / max(error_rtn, 1e-30)
                    report[",".join(rule.names)][f"clip_{name}"] = ratio
    return report


def _refuse_static_inputs(blocks: Iterable[nn.Module], config: AWQConfig) -> None:
    """AWQ divides each group's inputs by its scales: an input range calibrated before would
    clip or waste the new inputs; ranges taken from each input at run time follow them."""
    for block in blocks:
        for rule in block_rules(block, config):
            for name, layer in zip(rule.names, rule.layers, strict=True):
                quantizer = layer.input_quantizer
                if quantizer is None or quantizer.dynamic or quantizer.fmt.kind == "float":
                    continue
                raise AWQError(
                    f"awq_ rescales {name}'s input, whose static {quantizer.fmt.short_name} "
                    "range was calibrated before it; quantize activations at run time "
                    "(per token: activation='int8-token', or dynamic=True) or not at all."
                )


def awq_(
    model: nn.Module, calibration: Iterable[Any], config: AWQConfig | None = None
) -> dict[str, dict[str, float]]:
    """AWQ-scale every LLaMA-style decoder block's Linears, in place (after ``quantize_``).

    The float function is unchanged (checked per block); the weight quantizers' ranges are
    recomputed for the scaled weights, so the model is round-to-nearest of AWQ's weights.

    Returns:
        Per block and group ("model.layers.0: self_attn.q_proj,..."): the best alpha and the
        group-output error at alpha 0 (round-to-nearest) and at the best alpha.

    Raises:
        CalibrationError: empty or non-finite calibration data.
        BlockWalkError: no decoder block list, or no block with LLaMA-style groups.
        AWQError: folding would change the float model, or a layer to scale has a static
            (calibrated) input range; per-token and other run-time ranges are fine.
        (The model is left untouched on every error.)
    """
    config = config or AWQConfig()
    with untouched_on_failure(model):
        batches = check_batches(calibration)
        prefix, blocks = find_blocks(model)
        _refuse_static_inputs(blocks, config)
        if not any(block_rules(block, config) for block in blocks):
            names = ", ".join(sorted({n for _, group in SCALE_RULES for n in group}))
            raise BlockWalkError(
                f"awq_ found no LLaMA-style scale groups in {prefix}: it needs fake-quant Linears "
                f"with an int weight format (run quantize_ first) named {names}, fed by "
                "input_layernorm/post_attention_layernorm."
            )
        report = {}
        with eval_mode(model), quantization_disabled(model):
            calls = capture_block_inputs(model, blocks[0], batches)
        with eval_mode(model):
            for index, block in enumerate(blocks):
                rules = block_rules(block, config)
                figures = _awq_block(block, rules, calls, config) if rules else {}
                report.update({f"{prefix}.{index}: {k}": v for k, v in figures.items()})
                if index + 1 < len(blocks):
                    with quantization_disabled(block):
                        calls = advance(block, calls)
    return report
