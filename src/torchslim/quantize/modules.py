"""Fake-quant modules: Linear/Conv2d whose weight and input pass through quantizers (STE).

A ``QuantLinear`` / ``QuantConv2d`` keeps the float (latent) weight as its parameter, so the same
module serves post-training quantization, AdaRound (which rewrites the latent weight onto the
chosen grid points) and QAT (gradients reach the latent weight through the straight-through
estimator, and with LSQ the scales too). The integer codes are derived on demand
(:meth:`WeightQuantizer.encode`) and are what ``quantized_state_dict`` stores, packed.

Activations are quantized at the input of each quantized layer, one scale per tensor, or for a
Linear one per token (format granularity "token": a row of the input's last dim, always from the
input itself at run time); residual adds and pooling in between stay in float.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.errors import ConfigError, TorchslimError
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.lsq import lsq_fake_quantize
from torchslim.quantize.nonuniform import kmeans_dequantize, kmeans_quantize
from torchslim.quantize.observers import OBSERVERS, make_observer
from torchslim.quantize.primitives import (
    compute_qparams,
    dynamic_qparams,
    fake_quantize,
    reduce_min_max,
    reduction_dims,
    round_trip,
    sqnr_db,
    to_groups,
)
from torchslim.quantize.simulate import quantize_dequantize

RANGED_KINDS = ("int", "fp8")


class Observes(Protocol):
    """Anything that takes calibration batches (an ``Observer``, or a sampler around one)."""

    def observe(self, x: Tensor) -> None: ...


def qparam_shape(fmt: QuantFormat, weight_shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """Shape of a weight's scale for ``fmt`` (see primitives' conventions)."""
    if fmt.granularity == "tensor":
        return ()
    channels = weight_shape[fmt.channel_axis]
    if fmt.granularity == "channel":
        shape = [1] * len(weight_shape)
        shape[fmt.channel_axis % len(weight_shape)] = channels
        return tuple(shape)
    assert fmt.group_size is not None
    per_channel = math.prod(weight_shape) // channels
    return (channels, per_channel // fmt.group_size, 1)


def mse_weight_qparams(weight: Tensor, fmt: QuantFormat, steps: int = 40) -> tuple[Tensor, Tensor]:
    """Per slice (tensor/channel/group), the clipping of the min-max range (ratios 1 down to
    0.3) whose int round trip has the least squared error, measured exactly on the weight."""
    low, high = reduce_min_max(weight, fmt)  # scale-shaped
    view = weight
    if fmt.granularity == "group":
        assert fmt.group_size is not None
        view = to_groups(weight, fmt.group_size, fmt.channel_axis)  # (C, G, g)
    axis = fmt.channel_axis if fmt.granularity == "channel" else None
    dims = (-1,) if fmt.granularity == "group" else reduction_dims(view.ndim, axis)
    keep = fmt.granularity != "tensor"
    best_scale, best_zero = compute_qparams(low, high, fmt)
    best_error = (
        (view - round_trip(view, fmt, best_scale, best_zero)).pow(2).sum(dims, keepdim=keep)
    )
    for ratio in torch.linspace(1.0, 0.3, steps)[1:].tolist():
        scale, zero_point = compute_qparams(low * ratio, high * ratio, fmt)
        error = (view - round_trip(view, fmt, scale, zero_point)).pow(2).sum(dims, keepdim=keep)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero_point, best_zero)
    return best_scale, best_zero


def nearest_centroid(weight: Tensor, codebook: Tensor) -> Tensor:
    """Index (uint8) of each weight's nearest entry of a sorted ``codebook``."""
    midpoints = (codebook[1:] + codebook[:-1]) / 2  # (K-1,)
    return torch.searchsorted(midpoints, weight.detach().float().contiguous()).to(torch.uint8)


class WeightQuantizer(nn.Module):
    """Fake-quantizes a weight to ``fmt``; int/fp8 scales are fixed at construction (min-max of
    the weight) unless :meth:`enable_lsq` makes them learnable.

    Non-uniform kinds (binary, ternary, pow2, codebook) and float casts recompute their
    parameters from the weight on every call, so QAT can move the weights freely.
    """

    zero_point: Tensor
    codebook: Tensor

    def __init__(self, fmt: QuantFormat, weight: Tensor, observer: str = "minmax") -> None:
        super().__init__()
        if fmt.granularity == "token":
            raise ConfigError(
                f"weight format {fmt.short_name!r}: granularity 'token' is for activations (a "
                "scale per input row at run time); weights use 'channel' or 'g<N>' groups."
            )
        self.fmt = fmt
        self.enabled = True
        self.learn_scale = False
        self.weight_shape = tuple(weight.shape)
        self.scale_shape = qparam_shape(fmt, weight.shape) if fmt.kind in RANGED_KINDS else ()
        self.requested_observer = observer
        self.observer_name = ""
        scale, zero_point = torch.ones(self.scale_shape), torch.zeros(self.scale_shape)
        if fmt.kind in RANGED_KINDS:
            scale, zero_point = self._range(weight)
        self.scale = nn.Parameter(scale.reshape(-1).float(), requires_grad=False)  # flat: no decay
        self.register_buffer("zero_point", zero_point.reshape(-1).to(torch.int32))
        codebook = (
            kmeans_quantize(weight, fmt.bits)[0] if fmt.kind == "codebook" else torch.zeros(0)
        )
        self.register_buffer("codebook", codebook)  # (2^bits,) fixed once: k-means is slow
        self._cache: tuple[tuple[int, int, int], Tensor] | None = None

    def _range(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) of the weight by the requested observer. For int weights "auto"
        and "mse" search the clipping range exactly (:func:`mse_weight_qparams`; it includes
        the full range, so it never loses to min-max); an observer that does not support the
        format (KL per channel, ...) falls back to min-max."""
        fmt, weight = self.fmt, weight.detach().float()
        shape = qparam_shape(fmt, weight.shape)
        name = self.requested_observer
        if name in ("auto", "mse") and fmt.kind == "int":
            self.observer_name = "mse"
            scale, zero_point = mse_weight_qparams(weight, fmt)
            return scale.reshape(shape), zero_point.reshape(shape)
        observer_class = OBSERVERS.get(name)
        supported = observer_class is not None and (
            fmt.kind in observer_class.kinds and fmt.granularity in observer_class.granularities
        )
        self.observer_name = name if supported else "minmax"
        observer = make_observer(self.observer_name, fmt)
        observer.observe(weight)
        scale, zero_point = observer.compute_qparams()
        return scale.reshape(shape), zero_point.reshape(shape)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) shaped to broadcast against the weight (or its group view)."""
        return self.scale.view(self.scale_shape), self.zero_point.view(self.scale_shape)

    def reset_range(self, weight: Tensor) -> None:
        """Recompute the min-max scale from ``weight`` (after BN folding or equalization)."""
        if self.fmt.kind in RANGED_KINDS:
            scale, zero_point = self._range(weight)
            with torch.no_grad():
                self.scale.copy_(scale.reshape(-1))
                self.zero_point.copy_(zero_point.reshape(-1))
        if self.fmt.kind == "codebook":
            self.codebook.copy_(kmeans_quantize(weight, self.fmt.bits)[0])
        self._cache = None

    def reset_cache(self) -> None:
        """Forget the cached inference weight (after writing scales or weights directly)."""
        self._cache = None

    def __getstate__(self) -> dict[str, Any]:
        # a copy's weight lives elsewhere, so the cache (keyed by data_ptr) would never hit: copying
        # it would only double the layer's memory
        state = super().__getstate__()
        return {**state, "_cache": None}

    def uncached(self, weight: Tensor) -> Tensor:
        """The fake-quantized weight, from the cache if it holds it, without filling it: for
        one-off reads (SQNR, GPTQ's reference) that should not keep a second weight alive."""
        if not self.enabled:
            return weight
        cached = self._cached(self._cache_key(weight))
        return self._quantize(weight) if cached is None else cached

    def _cache_key(self, weight: Tensor) -> tuple[int, int, int]:
        """What the cached weight depends on: the weight's storage and writes, the scale's."""
        return (weight.data_ptr(), weight._version, self.scale._version)

    def _cached(self, key: tuple[int, int, int]) -> Tensor | None:
        return self._cache[1] if self._cache is not None and self._cache[0] == key else None

    def enable_lsq(self) -> None:
        """Make the scale a trainable parameter (LSQ); only for kind "int"."""
        if self.fmt.kind != "int":
            raise TorchslimError(
                f"LSQ learns int scales; this weight's format is {self.fmt.short_name}."
            )
        self.learn_scale = True
        self.scale.requires_grad_(True)

    def forward(self, weight: Tensor) -> Tensor:
        if not self.enabled:
            return weight
        if not torch.is_grad_enabled():  # inference: the quantized weight changes only on writes
            key = self._cache_key(weight)
            value = self._cached(key)
            if value is None:
                value = self._quantize(weight)
                self._cache = (key, value)
            return value
        return self._quantize(weight)

    def _quantize(self, weight: Tensor) -> Tensor:
        if self.fmt.kind in RANGED_KINDS:
            scale, zero_point = self.qparams()
            if self.learn_scale:
                return lsq_fake_quantize(weight, self.fmt, scale, zero_point)
            return fake_quantize(weight, self.fmt, scale.detach(), zero_point)
        if self.fmt.kind == "codebook":
            with torch.no_grad():
                values = kmeans_dequantize(self.codebook, nearest_centroid(weight, self.codebook))
            return weight + (values.to(weight.dtype) - weight).detach()  # STE
        return quantize_dequantize(weight, self.fmt)

    def extra_repr(self) -> str:
        observer = f", {self.observer_name}" if self.observer_name else ""
        return f"{self.fmt.short_name}{observer}{', lsq' if self.learn_scale else ''}"


class ActivationQuantizer(nn.Module):
    """Fake-quantizes a layer's input, one scale per tensor or per token.

    Modes: static (scale from calibration), dynamic (scale from each input's min and max). A
    per-token format (granularity "token") is always dynamic: a token's scale comes from its own
    row, so there is nothing to calibrate. While ``observer`` is set the input is only observed
    and passed through in float (calibration).
    """

    zero_point: Tensor
    calibrated: Tensor

    def __init__(self, fmt: QuantFormat, dynamic: bool = False) -> None:
        super().__init__()
        self.fmt, self.dynamic = fmt, dynamic or fmt.granularity == "token"
        dynamic = self.dynamic
        self.enabled = True
        self.learn_scale = False
        self.observer: Observes | None = None
        self.observer_name = "dynamic" if dynamic else ""
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))
        self.register_buffer("calibrated", torch.tensor(dynamic or fmt.kind == "float"))

    def set_qparams(self, scale: Tensor, zero_point: Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(scale.reshape(1))
            self.zero_point.copy_(zero_point.reshape(1))
            self.calibrated.fill_(True)

    def enable_lsq(self) -> None:
        """Learn the static scale (LSQ); only for static "int" formats."""
        if self.fmt.kind != "int" or self.dynamic:
            raise TorchslimError(
                f"LSQ learns static int scales; this input is {self.fmt.short_name}"
                f"{' (dynamic)' if self.dynamic else ''}."
            )
        self.learn_scale = True
        self.scale.requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        if self.observer is not None:
            self.observer.observe(x)
            return x
        if not self.enabled:
            return x
        fmt = self.fmt
        if fmt.kind == "float":
            return fake_quantize(x, fmt, torch.ones(()), torch.zeros((), dtype=torch.int32))
        if self.dynamic:  # x: (..., in); per token the scales are (..., 1)
            scale, zero_point = dynamic_qparams(x, fmt)
            return fake_quantize(x, fmt, scale, zero_point)
        if not bool(self.calibrated):
            raise TorchslimError(
                "activation quantizer used before calibration; pass calibration batches to "
                "quantize_ or set dynamic=True."
            )
        if self.learn_scale:
            return lsq_fake_quantize(x, fmt, self.scale.view(()), self.zero_point.view(()))
        return fake_quantize(x, fmt, self.scale.detach().view(()), self.zero_point.view(()))

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else f"static, {self.observer_name or 'uncalibrated'}"
        return f"{self.fmt.short_name}, {mode}{', lsq' if self.learn_scale else ''}"


class _QuantMixin(nn.Module):
    weight: Tensor
    weight_quantizer: WeightQuantizer
    input_quantizer: ActivationQuantizer | None
    _float_forward: Any = None  # a float subclass's own forward (e.g. conv with static padding)
    _float_class: type[nn.Module] | None = None  # that subclass

    def _init_quantizers(
        self,
        weight_fmt: QuantFormat,
        activation_fmt: QuantFormat | None,
        dynamic: bool,
        weight_observer: str,
    ) -> None:
        self.weight_quantizer = WeightQuantizer(weight_fmt, self.weight.detach(), weight_observer)
        self.input_quantizer = (
            None if activation_fmt is None else ActivationQuantizer(activation_fmt, dynamic)
        )

    def quantized_weight(self) -> Tensor:
        with torch.no_grad():
            return self.weight_quantizer.uncached(self.weight).detach()

    def weight_sqnr_db(self) -> float:
        return sqnr_db(self.weight, self.quantized_weight())

    def _quantized_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _subclass_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        """The float subclass's forward with ``weight`` in place of the parameter."""
        latent = self._parameters["weight"]
        self._parameters["weight"] = weight  # type: ignore[assignment]  # a tensor for one call
        try:
            return self._float_forward(x)
        finally:
            self._parameters["weight"] = latent


class QuantLinear(_QuantMixin, nn.Linear):
    """nn.Linear with fake-quantized weight and input."""

    def forward(self, x: Tensor) -> Tensor:  # x: (..., in)
        weight = self.weight_quantizer(self.weight)  # (out, in)
        if self._float_forward is not None:
            return self._subclass_forward(self._quantized_input(x), weight)
        return F.linear(self._quantized_input(x), weight, self.bias)  # (..., out)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """nn.Conv2d with fake-quantized weight and input."""

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C_in, H, W)
        weight = self.weight_quantizer(self.weight)  # (C_out, C_in / groups, kH, kW)
        if self._float_forward is not None:
            return self._subclass_forward(self._quantized_input(x), weight)
        return self._conv_forward(self._quantized_input(x), weight, self.bias)  # (B, C_out, H', W')


QuantModule = QuantLinear | QuantConv2d
_SUBCLASSES: dict[type[nn.Module], type[QuantModule]] = {}


def quant_class(float_class: type[nn.Module]) -> type[QuantModule]:
    """The fake-quant class for a Linear/Conv2d class; a subclass with its own forward (padding
    before the conv, ...) gets a fake-quant subclass that runs that forward."""
    base: type[QuantModule] = QuantLinear if issubclass(float_class, nn.Linear) else QuantConv2d
    parent = nn.Linear if base is QuantLinear else nn.Conv2d
    if float_class.forward is parent.forward:
        return base
    if float_class not in _SUBCLASSES:
        name = f"Quant{float_class.__name__}"
        attrs = {
            "_float_forward": float_class.forward,
            "_float_class": float_class,
            "__module__": __name__,
        }
        _SUBCLASSES[float_class] = type(name, (base, float_class), attrs)
    return _SUBCLASSES[float_class]


def is_quantizable(module: nn.Module) -> bool:
    """A float Linear/Conv2d (or subclass) not yet fake-quantized."""
    return isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(
        module, (QuantLinear, QuantConv2d)
    )


def to_quant(
    module: nn.Module,
    weight_fmt: QuantFormat,
    activation_fmt: QuantFormat | None,
    dynamic: bool = False,
    weight_observer: str = "minmax",
) -> QuantModule:
    """A fake-quant copy of ``module`` sharing its parameters (the original is not changed).

    ``weight_observer`` picks the weight's range ("minmax", "mse", "percentile", or "auto": the
    best SQNR among those supporting the format).

    Raises:
        ConfigError: a per-token input format on a layer that is not a Linear.
    """
    if (
        activation_fmt is not None
        and activation_fmt.granularity == "token"
        and not isinstance(module, nn.Linear)
    ):
        raise ConfigError(
            f"input format {activation_fmt.short_name!r} quantizes per token (a row of the "
            f"input's last dim), which only a Linear's (..., in) input has; a "
            f"{type(module).__name__}'s input is not token rows. Give such layers a per-tensor "
            "format (activation_overrides, e.g. 'int8'), ignore them, or use 'int8'."
        )
    quantized = copy.copy(module)  # same attributes; the containers are copied below
    for key, value in module.__dict__.items():
        if isinstance(value, dict):
            quantized.__dict__[key] = type(value)(value)
    quantized.__class__ = quant_class(type(module))
    assert isinstance(quantized, (QuantLinear, QuantConv2d))
    quantized._init_quantizers(weight_fmt, activation_fmt, dynamic, weight_observer)
    return quantized


def to_float(module: QuantModule) -> nn.Module:
    """The layer as its original float class (e.g. a padding Conv2d subclass) holding the
    dequantized weight, without quantizers: what runs where no low-bit kernel exists."""
    float_class = module._float_class or (
        nn.Linear if isinstance(module, QuantLinear) else nn.Conv2d
    )
    plain = copy.copy(module)
    for key, value in module.__dict__.items():
        if isinstance(value, dict):
            plain.__dict__[key] = type(value)(value)
    for quantizer in ("weight_quantizer", "input_quantizer"):
        plain._modules.pop(quantizer, None)
        plain.__dict__.pop(quantizer, None)
    plain.__class__ = float_class  # type: ignore[assignment]
    plain.weight = nn.Parameter(module.quantized_weight().clone(), requires_grad=False)
    return plain


def tied_layers(model: nn.Module) -> set[str]:
    """Fake-quant layers whose weight is shared with another module (a tied LM head): methods
    that rewrite the latent weight (AdaRound, GPTQ) skip them, or the other user would change."""
    users: dict[int, int] = {}
    for module in model.modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                users[id(parameter)] = users.get(id(parameter), 0) + 1
    return {n for n, m in quant_modules(model).items() if users[id(m.weight)] > 1}


def quant_modules(model: nn.Module) -> dict[str, QuantLinear | QuantConv2d]:
    """Every fake-quant layer of ``model`` by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (QuantLinear, QuantConv2d))
    }


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (calibration must not update BatchNorm statistics or use
    dropout); every module's own training flag is restored afterwards."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in flags.items():
            module.training = training


def drop_weight_caches(module: nn.Module) -> None:
    """Forget the cached fake-quant weights of ``module``'s layers (a block calibration is done
    with), so a layer-by-layer method holds one block's second weights at a time, not all."""
    for quantizer in module.modules():
        if isinstance(quantizer, WeightQuantizer):
            quantizer.reset_cache()


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in float inside the block (weight and input quantizers bypassed)."""
    quantizers = [
        m for m in model.modules() if isinstance(m, (WeightQuantizer, ActivationQuantizer))
    ]
    previous = [q.enabled for q in quantizers]
    for quantizer in quantizers:
        quantizer.enabled = False
    try:
        yield
    finally:
        for quantizer, enabled in zip(quantizers, previous, strict=True):
            quantizer.enabled = enabled
