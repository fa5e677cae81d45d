"""Predicted vs measured peak activation memory for the zoo's models at batch 1 and 16.

Predicted: the profiler's count on the model (storages Python keeps alive between ops plus each
kernel's workspace, e.g. im2col columns of native convolutions), from shapes alone. Measured: what
the CPU allocator held during one real forward pass beyond what it held before (the inputs and
weights). Writes benchmarks/results/profile_memory.json.

    python benchmarks/profile_memory.py [--models a,b] [--batch-sizes 1,16] [--threads 2]

``predicted_on_meta_bytes`` is the same count on meta tensors (no weights, no memory): equal to
the real-tensor prediction except where a meta kernel returns other tensors than the CPU kernel
(scaled dot-product attention: the meta kernel's extra outputs make it an over-estimate).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.errors import MissingAssetError
from torchslim.evaluate.latency import fixed_threads
from torchslim.profile import profile

RESULTS = Path(__file__).parent / "results"
VISION_TASKS = ("image-classification", "tiny-image-classifier")


def _summary(rows: list[dict]) -> dict:
    errors = [abs(r["relative_error"]) for r in rows if r["relative_error"] is not None]
    return {
        "median_abs_error": statistics.median(errors) if errors else None,
        "max_abs_error": max(errors) if errors else None,
        "within_10_percent": sum(e <= 0.10 for e in errors),
        "count": len(errors),
    }


def _row(name: str, model: torch.nn.Module, inputs: tuple, batch_size: int) -> dict:
    real = profile(model, inputs, name)
    meta_inputs = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs)
    on_meta = profile(model.to("meta"), meta_inputs, name, measure_memory=False)
    predicted, measured = real.predicted_peak_activation_bytes, real.measured_peak_activation_bytes
    return {
        "model": name,
        "batch_size": batch_size,
        "predicted_bytes": predicted,
        "predicted_on_meta_bytes": on_meta.predicted_peak_activation_bytes,
        "measured_bytes": measured,
        "relative_error": (predicted - measured) / measured if measured else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(zoo.names()))
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(RESULTS / "profile_memory.json"))
    args = parser.parse_args()
    rows, skipped = [], {}
    with fixed_threads(args.threads):
        for name in args.models.split(","):
            entry = zoo.get(name)
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                try:
                    model = entry.load().eval()
                except MissingAssetError as error:
                    skipped[name] = str(error)
                    break
                rows.append(_row(name, model, tuple(entry.example_inputs(batch_size)), batch_size))
                print(json.dumps(rows[-1]), flush=True)
    vision = [r for r in rows if zoo.get(r["model"]).task in VISION_TASKS]
    payload = {
        "benchmark": "profile_memory",
        "threads": args.threads,
        "rows": rows,
        "skipped": skipped,
        "all": _summary(rows),
        "vision": _summary(vision),
        "machine": machine_facts(),
    }
    write_json(args.out, payload)
    for group in ("all", "vision"):
        summary = payload[group]
        if summary["count"]:
            print(
                f"{group}: median |error| {summary['median_abs_error']:.1%}, max "
                f"{summary['max_abs_error']:.1%}, within 10%: {summary['within_10_percent']}/"
                f"{summary['count']}"
            )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
