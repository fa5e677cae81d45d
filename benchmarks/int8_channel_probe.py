"""What an INT8 conv costs per channel count on OpenVINO's CPU plugin (the deploy backend here).

    python benchmarks/int8_channel_probe.py     # benchmarks/results/int8_channel_probe.json

Four 3x3 convs of ``c`` -> ``c`` channels (int8 weights and activations: FakeQuantize in front of
each, which OpenVINO's low-precision transformations turn into its int8 kernels), compiled with
static shapes on 1 thread, timed by the CPU time of the calling thread (OpenVINO runs the graph on
it with 1 thread) per conv, median over the calls, at each feature-map size of a Fashion ResNet
and batch 1 and 16. Whether a width between two multiples of 16 is paid as the next one up says
which ``round_to`` a pruned model deployed in INT8 should keep (``round_to: block``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from torchslim._machine import machine_facts
from torchslim.benchmark import write_result_json

RESULTS = Path(__file__).parent / "results"
PROBES = {28: (8, 12, 16, 24, 32), 14: (16, 24, 32, 40, 48, 64), 7: (32, 48, 64)}
LAYERS = 4


def conv_stack(batch: int, channels: int, size: int) -> Any:
    """``LAYERS`` int8 3x3 convs (+ ReLU) on a (batch, channels, size, size) input."""
    import openvino as ov
    import openvino.opset13 as ops

    def quantized(x: Any, low: float, high: float, levels: int) -> Any:
        lo, hi = ops.constant(np.float32(low)), ops.constant(np.float32(high))
        return ops.fake_quantize(x, lo, hi, lo, hi, levels)

    rng = np.random.default_rng(0)
    parameter = ops.parameter([batch, channels, size, size], np.float32)
    x = parameter
    for _ in range(LAYERS):
        weight = ops.constant(rng.standard_normal((channels, channels, 3, 3), np.float32))
        x = ops.convolution(quantized(x, 0.0, 4.0, 256), quantized(weight, -3.0, 3.0, 255),
                            [1, 1], [1, 1], [1, 1], [1, 1])  # fmt: skip
        x = ops.relu(x)
    return ov.Model([x], [parameter])


def time_per_conv_us(batch: int, channels: int, size: int, calls: int) -> float:
    """Median thread-CPU microseconds of one conv of the stack."""
    import openvino as ov

    from torchslim.deploy._openvino import StaticRequest

    properties = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}  # fmt: skip
    compiled = ov.Core().compile_model(conv_stack(batch, channels, size), "CPU", properties)
    request = StaticRequest(compiled)
    inputs = [np.random.default_rng(1).random((batch, channels, size, size), np.float32)]
    for _ in range(20):
        request(inputs)
    seconds = []
    for _ in range(calls):
        start = time.thread_time()
        request(inputs)
        seconds.append(time.thread_time() - start)
    return 1e6 * statistics.median(seconds) / LAYERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--name", default="int8_channel_probe")
    args = parser.parse_args()
    rows = []
    for size, widths in PROBES.items():
        for batch in (1, 16):
            costs = {c: time_per_conv_us(batch, c, size, args.calls) for c in widths}
            row = {"size": size, "batch": batch, "us_per_conv": costs}
            print(row, flush=True)
            rows.append(row)
    payload = {
        "benchmark": "int8_channel_probe",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "command": "python " + " ".join(sys.argv),
        "clock": "time.thread_time around each call (OpenVINO, 1 thread, runs on the caller)",
        "rows": rows,
    }
    print(f"wrote {write_result_json(args.name, payload, RESULTS)}")


if __name__ == "__main__":
    main()
