"""Per-group sensitivity scan of a zoo classifier, then the allocator at a global MACs target,
compared with the one-shot global plan at the same target (accuracy before any fine-tuning).

    python benchmarks/prune_sensitivity.py                       # fashion-resnet20, 50 % MACs
    python benchmarks/prune_sensitivity.py --model fashion-cnn --eval-images 1000

Writes benchmarks/results/prune_sensitivity-<model>.json and .png (metric drop vs ratio).
"""

from __future__ import annotations

import argparse
import copy
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import torchslim.zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import write_result_json
from torchslim.prune import StructuredPruneConfig, prune_
from torchslim.prune.sensitivity import allocate, scan_sensitivity
from torchslim.zoo.images import fashion_mnist
from torchslim.zoo.vision import accuracy

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-resnet20")
    parser.add_argument("--macs-ratio", type=float, default=0.5, help="fraction of MACs removed")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--eval-images", type=int, default=2000, help="test images per scan step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    entry = torchslim.zoo.get(args.model)
    model = entry.load()
    inputs = tuple(entry.example_inputs(1))
    images, labels = fashion_mnist("test")  # the entry's eval split (Fashion-MNIST models)
    scan_images, scan_labels = images[: args.eval_images], labels[: args.eval_images]

    def metric(candidate: nn.Module) -> float:
        return accuracy(candidate, scan_images, scan_labels)

    started = time.perf_counter()
    scan = scan_sensitivity(model, inputs, metric, ratios=tuple(args.ratios))
    scan_seconds = time.perf_counter() - started
    stem = f"prune_sensitivity-{args.model}"
    scan.save(args.out_dir / f"{stem}-scan.json", args.out_dir / f"{stem}.png")
    allocated = copy.deepcopy(model)
    plan = allocate(allocated, inputs, scan, args.macs_ratio)
    plan.apply()
    global_plan = copy.deepcopy(model)
    prune_(global_plan, StructuredPruneConfig(target_macs_ratio=args.macs_ratio), inputs)
    full_accuracy = {  # all 10 000 test images, no fine-tuning
        "dense": entry.evaluate(model)["accuracy"],
        "allocated_from_scan": entry.evaluate(allocated)["accuracy"],
        "one_shot_global_l2": entry.evaluate(global_plan)["accuracy"],
    }
    payload = {
        "benchmark": "prune_sensitivity",
        "model": args.model,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target_macs_removed": args.macs_ratio,
        "scan_metric": f"accuracy on the first {args.eval_images} test images",
        "scan_seconds": round(scan_seconds, 1),
        "macs": {"dense": plan.macs_before, "allocated": plan.macs_after},
        "accuracy_without_finetuning": full_accuracy,
        "allocated_plan": str(plan),
        "scan_json": f"{stem}-scan.json",
        "plot_png": f"{stem}.png",
        "machine": machine_facts(),
    }
    path = write_result_json(stem, payload, args.out_dir)
    print(full_accuracy, f"MACs {plan.macs_before:,} -> {plan.macs_after:,}; wrote {path}")


if __name__ == "__main__":
    main()
