"""Packed storage of a fake-quant model: integer codes packed densely (two int4 per byte, eight
binary weights per byte), so the file of a W4 model really is about 8x smaller than fp32 weights.

File layout (safetensors): every entry of the model's state dict except the float weights of
quantized layers, plus per quantized layer ``<name>.weight.packed`` (uint8 bit stream, see
``packing.py``) or ``<name>.weight.values`` (fp16/bf16 casts), and ``<name>.weight.slice_scale``
for binary/ternary/pow2 weights. The metadata key ``torchslim_quantized`` holds JSON: each
layer's formats and shape, and the modules that were replaced by Identity (folded BatchNorms).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from torchslim._io import atomic_path
from torchslim.errors import ModelLoadError
from torchslim.quantize.apply import set_submodule
from torchslim.quantize.config import parse_activation_format
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import (
    QuantModule,
    is_quantizable,
    nearest_centroid,
    quant_class,
    quant_modules,
    to_quant,
)
from torchslim.quantize.nonuniform import (
    binary_quantize,
    kmeans_dequantize,
    pow2_dequantize,
    pow2_quantize,
    ternary_quantize,
)
from torchslim.quantize.packing import pack_bits, unpack_bits
from torchslim.quantize.primitives import (
    dequantize,
    float8_dequantize,
    float8_quantize,
    from_groups,
    quantize,
    to_groups,
)

METADATA_KEY = "torchslim_quantized"


def _slices(weight: Tensor, fmt: QuantFormat) -> Tensor:
    """(rows, columns): one row per scale of a binary/ternary/pow2 weight."""
    if fmt.granularity == "group":
        assert fmt.group_size is not None
        return to_groups(weight, fmt.group_size, fmt.channel_axis).reshape(-1, fmt.group_size)
    if fmt.granularity == "channel":
        moved = weight.movedim(fmt.channel_axis, 0)  # (C, ...)
        return moved.reshape(moved.shape[0], -1)  # (C, N / C)
    return weight.reshape(1, -1)  # (1, N)


def _unslice(rows: Tensor, shape: tuple[int, ...], fmt: QuantFormat) -> Tensor:
    if fmt.granularity == "group":
        channels = shape[fmt.channel_axis]
        return from_groups(rows.reshape(channels, -1, rows.shape[-1]), shape, fmt.channel_axis)
    if fmt.granularity == "channel":
        axis = fmt.channel_axis % len(shape)
        moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
        return rows.reshape(moved).movedim(0, axis)
    return rows.reshape(shape)


def encode_weight(module: QuantModule) -> dict[str, Tensor]:
    """The stored tensors of one fake-quant layer's weight (keys relative to ``weight.``)."""
    quantizer, weight = module.weight_quantizer, module.weight.detach().float()
    fmt: QuantFormat = quantizer.fmt
    if fmt.kind == "float":
        return {"values": weight.to(fmt.torch_dtype)}
    if fmt.kind in ("int", "fp8"):
        scale, zero_point = quantizer.qparams()
        view = to_groups(weight, fmt.group_size, fmt.channel_axis) if fmt.group_size else weight
        if fmt.kind == "fp8":
            codes = float8_quantize(view, scale, fmt.torch_dtype).view(torch.uint8)
            return {"packed": pack_bits(codes, 8)}
        return {
            "packed": pack_bits(quantize(view, scale, zero_point, fmt.qmin, fmt.qmax), fmt.bits)
        }
    if fmt.kind == "codebook":
        return {"packed": pack_bits(nearest_centroid(weight, quantizer.codebook), fmt.bits)}
    rows = _slices(weight, fmt)  # (R, N)
    if fmt.kind == "binary":
        codes, scale = binary_quantize(rows, 0)
        return {"packed": pack_bits((codes > 0).to(torch.uint8), 1), "slice_scale": scale}
    if fmt.kind == "ternary":
        codes, scale = ternary_quantize(rows, 0)
        return {"packed": pack_bits(codes, 2), "slice_scale": scale}
    codes, exponent = pow2_quantize(rows, fmt.bits, 0)
    return {"packed": pack_bits(codes, fmt.bits), "slice_scale": exponent}


def decode_weight(stored: dict[str, Tensor], module: QuantModule, shape: tuple[int, ...]) -> Tensor:
    """Float32 weight of ``shape`` from :func:`encode_weight`'s tensors (module: for qparams)."""
    quantizer = module.weight_quantizer
    fmt: QuantFormat = quantizer.fmt
    if fmt.kind == "float":
        return stored["values"].float()
    count = math.prod(shape)
    if fmt.kind in ("int", "fp8"):
        scale, zero_point = quantizer.qparams()
        view_shape = (shape[fmt.channel_axis], -1, fmt.group_size) if fmt.group_size else shape
        if fmt.kind == "fp8":
            codes = unpack_bits(stored["packed"], 8, (count,)).view(fmt.torch_dtype)
            values = float8_dequantize(codes.reshape(view_shape), scale)
        else:
            codes = unpack_bits(stored["packed"], fmt.bits, (count,), signed=fmt.symmetric)
            values = dequantize(codes.reshape(view_shape), scale, zero_point)
        if fmt.group_size:
            return from_groups(values, shape, fmt.channel_axis)
        return values.reshape(shape)
    if fmt.kind == "codebook":
        indices = unpack_bits(stored["packed"], fmt.bits, shape)
        return kmeans_dequantize(quantizer.codebook, indices)
    rows = stored["slice_scale"].shape[0]
    if fmt.kind == "binary":
        codes = unpack_bits(stored["packed"], 1, (rows, count // rows)).float() * 2 - 1
        return _unslice(codes * stored["slice_scale"], shape, fmt)
    codes = unpack_bits(stored["packed"], fmt.bits, (rows, count // rows), signed=True)
    if fmt.kind == "ternary":
        return _unslice(codes.float() * stored["slice_scale"], shape, fmt)
    return _unslice(pow2_dequantize(codes, stored["slice_scale"]), shape, fmt)


def quantized_state_dict(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, metadata) of ``model`` with the quantized weights packed."""
    layers = quant_modules(model)
    tensors = {k: v for k, v in model.state_dict().items()}
    described: dict[str, Any] = {}
    for name, module in layers.items():
        del tensors[f"{name}.weight"]
        if module.weight_quantizer.fmt.symmetric:  # all zero: restored on load
            del tensors[f"{name}.weight_quantizer.zero_point"]
        for key, value in encode_weight(module).items():
            tensors[f"{name}.weight.{key}"] = value
        inputs = module.input_quantizer
        described[name] = {
            "type": type(module).__name__,
            "shape": list(module.weight.shape),
            "weight_format": module.weight_quantizer.fmt.short_name,
            "activation_format": None if inputs is None else inputs.fmt.short_name,
            "dynamic": bool(inputs is not None and inputs.dynamic),
        }
    identity = [n for n, m in model.named_modules() if isinstance(m, nn.Identity)]
    return tensors, {"layers": described, "identity_modules": identity}


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (after ``quantize_``) to ``path`` as packed safetensors, atomically."""
    tensors, metadata = quantized_state_dict(model)
    target = Path(path)
    with atomic_path(target) as tmp:
        unique = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
        save_file(unique, str(tmp), metadata={METADATA_KEY: json.dumps(metadata)})
    return target


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Turn the float ``model`` (same architecture) into the quantized model saved at ``path``.

    Raises:
        ModelLoadError: not a torchslim quantized file, or it does not fit ``model``.
    """
    file = Path(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
        tensors = load_file(str(file))
    except Exception as error:  # safetensors raises several types for a bad file
        raise ModelLoadError(f"cannot read quantized weights from {file}: {error}") from error
    if raw is None:
        raise ModelLoadError(f"{file} has no {METADATA_KEY} metadata; save it with save_quantized.")
    metadata = json.loads(raw)
    for name in metadata["identity_modules"]:
        if not isinstance(model.get_submodule(name), nn.Identity):
            set_submodule(model, name, nn.Identity())
    state: dict[str, Tensor] = {}
    for name, info in metadata["layers"].items():
        module = _swap_for_load(model, name, info)
        prefix = f"{name}.weight."
        stored = {k[len(prefix) :]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        zero_key = f"{name}.weight_quantizer.zero_point"
        tensors.setdefault(
            zero_key,
            module.weight_quantizer.zero_point.new_zeros(())
            .expand_as(module.weight_quantizer.zero_point)
            .clone(),
        )
        own = {
            k.removeprefix(f"{name}."): v for k, v in tensors.items() if k.startswith(f"{name}.")
        }
        module.load_state_dict({**own, "weight": module.weight.detach()}, strict=False)
        state[f"{name}.weight"] = decode_weight(stored, module, tuple(info["shape"]))
    try:
        model.load_state_dict({**tensors, **state}, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"{file} does not fit this model: {error}") from error
    return model


def _swap_for_load(model: nn.Module, name: str, info: dict[str, Any]) -> QuantModule:
    float_module = model.get_submodule(name)
    if not is_quantizable(float_module) or quant_class(type(float_module)).__name__ != info["type"]:
        raise ModelLoadError(
            f"layer {name!r} is {type(float_module).__name__} here but {info['type']} in the file."
        )
    activation = info["activation_format"]
    module = to_quant(
        float_module,
        QuantFormat.parse(info["weight_format"]),
        None if activation is None else parse_activation_format(activation),
        info["dynamic"],
    )
    set_submodule(model, name, module)
    return module
