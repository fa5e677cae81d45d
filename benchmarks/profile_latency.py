"""Predicted vs measured latency for every zoo model at batch 1 and 16 (issue: profiler).

The latency model is calibrated on micro-benchmarks only (never on these models); each model's
measured latency is the median of timed forward passes in the same run. Writes
benchmarks/results/profile_latency.json with the machine's facts, and whether the machine was
quiet enough for any of it to be trusted (probe spread and load average, before and after).

    python benchmarks/profile_latency.py [--models a,b] [--batch-sizes 1,16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.errors import MissingAssetError
from torchslim.evaluate.latency import fixed_threads
from torchslim.profile.analysis import analyze
from torchslim.profile.latency_cache import trusted_model
from torchslim.profile.machine_state import probe_machine, verdict

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(zoo.names()))
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--recalibrate", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "profile_latency.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    calibration, trust = trusted_model(args.threads, refresh=args.recalibrate)
    calibration_seconds = time.perf_counter() - start
    rows, skipped = [], {}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with fixed_threads(args.threads):
        for name in args.models.split(","):
            entry = zoo.get(name)
            try:
                model = entry.load()
            except MissingAssetError as error:
                skipped[name] = str(error)
                continue
            for batch_size in sizes:
                inputs = tuple(entry.example_inputs(batch_size))
                result = analyze(model, inputs, name, measure=True, threads=args.threads)
                rows.append(
                    {
                        "model": name,
                        "batch_size": batch_size,
                        "macs": result.report.total.macs,
                        "predicted_ms": result.predicted_latency_ms,
                        "measured_ms": result.measured_latency_ms,
                        "relative_error": result.latency_error,
                        # the same forward predicted by the class fits alone (no replayed ops)
                        "predicted_by_classes_ms": calibration.predict_report(result.report) * 1e3,
                        "trusted": result.trust.trusted,
                        "not_trusted_because": result.trust.reason or None,
                    }
                )
                print(json.dumps(rows[-1]))
    after = probe_machine(args.threads)
    payload = {
        "benchmark": "profile_latency",
        "threads": args.threads,
        "calibration_seconds": calibration_seconds,
        "calibration_trusted": calibration.trust.trusted,
        "calibration_not_trusted_because": calibration.trust.reason or None,
        "machine_at_start": {"trusted": trust.trusted, "reason": trust.reason or None},
        "machine_at_end": {**after.to_dict(), "reason": verdict(after, args.threads).reason},
        "op_overhead_us": calibration.op_overhead_s * 1e6,
        "module_call_us": calibration.module_call_s * 1e6,
        "with_replayed_ops": {
            "module_call_us": calibration.table_overheads[0] * 1e6,
            "python_call_us": calibration.table_overheads[1] * 1e6,
            "written_ns_per_kib": calibration.table_overheads[2] * 1e9 * 1024,
        },
        "python_call_us": calibration.python_call_s * 1e6,
        "calls_per_op": calibration.calls_per_op,
        "calls_per_module_call": calibration.calls_per_module_call,
        "rows": rows,
        "skipped": skipped,
        "all": _summary(rows),
        "all_by_classes": _summary(rows, "predicted_by_classes_ms"),
        "by_batch_size": {
            str(b): _summary([r for r in rows if r["batch_size"] == b]) for b in sizes
        },
        "untrusted_rows": sum(not r["trusted"] for r in rows),
        "machine": machine_facts(),
    }
    write_json(args.out, payload)
    for group, summary in [("all", payload["all"]), *payload["by_batch_size"].items()]:
        print(
            f"batch {group}: median |error| {summary['median_abs_error']:.1%}, within 15%: "
            f"{summary['within_15_percent']}/{summary['count']}"
        )
    classes = payload["all_by_classes"]
    print(f"class fits alone: median |error| {classes['median_abs_error']:.1%}")
    busy = payload["untrusted_rows"]
    print(f"{busy}/{len(rows)} rows measured on a machine too busy to trust -> {args.out}")


def _summary(rows: list[dict], predicted: str = "predicted_ms") -> dict:
    errors = [abs(r[predicted] / r["measured_ms"] - 1) for r in rows if r["measured_ms"]]
    return {
        "median_abs_error": statistics.median(errors) if errors else None,
        "max_abs_error": max(errors) if errors else None,
        "within_15_percent": sum(e <= 0.15 for e in errors),
        "count": len(errors),
    }


if __name__ == "__main__":
    main()
