"""Whether a floating-point format pays off on this CPU, decided by measuring the model itself.

bf16 and fp16 are timed against fp32 on the same inputs, interleaved: where the format is
slower (emulated kernels: bf16 without AVX512-BF16/AMX, fp16 on most CPUs) it is refused or
warned about with the measured slowdown, never handed over silently. fp8 has no CPU compute
kernels in torch: it is reported as a storage format (bytes on disk, accuracy of the
round-tripped weights), with no latency claim.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim._machine import bf16_native, cpu_features
from torchslim.benchmark import BenchmarkConfig, compare
from torchslim.deploy.config import DeployError
from torchslim.errors import ConfigError
from torchslim.evaluate.size import saved_size_bytes

FORMATS = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}
ON_SLOWER = ("warn", "raise")
# A format is kept only when it measures at least this much faster than fp32: within it, the
# load of the moment could flip the verdict from one run to the next.
KEEP_MARGIN = 1.05


class FormatSlowerError(DeployError):
    """A format that runs slower than fp32 on this machine (measured), refused on request."""


class CastModel(nn.Module):
    """Runs ``model`` in ``dtype``: inputs cast in, outputs cast back to fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().to(dtype)
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        cast = (x.to(self.dtype) if x.is_floating_point() else x for x in inputs)
        return self.model(*cast).float()


@dataclass(frozen=True)
class FormatCheck:
    """What one format gives on this machine for one model (times in ms; None: not timed)."""

    format: str
    hardware: dict[str, bool]
    verdict: str  # "faster", "slower" or "storage-only"
    message: str
    fp32_ms: float | None
    format_ms: float | None
    speedup: float | None
    cosine: float
    top1_agreement: float | None
    fp32_size_bytes: int
    format_size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hardware(name: str) -> dict[str, bool]:
    features = cpu_features()
    keys = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512f", "amx_fp16")}
    return {k: features[k] for k in keys.get(name, ())}


def _agreement(expected: torch.Tensor, actual: torch.Tensor) -> tuple[float, float | None]:
    cosine = F.cosine_similarity(expected.flatten(1), actual.flatten(1), dim=1).mean().item()
    if expected.ndim == 2 and expected.shape[1] > 1:
        return cosine, (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    return cosine, None


def _fp8_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy whose floating weights are rounded through ``dtype`` (what fp8 storage keeps),
    plus the fp8 state dict's size: weights stored in fp8, per-tensor amax scale in fp32."""
    rounded = copy.deepcopy(model).eval()
    finfo_max = torch.finfo(dtype).max
    with torch.no_grad():
        for parameter in rounded.parameters():
            scale = parameter.abs().max().clamp(min=1e-12) / finfo_max
            parameter.copy_((parameter / scale).to(dtype).float() * scale)
    return rounded


def _fp8_size(model: nn.Module, dtype: torch.dtype) -> int:
    stored = copy.deepcopy(model)
    with torch.no_grad():
        for module in stored.modules():
            for name, parameter in list(module.named_parameters(recurse=False)):
                scale = parameter.abs().max().clamp(min=1e-12) / torch.finfo(dtype).max
                setattr(
                    module, name, nn.Parameter((parameter / scale).to(dtype), requires_grad=False)
                )
                module.register_buffer(f"{name}_fp8_scale", scale.reshape(1))
    return saved_size_bytes(stored)


def check_format(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    fmt: str,
    on_slower: str = "warn",
    threads: int | None = None,
    rounds: int = 20,
) -> FormatCheck:
    """Measure ``fmt`` against fp32 on ``model`` with ``example_inputs``.

    bf16/fp16: the model cast to the format vs fp32, interleaved; slower -> a warning (or
    FormatSlowerError with ``on_slower="raise"``) that states the measured slowdown.
    fp8: storage size and output agreement of fp8-rounded weights; no timing (no CPU kernels).
    ``threads``: torch threads while timing (default: torch's count, from OMP_NUM_THREADS).
    bf16 with ``on_slower="raise"`` on a CPU without native bf16 is refused before any timing.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"fmt must be one of {tuple(FORMATS)}, got {fmt!r}")
    threads = threads or torch.get_num_threads()  # follows OMP_NUM_THREADS
    if on_slower not in ON_SLOWER:
        raise ConfigError(f"on_slower must be one of {ON_SLOWER}, got {on_slower!r}")
    reference = copy.deepcopy(model).eval()
    with torch.inference_mode():
        expected = reference(*example_inputs).float()
    fp32_size = saved_size_bytes(reference)
    dtype = FORMATS[fmt]
    if fmt.startswith("float8"):
        rounded = _fp8_weights(reference, dtype)
        with torch.inference_mode():
            cosine, top1 = _agreement(expected, rounded(*example_inputs).float())
        message = (
            f"{fmt}: no fp8 compute kernels on CPU in torch {torch.__version__}; fp8 is "
            "a storage format here (weights decoded to fp32 to compute), no latency claim"
        )
        return FormatCheck(
            fmt,
            {},
            "storage-only",
            message,
            None,
            None,
            None,
            cosine,
            top1,
            fp32_size,
            _fp8_size(reference, dtype),
        )
    if fmt == "bfloat16" and on_slower == "raise" and not bf16_native(cpu_features()):
        raise FormatSlowerError(
            f"bfloat16: this CPU has no native bf16 compute (hardware: {_hardware(fmt)}): torch "
            "emulates it, several times slower than fp32, so it is refused without a race "
            "(a race on a busy machine could keep it by luck); keep fp32 or deploy int8"
        )
    cast = CastModel(reference, dtype)
    variants = {"fp32": lambda: reference(*example_inputs), fmt: lambda: cast(*example_inputs)}
    result = compare(variants, "fp32", BenchmarkConfig(warmup=3, rounds=rounds, threads=threads))
    fp32_ms, fmt_ms = result.variants["fp32"].stats.median, result.variants[fmt].stats.median
    with torch.inference_mode():
        cosine, top1 = _agreement(expected, cast(*example_inputs))
    speedup = fp32_ms / fmt_ms
    faster = speedup >= KEEP_MARGIN
    hardware = _hardware(fmt)
    message = (
        f"{fmt} runs {speedup:.2f}x "
        + ("faster than" if speedup > 1 else "the speed of")
        + f" fp32 here ({fmt_ms:.3f} vs {fp32_ms:.3f} ms median, {threads} threads; "
        f"hardware: {hardware})"
    )
    if 1.0 <= speedup < KEEP_MARGIN:
        message = (
            f"{fmt} is NOT FASTER than fp32 by the {KEEP_MARGIN:.2f}x margin a format must beat "
            f"to be kept ({speedup:.2f}x: {fmt_ms:.3f} vs {fp32_ms:.3f} ms median, {threads} "
            f"threads; hardware: {hardware}): keep fp32 or deploy int8"
        )
    elif not faster:
        message = (
            f"{fmt} is {1 / speedup:.2f}x SLOWER than fp32 on this CPU ({fmt_ms:.3f} vs "
            f"{fp32_ms:.3f} ms median, {threads} threads; hardware: {hardware}): keep fp32 "
            "or deploy int8"
        )
    if not faster:
        if on_slower == "raise":
            raise FormatSlowerError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return FormatCheck(
        fmt,
        hardware,
        "faster" if faster else "slower",
        message,
        fp32_ms,
        fmt_ms,
        speedup,
        cosine,
        top1,
        fp32_size,
        saved_size_bytes(cast.model),
    )
