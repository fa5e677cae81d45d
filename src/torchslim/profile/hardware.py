"""Hardware peaks: micro-benchmarked on this machine (and cached), or read from a datasheet spec.

``measure_hardware`` times square matmuls per dtype (fp32, bf16, fp16 via ``torch.mm``; int8 via
``torch._int_mm``) and a large memory copy; the best rate seen is the peak. Specs for other
devices are YAML files with each number's source (``specs/*.yaml``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from torchslim._io import write_json
from torchslim._machine import cpu_features, cpu_model
from torchslim.errors import ConfigError, did_you_mean, reject_unknown_keys
from torchslim.evaluate.latency import fixed_threads
from torchslim.zoo._assets import home

DTYPES = ("float32", "bfloat16", "float16", "int8")
SPECS = resources.files("torchslim.profile") / "specs"


@dataclass(frozen=True)
class HardwareSpec:
    """Peak compute per dtype and memory bandwidth of one device.

    Attributes:
        name: device name.
        peak_flops_per_s: dtype name -> peak FLOP/s (int8: integer ops/s, 2 per MAC).
        mem_bw_bytes_per_s: sustained memory bandwidth (bytes read + written per second).
        source: where the numbers come from (measurement with date, or datasheet).
        threads: threads the measurement used (None for datasheets).
        details: anything else (ISA features, sizes measured, per-number sources).
    """

    name: str
    peak_flops_per_s: dict[str, float]
    mem_bw_bytes_per_s: float
    source: str
    threads: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.peak_flops_per_s) - set(DTYPES)
        if unknown:
            raise ConfigError(f"HardwareSpec.peak_flops_per_s: unknown dtypes {sorted(unknown)}")
        if self.mem_bw_bytes_per_s <= 0 or not self.peak_flops_per_s:
            raise ConfigError("HardwareSpec needs mem_bw_bytes_per_s > 0 and at least one peak.")

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype`` (fp32 for dtypes the spec does not list)."""
        key = {"int4": "int8", "uint8": "int8", "float64": "float32"}.get(dtype, dtype)
        return self.peak_flops_per_s.get(key) or self.peak_flops_per_s["float32"]

    def ridge_point(self, dtype: str = "float32") -> float:
        """Arithmetic intensity (FLOPs/byte) where compute and memory roofs meet."""
        return self.peak(dtype) / self.mem_bw_bytes_per_s

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HardwareSpec:
        reject_unknown_keys(cls, values, "hardware spec")
        try:  # YAML 1.1 reads "3.35e12" (no sign in the exponent) as a string
            values = {
                **values,
                "mem_bw_bytes_per_s": float(values["mem_bw_bytes_per_s"]),
                "peak_flops_per_s": {k: float(v) for k, v in values["peak_flops_per_s"].items()},
            }
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(
                f"hardware spec needs numeric mem_bw_bytes_per_s and peak_flops_per_s: {error}"
            ) from error
        return cls(**values)


def _best_rate(work: float, fn: Callable[[], Any], seconds: float) -> float:
    """Best work/second over repeated calls of ``fn`` (after one warm-up), within ``seconds``."""
    fn()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        best = max(best, work / (time.perf_counter() - start))
    return best


def matmul_peak(
    dtype: str, sizes: tuple[int, ...] = (512, 1024, 2048), seconds: float = 0.6
) -> float:
    """Best FLOP/s of n x n x n matmuls in ``dtype`` (2 n^3 FLOPs each).

    Sizes grow only while one call stays within the time budget, so a dtype that hits a slow
    fallback here (fp16 on most CPUs) costs seconds, not minutes.
    """
    best = 0.0
    for n in sorted(sizes):
        if best and 2.0 * n**3 / best > seconds / len(sizes):
            break
        if dtype == "int8":
            a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
            b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
            fn: Callable[[], Any] = functools.partial(torch._int_mm, a, b)
        else:
            a = torch.randn(n, n, dtype=getattr(torch, dtype))
            b = torch.randn(n, n, dtype=getattr(torch, dtype))
            fn = functools.partial(torch.mm, a, b)
        per_call = 2.0 * n**3
        best = max(best, _best_rate(per_call, fn, seconds / len(sizes)))
    return best


def memory_bandwidth(megabytes: int = 256, seconds: float = 1.0) -> float:
    """Bytes/s of copying a buffer far larger than the caches (bytes read + bytes written)."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    return _best_rate(2.0 * src.numel() * 4, lambda: dst.copy_(src), seconds)


def measure_hardware(threads: int | None = None, seconds_per_dtype: float = 0.6) -> HardwareSpec:
    """Micro-benchmark this machine's matmul peaks per dtype and its memory bandwidth."""
    with fixed_threads(threads), torch.inference_mode():
        peaks = {dtype: matmul_peak(dtype, seconds=seconds_per_dtype) for dtype in DTYPES}
        bandwidth = memory_bandwidth()
        used = torch.get_num_threads()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return HardwareSpec(
        name=cpu_model(),
        peak_flops_per_s=peaks,
        mem_bw_bytes_per_s=bandwidth,
        source=f"measured by torchslim hw on {stamp} (torch {torch.__version__}, {used} threads)",
        threads=used,
        details={"cpu_features": cpu_features(), "matmul_sizes": [512, 1024, 2048]},
    )


def _cache_path(threads: int) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")
    return home() / "hardware" / f"{slug}-{threads}t-torch{torch.__version__}.json"


def this_machine(refresh: bool = False, threads: int | None = None) -> HardwareSpec:
    """This machine's measured spec, from the cache unless ``refresh`` (or nothing cached)."""
    count = threads or torch.get_num_threads()
    path = _cache_path(count)
    if path.is_file() and not refresh:
        return HardwareSpec.from_dict(json.loads(path.read_text()))
    spec = measure_hardware(count)
    write_json(path, spec.to_dict())
    return spec


def shipped_specs() -> list[str]:
    """Names of the datasheet specs shipped with torchslim."""
    return sorted(p.name.removesuffix(".yaml") for p in SPECS.iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path: str) -> HardwareSpec:
    """A spec from a YAML file path or a shipped spec name (see ``shipped_specs()``)."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = Path(str(SPECS / f"{name_or_path}.yaml"))
        if not shipped.is_file():
            raise ConfigError(
                f"no hardware spec {name_or_path!r}.{did_you_mean(name_or_path, shipped_specs())} "
                f"Shipped: {', '.join(shipped_specs())}; or pass a YAML file path."
            )
        path = shipped
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of spec fields")
    return HardwareSpec.from_dict(values)
