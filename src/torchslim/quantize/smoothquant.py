"""SmoothQuant: move activation outliers into the weights before W8A8 quantization.

SmoothQuant (Xiao et al., arXiv 2211.10438). For a group of Linear layers that read the same
input X, each input channel j gets a factor s_j = max|X_j|^alpha / max|W_j|^(1-alpha): the
input is divided by s (its outlier channels shrink) and the weights' input columns are
multiplied by s, so the float product is unchanged while a per-tensor int8 activation scale
wastes far fewer levels on a few huge channels.

Where 1/s can go:
- ``"fold"``: into the preceding norm's weight (and bias) when that norm's output feeds only the
  group. Pre-norm decoders (HF LLaMA, SmolLM2, Qwen2, Mistral): ``input_layernorm`` -> q/k/v,
  ``post_attention_layernorm`` -> gate/up. No run-time cost.
- ``"input-scale"``: an explicit per-channel multiply in front of each Linear of the group
  (``nn.Sequential(InputSmoothing, Linear)``). Post-norm encoders (BERT, MiniLM) need it: their
  LayerNorm output is also the residual stream (``BertSelfOutput``/``BertOutput`` add it back),
  so folding 1/s into that LayerNorm would change the model. Groups there: q/k/v after the
  previous LayerNorm (the embeddings' for layer 0), ``intermediate.dense`` after the attention
  output LayerNorm. A static int8 kernel folds this multiply into its input quantization.
- ``"fold-rows"`` (opt-in, ``down_proj=True``): LLaMA's ``mlp.down_proj`` reads
  ``act(gate_proj(x)) * up_proj(x)``, so 1/s folds exactly into ``up_proj``'s output rows. (BERT's
  ``output.dense`` reads GELU's output: it gets ``"input-scale"``.) Not in the paper's LLaMA
  recipe, but down_proj's input holds the largest outliers of these models.

>>> result = smooth_quant_(model, entry.calibration_batches(8), SmoothQuantConfig(alpha=0.5))
>>> quantize_(model, QuantConfig(weight="int8", activation="int8"), entry.calibration_batches(8))
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._compress import untouched_on_failure
from torchslim.errors import ConfigError, reject_unknown_keys
from torchslim.quantize.calibrate import check_batches
from torchslim.quantize.config import matches
from torchslim.quantize.modules import eval_mode, quant_modules
from torchslim.quantize.observers import CalibrationError

FOLD, INPUT_SCALE, FOLD_ROWS = "fold", "input-scale", "fold-rows"
# The fold check on the first calibration batch: max |after - before| / max |before|.
FOLD_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SmoothQuantConfig:
    """Options of :func:`smooth_quant_`.

    Attributes:
        alpha: migration strength in [0, 1]: 0 leaves activations as they are, 1 moves all of
            their range into the weights (the paper uses 0.5 for most models, 0.8 for some).
        ignore: groups to leave alone, by the name of any of their Linear layers (exact or
            ``"re:<regex>"``).
        min_value: floor of the activation and weight absmax (and of s), > 0: keeps dead
            channels from producing zero or infinite factors.
        down_proj: also smooth the MLP's down projection (LLaMA: folded into up_proj's rows;
            BERT: explicit input scaling), beyond the paper's groups. Measured W8A8 (per-tensor
            static, benchmarks/results/quantize_smoothquant.json): SmolLM2-135M perplexity
            75/72 -> 50/45 (fp32 38.7/32.7), but MiniLM's cosine to fp32 0.987 -> 0.933: GELU
            outputs do not smooth well. Use it on LLaMA-style decoders.
    """

    alpha: float = 0.5
    ignore: tuple[str, ...] = ()
    min_value: float = 1e-5
    down_proj: bool = False

    def __post_init__(self) -> None:
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise ConfigError(f"SmoothQuantConfig.alpha={alpha!r}; allowed: a number in [0, 1].")
        value = self.min_value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ConfigError(
                f"SmoothQuantConfig.min_value={value!r}; allowed: a number in (0, 1)."
            )
        ignore = (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore)
        for pattern in ignore:
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(
                    f"SmoothQuantConfig.ignore entry {pattern!r}; allowed: a layer name or "
                    "'re:<regex>'."
                )
        object.__setattr__(self, "ignore", ignore)
        if not isinstance(self.down_proj, bool):
            raise ConfigError(
                f"SmoothQuantConfig.down_proj={self.down_proj!r}; allowed: True, False."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; ``SmoothQuantConfig.from_dict(c.to_dict()) == c``."""
        values = dataclasses.asdict(self)
        values["ignore"] = list(self.ignore)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SmoothQuantConfig:
        """Build from :meth:`to_dict` output; unknown keys raise with a "did you mean" hint."""
        reject_unknown_keys(cls, values)
        return cls(**values)


@dataclass(frozen=True)
class SmoothGroup:
    """Linear layers reading one input, and where their 1/s goes.

    Attributes:
        source: the module whose output the layers read: a norm, or ``up_proj`` for
            ``"fold-rows"`` (``None``: unknown).
        layers: the Linear layers' names.
        mode: ``"fold"`` (1/s folded into the norm ``source``), ``"fold-rows"`` (into the output
            rows of the Linear ``source``) or ``"input-scale"`` (explicit multiply).
    """

    source: str | None
    layers: tuple[str, ...]
    mode: str


@dataclass(frozen=True)
class SmoothedGroup:
    """One group after smoothing, with what changed: the input's outlier ratio (max channel
    absmax / median channel absmax) before and after dividing by s, and the range of s."""

    group: SmoothGroup
    outlier_ratio_before: float
    outlier_ratio_after: float
    scale_min: float
    scale_max: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.group),
            "outlier_ratio_before": round(self.outlier_ratio_before, 2),
            "outlier_ratio_after": round(self.outlier_ratio_after, 2),
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
        }


@dataclass(frozen=True)
class SmoothQuantResult:
    """What :func:`smooth_quant_` did: every group, the fold check, its time."""

    config: SmoothQuantConfig
    groups: tuple[SmoothedGroup, ...]
    fold_check_relative_error: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "groups": [group.to_dict() for group in self.groups],
            "fold_check_relative_error": self.fold_check_relative_error,
            "seconds": round(self.seconds, 3),
        }


class InputSmoothing(nn.Module):
    """Multiplies the last dimension by ``inverse_scale`` (1/s): SmoothQuant's input division
    where it cannot be folded into a preceding norm."""

    inverse_scale: Tensor

    def __init__(self, inverse_scale: Tensor) -> None:
        super().__init__()
        self.register_buffer("inverse_scale", inverse_scale.detach().clone())

    def forward(self, x: Tensor) -> Tensor:  # x: (..., K)
        return x * self.inverse_scale.to(x.dtype)  # (..., K)

    def extra_repr(self) -> str:
        return f"channels={int(self.inverse_scale.numel())}"


def smoothing_scales(
    activation_absmax: Tensor, weights: list[Tensor], alpha: float, min_value: float = 1e-5
) -> Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), W_j over every weight's input column j.

    Args:
        activation_absmax: (K,) per-input-channel absmax of the shared input.
        weights: (N_i, K) weights of the group's Linear layers.
        alpha: migration strength in [0, 1].
        min_value: floor of both absmax and of s.
    """
    weight_absmax = torch.cat([w.detach().abs() for w in weights], dim=0).amax(dim=0)  # (K,)
    act = activation_absmax.float().clamp(min=min_value)  # (K,)
    wgt = weight_absmax.float().clamp(min=min_value)  # (K,)
    return (act.pow(alpha) / wgt.pow(1 - alpha)).clamp(min=min_value)  # (K,)


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _linears(prefix: str, module: nn.Module, paths: tuple[str, ...]) -> tuple[str, ...]:
    found = [p for p in paths if isinstance(_get(module, p), nn.Linear)]
    return tuple(f"{prefix}{p}" for p in found)


def _get(module: nn.Module, path: str) -> nn.Module | None:
    return module.get_submodule(path) if _has(module, path) else None


def _foldable(norm: nn.Module | None) -> bool:
    """A norm computing ``weight * normalized (+ bias)``: 1/s folds into weight and bias.
    (Gemma's RMSNorm scales by 1 + weight and is excluded.)"""
    if isinstance(norm, nn.LayerNorm):
        return norm.elementwise_affine
    name = type(norm).__name__
    weight = getattr(norm, "weight", None)
    return name.endswith("RMSNorm") and "Gemma" not in name and isinstance(weight, Tensor)


def _decoder_groups(prefix: str, block: nn.Module, down_proj: bool) -> list[SmoothGroup]:
    """Pre-norm decoder block (HF LLaMA family)."""
    groups = []
    pairs = (
        ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    )
    for norm_path, paths in pairs:
        layers = _linears(prefix, block, paths)
        if layers:
            mode = FOLD if _foldable(_get(block, norm_path)) else INPUT_SCALE
            groups.append(SmoothGroup(f"{prefix}{norm_path}", layers, mode))
    rows = _linears(prefix, block, ("mlp.up_proj", "mlp.down_proj"))
    up_stays_linear = all(g.mode == FOLD for g in groups if rows and rows[0] in g.layers)
    if down_proj and len(rows) == 2 and _has(block, "mlp.gate_proj") and up_stays_linear:
        groups.append(SmoothGroup(rows[0], rows[1:], FOLD_ROWS))
    return groups


def _encoder_groups(
    prefix: str, layer: nn.Module, previous_norm: str | None, down_proj: bool
) -> list[SmoothGroup]:
    """Post-norm encoder layer (HF BERT family): explicit input scaling, see the module doc."""
    qkv = ("attention.self.query", "attention.self.key", "attention.self.value")
    groups = [SmoothGroup(previous_norm, _linears(prefix, layer, qkv), INPUT_SCALE)]
    dense = _linears(prefix, layer, ("intermediate.dense",))
    if dense:
        groups.append(SmoothGroup(f"{prefix}attention.output.LayerNorm", dense, INPUT_SCALE))
    output = _linears(prefix, layer, ("output.dense",))
    if down_proj and dense and output:
        groups.append(SmoothGroup(dense[0], output, INPUT_SCALE))  # reads GELU(dense)
    return [g for g in groups if g.layers]


def find_smooth_groups(model: nn.Module, down_proj: bool = False) -> list[SmoothGroup]:
    """The smoothable Linear groups of an HF LLaMA-style decoder or BERT-style encoder, in
    model order (``down_proj``: with the MLP's down projection). Empty when the model has
    neither structure."""
    groups: list[SmoothGroup] = []
    previous_norm: str | None = None
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if _has(module, "input_layernorm") and _has(module, "self_attn"):
            groups += _decoder_groups(prefix, module, down_proj)
        elif name.endswith("embeddings") and _has(module, "LayerNorm"):
            previous_norm = f"{prefix}LayerNorm"
        elif _has(module, "attention.self.query") and _has(module, "intermediate.dense"):
            groups += _encoder_groups(prefix, module, previous_norm, down_proj)
            has_norm = _has(module, "output.LayerNorm")
            previous_norm = f"{prefix}output.LayerNorm" if has_norm else None
    return groups


def collect_input_absmax(
    model: nn.Module, layers: list[str], batches: list[tuple[Any, ...]]
) -> dict[str, Tensor]:
    """Per-input-channel absmax of each named Linear's input over ``batches``: (K,) each.

    Raises:
        CalibrationError: a layer that saw no input, or NaN/Inf in its input.
    """
    absmax: dict[str, Tensor] = {}

    def hook(name: str) -> Any:
        def observe(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1]).abs().float()  # (M, K)
            if not bool(torch.isfinite(flat).all()):
                raise CalibrationError(
                    f"the input of layer {name!r} holds NaN/Inf on the calibration data; the "
                    "model or the data is broken, clean it before smoothing."
                )
            current = flat.amax(dim=0)  # (K,)
            absmax[name] = torch.maximum(absmax[name], current) if name in absmax else current

        return observe

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in layers]
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                model(*batch)
    finally:
        for handle in handles:
            handle.remove()
    unseen = [n for n in layers if n not in absmax]
    if unseen:
        raise CalibrationError(
            f"layers {unseen[:4]} saw no input on the calibration data; pass batches that run "
            "the whole model."
        )
    return absmax


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear), f"{name} is a {type(module).__name__}, not a Linear"
    return module


def _ratio(absmax: Tensor) -> float:
    return float(absmax.max() / absmax.median().clamp(min=1e-12))


@torch.no_grad()
def _smooth_group(
    model: nn.Module, group: SmoothGroup, absmax: Tensor, config: SmoothQuantConfig
) -> SmoothedGroup:
    linears = [_linear(model, n) for n in group.layers]
    scale = smoothing_scales(absmax, [m.weight for m in linears], config.alpha, config.min_value)
    for layer in linears:
        layer.weight.mul_(scale.to(layer.weight.dtype)[None, :])  # (N, K) * (1, K)
    if group.mode == FOLD:
        assert group.source is not None
        norm = model.get_submodule(group.source)
        for tensor in (getattr(norm, "weight", None), getattr(norm, "bias", None)):
            if isinstance(tensor, Tensor):
                tensor.div_(scale.to(tensor.dtype))
    elif group.mode == FOLD_ROWS:
        assert group.source is not None
        producer = _linear(model, group.source)  # its output channel j is the input channel j
        producer.weight.div_(scale.to(producer.weight.dtype)[:, None])  # (K, K_in) / (K, 1)
        if producer.bias is not None:
            producer.bias.div_(scale.to(producer.bias.dtype))
    else:
        for name, layer in zip(group.layers, linears, strict=True):
            smoothing = InputSmoothing((1.0 / scale).to(layer.weight.dtype))
            _set_submodule(model, name, nn.Sequential(smoothing, layer))
    after = absmax.float() / scale  # (K,)
    return SmoothedGroup(
        group, _ratio(absmax), _ratio(after), float(scale.min()), float(scale.max())
    )


def _output(model: nn.Module, batch: tuple[Any, ...]) -> Tensor:
    with eval_mode(model), torch.no_grad():
        out = model(*batch)
    out = out if isinstance(out, Tensor) else out[0]  # tuple, list or HF ModelOutput
    if not isinstance(out, Tensor):
        raise ConfigError("smooth_quant_ needs a model whose output is (or starts with) a tensor")
    return out.detach().float()


def smooth_quant_(
    model: nn.Module, calibration: Iterable[Any], config: SmoothQuantConfig | None = None
) -> SmoothQuantResult:
    """Smooth ``model`` in place (float outputs unchanged) ahead of W8A8 quantization.

    Args:
        model: an HF LLaMA-style decoder or BERT-style encoder (or a module holding one, such as
            the zoo's ``CausalLM``/``SentenceEncoder``); left exactly as it was on failure.
        calibration: batches of forward inputs (tensors or tuples), e.g.
            ``entry.calibration_batches(8)``; never the evaluation data.
        config: options; :class:`SmoothQuantConfig` defaults when ``None``.

    Returns:
        Every smoothed group (outlier ratios before/after, range of s) and the relative change
        of the model's output on the first calibration batch (float rounding only).

    Raises:
        CalibrationError: empty calibration, NaN/Inf inputs or activations, a layer never run.
        ConfigError: no smoothable group in the model (or all ignored), an already quantized
            model, or smoothing changed the float output (a norm that does not compute
            ``weight * x + bias``).
    """
    config = config or SmoothQuantConfig()
    start = time.perf_counter()
    if quant_modules(model):
        raise ConfigError(
            "smooth_quant_ runs on the float model, before quantize_: this one already holds "
            "fake-quant layers (their scales would no longer fit the smoothed weights)."
        )
    batches = check_batches(calibration)
    groups = [
        g
        for g in find_smooth_groups(model, config.down_proj)
        if not any(matches(n, p) for n in g.layers for p in config.ignore)
    ]
    if not groups:
        raise ConfigError(
            "smooth_quant_ found no Linear group to smooth (or config.ignore removed all): it "
            "knows HF LLaMA-style decoders (input_layernorm -> q/k/v_proj, "
            "post_attention_layernorm -> gate/up_proj) and BERT-style encoders."
        )
    with untouched_on_failure(model):
        reference = _output(model, batches[0])
        absmax = collect_input_absmax(model, [g.layers[0] for g in groups], batches)
        smoothed = tuple(_smooth_group(model, g, absmax[g.layers[0]], config) for g in groups)
        error = float((_output(model, batches[0]) - reference).abs().max())
        relative = error / max(float(reference.abs().max()), 1e-12)
        if not relative <= FOLD_TOLERANCE or not math.isfinite(relative):
            raise ConfigError(
                f"smoothing changed the float output by {relative:.2e} (relative max |diff|, "
                f"allowed {FOLD_TOLERANCE}); a norm of this model is not weight * x + bias. "
                "Put its layers in SmoothQuantConfig.ignore."
            )
    return SmoothQuantResult(config, smoothed, relative, time.perf_counter() - start)
