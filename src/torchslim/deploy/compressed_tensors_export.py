"""Writing a weight-only quantized transformers model as a compressed-tensors directory, which
``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` loads with no torchslim installed.

compressed-tensors (the checkpoint format of llm-compressor and vLLM; transformers reads a
``config.json`` whose ``quantization_config`` has ``quant_method: compressed-tensors``) stores
each quantized Linear in the ``pack-quantized`` format: ``weight_packed`` (int32 words, 32/bits
codes each), ``weight_scale`` (tensor: (1,), channel: (out, 1), group: (out, in / g)),
``weight_shape`` and, for an asymmetric grid, ``weight_zero_point`` (packed along the output
axis). Its codes and zero points are signed, [-2^(b-1), 2^(b-1) - 1]; torchslim's asymmetric
("uint") codes c and zero points z, both in [0, 2^b - 1], are written as c - 2^(b-1) and
z - 2^(b-1), which changes no dequantized value: (c - z) * scale.

The codes are the ones torchslim's quantizer rounds the latent weight to (GPTQ's, AWQ's or
RTN's), the scales its float32 scales: the loaded model computes with the same weights. Every
other tensor (embeddings, norms, float layers such as an ignored LM head) is written as it is,
and ``config.json`` only when the config rebuilds exactly the model's structure
(:mod:`torchslim._hf_directory`). Layers sharing one format form one config group; the Linear
layers left in float are listed under ``ignore``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.modules import QuantLinear, quant_modules, tied_layers
from torchslim.quantize.primitives import quantize, to_groups

FORMAT = "pack-quantized"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
EXAMPLES = "int8, uint8, int4-g128, uint4-g64, int4, uint4-g32"  # what a refusal suggests
STRATEGIES = {"tensor": "tensor", "channel": "channel", "group": "group"}


@dataclass(frozen=True)
class CompressedTensorsExport:
    """What ``export_compressed_tensors`` wrote: the directory, its weights file's size, each
    quantized layer's format (transformers names) and the ``quantization_config``."""

    directory: Path
    weights_bytes: int
    layers: dict[str, str]  # transformers layer name -> torchslim weight format
    quantization_config: dict[str, Any]


def quantization_args(fmt: QuantFormat) -> dict[str, Any]:
    """compressed-tensors' ``weights`` arguments for ``fmt``, or a ConfigError naming what the
    format is and which formats the export takes instead."""
    why = _not_expressible(fmt)
    if why is not None:
        raise ConfigError(
            f"weight format {fmt.short_name!r} has no compressed-tensors form: {why}. The "
            f"compressed-tensors export takes integer grids of 1-8 bits (symmetric 'int' or "
            f"asymmetric 'uint') per tensor, per output channel or in groups along the input, "
            f"e.g. {EXAMPLES}; quantize with one of those (or export GGUF / deploy instead)"
        )
    args: dict[str, Any] = {
        "num_bits": fmt.bits,
        "type": "int",
        "symmetric": fmt.symmetric,
        "strategy": STRATEGIES[fmt.granularity],
        "dynamic": False,
    }
    if fmt.group_size is not None:
        args["group_size"] = fmt.group_size
    return args


def _not_expressible(fmt: QuantFormat) -> str | None:
    if fmt.kind != "int":
        return f"its kind {fmt.kind!r} is not an integer grid with a scale"
    if fmt.channel_axis != 0:
        return f"its scales run along axis {fmt.channel_axis}, not per output channel (axis 0)"
    return None


def layer_tensors(module: QuantLinear) -> dict[str, Tensor]:
    """The compressed-tensors tensors of one fake-quant Linear (names relative to the layer):
    its integer codes packed, its scales and zero points, its shape."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    codes, scale, zero = signed_codes(module)  # (out, in), scale-shaped x 2
    fmt = module.weight_quantizer.fmt
    tensors = {
        "weight_packed": pack_to_int32(codes, fmt.bits),  # (out, ceil(in * bits / 32)) int32
        "weight_scale": scale.contiguous(),
        "weight_shape": torch.tensor(codes.shape),
    }
    if not fmt.symmetric:  # packed along the output axis, except one zero point per tensor
        packed = fmt.granularity != "tensor"
        tensors["weight_zero_point"] = (
            pack_to_int32(zero, fmt.bits, packed_dim=0) if packed else zero
        ).contiguous()
    if module.bias is not None:
        tensors["bias"] = module.bias.detach().float()
    return tensors


def signed_codes(module: QuantLinear) -> tuple[Tensor, Tensor, Tensor]:
    """(codes (out, in), scale, zero point) in compressed-tensors' signed range, int8: exactly
    the codes torchslim's quantizer rounds the latent weight to, shifted by 2^(bits-1) when
    asymmetric. Scale and zero point: (1,) per tensor, (out, 1) per channel, (out, G) per group.
    """
    quantizer = module.weight_quantizer
    fmt = quantizer.fmt
    weight = module.weight.detach().float()  # (out, in)
    scale, zero = quantizer.qparams()  # broadcastable to the weight (or its group view)
    size = fmt.group_size
    view = weight if size is None else to_groups(weight, size)  # (out, in) | (out, G, g)
    codes = quantize(view, scale.detach().float(), zero, fmt.qmin, fmt.qmax).reshape(weight.shape)
    shift = 0 if fmt.symmetric else 2 ** (fmt.bits - 1)
    rows = 1 if fmt.granularity == "tensor" else weight.shape[0]
    scale = scale.detach().float().reshape(rows, -1)  # (1 | out, 1 | G)
    zero = zero.reshape(rows, -1)  # (1 | out, 1 | G)
    if fmt.granularity == "tensor":
        scale, zero = scale.reshape(1), zero.reshape(1)  # (1,)
    return (codes.to(torch.int32) - shift).to(torch.int8), scale, (zero - shift).to(torch.int8)


def check_exportable(model: nn.Module) -> dict[str, QuantLinear]:
    """The fake-quant Linear layers of ``model``, or a ConfigError for the first thing the
    export cannot write: no quantized layer, a convolution, quantized activations, a layer
    whose weight another module shares, or a format compressed-tensors cannot express."""
    layers = quant_modules(model)
    if not layers:
        raise ConfigError(
            "the model has no fake-quant layers: quantize it first (e.g. weight uint4-g64, "
            "method gptq) and export the quantized model"
        )
    tied = tied_layers(model)
    for name, module in layers.items():
        if not isinstance(module, QuantLinear):
            raise ConfigError(f"{name} is a quantized convolution; the export writes Linear layers")
        if module.input_quantizer is not None:
            raise ConfigError(
                f"{name} quantizes its input ({module.input_quantizer.fmt.short_name}): the "
                "compressed-tensors export writes weight-only quantization; quantize without "
                "an activation format"
            )
        if name in tied:
            raise ConfigError(
                f"{name} shares its weight with another module (a tied LM head): leave it in "
                "float (ignore: ['re:.*lm_head']) to export"
            )
        quantization_args(module.weight_quantizer.fmt)
    return {name: module for name, module in layers.items() if isinstance(module, QuantLinear)}


def quantization_config(
    formats: dict[str, QuantFormat], float_linears: list[str]
) -> dict[str, Any]:
    """``quantization_config`` for layers of the given formats (transformers names): one
    config group per format, targeting ``Linear`` when there is one format, else the layers by
    name; ``float_linears`` are ignored. Validated by compressed-tensors itself."""
    from compressed_tensors.quantization import QuantizationConfig

    by_format: dict[QuantFormat, list[str]] = defaultdict(list)
    for name, fmt in formats.items():
        by_format[fmt].append(name)
    groups = {}
    for index, (fmt, names) in enumerate(sorted(by_format.items(), key=lambda i: i[1][0])):
        targets = ["Linear"] if len(by_format) == 1 else sorted(names)
        groups[f"group_{index}"] = {
            "targets": targets,
            "weights": quantization_args(fmt),
            "format": FORMAT,
        }
    config = QuantizationConfig.model_validate(
        {
            "config_groups": groups,
            "format": FORMAT,
            "quantization_status": "compressed",
            "ignore": sorted(float_linears),
        }
    )
    values: dict[str, Any] = config.model_dump(mode="json")
    values["dequantize"] = needs_dequantize(values)  # how transformers must load it
    return values


def compressed_state(inner: nn.Module, layers: dict[str, QuantLinear]) -> dict[str, Tensor]:
    """``inner``'s state dict (its own names) with each of ``layers`` (same names) replaced by
    its compressed-tensors tensors; every other tensor as it is."""
    state = dict(inner.state_dict())
    for name, module in layers.items():
        for key in (f"{name}.weight", f"{name}.bias"):
            state.pop(key, None)
        state.update({f"{name}.{key}": t for key, t in layer_tensors(module).items()})
    return state


def export_compressed_tensors(
    model: nn.Module, directory: str | Path, source: Path | None = None
) -> CompressedTensorsExport:
    """Write ``model`` (a transformers model, possibly in a zoo wrapper, after weight-only
    ``quantize_``/GPTQ/AWQ) to ``directory`` as a compressed-tensors Hugging Face directory
    (see the module docstring), atomically; ``source``: a directory whose tokenizer files are
    copied beside it. The model is not changed.

    Raises:
        ConfigError: what :func:`check_exportable` refuses, or a model whose structure its
            config cannot rebuild (nothing is written then).
    """
    from torchslim._hf_directory import copy_source_files, hf_directory, write_config
    from torchslim._io import atomic_directory, save_tensors
    from torchslim.prune.unstructured import folded_copy
    from torchslim.quantize.schemes import dequantized_copy

    check_exportable(model)
    folded = folded_copy(model)  # pruning masks folded into the latent weights
    layout = hf_directory(dequantized_copy(folded))  # float layers: what the config must build
    if layout.inner is None or layout.why_not is not None:
        raise ConfigError(f"no compressed-tensors export: {layout.why_not}")
    start = len(layout.prefix)
    layers = {n[start:]: m for n, m in check_exportable(folded).items()}
    float_linears = [
        name
        for name, module in layout.inner.named_modules()
        if isinstance(module, nn.Linear) and name not in layers
    ]
    formats = {name: module.weight_quantizer.fmt for name, module in layers.items()}
    config = quantization_config(formats, float_linears)
    with atomic_directory(directory) as tmp:
        why, _ = write_config(layout.inner, tmp)
        if why is not None:
            raise ConfigError(f"no compressed-tensors export: {why}")
        _add_quantization_config(tmp / CONFIG, config)
        save_tensors(tmp / WEIGHTS, compressed_state(layout.inner, layers), {"format": "pt"})
        copy_source_files(source, tmp)
    target = Path(directory)
    shown = {name: fmt.short_name for name, fmt in formats.items()}
    return CompressedTensorsExport(target, (target / WEIGHTS).stat().st_size, shown, config)


def _add_quantization_config(path: Path, config: dict[str, Any]) -> None:
    values = json.loads(path.read_text())
    values["quantization_config"] = {"quant_method": "compressed-tensors", **config}
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def needs_dequantize(config: dict[str, Any]) -> bool:
    """Whether transformers must dequantize at load (``dequantize: true`` in the config).

    Its compressed path (the default) builds each layer on ``meta`` with the zero points
    unpacked, so it rejects the packed asymmetric zero points compressed-tensors itself writes
    (size mismatch; transformers 5.24, compressed-tensors 0.20.1); dequantizing at load takes
    them, but decompresses every layer with one config group's scheme. So: symmetric grids
    load by the default path (any number of groups), asymmetric ones by dequantizing (one
    group). On CPU both compute with the same dequantized weights; vLLM ignores the key.

    Raises:
        ConfigError: asymmetric grids in several config groups, which neither path loads.
    """
    groups = config["config_groups"].values()
    asymmetric = [g for g in groups if not g["weights"]["symmetric"]]
    if asymmetric and len(groups) > 1:
        raise ConfigError(
            f"{len(groups)} weight formats with an asymmetric ('uint') one: transformers loads "
            "asymmetric compressed-tensors grids only when every quantized layer has one "
            "format; quantize every layer to one format, or use symmetric ('int') formats"
        )
    return bool(asymmetric)
