"""Named quantization schemes of the CLI and how each one runs after quantization.

Execution kinds, so a number is never mislabelled:
- ``deployed``: real low-precision kernels (ONNX Runtime / OpenVINO / torch inductor int8),
  chosen by measurement (``torchslim.deploy``); its latency is a real int8 latency.
- ``cast``: the model cast to bf16/fp16 and run by torch (real kernels; refused or warned when
  measured slower than fp32 on this CPU).
- ``simulated``: no low-precision kernel exists here for the format. The metric is the fake-quant
  model's; the weights are stored packed (the size is real); latency is that of the model run
  with dequantized weights in fp32 — a real latency, never reported as a low-precision speed-up.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from torchslim.errors import ConfigError, did_you_mean
from torchslim.quantize.config import QuantConfig
from torchslim.quantize.modules import quant_modules, to_float


@dataclass(frozen=True)
class Scheme:
    """One ``--scheme``: the fake-quant config (None for a plain cast) and how it executes."""

    name: str
    description: str
    config: QuantConfig | None
    execution: str  # "deployed" | "cast" | "simulated"
    cast_format: str | None = None  # "bfloat16" | "float16" for execution "cast"


def _weight_only(name: str, weight: str, what: str) -> Scheme:
    return Scheme(name, what, QuantConfig(weight=weight), "simulated")


SCHEMES = {
    s.name: s
    for s in (
        Scheme("w8a8", "int8 weights (per channel) + uint8 activations, static calibration, "
               "deployed on a real int8 backend", QuantConfig(weight="int8", activation="uint8"),
               "deployed"),
        Scheme("w8-dynamic", "int8 weights, activations quantized at run time (transformers: "
               "deployed int8)", QuantConfig(weight="int8", activation="uint8", dynamic=True),
               "deployed"),
        Scheme("w4a8", "int4 weights + uint8 activations (simulated: no int4 CPU kernel)",
               QuantConfig(weight="int4", activation="uint8"), "simulated"),
        Scheme("w4a8-token", "int4 weights in groups of 64 + int8 activations per token (each "
               "token's scale from its own row at run time: no calibration; LLMs, Linear "
               "inputs only; simulated)",
               QuantConfig(weight="int4-g64", activation="int8-token", dynamic=True),
               "simulated"),
        Scheme("w4a4", "int4 weights + 4-bit activations (simulated)",
               QuantConfig(weight="int4", activation="uint4"), "simulated"),
        _weight_only("w8-weight", "int8", "int8 weight-only, packed"),
        _weight_only("w4-weight", "int4", "int4 weight-only (per channel), two codes per byte"),
        _weight_only("w2-weight", "int2", "int2 weight-only, four codes per byte"),
        _weight_only("ternary", "ternary", "ternary weights {-a, 0, a} per channel"),
        _weight_only("binary", "binary", "binary weights {-a, a} per channel (1 bit)"),
        _weight_only("pow2", "pow2-4", "power-of-two (log) 4-bit weights"),
        _weight_only("kmeans", "kmeans-16", "k-means 16-entry codebook weights (4-bit indices)"),
        _weight_only("fp8", "fp8-e4m3", "fp8 e4m3 weights (storage: no fp8 CPU kernels)"),
        Scheme("bf16", "the model in bfloat16: OpenVINO's bf16 kernels where the CPU has "
               "them (--deploy auto|openvino), else torch; refused when measured slower than "
               "fp32", None, "cast", "bfloat16"),
        Scheme("fp16", "the model in float16 (refused when measured slower than fp32)", None,
               "cast", "float16"),
    )
}  # fmt: skip


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; an unknown name raises with a "did you mean" hint."""
    if name not in SCHEMES:
        raise ConfigError(
            f"unknown --scheme {name!r}; known: {', '.join(SCHEMES)}.{did_you_mean(name, SCHEMES)}"
        )
    return SCHEMES[name]


def dequantized_copy(model: nn.Module) -> nn.Module:
    """A float copy of a fake-quant ``model`` whose layers hold the dequantized weights.

    What a user without low-bit kernels runs: the same weights, fp32 Linear/Conv2d, no
    quantize/dequantize of activations. Used to measure the latency of simulated schemes.
    """
    plain = copy.deepcopy(model)
    for name, module in quant_modules(plain).items():
        with torch.no_grad():
            replacement = to_float(module)  # keeps subclasses such as a padding Conv2d
        parent_name, _, child = name.rpartition(".")
        parent = plain.get_submodule(parent_name) if parent_name else plain
        setattr(parent, child, replacement)
    return plain
