"""The benchmark harness: variants timed interleaved (in one process, or one worker process each
with ``compare_isolated``), medians and speed-ups as JSON.

>>> result = compare({"eager": lambda: model(x), "compiled": lambda: compiled(x)}, baseline="eager")
>>> result.speedup("compiled")
1.8
>>> result.write("my-benchmark")  # benchmarks/results/my-benchmark.json
"""

from __future__ import annotations

from torchslim.benchmark.config import BenchmarkConfig
from torchslim.benchmark.harness import compare, max_abs_diff
from torchslim.benchmark.isolated import (
    Isolation,
    WorkerError,
    WorkerVariant,
    compare_isolated,
    compare_on_inputs,
    load_inputs,
    save_inputs,
)
from torchslim.benchmark.result import (
    BenchmarkResult,
    Spread,
    VariantResult,
    write_result_json,
)

__all__ = [
    "BenchmarkConfig",
    "BenchmarkResult",
    "Isolation",
    "Spread",
    "VariantResult",
    "WorkerError",
    "WorkerVariant",
    "compare",
    "compare_isolated",
    "compare_on_inputs",
    "load_inputs",
    "max_abs_diff",
    "save_inputs",
    "write_result_json",
]
