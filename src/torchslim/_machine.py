"""Facts about the machine a figure was measured on: CPU model, ISA features, threads, versions."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

import torch

ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
)


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_features() -> dict[str, bool]:
    """The ISA features that decide which low-precision kernels are fast here."""
    flags = _cpuinfo()[1]
    return {name: name in flags for name in ISA_FLAGS}


def features_from_flags(flags: tuple[str, ...] | None) -> dict[str, bool]:
    """:func:`cpu_features` as if the CPU had exactly ``flags`` (names from ``ISA_FLAGS``);
    None: this machine's. How a test or a config stands in for another CPU kind."""
    if flags is None:
        return cpu_features()
    return {name: name in flags for name in ISA_FLAGS}


def bf16_native(features: dict[str, bool]) -> bool:
    """True where a CPU with ``features`` computes bf16 natively (AVX512-BF16 or AMX-BF16);
    elsewhere bf16 is emulated, several times slower than fp32."""
    return features["avx512_bf16"] or features["amx_bf16"]


def int8_products_saturate(features: dict[str, bool]) -> bool:
    """True on an x86 CPU without VNNI (e.g. AMD Zen 2: AVX2 + FMA only).

    Its int8 kernels multiply u8 x s8 pairs with VPMADDUBSW, whose int16 pair sums saturate
    for full-range weights (255 * 127 * 2 > 32767): ONNX Runtime's U8S8/S8S8 and OpenVINO's
    int8 lose accuracy there unless weights use 7 bits (reduced range; 255 * 64 * 2 fits).
    With VNNI (AVX512-VNNI, AVX-VNNI, AMX) products accumulate in int32 and nothing saturates.
    """
    x86 = features["avx2"] or features["avx512f"]
    return x86 and not (features["avx512_vnni"] or features["avx_vnni"] or features["amx_int8"])


def bf16_in_hardware(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls run natively: AVX512-BF16 or AMX on CPU, bf16 support on GPU.

    On AVX2-only CPUs bf16 falls back to slow emulation (several times slower than fp32).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bf16_native(cpu_features())


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, cgroup cpusets), not
    the machine's count. More threads than these time-share one core and wait on each other at
    every parallel region, many times slower than one thread."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def machine_facts() -> dict[str, Any]:
    """What every benchmark JSON records next to its figures."""
    facts: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts
