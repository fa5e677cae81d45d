"""Every real zoo model evaluated once: metric(s), params, size on disk, latency, peak memory.

The figures of the foundation issue's closing note. Writes benchmarks/results/zoo_report.json
with the machine's facts.

    python benchmarks/zoo_report.py [--models a,b] [--batch-size 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import torchslim
from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts

REAL_MODELS = (
    "mnist-cnn",
    "fashion-cnn",
    "fashion-resnet20",
    "fashion-resnet56",
    "minilm",
    "smollm2-135m",
    "efficientnet-lite0",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(REAL_MODELS))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "zoo_report.json"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        entry = zoo.get(name)
        start = time.perf_counter()
        model = entry.load()
        loaded = time.perf_counter()
        report = torchslim.evaluate(model, entry, args.batch_size, args.threads).to_dict()
        report["seconds"] = {"load": loaded - start, "evaluate": time.perf_counter() - loaded}
        rows.append(report)
        shown = ("model", "metrics", "params", "size_bytes", "latency_ms", "peak_memory_bytes")
        print(json.dumps({key: report[key] for key in shown}))
    payload = {"benchmark": "zoo_report", "batch_size": args.batch_size, "threads": args.threads}
    write_json(args.out, {**payload, "rows": rows, "machine": machine_facts()})


if __name__ == "__main__":
    main()
