"""Tucker-2 (Kim et al., arXiv 1511.06530) or CP (``--method cp``, arXiv 1412.6553) on
fashion-resnet20 at half the conv MACs: accuracy before and after fine-tuning, and the measured
latency of the original and the factorized model at batch 1 and 16 in the same run. The 3x3
convs are factorized (``check_speed: false``; the sensitivity allocation may keep some dense) to
meet the MAC target; a second pass with the speed check on records which layers the check keeps
whole.

    OMP_NUM_THREADS=1 python benchmarks/factorize_resnet.py --samples 10000 [--method cp]
        [--allocation sensitivity]

``--allocation sensitivity`` splits the MAC target by a per-layer sensitivity scan (each conv
factorized alone, the output error on calibration batches measured) instead of one energy level.

Writes benchmarks/results/factorize_resnet-<model>[-cp][-sensitivity][-lr<lr>].json.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchslim
import torchslim.zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import write_result_json
from torchslim.evaluate.latency import measure_latency
from torchslim.lowrank import FactorizeConfig, factorize_
from torchslim.pipeline import parse_recipe
from torchslim.pipeline.runner import RunOptions, compress
from torchslim.profile import profile

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-resnet20")
    parser.add_argument("--target", default="macs=0.5")
    parser.add_argument("--method", default="tucker2", choices=["tucker2", "cp"])
    parser.add_argument(
        "--allocation",
        default="uniform",
        choices=["uniform", "sensitivity"],
        help="ranks per layer: one energy level for all (uniform) or a sensitivity scan",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="latency batches")
    parser.add_argument("--samples", type=int, default=10000, help="fine-tuning images")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def latency(entry: Any, model: nn.Module, args: argparse.Namespace) -> dict[str, float]:
    medians = {}
    for batch in args.batches:
        inputs = tuple(entry.example_inputs(batch))
        stats = measure_latency(lambda batch=inputs: model(*batch), 5, 30, args.threads)
        medians[f"batch_{batch}_median_ms"] = round(stats.median, 3)
    return medians


def conv_macs(model: nn.Module, entry: Any) -> int:
    report = profile(model, tuple(entry.example_inputs(1)), measure_memory=False)
    return int(report.total.macs)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    entry = torchslim.zoo.get(args.model)
    original = entry.load()
    text = (
        "version: 1\nstages:\n"
        f"  - step: factorize\n    method: {args.method}\n    target: {args.target}\n"
        "    check_speed: false\n"
        + ("" if args.allocation == "uniform" else f"    allocation: {args.allocation}\n")
        + f"  - step: finetune\n    epochs: 1\n    samples: {args.samples}\n    lr: {args.lr}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        options = RunOptions(repeats=5, threads=args.threads, measure_stages=True)
        outcome = compress(entry, parse_recipe(text), Path(tmp) / "out", options)
        model = torchslim.load(Path(tmp) / "out")
    stages = outcome.details["stages"]
    checked = copy.deepcopy(original)
    config = FactorizeConfig(
        method=args.method, target=args.target, allocation=args.allocation, check_speed=True
    )
    calibration = entry.calibration_batches(config.calibration_batches)
    speed_checked = factorize_(checked, config, calibration, tuple(entry.example_inputs(1)))
    base_latency, new_latency = (
        latency(entry, original, args),
        latency(entry, model, args),
    )
    payload = {
        "benchmark": "factorize_resnet",
        "model": args.model,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": vars(args) | {"out_dir": str(args.out_dir)},
        "original": {
            "metrics": entry.evaluate(original),
            "macs": conv_macs(original, entry),
            "latency": base_latency,
        },
        "factorized": {
            "macs": conv_macs(model, entry),
            "after_factorize": stages[0]["figures"]["metrics"],
            "after_finetune": stages[1]["figures"]["metrics"],
            "latency": new_latency,
            "target": stages[0]["summary"].get("target"),
            "layers": stages[0]["summary"]["layers"],
        },
        "speed_up": {k: round(base_latency[k] / new_latency[k], 3) for k in base_latency},
        "with_speed_check": {k: v for k, v in speed_checked.summary().items() if k != "layers"},
        "machine": machine_facts(),
        "note": "shared 2-core machine, busy with other jobs (the lead's timings on core 0, "
        "this run pinned to core 1); original and factorized timed back to back in the same run "
        "(medians of 30 after 5 warm-up); fine-tuning is 1 epoch over `samples` training images; "
        "factorized.target is the share of the 3x3 convs' MACs kept (goal and reached)",
    }
    payload["method"] = args.method
    suffix = "" if args.method == "tucker2" else f"-{args.method}"
    suffix += "" if args.allocation == "uniform" else f"-{args.allocation}"
    suffix += "" if args.lr == 0.01 else f"-lr{args.lr:g}"
    path = write_result_json(f"factorize_resnet-{args.model}{suffix}", payload, args.out_dir)
    print(f"speed-up {payload['speed_up']}; accuracy {payload['original']['metrics']} -> "
          f"{payload['factorized']['after_finetune']}; wrote {path}")  # fmt: skip


if __name__ == "__main__":
    main()
