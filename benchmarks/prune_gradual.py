"""Gradual (cubic) pruning with fine-tuning between steps vs one-shot pruning + the same number
of fine-tuning epochs, on a Fashion-MNIST zoo model (accuracy on the 10 000 test images).

    python benchmarks/prune_gradual.py       # fashion-cnn, 90 % sparsity, 3 steps, 30 000 images
    python benchmarks/prune_gradual.py --target macs=0.5 --model fashion-resnet20

Writes benchmarks/results/prune_gradual-<model>.json.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchslim.zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import write_result_json
from torchslim.prune import fold_masks_, prune_
from torchslim.prune.apply import config_from_words
from torchslim.prune.finetune import FinetuneConfig, finetune_
from torchslim.prune.schedule import cubic_schedule, prune_gradually_

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-cnn")
    parser.add_argument("--method", default="magnitude")
    parser.add_argument("--target", default="sparsity=0.9")
    parser.add_argument("--steps", type=int, default=3, help="one fine-tuning epoch after each")
    parser.add_argument("--samples", type=int, default=30000, help="training images per epoch")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def run(args: argparse.Namespace, gradual: bool) -> dict[str, Any]:
    entry = torchslim.zoo.get(args.model)
    model: nn.Module = entry.load()
    inputs = tuple(entry.example_inputs(1))
    config = config_from_words(args.method, args.target)
    tune = FinetuneConfig(epochs=1, samples=args.samples, lr=args.lr)
    started = time.perf_counter()
    if gradual:
        steps = prune_gradually_(
            model, config, inputs, args.steps, lambda m, _: finetune_(entry, m, tune)
        )
        last = steps[-1]
    else:
        last = prune_(model, config, inputs)
        finetune_(entry, model, FinetuneConfig(args.steps, args.samples, args.lr))
    fold_masks_(model)
    return {
        "accuracy": entry.evaluate(model.eval())["accuracy"],
        "params_after": last.params_after,
        "macs_after": last.macs_after,
        "sparsity_last_step": last.sparsity,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    entry = torchslim.zoo.get(args.model)
    dense = entry.evaluate(entry.load())["accuracy"]
    one_shot, gradual = run(args, gradual=False), run(args, gradual=True)
    payload = {
        "benchmark": "prune_gradual",
        "model": args.model,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "method": args.method,
            "target": args.target,
            "steps": args.steps,
            "finetune_epochs_total": args.steps,
            "samples_per_epoch": args.samples,
            "lr": args.lr,
        },
        "cubic_targets": cubic_schedule(float(args.target.split("=")[-1]), args.steps),
        "accuracy_dense": dense,
        "one_shot_then_finetune": one_shot,
        "gradual_cubic_finetune_between": gradual,
        "machine": machine_facts(),
    }
    path = write_result_json(f"prune_gradual-{args.model}", payload, args.out_dir)
    print(f"dense {dense:.4f}; one-shot {one_shot['accuracy']:.4f}; gradual "
          f"{gradual['accuracy']:.4f}; wrote {path}")  # fmt: skip


if __name__ == "__main__":
    main()
