"""Structured pruning of a Fashion-MNIST ResNet: accuracy before/after fine-tuning, MACs ratio
next to the *measured* latency speed-up (baseline and pruned timed in the same run).

    python benchmarks/prune_resnet.py                                  # fashion-resnet20, 0.5
    python benchmarks/prune_resnet.py --model fashion-resnet56 --finetune-epochs 1

Writes benchmarks/results/prune_resnet.json (or --name).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import torchslim.zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import BenchmarkConfig, compare, write_result_json
from torchslim.profile import profile
from torchslim.prune import StructuredPruneConfig, prune_
from torchslim.prune.finetune import FinetuneConfig, accumulate_gradients, finetune_

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-resnet20")
    parser.add_argument("--macs-ratio", type=float, default=0.5, help="fraction of MACs removed")
    parser.add_argument("--importance", default="l2", choices=["l1", "l2", "bn_scale", "taylor"])
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-samples", type=int, default=None, help="default: all 60 000")
    parser.add_argument("--finetune-lr", type=float, default=0.02)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
    parser.add_argument("--name", default="prune_resnet")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def latency(baseline: Any, pruned: Any, entry: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Baseline and pruned interleaved, same inputs, fixed threads, medians and speed-ups."""
    config = BenchmarkConfig(warmup=5, rounds=args.rounds, threads=args.threads, max_seconds=20)
    out: dict[str, Any] = {}
    for batch_size in args.batch_sizes:
        (x,) = entry.example_inputs(batch_size)
        variants = {"dense": lambda x=x: baseline(x), "pruned": lambda x=x: pruned(x)}
        result = compare(variants, "dense", config)
        Console(width=120).print(result.to_table(title=f"{args.model}, batch {batch_size}"))
        out[str(batch_size)] = result.to_dict()
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    entry = torchslim.zoo.get(args.model)
    baseline, model = entry.load(), entry.load()
    inputs = tuple(entry.example_inputs(1))
    started = time.perf_counter()
    accuracy_before = entry.evaluate(baseline)["accuracy"]
    if args.importance == "taylor":
        accumulate_gradients(entry, model)
    config = StructuredPruneConfig(target_macs_ratio=args.macs_ratio, importance=args.importance)
    result = prune_(model, config, inputs)
    model.zero_grad(set_to_none=True)
    accuracy_pruned = entry.evaluate(model)["accuracy"]
    tune_start = time.perf_counter()
    finetune_info = None
    if args.finetune_epochs:
        tune = FinetuneConfig(args.finetune_epochs, args.finetune_samples, args.finetune_lr)
        finetune_info = finetune_(entry, model, tune)
    tune_seconds = time.perf_counter() - tune_start
    accuracy_after = entry.evaluate(model.eval())["accuracy"]
    macs = [profile(m, inputs, measure_memory=False).total.macs for m in (baseline, model)]
    payload = {
        "benchmark": "prune_resnet",
        "model": args.model,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "config": {**config.to_dict(), "finetune": finetune_info, "threads": args.threads},
        "accuracy": {"dense": accuracy_before, "pruned_no_finetune": accuracy_pruned,
                     "pruned_finetuned": accuracy_after,
                     "drop_points": round(100 * (accuracy_before - accuracy_after), 2)},
        "macs": {"dense": macs[0], "pruned": macs[1], "ratio_dense_over_pruned": macs[0] / macs[1]},
        "params": {"dense": result.params_before, "pruned": result.params_after},
        "finetune_seconds": round(tune_seconds, 1),
        "plan": str(result.plan),
        "latency": latency(baseline, model, entry, args),
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine_facts(),
    }  # fmt: skip
    payload["speedup_by_batch"] = {
        batch: timing["variants"]["pruned"]["speedup_vs_baseline"]
        for batch, timing in payload["latency"].items()
    }
    for batch, speedup in payload["speedup_by_batch"].items():
        ratio = macs[0] / macs[1]
        print(f"batch {batch}: measured speed-up {speedup:.2f}x vs MACs ratio {ratio:.2f}x")
    path = write_result_json(args.name, payload, args.out_dir)
    print(f"accuracy {accuracy_before:.4f} -> pruned {accuracy_pruned:.4f} -> "
          f"fine-tuned {accuracy_after:.4f}; wrote {path}")  # fmt: skip


if __name__ == "__main__":
    main()
